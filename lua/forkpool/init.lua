-- forkpool: parallel map for LuaJIT on forked worker processes.
--
--   local forkpool = require "forkpool"
--   local pool = forkpool.new{ n_jobs = 4, keep_alive = true }
--   local squares = pool:map(function(x) return x * x end, items)
--   pool:close()
--
-- This file is the thin policy layer: option checking, the scheduler that
-- hands chunks of items to workers and reacts to what comes back, and the
-- error objects.  The engine (forkpool.core, engine/*.c) forks the workers,
-- moves records through shared memory and encodes values.

local core = require "forkpool.core"
local errors = require "forkpool.errors"
local worker = require "forkpool.worker"

local ok_tnew, table_new = pcall(require, "table.new")
if not ok_tnew then table_new = function() return {} end end

local floor, ceil, max, min = math.floor, math.ceil, math.max, math.min
local type, pairs, tostring = type, pairs, tostring

local M = {}
M.is_error = errors.is_error
M._VERSION = "forkpool scm"

-- How many chunks a worker holds at once: one running, one queued, so it
-- never waits for the parent between chunks.
local INFLIGHT = 2
-- Default chunking: about this many chunks per worker (mpire's rule).
local CHUNKS_PER_WORKER = 64

------------------------------------------------------------------------
-- Argument checking
------------------------------------------------------------------------

local function online_cpus()
  local f = io.open("/sys/devices/system/cpu/online", "r")
  if f then
    local s = f:read("*l")
    f:close()
    local n = 0
    for part in (s or ""):gmatch("[^,]+") do
      local a, b = part:match("^(%d+)%-(%d+)$")
      if a then n = n + tonumber(b) - tonumber(a) + 1
      elseif part:match("^%d+$") then n = n + 1 end
    end
    if n > 0 then return n end
  end
  return 1
end

local function is_posint(v)
  return type(v) == "number" and v >= 1 and v == floor(v) and v < 2^53
end

local CHECKS = {
  ["positive integer"] = is_posint,
  boolean = function(v) return type(v) == "boolean" end,
  ["function"] = function(v) return type(v) == "function" end,
  any = function() return true end,
}

local function got(v)
  if type(v) == "number" and CHECKS["positive integer"] then return tostring(v) end
  return type(v)
end

-- check_opts(opts, spec, fname): raise for unknown keys and wrong types,
-- naming the option: bad option 'n_jobs' to 'new' (positive integer
-- expected, got string).
local function check_opts(opts, spec, fname, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(("bad argument to '%s' (options table expected, got %s)"):format(fname, type(opts)), level + 1)
  end
  for k, v in pairs(opts) do
    local want = spec[k]
    if not want then
      error(("bad option '%s' to '%s' (unknown option)"):format(tostring(k), fname), level + 1)
    end
    if v ~= nil and not CHECKS[want](v) then
      error(("bad option '%s' to '%s' (%s expected, got %s)"):format(k, fname, want,
        want == "positive integer" and type(v) == "number" and tostring(v) or type(v)), level + 1)
    end
  end
  return opts
end

local POOL_OPTS = {
  n_jobs = "positive integer", keep_alive = "boolean", use_worker_state = "boolean",
  pass_worker_id = "boolean", shared_objects = "any", worker_lifespan = "positive integer",
}
local MAP_OPTS = {
  worker_init = "function", worker_exit = "function", chunk_size = "positive integer",
}

------------------------------------------------------------------------
-- The pool
------------------------------------------------------------------------

local Pool = {}
Pool.__index = Pool

local function closed_error()
  return errors.new("closed", { message = "attempt to use a closed pool" })
end

local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")
local getpid = ffi.C.getpid

local function check_self(self, fname)
  if getmetatable(self) ~= Pool then
    error(("bad self to '%s' (pool expected; use pool:%s(...))"):format(fname, fname), 3)
  end
  if self._owner ~= getpid() then
    error(("forkpool: '%s' called from inside a worker: a pool can only be used by the "
      .. "process that created it"):format(fname), 3)
  end
  if self._closed then error(closed_error(), 3) end
  if self._busy then
    error(("forkpool: '%s' called while the pool is busy (from a callback or a task?)"):format(fname), 3)
  end
end

-- forkpool.new(options)
function M.new(opts)
  opts = check_opts(opts, POOL_OPTS, "new", 2)
  local n = opts.n_jobs or online_cpus()
  local self = setmetatable({
    n_jobs = n,          -- read-only
    _owner = getpid(),
    _n = n,
    _keep_alive = opts.keep_alive or false,
    _use_state = opts.use_worker_state or false,
    _pass_id = opts.pass_worker_id or false,
    _shared = opts.shared_objects,
    _lifespan = opts.worker_lifespan,
    _workers = {},       -- [wid] = worker record (see spawn_worker)
    _exit_results = {},
    _job = 0,
    _restart = false,    -- a setting changed: restart workers at next map
    _closed = false,
    _busy = false,
  }, Pool)
  self._core = core.new(n, {
    cdata_kind = worker.cdata_kind,
    cdata_new = worker.cdata_new,
  })
  for w = 1, n do self._workers[w] = { inflight = 0 } end
  return self
end

-- Values reachable from package.loaded travel by name: modules themselves
-- ("cjson"), then their fields ("string\0format").  _G contributes only C
-- functions: a user's global table or Lua function must travel by value,
-- not as the worker's stale copy.
local function build_modmap()
  local m = {}
  for name, mod in pairs(package.loaded) do
    local t = type(mod)
    if (t == "table" or t == "function" or t == "userdata") and m[mod] == nil then
      m[mod] = name
    end
  end
  for name, mod in pairs(package.loaded) do
    if type(mod) == "table" then
      local is_g = (mod == _G)
      for k, v in pairs(mod) do
        local t = type(v)
        if type(k) == "string" and m[v] == nil and (t == "function" or t == "table" or t == "userdata") then
          if not is_g or (t == "function" and debug.getinfo(v, "S").what == "C") then
            m[v] = name .. "\0" .. k
          end
        end
      end
    end
  end
  return m
end

local function live_workers(self)
  local n = 0
  for w = 1, self._n do if self._workers[w].pid then n = n + 1 end end
  return n
end

-- Start a worker process in slot w for `job` (its function and items reach
-- the child through fork).  Raises a spawn error on failure.
local function spawn_worker(self, w, job)
  local ctx = {
    wid = w, job = job.id, fn = job.fn, items = job.items,
    init = job.init, exit = job.exit,
    shared = self._shared, has_shared = self._shared ~= nil,
    use_state = self._use_state, pass_id = self._pass_id,
    lifespan = self._lifespan,
    make_runner = worker.make_runner,
    cdata_kind = worker.cdata_kind, cdata_new = worker.cdata_new,
  }
  local pid, msg, errno = self._core:spawn(w, ctx)
  if not pid then
    error(errors.new("spawn", { message = msg, worker_id = w, errno = errno }), 0)
  end
  self._workers[w] = {
    pid = pid, born_job = job.id, inflight = 0, dispatched = 0,
    bye = nil, has_job = { [job.id] = true },
  }
  return pid
end

local function new_generation(self)
  if live_workers(self) == 0 then self._exit_results = {} end
end

-- Ship the job's function (and its worker_exit) to a worker that was not
-- forked for this job.
local function setup_worker(self, w, job)
  local rec = self._workers[w]
  if rec.has_job[job.id] then return end
  job.modmap = job.modmap or build_modmap()
  local ok, kind, msg, path = self._core:send_setup(w, {
    job = job.id, fn = job.fn, exit = job.exit, set_exit = true,
  }, job.modmap)
  if ok == nil then
    error(errors.new("marshal", { message = "cannot send the task function: " .. msg
      .. "; pass such values through worker_init or shared_objects", path = path }), 0)
  end
  if not ok then
    error(errors.new("marshal", { message = "task lane full while sending the function" }), 0)
  end
  rec.has_job[job.id] = true
end

-- Kill the live workers for which pick(rec) is true (all when pick is nil)
-- and reap them; no worker_exit.  Used by terminate(), after failures of
-- pools without keep_alive, and for workers still starting when a map fails.
local function kill_workers(self, pick)
  local c = self._core
  local victims = {}
  for w = 1, self._n do
    local rec = self._workers[w]
    if rec.pid and (not pick or pick(rec)) then
      c:kill(w, core.SIGKILL)
      victims[w] = true
    end
  end
  local jobs = {}
  local function pending()
    for w in pairs(victims) do if self._workers[w].pid then return true end end
    return false
  end
  -- SIGKILL cannot be ignored: each poll returns as soon as one is reaped
  local deadline = os.time() + 30
  while pending() and os.time() <= deadline do
    local kind, w, _, _, _, _, value = c:poll(jobs, 1)
    local rec = w and self._workers[w]
    if kind == "exit" then
      self._workers[w] = { inflight = 0 }
    elseif kind == "results" or kind == "cancelled" or kind == "task_error"
        or kind == "marshal_error" then
      rec.inflight = rec.inflight - 1
    elseif kind == "exit_result" then
      self._exit_results[#self._exit_results + 1] = value
    elseif kind == "ready" then
      rec.ready = true
    elseif kind == "bye" then
      rec.bye = value
    end
  end
end

local function kill_all(self) return kill_workers(self, nil) end

local function worker_error(kind, w, rec, index, err, extra)
  local f = {
    worker_id = w, pid = rec and rec.pid, index = (index and index > 0) and index or nil,
    message = err and err.message, traceback = err and err.traceback,
    value = err and err.value, path = err and err.path,
  }
  if extra then for k, v in pairs(extra) do f[k] = v end end
  return errors.new(kind, f)
end

-- The death of worker w became known (event "exit").  Returns an error
-- object when the death was not expected (no BYE before it), nil otherwise.
local function on_exit(self, w, death)
  local rec = self._workers[w]
  self._workers[w] = { inflight = 0 }
  if rec.bye then return nil end
  local where = death.phase == "worker_init" and " during worker_init"
    or death.phase == "worker_exit" and " during worker_exit" or ""
  return errors.new("worker_died", {
    worker_id = w, pid = death.pid, signal = death.signal, exit_code = death.exit_code,
    index = death.index, phase = death.phase,
    message = errors.death_message(death) .. where
      .. (death.index and (" while running item " .. death.index) or ""),
  })
end

-- Events left over from before this map (replies to chunks of cancelled
-- jobs, workers that died while idle): take what is there now, without
-- waiting.  Dead workers are replaced by fill_workers.
local function drain_idle(self)
  local jobs = {}
  while true do
    local kind, w, ejob, _, _, _, value = self._core:poll(jobs, 0)
    if kind == "timeout" then return end
    local rec = w and self._workers[w]
    if kind == "exit" then
      self._workers[w] = { inflight = 0 }
    elseif kind == "results" or kind == "cancelled" or kind == "task_error"
        or kind == "marshal_error" then
      rec.inflight = rec.inflight - 1
    elseif kind == "exit_result" then
      self._exit_results[#self._exit_results + 1] = value
    elseif kind == "bye" then
      rec.bye = value
    elseif kind == "ready" then
      rec.ready = true
    elseif kind == "corrupt" then
      self._core:kill(w, core.SIGKILL)
    end
  end
end

-- After a failed job: stop its work everywhere, keeping kept-alive workers
-- (their queued chunks answer CANCELLED and are drained by later polls);
-- without keep_alive, the workers are killed.
local function abandon_job(self, job)
  job.cancelled = true
  for w = 1, self._n do
    if self._workers[w].pid then self._core:cancel(w, job.id) end
  end
  if not self._keep_alive then
    kill_all(self)
  else
    -- workers still in worker_init were started for this map only
    kill_workers(self, function(rec) return not rec.ready end)
  end
end

-- Chunk size for the next chunk of worker w.
local function next_count(self, job, w)
  local count = min(job.chunk_size, job.n - job.next + 1)
  if self._lifespan then
    local rec = self._workers[w]
    count = min(count, self._lifespan - rec.dispatched)
  end
  return count
end

local function dispatch(self, job)
  local c = self._core
  for w = 1, self._n do
    if job.next > job.n then return end
    local rec = self._workers[w]
    if rec.pid and not rec.bye and rec.inflight < INFLIGHT then
      local count = next_count(self, job, w)
      if count > 0 then
        setup_worker(self, w, job)
        local ok, kind, msg, path
        if rec.born_job == job.id then
          ok = c:send_chunk(w, job.id, job.next, count)
        else
          job.modmap = job.modmap or build_modmap()
          ok, kind, msg, path = c:send_chunk(w, job.id, job.next, count, job.items, job.modmap)
          if ok == nil then
            error(errors.new("marshal", { message = msg, path = path,
              index = tonumber((path or ""):match("^item%[(%d+)%]")) }), 0)
          end
        end
        if ok then
          rec.inflight = rec.inflight + 1
          rec.dispatched = (rec.dispatched or 0) + count
          job.next = job.next + count
        end
      end
    end
  end
end

-- Make sure every slot has a worker for this job (spawning where empty).
local function fill_workers(self, job)
  for w = 1, self._n do
    local rec = self._workers[w]
    if not rec.pid then spawn_worker(self, w, job) end
  end
end

-- Handle one event of a running job.  Raises the job's error, if any.
local function handle_event(self, job, kind, w, ejob, start, count, index, value)
  local rec = self._workers[w]
  if kind == "results" then
    rec.inflight = rec.inflight - 1
    if ejob == job.id and not value then job.done = job.done + count end
  elseif kind == "cancelled" then
    rec.inflight = rec.inflight - 1
    if ejob == job.id and not job.cancelled then
      -- not ours to cancel: run it again (cannot happen today)
      error(errors.new("task", { message = "chunk was cancelled unexpectedly", worker_id = w }), 0)
    end
  elseif kind == "task_error" or kind == "marshal_error" then
    rec.inflight = rec.inflight - 1
    if ejob == job.id then
      error(worker_error(kind == "task_error" and "task" or "marshal", w, rec, index, value), 0)
    end
  elseif kind == "setup_error" then
    error(worker_error("marshal", w, rec, nil, value, {
      message = "cannot load the task function in worker " .. w .. ": " .. tostring(value and value.message),
    }), 0)
  elseif kind == "init_error" then
    error(worker_error("worker_init", w, rec, nil, value, { phase = "worker_init" }), 0)
  elseif kind == "exit_error" then
    job.exit_error = job.exit_error or worker_error("worker_exit", w, rec, nil, value, { phase = "worker_exit" })
  elseif kind == "exit_result" then
    self._exit_results[#self._exit_results + 1] = value
  elseif kind == "bye" then
    rec.bye = value
  elseif kind == "ready" then
    rec.ready = true
  elseif kind == "exit" then
    local err = on_exit(self, w, ejob)
    if err then error(err, 0) end
    if job.exit_error then error(job.exit_error, 0) end
    -- a lifespan restart or an idle worker gone: replace it while work remains
    if not job.cancelled and job.next <= job.n then spawn_worker(self, w, job) end
  elseif kind == "corrupt" then
    self._core:kill(w, core.SIGKILL)
    error(errors.new("marshal", { worker_id = w, pid = rec.pid, message = ejob }), 0)
  end
end

-- Wait for events until every worker is gone, collecting exit results.
-- Used by stop_and_join and at the end of maps without keep_alive.
local function join_all(self)
  local c = self._core
  local jobs = {}
  local exit_err
  for w = 1, self._n do
    local rec = self._workers[w]
    if rec.pid and not rec.stopping then
      rec.stopping = true
      -- the stop record is tiny; a full lane only means stale replies pending
      while not c:send_stop(w) do
        local kind, ew, ejob, s, cnt, idx, val = c:poll(jobs, 0.01)
        if kind and kind ~= "timeout" and kind ~= "eintr" then
          local ok, e = pcall(handle_event, self, { id = -1, n = 0, next = 1, done = 0, cancelled = true },
            kind, ew, ejob, s, cnt, idx, val)
          if not ok then exit_err = exit_err or e end
        end
      end
    end
  end
  local fake = { id = -1, n = 0, next = 1, done = 0, cancelled = true }
  while live_workers(self) > 0 do
    local kind, w, ejob, s, cnt, idx, val = c:poll(jobs, -1)
    if kind ~= "timeout" and kind ~= "eintr" then
      if kind == "exit" then
        local rec = self._workers[w]
        if not rec.bye and rec.stopping then
          -- died while stopping (in worker_exit, or killed)
          local death = ejob
          exit_err = exit_err or errors.new("worker_died", {
            worker_id = w, pid = death.pid, signal = death.signal, exit_code = death.exit_code,
            phase = death.phase,
            message = errors.death_message(death) .. " while stopping",
          })
        end
        self._workers[w] = { inflight = 0 }
      else
        local ok, e = pcall(handle_event, self, fake, kind, w, ejob, s, cnt, idx, val)
        if not ok then exit_err = exit_err or e end
        if fake.exit_error then exit_err = exit_err or fake.exit_error; fake.exit_error = nil end
      end
    end
  end
  if exit_err then error(exit_err, 0) end
end

local function run_job(self, job)
  fill_workers(self, job)
  local c = self._core
  local jobs = { [job.id] = job.results }
  while job.done < job.n do
    dispatch(self, job)
    local kind, w, ejob, start, count, index, value = c:poll(jobs, -1)
    if kind ~= "timeout" and kind ~= "eintr" then
      handle_event(self, job, kind, w, ejob, start, count, index, value)
    end
  end
end

-- pool:map(fn, items [, options]) -> results
function Pool:map(fn, items, opts)
  check_self(self, "map")
  if type(fn) ~= "function" then
    error(("bad argument #1 to 'map' (function expected, got %s)"):format(type(fn)), 2)
  end
  if type(items) ~= "table" then
    error(("bad argument #2 to 'map' (table expected, got %s)"):format(type(items)), 2)
  end
  opts = check_opts(opts, MAP_OPTS, "map", 2)
  local n = #items
  local results = table_new(n, 1)
  results.n = n
  if n == 0 then return results end

  self._busy = true
  local ok, err = pcall(function()
    drain_idle(self)
    if self._restart and live_workers(self) > 0 then join_all(self) end
    self._restart = false
    new_generation(self)
    self._job = self._job + 1
    local job = {
      id = self._job, fn = fn, items = items, n = n, results = results,
      init = opts.worker_init, exit = opts.worker_exit,
      chunk_size = opts.chunk_size or max(1, ceil(n / (self._n * CHUNKS_PER_WORKER))),
      next = 1, done = 0,
    }
    self._current = job
    local ok2, err2 = pcall(run_job, self, job)
    if not ok2 then
      abandon_job(self, job)
      error(err2, 0)
    end
    if not self._keep_alive then join_all(self) end
  end)
  self._busy = false
  self._current = nil
  if not ok then error(err, 0) end
  return results
end

-- pool:stop_and_join(): stop the workers gracefully (worker_exit runs,
-- exit results are collected).  The pool stays usable.
function Pool:stop_and_join()
  check_self(self, "stop_and_join")
  self._busy = true
  local ok, err = pcall(join_all, self)
  self._busy = false
  if not ok then error(err, 0) end
end

-- pool:terminate(): kill the workers now; no worker_exit.
function Pool:terminate()
  check_self(self, "terminate")
  self._busy = true
  local ok, err = pcall(kill_all, self)
  self._busy = false
  if not ok then error(err, 0) end
end

-- pool:close(): stop_and_join, then release everything.  Closing twice is
-- allowed; any other use afterwards raises a "closed" error.
function Pool:close()
  if getmetatable(self) ~= Pool then error("bad self to 'close' (pool expected)", 2) end
  if self._closed then return end
  local ok, err = true, nil
  if not self._busy then
    ok, err = pcall(join_all, self)
  end
  self._core:close()
  self._closed = true
  if not ok then error(err, 0) end
end

function Pool:get_exit_results()
  if getmetatable(self) ~= Pool then error("bad self to 'get_exit_results' (pool expected)", 2) end
  local out = {}
  for i = 1, #self._exit_results do out[i] = self._exit_results[i] end
  return out
end

local function setter(field, restart, what)
  return function(self, value)
    check_self(self, "set_" .. what)
    if value == nil and field ~= "_shared" then value = true end
    if field ~= "_shared" and type(value) ~= "boolean" then
      error(("bad argument #1 to 'set_%s' (boolean expected, got %s)"):format(what, type(value)), 2)
    end
    if self[field] ~= value then
      self[field] = value
      if restart then self._restart = true end
    end
  end
end

Pool.set_keep_alive = setter("_keep_alive", false, "keep_alive")
Pool.set_use_worker_state = setter("_use_state", true, "use_worker_state")
Pool.set_pass_worker_id = setter("_pass_id", true, "pass_worker_id")
Pool.set_shared_objects = setter("_shared", true, "shared_objects")

-- pool:worker_pids(): the pids of the live workers, by worker id.
function Pool:worker_pids()
  local out = {}
  for w = 1, self._n do out[w] = self._workers[w].pid end
  return out
end

function Pool:__tostring()
  return ("forkpool.Pool(%d workers%s)"):format(self._n, self._closed and ", closed" or "")
end

M.Pool = Pool
return M
