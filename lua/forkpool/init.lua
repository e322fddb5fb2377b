-- forkpool: parallel map for LuaJIT on forked worker processes.
--
--   local forkpool = require "forkpool"
--   local pool = forkpool.new{ n_jobs = 4, keep_alive = true }
--   local squares = pool:map(function(x) return x * x end, items)
--   pool:close()
--
-- This file is the API layer: option checking, the map family, async
-- results and lazy iterators.  forkpool.scheduler runs the parent's event
-- loop; the engine (forkpool.core, engine/*.c) forks the workers, moves
-- records through shared memory and encodes values.

-- Refuse clearly, before the C module is loaded, where forkpool cannot run
-- (under PUC Lua the module would fail with "undefined symbol: ...").
if type(jit) ~= "table" or type(jit.version_num) ~= "number" then
  error(("forkpool needs LuaJIT 2.1 (this is %s)"):format(tostring(_VERSION)), 0)
elseif jit.version_num < 20100 then
  error(("forkpool needs LuaJIT 2.1 (this is %s)"):format(tostring(jit.version)), 0)
elseif jit.os ~= "Linux" then
  error(("forkpool runs on Linux only (it needs fork, pidfd_open, futexes and "
    .. "shared anonymous memory; this is %s)"):format(tostring(jit.os)), 0)
end

local core = require "forkpool.core"
local cpus = require "forkpool.cpus"
local errors = require "forkpool.errors"
local worker = require "forkpool.worker"
local S = require "forkpool.scheduler"
-- loaded on first use (progress bars)
local progress = setmetatable({}, { __index = function(t, k)
  local m = require "forkpool.progress"
  setmetatable(t, { __index = m })
  return m[k]
end })
local ffi = require "ffi"

local ok_tnew, table_new = pcall(require, "table.new")
if not ok_tnew then table_new = function() return {} end end

pcall(ffi.cdef, "int getpid(void);")
local getpid = ffi.C.getpid

local floor, ceil, max = math.floor, math.ceil, math.max
local type, pairs, tostring = type, pairs, tostring

local M = {}
M.is_error = errors.is_error
M._VERSION = "forkpool 0.1.0"

-- Default chunking: about this many chunks per worker (mpire's rule).
local CHUNKS_PER_WORKER = 64

------------------------------------------------------------------------
-- Argument checking
------------------------------------------------------------------------

local CHECKS = {
  table = function(v) return type(v) == "table" end,
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
  order_tasks = "boolean", cpu_ids = "table", enable_insights = "boolean",
  worker_max_memory = "positive integer", idle_timeout = "positive number",
  close_fds = "any", -- true or a list of fds to keep (checked by core.new)
}
-- Options of every call that runs tasks.
local RUN_OPTS = {
  worker_init = "function", worker_exit = "function",
  max_retries = "non-negative integer", task_timeout = "positive number",
  worker_init_timeout = "positive number", worker_exit_timeout = "positive number",
}
-- ... plus those of the map family (chunking, progress).
local MAP_OPTS = {
  chunk_size = "positive integer", n_splits = "positive integer",
  iterable_len = "non-negative integer", max_tasks_active = "positive integer",
  progress_bar = "boolean", progress_bar_options = "table",
}
for k, v in pairs(RUN_OPTS) do MAP_OPTS[k] = v end
-- ... and apply_async's callbacks.
local ASYNC_OPTS = { callback = "function", error_callback = "function" }
for k, v in pairs(RUN_OPTS) do ASYNC_OPTS[k] = v end

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

-- The error any use of a closed or terminated pool raises.
local function closed_error(self)
  return errors.new("closed", { message = self._closed == "terminated"
    and "attempt to use a terminated pool" or "attempt to use a closed pool" })
end

local function check_self(self, fname)
  if getmetatable(self) ~= Pool then
    error(("bad self to '%s' (pool expected; use pool:%s(...))"):format(fname, fname), 3)
  end
  if self._owner ~= getpid() then
    error(("forkpool: '%s' called from inside a worker or a forked child: a pool can only be "
      .. "used by the process that created it (a forked child can make pools of its own)"):format(fname), 3)
  end
  if self._closed then error(closed_error(self), 3) end
  if self._busy then
    error(("forkpool: '%s' called while the pool is busy (from a callback?)"):format(fname), 3)
  end
end

-- cpu_ids: one entry for all workers, or one per worker; each entry a CPU
-- id or a list of ids, all online.  Returns per-worker lists.
local function check_cpu_ids(ids, n)
  local online, _, s = cpus.online()
  if #ids ~= 1 and #ids ~= n then
    error(("bad option 'cpu_ids' to 'new' (%d entries for %d workers: give one entry, or one per worker)")
      :format(#ids, n), 3)
  end
  local per = {}
  for i, e in ipairs(ids) do
    local list = type(e) == "table" and e or { e }
    for _, id in ipairs(list) do
      if type(id) ~= "number" or id ~= floor(id) or not online[id] then
        error(("bad option 'cpu_ids' to 'new' (invalid CPU id %s: online CPUs are %s)")
          :format(tostring(id), s), 3)
      end
    end
    per[i] = list
  end
  if #ids == 1 then for w = 2, n do per[w] = per[1] end end
  return per
end

-- forkpool.new(options)
function M.new(opts)
  opts = check_opts(opts, POOL_OPTS, "new", 2)
  local n = opts.n_jobs or cpus.usable()
  local self = setmetatable({
    n_jobs = n,          -- read-only
    _owner = getpid(),
    _n = n,
    _keep_alive = opts.keep_alive or false,
    _use_state = opts.use_worker_state or false,
    _pass_id = opts.pass_worker_id or false,
    _shared = opts.shared_objects,
    _lifespan = opts.worker_lifespan,
    _max_memory = opts.worker_max_memory, -- bytes of resident memory (scheduler.check_memory)
    _idle_timeout = opts.idle_timeout,    -- seconds (keep_alive pools)
    _order_tasks = opts.order_tasks or false,
    _cpus = opts.cpu_ids and check_cpu_ids(opts.cpu_ids, n),
    _insights = opts.enable_insights or false,
    _workers = {},       -- [wid] = worker record (see scheduler)
    _jobs = {}, _order = {}, _orphans = 0, _stages = {}, _rq = { head = 1, tail = 0 }, _active = 0,
    _job_ends = 0, _timed_jobs = 0, _progress_jobs = 0,
    _settle = {},        -- apply_async results whose job is over
    _asyncs = {},        -- outstanding apply_async results
    _imap = setmetatable({}, { __mode = "v" }), -- [1] = the open imap iterator
    _exit_results = {},
    _exit_timeout = nil, -- worker_exit_timeout of the latest call
    _job = 0,
    _restart = false,    -- a setting changed: restart workers when idle
    _closed = false,
    _busy = false,
  }, Pool)
  self._core = core.new(n, {
    cdata_kind = worker.cdata_kind,
    cdata_new = worker.cdata_new,
    unpack_into = worker.unpack_into,
  }, nil, opts.close_fds)
  for w = 1, n do self._workers[w] = S.empty_slot() end
  if self._insights then require("forkpool.insights").attach(self) end
  return self
end

-- The SIGINT guard (engine/fp_proc.c) is one per process, and guarded calls
-- nest: a callback run inside one may look at another result of its pool
-- (ready, get, wait) or wait on another pool.  The guard is armed by the
-- outermost guarded call, its wake-up fd points at the innermost pool
-- (whose poll must wake), and it is disarmed (the host's handler restored)
-- only when the outermost call ends.  guard_cores is the stack of the
-- pools' cores, innermost last.
local guard_cores, guard_depth = {}, 0

local function guard_push(c)
  c:sigint_guard(true)   -- arms, or points the armed guard at this pool
  guard_depth = guard_depth + 1
  guard_cores[guard_depth] = c
end

local function guard_pop()
  local c = guard_cores[guard_depth]
  guard_cores[guard_depth] = nil
  guard_depth = guard_depth - 1
  if guard_depth == 0 then
    c:sigint_guard(false)
  else
    local outer = guard_cores[guard_depth]
    outer:sigint_guard(true)
  end
end

-- Run fn with the pool busy and SIGINT turned into an "interrupted" event
-- (the previous handler is restored afterwards).  Nests: the busy flag is
-- restored to what it was, and the guard stays armed while an outer call
-- runs.
local function guarded(self, fn, ...)
  if self._closed then error(closed_error(self), 0) end
  local was_busy = self._busy
  guard_push(self._core)
  self._busy = true
  local ok, err = pcall(fn, ...)
  self._busy = was_busy
  guard_pop()
  if not ok then error(err, 0) end
  return err
end

-- Without keep_alive, workers stop once nothing is running.
local function maybe_stop(self)
  if not self._keep_alive and S.active(self) == 0 and S.live_workers(self) > 0 then
    S.join_all(self)
  end
end

-- What a failed job raises: its error object, or the user's own error
-- (an input iterator's, stored as { source_error = e }) as it was.
local function job_error_value(err)
  if type(err) == "table" and err.source_error ~= nil then return err.source_error end
  return err
end

-- Forget a failed job and stop its work.  Errors that leave the workers in
-- doubt (not a forkpool error, interrupted, spawn) kill them all.
local function abandon_failed(self, job)
  local err = job.err
  local user_error = type(err) == "table" and err.source_error ~= nil
  local kill_everything = not user_error and (not errors.is_error(err)
    or err.kind == "interrupted" or err.kind == "spawn")
  S.abandon(self, job, kill_everything)
end

-- Raise a failed job's error after cleaning up after it.
local function raise_job_error(self, job)
  abandon_failed(self, job)
  error(job_error_value(job.err), 0)
end

-- An imap of this pool still being consumed blocks every other call.  The
-- pool holds its iterator weakly: one dropped without close() is collected,
-- and its job is abandoned here.
local function check_no_open_imap(self, fname)
  local it = self._imap[1]
  if it and not it.closed and not it.job.finished and not it.job.err then
    error(("forkpool: '%s' called while an imap of this pool is still being consumed: "
      .. "finish it or call :close() on it first"):format(fname), 3)
  end
  self._imap[1] = nil
  -- an imap whose job failed and whose iterator has not raised it yet: the
  -- job is forgotten now (the iterator still raises its error), else it
  -- would count as running for ever
  if it and it.job.err and not it.job.finished then guarded(self, abandon_failed, self, it.job) end
  -- finalizers only count; the scan happens here, and only when one ran,
  -- so that thousands of outstanding apply_async jobs cost nothing per call
  if self._orphans == 0 then return end
  self._orphans = 0
  local dropped = {}   -- abandoning may compact _order: collect first
  for _, id in ipairs(self._order) do
    local job = self._jobs[id]
    if job and job.orphaned and not job.finished then dropped[#dropped + 1] = job end
  end
  for _, job in ipairs(dropped) do guarded(self, S.abandon, self, job, false) end
end

-- Build a job.  kind: see forkpool.scheduler; source: array or iterator.
-- The number of items in an items table: items.n when it is set (the
-- table.pack convention: items 1..n, holes included), else #items.  A table
-- with no items 1..n but other keys is a mistake (a map of a record, or of
-- a set): raise instead of mapping nothing.  Raises at `level`.
local function items_length(t, fname, level)
  local n = rawget(t, "n")
  if n ~= nil then
    if type(n) ~= "number" or n < 0 or n ~= floor(n) or n >= 2^53 then
      error(("bad argument #2 to '%s' (items.n must be a non-negative integer, got %s)")
        :format(fname, type(n) == "number" and tostring(n) or type(n)), level + 1)
    end
    return n
  end
  local len = #t
  if len == 0 then
    local k = next(t)
    if k ~= nil then
      error(("bad argument #2 to '%s' (a sequence of items expected, but the table has no "
        .. "item 1 and has the key %s: give an array, or set items.n)")
        :format(fname, type(k) == "string" and ("'" .. k .. "'") or tostring(k)), level + 1)
    end
  end
  return len
end

local function new_job(self, kind, fname, fn, source, opts, star)
  if type(fn) ~= "function" then
    error(("bad argument #1 to '%s' (function expected, got %s)"):format(fname, type(fn)), 3)
  end
  local lazy = kind == "imap" or kind == "imap_unordered"
  if type(source) ~= "table" and type(source) ~= "function" then
    error(("bad argument #2 to '%s' (table or iterator function expected, got %s)")
      :format(fname, type(source)), 3)
  end
  self._job = self._job + 1
  local job = {
    id = self._job, kind = kind, fn = fn, star = star or false,
    init = opts.worker_init, exit = opts.worker_exit,
    next = 1, done = 0, active = 0, pending = 0, chunk_no = 0, queue = {}, deaths = {},
    max_retries = opts.max_retries or 0,
    task_timeout = opts.task_timeout, timed = opts.task_timeout ~= nil or self._insights,
    init_timeout = opts.worker_init_timeout,
  }
  if type(source) == "table" then
    job.items = source
    job.total = items_length(source, fname, 3)
  else
    job.iter = source
    job.total = opts.iterable_len
  end
  local n = self._n
  local cs = opts.chunk_size
  if not cs and opts.n_splits then
    if not job.total then
      error(("bad option 'n_splits' to '%s' (the input's length is unknown: give iterable_len)")
        :format(fname), 3)
    end
    cs = max(1, ceil(job.total / opts.n_splits))
  end
  if not cs then
    if job.total then
      cs = max(1, ceil(job.total / (n * CHUNKS_PER_WORKER)))
    else
      cs, job.adaptive = 1, true
    end
  end
  job.chunk_size = cs
  if opts.max_tasks_active then
    if opts.max_tasks_active < cs then
      error(("bad option 'max_tasks_active' to '%s' (must be at least the chunk size, %d; got %d)")
        :format(fname, cs, opts.max_tasks_active), 3)
    end
    job.max_active = opts.max_tasks_active
  elseif job.iter or lazy then
    job.max_active = cs * n * S.INFLIGHT
  else
    job.max_active = math.huge
  end
  if job.adaptive and opts.max_tasks_active then job.adaptive = false end
  if kind == "map" then
    -- sized when the first chunks are out (see S.submit): filling a fresh
    -- 1e6-slot table page-faults for ~20 ms here, time the workers can use
    job.stage_size = job.total
  elseif kind == "apply" then
    job.stage = {}
  else
    -- consumed a chunk at a time: the C side stores each chunk's results
    -- as an array at stage[start] (see handle_record in engine/fp_lua.c)
    job.stage = { per_chunk = true }
  end
  if kind == "unordered" then job.out, job.out_n = table_new(job.total or 0, 1), 0 end
  if kind == "imap" then job.done_ranges, job.yield_next = {}, 1 end
  if kind == "imap_unordered" then job.ready_q, job.ready_pos, job.ready_tail = {}, 1, 1 end
  if self._order_tasks then
    job.wq = {}
    for w = 1, n do job.wq[w] = {} end
  end
  if opts.progress_bar then
    local po = opts.progress_bar_options or {}
    job.progress = progress.new{
      total = job.total, desc = po.desc, stream = po.stream, min_interval = po.min_interval,
      width = po.width,
    }
  end
  return job
end

-- Common start of every call: checks, restarts, exit-result generations.
local function begin_call(self, fname, opts, spec)
  check_self(self, fname)
  check_no_open_imap(self, fname)
  opts = check_opts(opts, spec, fname, 3)
  if opts.progress_bar_options then progress.check_options(opts.progress_bar_options, fname) end
  return opts
end

local function prepare(self, opts)
  -- workers that stopped after idle_timeout: reap them, keep their exit
  -- results (the workers started now do not begin a new generation)
  if self._idle_timeout and S.live_workers(self) > 0 then S.drain(self) end
  if S.active(self) == 0 then
    if self._restart and S.live_workers(self) > 0 then S.join_all(self) end
    self._restart = false
  end
  if S.live_workers(self) == 0 then
    if self._idle_exits then
      self._idle_exits = false
    else
      self._exit_results = {}
      if self._on_generation then self._on_generation() end
    end
  end
  if opts.worker_exit_timeout ~= nil or opts.worker_exit ~= nil then
    self._exit_timeout = opts.worker_exit_timeout
  end
end

local function drive(self, job)
  S.submit(self, job)
  while not job.finished and not job.err do S.step(self, -1) end
end

-- Run a job to completion (or failure) on the calling stack.  An error
-- raised on the way (rather than stored in job.err by the scheduler) fails
-- the job too, so that it is forgotten before the error goes on.
local function run_sync(self, job, opts)
  prepare(self, opts)
  local ok, e = pcall(drive, self, job)
  if not ok and job.pool then S.fail(job, { source_error = e }) end
  if job.err then raise_job_error(self, job) end
  if not ok then error(e, 0) end
  maybe_stop(self)
end

-- prepare and submit a job that the caller consumes later (imap,
-- apply_async; dispatch: hand out work to running workers now).  An error
-- raised on the way fails and forgets the job before it goes on.
local function start_job(self, job, opts, dispatch)
  local ok, e = pcall(guarded, self, function()
    prepare(self, opts)
    S.submit(self, job)
    if dispatch then S.dispatch(self) end
  end)
  if not ok then
    if job.pool and not job.finished then
      S.fail(job, { source_error = e })
      guarded(self, abandon_failed, self, job)
    end
    error(e, 0)
  end
end

local function sync_call(self, kind, fname, fn, items, opts, star)
  opts = begin_call(self, fname, opts, MAP_OPTS)
  local job = new_job(self, kind, fname, fn, items, opts, star)
  guarded(self, run_sync, self, job, opts)
  if kind == "map" then
    local r = job.stage
    r.n = job.total or (job.next - 1)
    return r
  end
  local out = job.out
  out.n = job.out_n
  return out
end

-- pool:map(fn, items [, options]) -> results in input order
function Pool:map(fn, items, opts)
  return sync_call(self, "map", "map", fn, items, opts)
end

-- pool:map_unordered(fn, items [, options]) -> results in completion order
function Pool:map_unordered(fn, items, opts)
  return sync_call(self, "unordered", "map_unordered", fn, items, opts)
end

-- pool:starmap(fn, items [, options]): each item is an array of arguments
function Pool:starmap(fn, items, opts)
  return sync_call(self, "map", "starmap", fn, items, opts, true)
end

function Pool:starmap_unordered(fn, items, opts)
  return sync_call(self, "unordered", "starmap_unordered", fn, items, opts, true)
end

------------------------------------------------------------------------
-- Lazy iterators: imap, imap_unordered, istarmap
------------------------------------------------------------------------

local Iter = {}
Iter.__index = Iter

-- The next result (and its input index) that is ready, or nothing.  The
-- chunk being read is job.cur (its results array), job.cur_i (the next item
-- index) and job.cur_end (its last index).
local function take_ready(job)
  while true do
    local i = job.cur_i
    if not i or i > job.cur_end then
      -- the next chunk: imap the one starting at yield_next, imap_unordered
      -- the oldest delivered
      local start, cnt
      if job.kind == "imap" then
        start = job.yield_next
        cnt = job.done_ranges[start]
        if cnt == nil then return false end
        job.done_ranges[start] = nil
        job.yield_next = start + cnt
      else
        local q, p = job.ready_q, job.ready_pos
        start = q[p]
        if start == nil then return false end
        cnt = q[p + 1]
        q[p], q[p + 1] = nil, nil
        job.ready_pos = p + 2
      end
      job.cur = job.stage[start]
      job.stage[start] = nil
      job.cur_i, job.cur_end, job.cur_base = start, start + cnt - 1, start - 1
      i = start
    end
    -- the caller gets the only reference: a result it drops can be
    -- collected before the next call
    local cur, at = job.cur, i - job.cur_base
    local v = cur[at]
    cur[at] = nil
    job.cur_i = i + 1
    job.active = job.active - 1
    if v ~= nil then return true, v, i end
  end
end

-- it() -> result, index (nil when done).  Results that are nil are skipped
-- (the index, the second value, shows where they were).  Fields: closed
-- (no more results), cut (set when the pool was closed or terminated
-- before the job finished: every later call raises it).
function Iter:__call()
  local pool, job = self.pool, self.job
  if self.cut ~= nil then error(self.cut, 0) end
  if self.closed then return nil end
  while true do
    local ok, v, i = take_ready(job)
    if ok then return v, i end
    if job.err then
      self.closed = true
      if pool._imap[1] == self then pool._imap[1] = nil end
      -- already forgotten (by close, terminate or another call)
      if job.finished or pool._closed then error(job_error_value(job.err), 0) end
      guarded(pool, raise_job_error, pool, job)
    end
    if job.finished then
      -- every result is in: readable even after the pool was closed
      self.closed = true
      if pool._imap[1] == self then pool._imap[1] = nil end
      if not pool._closed then guarded(pool, maybe_stop, pool) end
      -- an input iterator that raised: its error comes after the results
      -- of the items pulled before it
      if job.source_failed then error(job.source_error, 0) end
      return nil
    end
    if pool._closed then
      self.cut = closed_error(pool)
      error(self.cut, 0)
    end
    local stepped, e = pcall(guarded, pool, S.step, pool, -1)
    if not stepped then S.fail(job, { source_error = e }) end
  end
end

-- it:close(): stop early; the job's work is cancelled, workers stay usable.
function Iter:close()
  if self.closed then return end
  self.closed = true
  local pool, job = self.pool, self.job
  if pool._imap[1] == self then pool._imap[1] = nil end
  if pool._closed then return end
  if not job.finished then
    job.err = job.err or errors.new("interrupted", { message = "imap closed early" })
    guarded(pool, S.abandon, pool, job, false)
  end
  guarded(pool, maybe_stop, pool)
end

-- close() and terminate(): an imap iterator still open whose job has not
-- finished is cut; its next call raises the job's own error when it had
-- failed, else a closed error (an iterator that just stopped would look
-- like a finished stream).  One whose results are all in stays readable.
local function cut_imap(pool, how)
  local it = pool._imap[1]
  pool._imap[1] = nil
  if not it or it.closed or (it.job.finished and not it.job.err) then return nil end
  local cut = it.job.err and job_error_value(it.job.err) or errors.new("closed", {
    message = ("the pool was %s while an imap of it was being consumed"):format(how) })
  return it, cut
end

local function imap_call(self, kind, fname, fn, items, opts, star)
  opts = begin_call(self, fname, opts, MAP_OPTS)
  local job = new_job(self, kind, fname, fn, items, opts, star)
  start_job(self, job, opts)
  local it = setmetatable({ pool = self, job = job }, Iter)
  -- an iterator dropped without close() cancels its job when collected
  local proxy = newproxy(true)
  getmetatable(proxy).__gc = function()
    -- only a flag: this may run in the middle of anything
    if not job.finished then
      job.orphaned = true
      self._orphans = self._orphans + 1
    end
  end
  it._proxy = proxy
  self._imap[1] = it
  return it
end

-- pool:imap(fn, items [, options]) -> iterator of results in input order
function Pool:imap(fn, items, opts)
  return imap_call(self, "imap", "imap", fn, items, opts)
end

-- pool:imap_unordered(fn, items [, options]) -> iterator, completion order
function Pool:imap_unordered(fn, items, opts)
  return imap_call(self, "imap_unordered", "imap_unordered", fn, items, opts)
end

function Pool:istarmap(fn, items, opts)
  return imap_call(self, "imap", "istarmap", fn, items, opts, true)
end

function Pool:istarmap_unordered(fn, items, opts)
  return imap_call(self, "imap_unordered", "istarmap_unordered", fn, items, opts, true)
end

------------------------------------------------------------------------
-- apply, apply_async
------------------------------------------------------------------------

local function check_args(args, fname)
  if type(args) ~= "table" and args ~= nil then
    error(("bad argument #2 to '%s' (table of arguments expected, got %s)"):format(fname, type(args)), 3)
  end
  return { args or {} }
end

-- pool:apply(fn [, args [, options]]) -> fn(unpack(args)) run on a worker
function Pool:apply(fn, args, opts)
  opts = begin_call(self, "apply", opts, RUN_OPTS)
  local job = new_job(self, "apply", "apply", fn, check_args(args, "apply"), opts, true)
  guarded(self, run_sync, self, job, opts)
  return job.stage[1]
end

local Async = {}
Async.__index = Async

local function async_done(a)
  return a.job.finished or a.job.err ~= nil
end

-- Collect the outcome of a finished or failed job once: callbacks run here.
-- The outcome is stored before the callback runs, so a callback that
-- raises does not lose it.
local function settle(a)
  if a.settled or not async_done(a) then return end
  a.settled = true
  local job, pool = a.job, a.pool
  if job.err then
    local err = job.err
    if not job.finished and not pool._closed then
      -- a failure of this call only: the pool carries on
      local kill = errors.is_error(err) and (err.kind == "interrupted" or err.kind == "spawn")
      S.abandon(pool, job, kill)
    end
    a.error = err
    if a.error_callback then a.error_callback(err) end
  else
    a.value = job.stage[1]
    if a.callback then a.callback(a.value) end
  end
end

-- Settle the apply_async results whose jobs ended (callbacks run here).
local function settle_finished(pool)
  local q = pool._settle
  if #q == 0 then return end
  pool._settle = {}
  for _, a in ipairs(q) do settle(a) end
end

-- Settle every outstanding apply_async result, even when a callback
-- raises; returns nil, or { err = the first callback error } (one value,
-- so that it passes through guarded).
local function settle_all(pool)
  local failed
  for _, a in pairs(pool._asyncs) do
    local ok, e = pcall(settle, a)
    if not ok and not failed then failed = { err = e } end
  end
  return failed
end

-- Step until pred() holds (or timeout seconds pass), settling finished
-- apply_async results as they come.  They are settled before the first
-- wait too: one that failed before anything was sent (a value that cannot
-- be sent) counts as running until settled, and no event would come.
-- SIGINT fails every job (their callbacks run) and raises interrupted.
local function pump(pool, pred, timeout)
  local deadline = timeout and (core.now() + timeout)
  settle_finished(pool)
  while not pred() do
    local left = deadline and (deadline - core.now()) or -1
    if deadline and left <= 0 then break end
    local kind = S.step(pool, left)
    settle_finished(pool)
    if kind == "interrupted" then
      error(errors.new("interrupted", { message = "interrupted by SIGINT" }), 0)
    end
  end
  settle_finished(pool)
end

-- Settle a now (callbacks run); once the pool is closed, without it:
-- calls that close() waited for, or terminate() dropped, keep answering
-- with their own outcome.
local function settle_now(a)
  if a.settled or not async_done(a) then return end
  if a.pool._closed then settle(a) else guarded(a.pool, settle, a) end
end

-- a:ready() -> whether the result is there (looks for news without waiting)
function Async:ready()
  local pool = self.pool
  if not async_done(self) and not pool._busy and not pool._closed then
    guarded(pool, S.step, pool, 0)
  end
  settle_now(self)
  return async_done(self)
end

-- a:wait([timeout]) -> ready()
function Async:wait(timeout)
  local pool = self.pool
  if not async_done(self) then
    check_self(pool, "wait")
    guarded(pool, pump, pool, function() return async_done(self) end, timeout)
  end
  settle_now(self)
  if self.settled then pool._asyncs[self] = nil end
  -- (not from a callback: the call running it stops the workers itself)
  if not pool._closed and not pool._busy and S.active(pool) == 0 then
    guarded(pool, maybe_stop, pool)
  end
  return async_done(self)
end

-- a:get([timeout]) -> the result, or raises the call's error (or a timeout
-- error when timeout seconds pass first; the call goes on)
function Async:get(timeout)
  if not self:wait(timeout) then
    error(errors.new("timeout", { phase = "get",
      message = ("result not ready after %gs"):format(timeout) }), 2)
  end
  if self.error then error(self.error, 2) end
  return self.value
end

-- a:successful() -> whether the call succeeded (an error if not ready)
function Async:successful()
  if not self:ready() then error("forkpool: successful() called before the result is ready", 2) end
  return self.error == nil
end

-- pool:apply_async(fn [, args [, options]]) -> AsyncResult
function Pool:apply_async(fn, args, opts)
  opts = begin_call(self, "apply_async", opts, ASYNC_OPTS)
  local job = new_job(self, "apply", "apply_async", fn, check_args(args, "apply_async"), opts, true)
  local a = setmetatable({ pool = self, job = job, callback = opts.callback,
    error_callback = opts.error_callback }, Async)
  self._asyncs[a] = a
  job.on_finish = function()
    if not a.queued then
      a.queued = true
      self._settle[#self._settle + 1] = a
    end
  end
  -- a value that cannot be sent fails the job here or at a later dispatch:
  -- the AsyncResult is then ready, its error a marshal error
  local ok, e = pcall(start_job, self, job, opts, true)
  if not ok then
    a.settled = true   -- never returned: no callbacks
    self._asyncs[a] = nil
    error(e, 0)
  end
  return a
end

-- pool:join(): wait for every outstanding apply_async call (callbacks run).
function Pool:join()
  check_self(self, "join")
  guarded(self, pump, self, function() return S.active(self) == 0 end)
  local failed = guarded(self, settle_all, self)
  self._asyncs = {}
  guarded(self, maybe_stop, self)
  if failed then error(failed.err, 0) end
end

------------------------------------------------------------------------
-- Stopping
------------------------------------------------------------------------

-- Fail every outstanding job (apply_async calls) before the workers go;
-- a job that had failed keeps its own error.  Their results are settled
-- by the caller.
local function drop_jobs(self, why)
  local ids = {}
  for i, id in ipairs(self._order) do ids[i] = id end
  for _, id in ipairs(ids) do
    local job = self._jobs[id]
    if job then
      S.fail(job, errors.new("closed", { message = why }))
      S.finish_job(self, job)
    end
  end
end

-- pool:stop_and_join(): wait for outstanding calls, then stop the workers
-- gracefully (worker_exit runs, exit results are collected).  The pool
-- stays usable.
function Pool:stop_and_join()
  check_self(self, "stop_and_join")
  check_no_open_imap(self, "stop_and_join")
  local failed = guarded(self, function()
    pump(self, function() return S.active(self) == 0 end)
    local failed = settle_all(self)
    S.join_all(self)
    return failed
  end)
  if failed then error(failed.err, 0) end
end

-- pool:terminate(): kill the workers now, no worker_exit; the pool is
-- closed afterwards.
function Pool:terminate()
  if getmetatable(self) ~= Pool then error("bad self to 'terminate' (pool expected)", 2) end
  if self._closed then return end
  check_self(self, "terminate")
  local it, cut = cut_imap(self, "terminated")
  if it then it.closed, it.cut = true, cut end
  self._busy = true
  local ok, err = pcall(function()
    drop_jobs(self, "the pool was terminated")
    S.kill_workers(self, nil)
  end)
  self._core:close()
  self._closed = "terminated"
  self._busy = false
  -- their callbacks run now, the pool closed; every result is settled
  -- even when one raises
  local failed = settle_all(self)
  if not ok then error(err, 0) end
  if failed then error(failed.err, 0) end
end

-- pool:close(): wait for outstanding calls, stop_and_join, then release
-- everything.  Closing twice is allowed; any other use afterwards raises a
-- "closed" error.  The workers are reaped even when worker_exit fails or
-- times out (the error is raised after everything is released).
function Pool:close()
  if getmetatable(self) ~= Pool then error("bad self to 'close' (pool expected)", 2) end
  if self._closed then return end
  check_self(self, "close")
  local it, cut = cut_imap(self, "closed")
  if it then
    it:close()
    it.cut = cut
  end
  local ok, err = pcall(guarded, self, function()
    local ok2, err2 = pcall(pump, self, function() return S.active(self) == 0 end)
    if not ok2 then drop_jobs(self, "the pool was closed") end
    local failed = settle_all(self)
    S.join_all(self)
    if not ok2 then error(err2, 0) end
    if failed then error(failed.err, 0) end
  end)
  if not ok then
    pcall(S.kill_workers, self, nil)
  end
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
Pool.set_order_tasks = setter("_order_tasks", false, "order_tasks")

-- pool:get_insights() / pool:print_insights([stream]): see forkpool.insights
-- (pools made with enable_insights = true).
function Pool:get_insights()
  check_self(self, "get_insights")
  if not self._insights then
    error("forkpool: get_insights needs a pool made with enable_insights = true", 2)
  end
  return require("forkpool.insights").get(self)
end

function Pool:print_insights(stream)
  check_self(self, "print_insights")
  if not self._insights then
    error("forkpool: print_insights needs a pool made with enable_insights = true", 2)
  end
  return require("forkpool.insights").print(self, stream)
end

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
