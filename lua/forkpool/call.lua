-- forkpool.call: what every public call of a pool goes through.  The
-- checks that the caller may use the pool, the SIGINT guard and busy flag
-- around the parent's work, running a job to its end on the caller's stack
-- (map, apply) or starting one the caller consumes later (imap,
-- apply_async), and what a failed job raises.

local errors = require "forkpool.errors"
local J = require "forkpool.job"
local E = require "forkpool.events"
local D = require "forkpool.dispatch"
local self_pid = require("forkpool.core").self_pid  -- getpid(), cached

local M = {}

-- The pools' metatable (its methods: forkpool.pool).
local Pool = {}
Pool.__index = Pool
M.Pool = Pool

-- The error any use of a closed or terminated pool raises.
function M.closed_error(pool)
  return errors.new("closed", { message = pool._closed == "terminated"
    and "attempt to use a terminated pool" or "attempt to use a closed pool" })
end

-- Raise (at the caller of the public method) unless the pool may be used
-- now: a pool, used by the process that made it, open, not busy.
function M.check_self(self, fname)
  if getmetatable(self) ~= Pool then
    error(("bad self to '%s' (pool expected; use pool:%s(...))"):format(fname, fname), 3)
  end
  if self._owner ~= self_pid() then
    error(("forkpool: '%s' called from inside a worker or a forked child: a pool can only be "
      .. "used by the process that created it (a forked child can make pools of its own)"):format(fname), 3)
  end
  if self._closed then error(M.closed_error(self), 3) end
  if self._busy then
    error(("forkpool: '%s' called while the pool is busy (from a callback?)"):format(fname), 3)
  end
end

-- The SIGINT guard (engine/fp_proc.c) is one per Lua state, and guarded calls
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
    guard_cores[guard_depth]:sigint_guard(true)
  end
end

-- Run fn with the pool busy and SIGINT turned into an "interrupted" event
-- (the previous handler is restored afterwards).  Nests: the busy flag is
-- restored to what it was, and the guard stays armed while an outer call
-- runs.
function M.guarded(self, fn, ...)
  if self._closed then error(M.closed_error(self), 0) end
  local was_busy = self._busy
  guard_push(self._core)
  self._busy = true
  local ok, err = pcall(fn, ...)
  self._busy = was_busy
  guard_pop()
  if not ok then error(err, 0) end
  return err
end

-- Run fn(...) with the SIGINT guard armed for the pool, without marking it
-- busy: around a span of several public calls (forkpool.cli's whole run),
-- so that a SIGINT between two of them neither kills the host in the
-- middle of its own work nor is lost (arming clears the flag; nested
-- calls only point the armed guard at the pool): the next poll raises it.
function M.guard_span(self, fn, ...)
  guard_push(self._core)
  local ok, err = pcall(fn, ...)
  guard_pop()
  if not ok then error(err, 0) end
  return err
end

-- Without keep_alive, workers stop once nothing is running.
function M.maybe_stop(self)
  if not self._keep_alive and self._active == 0 and E.live_workers(self) > 0 then
    E.join_all(self)
  end
end

-- What a failed job raises: its error object, or the user's own error
-- (an input iterator's, stored as { source_error = e }) as it was.
function M.job_error_value(err)
  if type(err) == "table" and err.source_error ~= nil then return err.source_error end
  return err
end

-- Forget a failed job and stop its work.  Errors that leave the workers in
-- doubt (not a forkpool error, interrupted, spawn) kill them all.
function M.abandon_failed(self, job)
  local err = job.err
  local user_error = type(err) == "table" and err.source_error ~= nil
  local kill_everything = not user_error and (not errors.is_error(err)
    or err.kind == "interrupted" or err.kind == "spawn")
  E.abandon(self, job, kill_everything)
end

-- Raise a failed job's error after cleaning up after it.
function M.raise_job_error(self, job)
  M.abandon_failed(self, job)
  error(M.job_error_value(job.err), 0)
end

-- Before a job is submitted: reap workers that left after idle_timeout
-- (keeping their exit results), restart workers whose settings changed,
-- and begin a new generation of exit results when no worker lives.
local function prepare(self, opts)
  if self._idle_timeout and E.live_workers(self) > 0 then E.drain(self) end
  if self._active == 0 then
    if self._restart and E.live_workers(self) > 0 then E.join_all(self) end
    self._restart = false
  end
  if E.live_workers(self) == 0 then
    if self._idle_exits then
      self._idle_exits = false
    else
      self._exit_results = {}
      if self._ins then self._ins:generation() end
    end
  end
  if opts.worker_exit_timeout ~= nil or opts.worker_exit ~= nil then
    self._exit_timeout = opts.worker_exit_timeout
  end
end

-- (a sink with a fold, map_reduce's, folds what came back between steps:
-- user code, kept out of event handling)
local function drive(self, job)
  E.submit(self, job)
  local sink = job.sink
  local fold = sink.fold
  while not job.finished and not job.err do
    E.step(self, -1)
    if fold then fold(sink) end
  end
end

-- Run a job to completion (or failure) on the calling stack.  An error
-- raised on the way (rather than stored in job.err by the loop) fails the
-- job too, so that it is forgotten before the error goes on.
function M.run_sync(self, job, opts)
  prepare(self, opts)
  local ok, e = pcall(drive, self, job)
  if not ok and job.pool then J.fail(job, { source_error = e }) end
  if job.err then M.raise_job_error(self, job) end
  if not ok then error(e, 0) end
  M.maybe_stop(self)
end

-- Prepare and submit a job that the caller consumes later (imap,
-- apply_async; dispatch: hand out work to running workers now).  An error
-- raised on the way fails and forgets the job before it goes on.
function M.start_job(self, job, opts, dispatch)
  local ok, e = pcall(M.guarded, self, function()
    prepare(self, opts)
    E.submit(self, job)
    if dispatch then D.dispatch(self) end
  end)
  if not ok then
    if job.pool and not job.finished then
      J.fail(job, { source_error = e })
      M.guarded(self, M.abandon_failed, self, job)
    end
    error(e, 0)
  end
end

return M
