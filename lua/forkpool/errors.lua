-- forkpool.errors: the error objects forkpool raises.
--
-- Every failure of a map is raised as a table with a `kind` field and a
-- readable __tostring; see README.md "Errors" for the full table of kinds
-- and fields.  Argument errors (a wrong option, a non-function) are raised
-- as plain strings, like Lua's own argument errors.

local M = {}

local KINDS = {
  task = true, worker_init = true, worker_exit = true, worker_died = true,
  timeout = true, marshal = true, interrupted = true, closed = true, spawn = true,
}
M.KINDS = KINDS

local mt = {}
mt.__index = mt

local function describe_worker(e)
  local parts = {}
  if e.worker_id then parts[#parts + 1] = "worker " .. e.worker_id end
  if e.pid then parts[#parts + 1] = "pid " .. e.pid end
  if #parts == 0 then return "" end
  return " (" .. table.concat(parts, ", ") .. ")"
end

local HEADINGS = {
  task = "error in task", worker_init = "error in worker_init",
  worker_exit = "error in worker_exit", worker_died = "worker died",
  timeout = "timeout", marshal = "cannot send value", interrupted = "interrupted",
  closed = "pool is closed", spawn = "cannot start worker",
}

function mt.__tostring(e)
  local s = "forkpool: " .. HEADINGS[e.kind] .. describe_worker(e)
  if e.index then s = s .. " on item " .. e.index end
  if e.message then s = s .. ": " .. e.message end
  if e.traceback then s = s .. "\n" .. e.traceback end
  return s
end

-- new(kind, fields): an error object; fields are copied in.
function M.new(kind, fields)
  assert(KINDS[kind], "unknown error kind")
  local e = setmetatable({}, mt)
  if fields then for k, v in pairs(fields) do e[k] = v end end
  e.kind = kind
  return e
end

-- is_error(value [, kind]): whether value is a forkpool error (of that kind).
function M.is_error(v, kind)
  if getmetatable(v) ~= mt then return false end
  return kind == nil or v.kind == kind
end

-- Describe how a worker ended, from the engine's death table.
function M.death_message(d)
  if d.signal then return "killed by signal " .. d.signal .. "(-" .. d.signo .. ")" end
  if d.exit_code then return "exited with code " .. d.exit_code end
  return "exited (its status was reaped by someone else)"
end

M.metatable = mt
return M
