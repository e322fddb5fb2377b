-- forkpool.pool: the Pool object.  Its state (created in new, the one
-- place that lists its fields), its lifecycle (close, terminate,
-- stop_and_join, join), its setters, and the public methods of the map
-- family as thin wrappers: check the arguments, build a job
-- (forkpool.job), run it (forkpool.call) and return what its sink
-- (forkpool.sinks) or result object (forkpool.results) gives.

local core = require "forkpool.core"
local cpus = require "forkpool.cpus"
local errors = require "forkpool.errors"
local options = require "forkpool.options"
local J = require "forkpool.job"
local D = require "forkpool.dispatch"
local E = require "forkpool.events"
local call = require "forkpool.call"
local results = require "forkpool.results"
local batch = require "forkpool.batch"
local pack = require "forkpool.pack"
local cdata = require "forkpool.cdata"

local Pool = call.Pool
local check_self, guarded = call.check_self, call.guarded

local M = {}

-- forkpool.new(options) -> pool
function M.new(opts)
  opts = options.check(opts, options.POOL, "new", 2)
  local n = opts.n_jobs or cpus.usable()
  -- The pool's state.  Settings are written here and by the setters only;
  -- the rest says who writes it.
  local self = setmetatable({
    n_jobs = n,               -- public, read-only
    _n = n,
    _owner = core.self_pid(), -- only this process may use the pool (call.check_self)
    _core = nil,              -- the engine's pool (forkpool.core), below
    -- settings (options of new; set_* change some)
    _keep_alive = opts.keep_alive or false,
    _use_state = opts.use_worker_state or false,
    _pass_id = opts.pass_worker_id or false,
    _shared = opts.shared_objects,
    _lifespan = opts.worker_lifespan,
    _max_memory = opts.worker_max_memory, -- bytes of resident memory (deaths.check_memory)
    _idle_timeout = opts.idle_timeout,    -- seconds (keep_alive pools)
    _order_tasks = opts.order_tasks or false,
    _cpus = opts.cpu_ids and options.cpu_ids(opts.cpu_ids, n, 2),
    _insights = opts.enable_insights or false,
    _before_fork = opts.before_fork,             -- fork hooks (forkpool.spawn; the child's
    _after_fork_parent = opts.after_fork_parent, -- runs in the worker: engine/fp_worker.c)
    _after_fork_child = opts.after_fork_child,
    _restart = false,         -- a setting changed: restart workers when idle (setters, call)
    -- workers (forkpool.dispatch: record fields)
    _workers = {},            -- [wid] = worker record: forkpool.spawn, deaths.on_exit
    _vacant = n,              -- slots without a process (spawn.lua, dispatch.vacate)
    _cap = nil, _cap_job = nil, -- saturation: at most _cap workers hold chunks of
                              -- _cap_job while it goes on (forkpool.chunking)
    _cap_held = 0,            -- live workers holding chunks of _cap_job (job.set_cap)
    _saturated = false,       -- what the last saturation reading said
    _feed_idle = { head = 1, tail = 0 }, -- workers that may take chunks, holding none (dispatch)
    _feed_room = { head = 1, tail = 0 }, -- ... holding fewer than job.INFLIGHT (dispatch)
    _stops_pending = false,   -- stop records wait for lane space (deaths.retire, dispatch)
    _free_deaths = 0,         -- deaths between items, against runaway loops (deaths)
    -- jobs (forkpool.job: job fields)
    _job = 0,                 -- the last job id (job.new)
    _jobs = {},               -- [id] = active job (events.submit, job.finish)
    _order = {},              -- active job ids, oldest first, compacted lazily (job)
    _active = 0,              -- number of active jobs (events.submit, job.finish)
    _stages = {},             -- [id] = the job's sink target, for pool:poll (events.submit, job.finish)
    _rq = { head = 1, tail = 0 }, -- run queue (dispatch)
    _job_ends = 0,            -- jobs that finished or failed, ever (job)
    _timed_jobs = 0,          -- active jobs with a task or init timeout (events, job)
    _progress_jobs = 0,       -- active jobs with a progress bar (events, job)
    _orphans = 0,             -- imap iterators collected unclosed (results.iter)
    _imap = setmetatable({}, { __mode = "v" }), -- [1] = the open imap iterator (results)
    _settle = {},             -- apply_async results whose job is over (results)
    _asyncs = {},             -- outstanding apply_async results (results)
    _batches = {},            -- [fn] = open batch job of apply_async calls (batch)
    -- stopping
    _exit_results = {},       -- worker_exit results of this generation (events, call.prepare)
    _exit_timeout = nil,      -- worker_exit_timeout of the latest call (call.prepare)
    _exit_timeout_active = false, -- check exit deadlines while joining (events.join_all)
    _exit_error = nil,        -- first worker_exit error or timeout while joining (events, deaths)
    _join_error = nil,        -- first unplanned death or interrupt while joining (events)
    _joining = false,         -- events.join_all runs
    _idle_exits = false,      -- workers left after idle_timeout: keep their exit results (events)
    _closed = false,          -- "closed" or "terminated" (close, terminate)
    _busy = false,            -- a call runs (call.guarded)
    _ins = nil,               -- enable_insights: the recorder of workers gone (forkpool.insights)
  }, Pool)
  self._core = core.new(n, {
    cdata_kind = cdata.kind, cdata_new = cdata.new, unpack_into = pack.unpack_into,
  }, nil, opts.close_fds)
  for w = 1, n do self._workers[w] = D.empty_slot() end
  if self._insights then self._ins = require("forkpool.insights").new(self) end
  return self
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
  if it and it.job.err and not it.job.finished then guarded(self, call.abandon_failed, self, it.job) end
  -- finalizers only count; the scan happens here, and only when one ran,
  -- so that thousands of outstanding apply_async jobs cost nothing per call
  if self._orphans == 0 then return end
  self._orphans = 0
  local dropped = {}   -- abandoning may compact _order: collect first
  for _, id in ipairs(self._order) do
    local job = self._jobs[id]
    if job and job.orphaned and not job.finished then dropped[#dropped + 1] = job end
  end
  for _, job in ipairs(dropped) do guarded(self, E.abandon, self, job, false) end
end

-- Common start of every call: checks (errors point at the user's call).
local function begin_call(self, fname, opts, schema)
  check_self(self, fname)
  check_no_open_imap(self, fname)
  return options.check_call(opts, schema, fname, 3)
end

-- map, map_unordered, starmap, starmap_unordered: run to the end, return
-- the sink's table.
local function sync_call(self, kind, fname, fn, items, opts, star)
  opts = begin_call(self, fname, opts, options.MAP)
  local total = options.check_map_args(fn, items, opts, fname, 2)
  local job = J.new(self, kind, fn, items, total, opts, star, fname, 2)
  guarded(self, call.run_sync, self, job, opts)
  return job.sink:result(job)
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

-- pool:map_reduce(fn, items, reducer [, options]) -> the results of fn
-- folded by reducer in input order: reducer(...reducer(reducer(r1, r2),
-- r3)..., rn), or with options.initial, reducer(...reducer(initial, r1)...).
-- Each worker folds the results of its chunks, so only one value per chunk
-- comes back; the parent folds those.  reducer must be associative (the
-- grouping is by chunk); it travels to the workers like fn.  No items:
-- initial (nil without it).
function Pool:map_reduce(fn, items, reducer, opts)
  opts = begin_call(self, "map_reduce", opts, options.REDUCE)
  local total = options.check_map_args(fn, items, opts, "map_reduce", 2)
  if type(reducer) ~= "function" then
    error(("bad argument #3 to 'map_reduce' (function expected, got %s)"):format(type(reducer)), 2)
  end
  local o = { reducer = reducer }
  for k, v in pairs(opts) do o[k] = v end
  local job = J.new(self, "reduce", fn, items, total, o, false, "map_reduce", 2)
  guarded(self, call.run_sync, self, job, o)
  return job.sink:result(job)
end

-- imap and friends: start the job, return its iterator (forkpool.results).
local function imap_call(self, kind, fname, fn, items, opts, star)
  opts = begin_call(self, fname, opts, options.MAP)
  local total = options.check_map_args(fn, items, opts, fname, 2)
  local job = J.new(self, kind, fn, items, total, opts, star, fname, 2)
  call.start_job(self, job, opts)
  return results.iter(self, job)
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

-- One call of fn with args (a starred job of one item).  level: as for
-- error(), counted from the caller.
local function apply_job(self, fname, fn, args, opts, level)
  level = level + 1
  local items = options.check_args(args, fname, level)
  options.check_map_args(fn, items, opts, fname, level)
  return J.new(self, "apply", fn, items, 1, opts, true, fname, level)
end

-- pool:apply(fn [, args [, options]]) -> fn(unpack(args)) run on a worker
function Pool:apply(fn, args, opts)
  opts = begin_call(self, "apply", opts, options.RUN)
  local job = apply_job(self, "apply", fn, args, opts, 2)
  guarded(self, call.run_sync, self, job, opts)
  return job.sink:result(job)
end

-- pool:apply_async(fn [, args [, options]]) -> AsyncResult
function Pool:apply_async(fn, args, opts)
  opts = begin_call(self, "apply_async", opts, options.ASYNC)
  -- calls of one plain function with plain arguments share a job
  local bargs = batch.args(fn, args, opts)
  if bargs then return batch.apply_async(self, fn, bargs, opts) end
  local job = apply_job(self, "apply_async", fn, args, opts, 2)
  return results.start(self, job, opts, results.async(self, job, opts))
end

-- pool:join(): wait for every outstanding apply_async call (callbacks run).
function Pool:join()
  check_self(self, "join")
  guarded(self, results.pump, self, function() return self._active == 0 end)
  local failed = guarded(self, results.settle_all, self)
  self._asyncs = {}
  guarded(self, call.maybe_stop, self)
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
      J.fail(job, errors.new("closed", { message = why }))
      J.finish(self, job)
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
    results.pump(self, function() return self._active == 0 end)
    local failed = results.settle_all(self)
    E.join_all(self)
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
  local it, cut = results.cut_imap(self, "terminated")
  if it then it.closed, it.cut = true, cut end
  self._busy = true
  local ok, err = pcall(function()
    drop_jobs(self, "the pool was terminated")
    E.kill_workers(self, nil)
  end)
  self._core:close()
  self._closed = "terminated"
  self._busy = false
  -- their callbacks run now, the pool closed; every result is settled
  -- even when one raises
  local failed = results.settle_all(self)
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
  local it, cut = results.cut_imap(self, "closed")
  if it then
    it:close()
    it.cut = cut
  end
  local ok, err = pcall(guarded, self, function()
    local ok2, err2 = pcall(results.pump, self, function() return self._active == 0 end)
    if not ok2 then drop_jobs(self, "the pool was closed") end
    local failed = results.settle_all(self)
    E.join_all(self)
    if not ok2 then error(err2, 0) end
    if failed then error(failed.err, 0) end
  end)
  if not ok then
    pcall(E.kill_workers, self, nil)
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

------------------------------------------------------------------------
-- Settings and information
------------------------------------------------------------------------

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
local function insights(self, fname)
  check_self(self, fname)
  if not self._insights then
    error(("forkpool: %s needs a pool made with enable_insights = true"):format(fname), 3)
  end
  return require("forkpool.insights")
end

function Pool:get_insights()
  return insights(self, "get_insights").get(self)
end

function Pool:print_insights(stream)
  return insights(self, "print_insights").print(self, stream)
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
