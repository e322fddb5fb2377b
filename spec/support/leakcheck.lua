-- Snapshot of what a spec file could leak: child processes (zombies
-- included), open file descriptors, shared mappings, files in /dev/shm.
-- snapshot() / compare(before, after) -> nil or a description of the leak.
local lfs = require "lfs"

local M = {}

local function read(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function M.self_pid()
  return tonumber(read("/proc/self/stat"):match("^(%d+)"))
end

-- pids (with state) of every process whose parent is pid
function M.children(pid)
  pid = pid or M.self_pid()
  local out = {}
  for d in lfs.dir("/proc") do
    if d:match("^%d+$") then
      local s = read("/proc/" .. d .. "/stat")
      if s then
        local state, ppid = s:match("%) (%S) (%d+)")
        if tonumber(ppid) == pid then out[#out + 1] = d .. "(" .. state .. ")" end
      end
    end
  end
  table.sort(out)
  return out
end

function M.fds()
  local out = {}
  for d in lfs.dir("/proc/self/fd") do
    if d:match("^%d+$") then
      local target = lfs.symlinkattributes("/proc/self/fd/" .. d, "target") or "?"
      out[#out + 1] = d .. "->" .. target
    end
  end
  table.sort(out)
  return out
end

-- shared mappings (perms with 's'), e.g. our anonymous MAP_SHARED regions
function M.shared_maps()
  local out = {}
  for line in (read("/proc/self/maps") or ""):gmatch("[^\n]+") do
    local range, perms, rest = line:match("^(%S+) (%S+) %S+ %S+ %S+%s*(.*)$")
    if perms and perms:sub(4, 4) == "s" then out[#out + 1] = range .. " " .. rest end
  end
  return out
end

function M.devshm()
  local out = {}
  if lfs.attributes("/dev/shm", "mode") == "directory" then
    for d in lfs.dir("/dev/shm") do
      if d ~= "." and d ~= ".." then out[#out + 1] = d end
    end
  end
  table.sort(out)
  return out
end

function M.snapshot()
  collectgarbage("collect")
  collectgarbage("collect")
  return {
    children = M.children(), fds = M.fds(), maps = #M.shared_maps(), devshm = M.devshm(),
  }
end

local function diff(a, b)
  local seen, extra = {}, {}
  for _, v in ipairs(a) do seen[v] = true end
  for _, v in ipairs(b) do if not seen[v] then extra[#extra + 1] = v end end
  return extra
end

function M.compare(before, after)
  local problems = {}
  if #after.children > 0 then
    problems[#problems + 1] = "child processes left: " .. table.concat(after.children, " ")
  end
  local fds = diff(before.fds, after.fds)
  -- the directory listing itself may hold one fd; compare by count too
  if #after.fds > #before.fds and #fds > 0 then
    problems[#problems + 1] = "file descriptors left open: " .. table.concat(fds, " ")
  end
  if after.maps > before.maps then
    problems[#problems + 1] = ("shared mappings left: %d before, %d after"):format(before.maps, after.maps)
  end
  local shm = diff(before.devshm, after.devshm)
  if #shm > 0 then problems[#problems + 1] = "/dev/shm entries left: " .. table.concat(shm, " ") end
  if #problems == 0 then return nil end
  return table.concat(problems, "; ")
end

-- Wait (bounded) until the leak check passes, for children that are
-- already dying; returns the final comparison.
function M.settle(before, timeout)
  local util = require "support.util"
  local result
  util.wait_for(function()
    result = M.compare(before, M.snapshot())
    return result == nil
  end, timeout or 5)
  return result
end

return M
