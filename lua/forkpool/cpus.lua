-- forkpool.cpus: how many CPUs this process may use, and which are online.
--
-- The default n_jobs is the number of CPUs this process may run on (its
-- affinity mask: `taskset -c 0 luajit script.lua` gets one worker), capped
-- by the CPU quota (cgroup v2, and v1 on hybrid systems) of its cgroup and every cgroup
-- above it (`cpu.max`, "quota period", rounded up: a container limited to
-- 1.5 CPUs gets 2 workers).  That is what Python's os.process_cpu_count()
-- (affinity) and loky's cpu_count() (affinity and quota) report.

local ffi = require "ffi"

local M = {}

pcall(ffi.cdef, "int sched_getaffinity(int pid, size_t cpusetsize, void *mask);")

-- A kernel CPU list ("0-3,8,10-11") -> set of ids, count.  Bad parts are
-- skipped.
function M.parse_list(s)
  local set, n = {}, 0
  for part in (s or ""):gmatch("[^,%s]+") do
    local a, b = part:match("^(%d+)%-(%d+)$")
    if not a then a = part:match("^(%d+)$"); b = a end
    a, b = tonumber(a), tonumber(b)
    if a and b and b >= a then
      for i = a, b do
        if not set[i] then set[i] = true; n = n + 1 end
      end
    end
  end
  return set, n
end

local function read_line(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("*l")
  f:close()
  return s
end

-- The online CPUs: set of ids, count, and the kernel's list as text (for
-- errors).
function M.online()
  local s = read_line("/sys/devices/system/cpu/online") or "0"
  local set, n = M.parse_list(s)
  return set, n, s
end

-- The number of CPUs in this process's affinity mask, or nil when the call
-- fails (the mask grows until the kernel's CPU count fits).
function M.affinity_count()
  local bytes = 128
  while bytes <= 65536 do
    local mask = ffi.new("uint8_t[?]", bytes)
    -- glibc's wrapper returns 0 on success (the raw syscall, the size)
    if ffi.C.sched_getaffinity(0, bytes, mask) == 0 then
      local n = 0
      for i = 0, bytes - 1 do
        local b = mask[i]
        while b ~= 0 do
          n = n + b % 2
          b = math.floor(b / 2)
        end
      end
      return n
    end
    if ffi.errno() ~= 22 then return nil end -- EINVAL: mask too small
    bytes = bytes * 2
  end
  return nil
end

-- ceil(quota / period) of the cgroup at `dir` (a directory of the
-- hierarchy), or nil when it sets no quota.  v2: cpu.max "quota period" or
-- "max period"; v1: cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us.
local function quota_at(dir, v1)
  local quota, period
  if v1 then
    quota = tonumber(read_line(dir .. "/cpu.cfs_quota_us") or "")
    period = tonumber(read_line(dir .. "/cpu.cfs_period_us") or "")
  else
    local s = read_line(dir .. "/cpu.max")
    quota, period = (s or ""):match("^(%d+)%s+(%d+)")
    quota, period = tonumber(quota), tonumber(period)
  end
  if quota and quota > 0 and period and period > 0 then
    return math.max(1, math.ceil(quota / period))
  end
end

-- The smallest quota of the cgroup `path` and its ancestors under `base`.
local function walk_up(base, path, v1)
  local limit
  while path do
    local n = quota_at(base .. (path == "/" and "" or path), v1)
    if n and (not limit or n < limit) then limit = n end
    if path == "/" or path == "" then break end
    path = path:match("^(.*)/[^/]*$")
    if path == "" then path = "/" end
  end
  return limit
end

-- The CPU quota that applies to this process: the smallest quota of its
-- cgroup and every ancestor, or nil when none sets one.  `root` is where
-- the hierarchy is mounted (default /sys/fs/cgroup), `self_file` the
-- process's cgroup list (default /proc/self/cgroup): cgroup v2's line
-- "0::/path" (files under root), and on hybrid systems cgroup v1's
-- "N:cpu,cpuacct:/path" (files under root/cpu); both count.
function M.cgroup_quota(root, self_file)
  root = root or "/sys/fs/cgroup"
  local f = io.open(self_file or "/proc/self/cgroup", "r")
  if not f then return nil end
  local v2_path, v1_path
  for line in f:lines() do
    local p = line:match("^0::(.*)$")
    if p then v2_path = p end
    local ctrls, q = line:match("^%d+:([^:]*):(.*)$")
    if ctrls and ("," .. ctrls .. ","):find(",cpu,", 1, true) then v1_path = q end
  end
  f:close()
  local a = v2_path and walk_up(root, v2_path, false)
  local b = v1_path and walk_up(root .. "/cpu", v1_path, true)
  if a and b then return math.min(a, b) end
  return a or b
end

-- The default n_jobs: affinity (else the online CPUs) capped by the quota.
function M.usable()
  local n = M.affinity_count()
  if not n or n < 1 then
    local _, online = M.online()
    n = math.max(online, 1)
  end
  local q = M.cgroup_quota()
  if q and q < n then n = q end
  return n
end

return M
