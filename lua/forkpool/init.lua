-- forkpool: parallel map for LuaJIT on forked worker processes.
--
--   local forkpool = require "forkpool"
--   local pool = forkpool.new{ n_jobs = 4, keep_alive = true }
--   local squares = pool:map(function(x) return x * x end, items)
--   pool:close()
--
-- This file is the policy layer: option checking, the scheduler that hands
-- chunks of items to workers and reacts to what comes back (results,
-- errors, deaths, timeouts, Ctrl-C), and the error objects.  The engine
-- (forkpool.core, engine/*.c) forks the workers, moves records through
-- shared memory and encodes values.
--
-- Bookkeeping invariants:
--   * self._workers[w] describes slot w.  rec.pid is set while a process
--     lives in the slot (until its "exit" event has been handled).
--   * rec.chunks lists the chunks sent to that process and not yet
--     answered; every chunk gets exactly one answer, or the process dies
--     and its chunks are requeued or given up.
--   * While a job runs, failures are stored in job.err (never raised from
--     the middle of event handling), so the bookkeeping above stays true;
--     the job's loop raises job.err after cleaning up.

local core = require "forkpool.core"
local errors = require "forkpool.errors"
local worker = require "forkpool.worker"
local ffi = require "ffi"

local ok_tnew, table_new = pcall(require, "table.new")
if not ok_tnew then table_new = function() return {} end end

pcall(ffi.cdef, "int getpid(void);")
local getpid = ffi.C.getpid

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
-- How long a wait may sleep before timeouts are looked at again.
local MAX_SLEEP = 1.0

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

local CHECKS = {
  ["positive integer"] = function(v)
    return type(v) == "number" and v >= 1 and v == floor(v) and v < 2^53
  end,
  ["non-negative integer"] = function(v)
    return type(v) == "number" and v >= 0 and v == floor(v) and v < 2^53
  end,
  ["positive number"] = function(v) return type(v) == "number" and v > 0 and v == v end,
  boolean = function(v) return type(v) == "boolean" end,
  ["function"] = function(v) return type(v) == "function" end,
  any = function() return true end,
}

-- check_opts(opts, spec, fname, level): raise for unknown keys and wrong
-- types, naming the option: bad option 'n_jobs' to 'new' (positive integer
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
        (type(v) == "number" and want:find("number") or want:find("integer")) and type(v) == "number"
          and tostring(v) or type(v)), level + 1)
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
  max_retries = "non-negative integer", task_timeout = "positive number",
  worker_init_timeout = "positive number", worker_exit_timeout = "positive number",
}

------------------------------------------------------------------------
-- Shared arrays
------------------------------------------------------------------------

local uintptr_t = ffi.typeof("uintptr_t")

local function free_shared(p)
  core.shared_free(tonumber(ffi.cast(uintptr_t, p)))
end

-- The pointer type "T *" for a ctype, by its name where it has one: busted
-- (and other test harnesses) wrap ffi.typeof with a cache keyed by the
-- declaration string alone, under which ffi.typeof("$ *", ct) returns the
-- type of its first call whatever ct is.
local function pointer_type(ctype)
  local name = tostring(ctype):match("^ctype<(.*)>$")
  if name then
    local ok, pt = pcall(ffi.typeof, name .. " *")
    if ok and tostring(pt) == "ctype<" .. name .. " *>" then return pt end
  end
  return ffi.typeof("$ *", ctype)
end

-- forkpool.shared_array(ctype, n) -> pointer to n zeroed elements of ctype
-- in shared memory: the parent and every worker (even kept-alive ones
-- started earlier) see the same memory at the same address, without
-- copies.  Index it from 0 like any FFI array.  Freed when the parent's
-- pointer is garbage-collected: keep it referenced while workers use it.
function M.shared_array(ct, n)
  local ok, ctype = pcall(ffi.typeof, ct)
  if not ok then
    error(("bad argument #1 to 'shared_array' (C type expected: %s)"):format(tostring(ctype)), 2)
  end
  local esize = ffi.sizeof(ctype)
  if not esize or esize == 0 then
    error("bad argument #1 to 'shared_array' (C type of known, non-zero size expected)", 2)
  end
  if not CHECKS["positive integer"](n) then
    error(("bad argument #2 to 'shared_array' (positive integer expected, got %s)"):format(
      type(n) == "number" and tostring(n) or type(n)), 2)
  end
  local addr, msg = core.shared_alloc(esize * n)
  if not addr then error("forkpool.shared_array: " .. msg, 2) end
  local p = ffi.cast(pointer_type(ctype), ffi.cast("void *", addr))
  return ffi.gc(p, free_shared)
end

------------------------------------------------------------------------
-- The pool
------------------------------------------------------------------------

local Pool = {}
Pool.__index = Pool

local function check_self(self, fname)
  if getmetatable(self) ~= Pool then
    error(("bad self to '%s' (pool expected; use pool:%s(...))"):format(fname, fname), 3)
  end
  if self._owner ~= getpid() then
    error(("forkpool: '%s' called from inside a worker: a pool can only be used by the "
      .. "process that created it"):format(fname), 3)
  end
  if self._closed then
    error(errors.new("closed", { message = self._closed == "terminated"
      and "attempt to use a terminated pool" or "attempt to use a closed pool" }), 3)
  end
  if self._busy then
    error(("forkpool: '%s' called while the pool is busy (from a callback?)"):format(fname), 3)
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
    _workers = {},       -- [wid] = worker record, see spawn_worker
    _exit_results = {},
    _exit_timeout = nil, -- worker_exit_timeout of the latest map
    _job = 0,
    _restart = false,    -- a setting changed: restart workers at next map
    _closed = false,
    _busy = false,
  }, Pool)
  self._core = core.new(n, {
    cdata_kind = worker.cdata_kind,
    cdata_new = worker.cdata_new,
  })
  for w = 1, n do self._workers[w] = { chunks = {} } end
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

-- The module map is rebuilt only when package.loaded gained or lost entries
-- (or when asked: a value was refused, perhaps for a module loaded since).
local modmap_cache, modmap_size
local function get_modmap(fresh)
  local n = 0
  for _ in pairs(package.loaded) do n = n + 1 end
  if fresh or not modmap_cache or n ~= modmap_size then
    modmap_cache, modmap_size = build_modmap(), n
  end
  return modmap_cache
end

local function live_workers(self)
  local n = 0
  for w = 1, self._n do if self._workers[w].pid then n = n + 1 end end
  return n
end

local function empty_slot() return { chunks = {} } end

------------------------------------------------------------------------
-- Starting and killing workers
------------------------------------------------------------------------

-- Start a worker process in slot w for `job` (its function and items reach
-- the child through fork).  Returns nil or a spawn error object.
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
    return errors.new("spawn", { message = msg, worker_id = w, errno = errno })
  end
  self._workers[w] = {
    pid = pid, born_job = job.id, chunks = {}, dispatched = 0,
    fns = {}, -- functions installed by SETUP: {bytes=, id=}, most recent last
  }
  return nil
end

-- Kill the live workers for which pick(rec) is true (all when pick is nil)
-- and wait until they are reaped; no worker_exit.  Events that arrive
-- meanwhile are handled by on_event (may be nil).
local function kill_workers(self, pick, on_event)
  local c = self._core
  local victims = {}
  for w = 1, self._n do
    local rec = self._workers[w]
    if rec.pid and (not pick or pick(rec)) then
      c:kill(w, core.SIGKILL)
      rec.killed = rec.killed or { reason = "killed" }
      victims[w] = true
    end
  end
  local jobs = {}
  local function pending()
    for w in pairs(victims) do if self._workers[w].pid then return true end end
    return false
  end
  -- SIGKILL cannot be ignored: each wait returns as soon as one is reaped
  local deadline = core.now() + 30
  while pending() and core.now() < deadline do
    local kind, w, a, b, cnt, idx, value = c:poll(jobs, 1)
    if kind == "exit" then
      self._workers[w] = empty_slot()
    elseif kind == "exit_result" then
      self._exit_results[#self._exit_results + 1] = value
    elseif on_event and kind ~= "timeout" and kind ~= "eintr" and kind ~= "interrupted" then
      on_event(kind, w, a, b, cnt, idx, value)
    end
  end
end

------------------------------------------------------------------------
-- Jobs
------------------------------------------------------------------------

local function worker_error(kind, w, rec, index, err, extra)
  local f = {
    worker_id = w, pid = rec and rec.pid, index = (index and index > 0) and index or nil,
    message = err and err.message, traceback = err and err.traceback,
    value = err and err.value, path = err and err.path,
  }
  if extra then for k, v in pairs(extra) do f[k] = v end end
  return errors.new(kind, f)
end

local function fail(job, err)
  if not job.err then job.err = err end
end

local function death_info(w, death)
  return {
    worker_id = w, pid = death.pid, signal = death.signal, signo = death.signo,
    exit_code = death.exit_code, index = death.index, phase = death.phase,
  }
end

local function death_error(w, death, deaths)
  local where = death.phase == "worker_init" and " during worker_init"
    or death.phase == "worker_exit" and " during worker_exit" or ""
  local msg = errors.death_message(death) .. where
    .. (death.index and (" while running item " .. death.index) or "")
  if deaths and #deaths > 1 then
    local parts = {}
    for i, d in ipairs(deaths) do
      parts[i] = ("worker %d (pid %d) %s%s"):format(d.worker_id, d.pid, errors.death_message(d),
        d.index and (" on item " .. d.index) or "")
    end
    msg = msg .. "; " .. #deaths .. " deaths in all: " .. table.concat(parts, "; ")
  end
  return errors.new("worker_died", {
    worker_id = w, pid = death.pid, signal = death.signal, exit_code = death.exit_code,
    index = death.index, phase = death.phase, message = msg, deaths = deaths,
  })
end

-- Find and remove the chunk (job id, start) from a worker's list.
local function take_chunk(rec, jobid, start)
  for i, ch in ipairs(rec.chunks) do
    if ch.job.id == jobid and ch.start == start then
      table.remove(rec.chunks, i)
      return ch
    end
  end
  return nil
end

-- A worker keeps at most this many shipped functions.
local MAX_FNS = 4

-- The wire encoding of the job's function and worker_exit, made once per
-- job; equal bytes mean a worker already has exactly this function with
-- these upvalue values.
local function job_setup_bytes(self, job)
  if job.setup_bytes then return job.setup_bytes end
  local v = { fn = job.fn, exit = job.exit }
  local bytes, _, msg, path = self._core:encode(v, get_modmap())
  if not bytes then bytes, _, msg, path = self._core:encode(v, get_modmap(true)) end
  if not bytes then
    msg = msg:gsub("^%.", "")
    fail(job, errors.new("marshal", { message = "cannot send the task function: " .. msg
      .. "; pass such values through worker_init or shared_objects", path = path }))
    return nil
  end
  job.setup_bytes = bytes
  return bytes
end

-- The id under which worker w runs the job's function: the job itself for
-- a worker forked for it, else a function shipped now or earlier.  Returns
-- nil when it cannot be shipped now (lane full) or at all (job.err).
local function setup_worker(self, w, job)
  local rec = self._workers[w]
  if rec.born_job == job.id then return job.id end
  local bytes = job_setup_bytes(self, job)
  if not bytes then return nil end
  local fns = rec.fns
  for i, e in ipairs(fns) do
    if e.bytes == bytes then
      if i ~= #fns then table.remove(fns, i); fns[#fns + 1] = e end
      return e.id
    end
  end
  -- forget the least recently used function no queued chunk still needs
  local drop_at
  if #fns >= MAX_FNS then
    for i, e in ipairs(fns) do
      local used = false
      for _, ch in ipairs(rec.chunks) do if ch.fn == e.id then used = true end end
      if not used then drop_at = i; break end
    end
  end
  local ok, _, msg = self._core:send_setup(w, job.id, drop_at and fns[drop_at].id or 0, bytes)
  if ok == nil then
    fail(job, errors.new("marshal", { message = msg, worker_id = w }))
    return nil
  end
  if not ok then return nil end
  if drop_at then table.remove(fns, drop_at) end
  fns[#fns + 1] = { bytes = bytes, id = job.id }
  return job.id
end

-- The next chunk for worker w: a requeued one first, else the next slice.
local function next_chunk(self, job, w)
  local q = job.queue
  local rec = self._workers[w]
  local budget = self._lifespan and (self._lifespan - rec.dispatched) or math.huge
  if #q > 0 then
    if q[1].count <= budget then return table.remove(q, 1), true end
    return nil
  end
  local count = min(job.chunk_size, job.n - job.next + 1, budget)
  if count <= 0 then return nil end
  return { job = job, start = job.next, count = count, attempts = 0 }, false
end

local function dispatch(self, job)
  local c = self._core
  for w = 1, self._n do
    if job.err then return end
    if #job.queue == 0 and job.next > job.n then return end
    local rec = self._workers[w]
    if rec.pid and not rec.bye and not rec.killed and #rec.chunks < INFLIGHT then
      local ch, requeued = next_chunk(self, job, w)
      local fn = ch and setup_worker(self, w, job)
      if fn then
        ch.fn = fn
        local ok, _, msg, path
        if rec.born_job == job.id then
          ok = c:send_chunk(w, job.id, fn, ch.start, ch.count, nil, nil, job.timed)
        else
          ok, _, msg, path = c:send_chunk(w, job.id, fn, ch.start, ch.count, job.items,
            get_modmap(), job.timed)
          if ok == nil then
            fail(job, errors.new("marshal", { message = msg, path = path,
              index = tonumber((path or ""):match("^item%[(%d+)%]")) }))
            return
          end
        end
        if ok then
          rec.chunks[#rec.chunks + 1] = ch
          rec.dispatched = rec.dispatched + ch.count
          if not requeued then job.next = job.next + ch.count end
        elseif requeued then
          table.insert(job.queue, 1, ch)
        end
      elseif ch and requeued then
        table.insert(job.queue, 1, ch)
      end
    end
  end
end

-- Make sure every slot has a worker for this job (spawning where empty).
local function fill_workers(self, job)
  for w = 1, self._n do
    if not self._workers[w].pid then
      local err = spawn_worker(self, w, job)
      if err then
        fail(job, err)
        return
      end
    end
  end
end

-- Whether item index (of any job) is in a chunk the worker still holds.
local function holds_item(rec, index)
  if not index then return false end
  for _, ch in ipairs(rec.chunks) do
    if index >= ch.start and index < ch.start + ch.count then return true end
  end
  return false
end

-- The process in slot w is gone (event "exit").  Decide what it means for
-- the job: nothing (it said goodbye), a timeout we caused, or a death.
local function on_worker_exit(self, job, w, death)
  local rec = self._workers[w]
  self._workers[w] = empty_slot()
  -- its chunks of other jobs are answered by nobody now: forget them
  local held = {}
  for _, ch in ipairs(rec.chunks) do
    if ch.job == job then held[#held + 1] = ch end
  end
  if rec.killed then
    if rec.killed.reason == "timeout" then
      fail(job, errors.new("timeout", {
        worker_id = w, pid = death.pid, phase = rec.killed.phase, index = rec.killed.index,
        message = ("%s took longer than %gs%s; worker %d was killed"):format(
          rec.killed.phase == "task" and "task" or rec.killed.phase, rec.killed.limit,
          rec.killed.index and rec.killed.index > 0 and (" (item " .. rec.killed.index .. ")") or "", w),
      }))
    end
    return
  end
  if rec.bye and rec.bye ~= "init_failed" then
    -- a planned exit (lifespan, stop): nothing it held was lost
    for i = #held, 1, -1 do table.insert(job.queue, 1, held[i]) end
  elseif not rec.bye and rec.ready and death.phase ~= "worker_exit"
      and not holds_item(rec, death.index) then
    -- it died between items (waiting for work, or just after answering),
    -- holding nothing it had started: give back what was queued for it
    -- and replace it; such deaths still count against a runaway loop
    job.deaths[#job.deaths + 1] = death_info(w, death)
    if #job.deaths > (job.max_retries + 1) * self._n then
      fail(job, death_error(w, death, job.deaths))
      return
    end
    for i = #held, 1, -1 do table.insert(job.queue, 1, held[i]) end
  elseif not rec.bye then
    local info = death_info(w, death)
    job.deaths[#job.deaths + 1] = info
    if not rec.ready or job.max_retries == 0 then
      fail(job, death_error(w, death, job.deaths))
      return
    end
    -- retry what it held on a fresh worker, counting the chunk it ran
    local charged = false
    for _, ch in ipairs(held) do
      if death.index and death.index >= ch.start and death.index < ch.start + ch.count then
        ch.attempts = ch.attempts + 1
        charged = true
      end
    end
    if not charged and held[1] then held[1].attempts = held[1].attempts + 1 end
    for _, ch in ipairs(held) do
      if ch.attempts > job.max_retries then
        fail(job, death_error(w, death, job.deaths))
        return
      end
    end
    if #job.deaths > (job.max_retries + 1) * self._n then
      fail(job, death_error(w, death, job.deaths))
      return
    end
    for i = #held, 1, -1 do table.insert(job.queue, 1, held[i]) end
  end
  if job.running and not job.err and (#job.queue > 0 or job.next <= job.n) then
    local err = spawn_worker(self, w, job)
    if err then fail(job, err) end
  end
end

-- Handle one event of a running job.
local function handle_event(self, job, kind, w, ejob, start, count, index, value)
  local rec = self._workers[w]
  if kind == "results" then
    local ch = take_chunk(rec, ejob, start)
    if ch and ch.job == job and not value then job.done = job.done + count end
  elseif kind == "cancelled" then
    take_chunk(rec, ejob, start)
  elseif kind == "task_error" or kind == "marshal_error" then
    local ch = take_chunk(rec, ejob, start)
    if ch and ch.job == job then
      fail(job, worker_error(kind == "task_error" and "task" or "marshal", w, rec, index, value))
    end
  elseif kind == "setup_error" then
    fail(job, worker_error("marshal", w, rec, nil, value, {
      message = "cannot load the task function in worker " .. w .. ": " .. tostring(value and value.message),
    }))
  elseif kind == "init_error" then
    fail(job, worker_error("worker_init", w, rec, nil, value, { phase = "worker_init" }))
  elseif kind == "exit_error" then
    fail(job, worker_error("worker_exit", w, rec, nil, value, { phase = "worker_exit" }))
  elseif kind == "exit_result" then
    self._exit_results[#self._exit_results + 1] = value
  elseif kind == "ready" then
    rec.ready = true
  elseif kind == "bye" then
    rec.bye = value
  elseif kind == "exit" then
    on_worker_exit(self, job, w, ejob)
  elseif kind == "corrupt" then
    self._core:kill(w, core.SIGKILL)
    rec.killed = { reason = "corrupt" }
    fail(job, errors.new("marshal", { worker_id = w, pid = rec.pid, message = ejob }))
  elseif kind == "interrupted" then
    fail(job, errors.new("interrupted", { message = "interrupted by SIGINT" }))
  end
end

-- Look at the clocks of busy workers; kill those past a timeout.  Returns
-- how long the caller may sleep before the next deadline.
local function check_timeouts(self, job)
  if not (job.task_timeout or job.init_timeout or job.exit_timeout) then return -1 end
  local c = self._core
  local now = core.now()
  local sleep = MAX_SLEEP
  for w = 1, self._n do
    local rec = self._workers[w]
    if rec.pid and not rec.killed then
      local st = c:worker_status(w)
      local limit, since
      if st.phase == "task" and job.task_timeout then
        limit, since = job.task_timeout, st.item_since
      elseif st.phase == "worker_init" and job.init_timeout then
        limit, since = job.init_timeout, st.phase_since
      elseif st.phase == "worker_exit" and job.exit_timeout then
        limit, since = job.exit_timeout, st.phase_since
      end
      if limit and since > 0 then
        local left = since + limit - now
        if left <= 0 then
          c:kill(w, core.SIGKILL)
          rec.killed = { reason = "timeout", phase = st.phase, limit = limit,
            index = st.phase == "task" and st.index or nil }
        else
          sleep = min(sleep, left)
        end
      end
    end
  end
  return sleep
end

-- After a failed job: stop its work everywhere.  Kept-alive workers that
-- finished starting keep running (their queued chunks answer CANCELLED and
-- are drained later); all others are killed and reaped.
local function abandon_job(self, job, kill_everything)
  job.running = false
  for w = 1, self._n do
    if self._workers[w].pid then self._core:cancel(w, job.id) end
  end
  local function on_event(kind, w, ejob, start, count, index, value)
    handle_event(self, job, kind, w, ejob, start, count, index, value)
  end
  if kill_everything or not self._keep_alive then
    kill_workers(self, nil, on_event)
  else
    kill_workers(self, function(rec) return not rec.ready or rec.killed end, on_event)
  end
end

-- Wait for events until every worker is gone, collecting exit results.
-- Used by stop_and_join, close, restarts, and at the end of maps without
-- keep_alive.  Raises the first worker_exit error, timeout or death.
local function join_all(self)
  local c = self._core
  local job = { id = -1, queue = {}, deaths = {}, n = 0, next = 1, max_retries = 0,
    exit_timeout = self._exit_timeout }
  for w = 1, self._n do
    local rec = self._workers[w]
    if rec.pid and not rec.stopping then
      rec.stopping = true
      -- the stop record is tiny; a full lane only means replies are pending
      while self._workers[w].pid and not c:send_stop(w) do
        local kind, ew, a, b, cnt, idx, val = c:poll({}, 0.01)
        if kind ~= "timeout" and kind ~= "eintr" then
          handle_event(self, job, kind, ew, a, b, cnt, idx, val)
        end
      end
    end
  end
  while live_workers(self) > 0 do
    local sleep = check_timeouts(self, job)
    local kind, w, ejob, s, cnt, idx, val = c:poll({}, sleep)
    if kind == "exit" then
      on_worker_exit(self, job, w, ejob)
    elseif kind == "interrupted" then
      handle_event(self, job, kind)
      kill_workers(self, nil)
    elseif kind ~= "timeout" and kind ~= "eintr" then
      handle_event(self, job, kind, w, ejob, s, cnt, idx, val)
    end
  end
  if job.err then error(job.err, 0) end
end

local function run_job(self, job)
  fill_workers(self, job)
  local c = self._core
  local jobs = { [job.id] = job.results }
  while job.done < job.n and not job.err do
    dispatch(self, job)
    if job.err then break end
    local kind, w, ejob, start, count, index, value = c:poll(jobs, check_timeouts(self, job))
    if kind ~= "timeout" and kind ~= "eintr" then
      handle_event(self, job, kind, w, ejob, start, count, index, value)
    end
  end
end

-- Run fn with SIGINT turned into an "interrupted" event, restoring the
-- previous handler afterwards.
local function guarded(self, fn, ...)
  self._busy = true
  local armed = self._core:sigint_guard(true)
  local ok, err = pcall(fn, ...)
  if armed then self._core:sigint_guard(false) end
  self._busy = false
  if not ok then error(err, 0) end
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

  guarded(self, function()
    if self._restart and live_workers(self) > 0 then join_all(self) end
    self._restart = false
    if live_workers(self) == 0 then self._exit_results = {} end
    self._exit_timeout = opts.worker_exit_timeout
    self._job = self._job + 1
    local job = {
      id = self._job, fn = fn, items = items, n = n, results = results,
      init = opts.worker_init, exit = opts.worker_exit,
      chunk_size = opts.chunk_size or max(1, ceil(n / (self._n * CHUNKS_PER_WORKER))),
      next = 1, done = 0, queue = {}, deaths = {},
      max_retries = opts.max_retries or 0,
      task_timeout = opts.task_timeout, timed = opts.task_timeout ~= nil,
      init_timeout = opts.worker_init_timeout, exit_timeout = opts.worker_exit_timeout,
      running = true,
    }
    local ok, err = pcall(run_job, self, job)
    if not ok then fail(job, err) end
    if job.err then
      local kill_everything = job.err.kind == "interrupted" or job.err.kind == "spawn"
        or not errors.is_error(job.err)
      local ok2, err2 = pcall(abandon_job, self, job, kill_everything)
      if not ok2 then error(err2, 0) end
      error(job.err, 0)
    end
    job.running = false
    if not self._keep_alive then join_all(self) end
  end)
  return results
end

-- pool:stop_and_join(): stop the workers gracefully (worker_exit runs,
-- exit results are collected).  The pool stays usable.
function Pool:stop_and_join()
  check_self(self, "stop_and_join")
  guarded(self, join_all, self)
end

-- pool:terminate(): kill the workers now, no worker_exit; the pool is
-- closed afterwards.
function Pool:terminate()
  if getmetatable(self) ~= Pool then error("bad self to 'terminate' (pool expected)", 2) end
  if self._closed then return end
  check_self(self, "terminate")
  self._busy = true
  local ok, err = pcall(kill_workers, self, nil)
  self._core:close()
  self._closed = "terminated"
  self._busy = false
  if not ok then error(err, 0) end
end

-- pool:close(): stop_and_join, then release everything.  Closing twice is
-- allowed; any other use afterwards raises a "closed" error.  The workers
-- are reaped even when worker_exit fails or times out (the error is raised
-- after everything is released).
function Pool:close()
  if getmetatable(self) ~= Pool then error("bad self to 'close' (pool expected)", 2) end
  if self._closed then return end
  check_self(self, "close")
  local ok, err = pcall(guarded, self, join_all, self)
  self._core:close()
  self._closed = "closed"
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
  return ("forkpool.Pool(%d workers%s)"):format(self._n, self._closed and ", " .. self._closed or "")
end

M.Pool = Pool
return M
