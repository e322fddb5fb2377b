-- forkpool.options: every option schema and the one checker for them (the
-- pool's, the calls', the progress bar's), and the checks of the calls'
-- other arguments (items, apply's argument list, cpu_ids).  Errors are
-- plain strings naming the option, as Lua's own argument errors do:
--   bad option 'n_jobs' to 'new' (positive integer expected, got string)

local floor, huge = math.floor, math.huge
local type, pairs, tostring = type, pairs, tostring

local M = {}

local function is_posint(v) return type(v) == "number" and v >= 1 and v == floor(v) and v < 2^53 end
M.is_posint = is_posint

-- Each schema names one of these per option.
local CHECKS = {
  table = function(v) return type(v) == "table" end,
  string = function(v) return type(v) == "string" end,
  boolean = function(v) return type(v) == "boolean" end,
  ["function"] = function(v) return type(v) == "function" end,
  any = function() return true end,
  ["positive integer"] = is_posint,
  ["non-negative integer"] = function(v)
    return type(v) == "number" and v >= 0 and v == floor(v) and v < 2^53
  end,
  ["positive number"] = function(v) return type(v) == "number" and v > 0 and v == v end,
  ["positive finite number"] = function(v) return type(v) == "number" and v > 0 and v < huge end,
  ["non-negative number"] = function(v) return type(v) == "number" and v >= 0 and v < huge end,
  ["file handle"] = function(v) return io.type(v) == "file" end,
  -- progress.new takes any object with write and flush methods
  stream = function(v)
    local t = io.type(v)
    if t then return t == "file" end
    return (type(v) == "table" or type(v) == "userdata") and v.write ~= nil and v.flush ~= nil
  end,
}
-- How a check is named in messages, where that differs from its key.
local SHOWN = { ["positive finite number"] = "positive number" }

-- What a value "got": its type, except that a number given where a number
-- is wanted (so its value is what is wrong) is shown by value, and a
-- closed file says so.
local function got(v, want)
  if type(v) == "number" and (want:find("number") or want:find("integer")) then return tostring(v) end
  return io.type(v) or type(v)
end
M.got = got

-- check(opts, schema, fname, level [, prefix]) -> opts ({} for nil).
-- Raises for a non-table, unknown keys and wrong types, naming the option
-- (prefix + key) and the function; level as for error(), counted from the
-- caller of check.
function M.check(opts, schema, fname, level, prefix)
  level = level + 1
  if opts == nil then return {} end
  prefix = prefix or ""
  if type(opts) ~= "table" then
    error(("bad argument to '%s' (options table expected, got %s)"):format(fname, type(opts)), level)
  end
  for k, v in pairs(opts) do
    local want = schema[k]
    if not want then
      error(("bad option '%s%s' to '%s' (unknown option)"):format(prefix, tostring(k), fname), level)
    end
    if v ~= nil and not CHECKS[want](v) then
      error(("bad option '%s%s' to '%s' (%s expected, got %s)"):format(prefix, k, fname,
        SHOWN[want] or want, got(v, want)), level)
    end
  end
  return opts
end

M.POOL = {
  n_jobs = "positive integer", keep_alive = "boolean", use_worker_state = "boolean",
  pass_worker_id = "boolean", shared_objects = "any", worker_lifespan = "positive integer",
  order_tasks = "boolean", cpu_ids = "table", enable_insights = "boolean",
  worker_max_memory = "positive integer", idle_timeout = "positive number",
  close_fds = "any", -- true or a list of fds to keep (checked by core.new)
  -- fork hooks, run around every worker fork (forkpool.spawn; the
  -- child's in the worker, engine/fp_worker.c)
  before_fork = "function", after_fork_parent = "function", after_fork_child = "function",
}
-- Options of every call that runs tasks.
M.RUN = {
  worker_init = "function", worker_exit = "function",
  max_retries = "non-negative integer", task_timeout = "positive number",
  worker_init_timeout = "positive number", worker_exit_timeout = "positive number",
}
-- ... plus those of the map family (chunking, progress).
M.MAP = {
  chunk_size = "positive integer", n_splits = "positive integer",
  iterable_len = "non-negative integer", max_tasks_active = "positive integer",
  progress_bar = "boolean", progress_bar_options = "table",
}
for k, v in pairs(M.RUN) do M.MAP[k] = v end
-- ... and map_reduce's initial value.
M.REDUCE = { initial = "any" }
for k, v in pairs(M.MAP) do M.REDUCE[k] = v end
-- ... and apply_async's callbacks.
M.ASYNC = { callback = "function", error_callback = "function" }
for k, v in pairs(M.RUN) do M.ASYNC[k] = v end
-- progress_bar_options, as the map family takes them.
M.PROGRESS = {
  desc = "string", stream = "file handle", min_interval = "positive finite number",
  width = "positive integer",
}
-- forkpool.progress.new's own options (the bar as a library).
M.PROGRESS_NEW = {
  total = "non-negative number", desc = "string", stream = "stream",
  min_interval = "positive finite number", tty = "boolean", now = "function",
  width = "positive integer",
}

-- The options of a call of the map family (or apply, apply_async: schema).
function M.check_call(opts, schema, fname, level)
  opts = M.check(opts, schema, fname, level + 1)
  local po = opts.progress_bar_options
  if po then M.check(po, M.PROGRESS, fname, level + 1, "progress_bar_options.") end
  return opts
end

-- The number of items in an items table: items.n when it is set (the
-- table.pack convention: items 1..n, holes included), else #items.  A table
-- with no items 1..n but other keys is a mistake (a map of a record, or of
-- a set): raise instead of mapping nothing.  Raises at `level`.
function M.items_length(t, fname, level)
  level = level + 1
  local n = rawget(t, "n")
  if n ~= nil then
    if type(n) ~= "number" or n < 0 or n ~= floor(n) or n >= 2^53 then
      error(("bad argument #2 to '%s' (items.n must be a non-negative integer, got %s)")
        :format(fname, type(n) == "number" and tostring(n) or type(n)), level)
    end
    return n
  end
  local len = #t
  if len == 0 then
    local k = next(t)
    if k ~= nil then
      error(("bad argument #2 to '%s' (a sequence of items expected, but the table has no "
        .. "item 1 and has the key %s: give an array, or set items.n)")
        :format(fname, type(k) == "string" and ("'" .. k .. "'") or tostring(k)), level)
    end
  end
  return len
end

-- The task function and the items of a map-family call.  Returns the
-- items' count (nil for an iterator of unknown length).
function M.check_map_args(fn, source, opts, fname, level)
  level = level + 1
  if type(fn) ~= "function" then
    error(("bad argument #1 to '%s' (function expected, got %s)"):format(fname, type(fn)), level)
  end
  if type(source) == "table" then return M.items_length(source, fname, level) end
  if type(source) ~= "function" then
    error(("bad argument #2 to '%s' (table or iterator function expected, got %s)")
      :format(fname, type(source)), level)
  end
  return opts.iterable_len
end

-- apply's argument list, as the one item of a starred job.
function M.check_args(args, fname, level)
  if type(args) ~= "table" and args ~= nil then
    error(("bad argument #2 to '%s' (table of arguments expected, got %s)"):format(fname, type(args)),
      level + 1)
  end
  return { args or {} }
end

-- cpu_ids: one entry for all workers, or one per worker; each entry a CPU
-- id or a list of ids, all online.  Returns per-worker lists.
function M.cpu_ids(ids, n, level)
  level = level + 1
  local online, _, s = require("forkpool.cpus").online()
  if #ids ~= 1 and #ids ~= n then
    error(("bad option 'cpu_ids' to 'new' (%d entries for %d workers: give one entry, or one per worker)")
      :format(#ids, n), level)
  end
  local per = {}
  for i, e in ipairs(ids) do
    local list = type(e) == "table" and e or { e }
    for _, id in ipairs(list) do
      if type(id) ~= "number" or id ~= floor(id) or not online[id] then
        error(("bad option 'cpu_ids' to 'new' (invalid CPU id %s: online CPUs are %s)")
          :format(tostring(id), s), level)
      end
    end
    per[i] = list
  end
  if #ids == 1 then for w = 2, n do per[w] = per[1] end end
  return per
end

return M
