-- forkpool.results: what the lazy calls return.  Iter, the iterator of
-- imap / imap_unordered / istarmap; AsyncResult, the handle apply_async
-- returns; and the waiting both rely on (pump), with apply_async's
-- callbacks settled as their jobs end.

local core = require "forkpool.core"
local errors = require "forkpool.errors"
local J = require "forkpool.job"
local E = require "forkpool.events"
local call = require "forkpool.call"

local guarded = call.guarded

local M = {}

------------------------------------------------------------------------
-- Iter
------------------------------------------------------------------------

local Iter = {}
Iter.__index = Iter

-- Iter fields: pool, job, closed (no more results), cut (set when the
-- pool was closed or terminated before the job finished: every later call
-- raises it).

-- The next result when none is in yet: wait for one (or the end, or the
-- job's error).
local function call_slow(self)
  local pool, job = self.pool, self.job
  if self.cut ~= nil then error(self.cut, 0) end
  if self.closed then return nil end
  while true do
    local ok, v, i = job.sink:take(job)
    if ok then return v, i end
    if job.err then
      self.closed = true
      if pool._imap[1] == self then pool._imap[1] = nil end
      -- already forgotten (by close, terminate or another call)
      if job.finished or pool._closed then error(call.job_error_value(job.err), 0) end
      guarded(pool, call.raise_job_error, pool, job)
    end
    if job.finished then
      -- every result is in: readable even after the pool was closed
      self.closed = true
      if pool._imap[1] == self then pool._imap[1] = nil end
      if not pool._closed then guarded(pool, call.maybe_stop, pool) end
      -- an input iterator that raised: its error comes after the results
      -- of the items pulled before it
      if job.source_failed then error(job.source_error, 0) end
      return nil
    end
    if pool._closed then
      self.cut = call.closed_error(pool)
      error(self.cut, 0)
    end
    local stepped, e = pcall(guarded, pool, E.step, pool, -1)
    if not stepped then J.fail(job, { source_error = e }) end
  end
end

-- it() -> result, index (nil when done).  Results that are nil are skipped
-- (the index, the second value, shows where they were).  The common case
-- first, without a loop: a result already in.  (call_slow's loop, inlined
-- here, was an inner loop in the trace of the caller's for loop: LuaJIT
-- gave up compiling both, and the consumer's loop ran interpreted, most
-- of the parent's time in an imap of small tasks.)
function Iter:__call()
  if self.cut == nil and not self.closed then
    local job = self.job
    local ok, v, i = job.sink:take(job)
    if ok then return v, i end
  end
  return call_slow(self)
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
    guarded(pool, E.abandon, pool, job, false)
  end
  guarded(pool, call.maybe_stop, pool)
end

-- iter(pool, job) -> the iterator of a submitted lazy job.  The pool holds
-- it weakly (pool._imap[1]): one dropped without close() is collected, and
-- its job is abandoned at the pool's next call.
function M.iter(pool, job)
  local it = setmetatable({ pool = pool, job = job }, Iter)
  local proxy = newproxy(true)
  getmetatable(proxy).__gc = function()
    -- only a flag: this may run in the middle of anything
    if not job.finished then
      job.orphaned = true
      pool._orphans = pool._orphans + 1
    end
  end
  it._proxy = proxy
  pool._imap[1] = it
  return it
end

-- close() and terminate(): an imap iterator still open whose job has not
-- finished is cut; its next call raises the job's own error when it had
-- failed, else a closed error (an iterator that just stopped would look
-- like a finished stream).  One whose results are all in stays readable.
-- Returns the iterator and its error, or nil.
function M.cut_imap(pool, how)
  local it = pool._imap[1]
  pool._imap[1] = nil
  if not it or it.closed or (it.job.finished and not it.job.err) then return nil end
  local cut = it.job.err and call.job_error_value(it.job.err) or errors.new("closed", {
    message = ("the pool was %s while an imap of it was being consumed"):format(how) })
  return it, cut
end

------------------------------------------------------------------------
-- AsyncResult
------------------------------------------------------------------------

local Async = {}
Async.__index = Async

-- A call of its own (a.job) is done when its job is; a batched one
-- (forkpool.batch) when its outcome arrived (a.arrived).
local function async_done(a)
  local job = a.job
  if job then return job.finished or job.err ~= nil end
  return a.arrived == true
end

-- Store a call's outcome and run its callback: err (an error object) or
-- value.  job failed (err set) and is not over yet: it failed for this
-- call only (a call of its own), or for every call of its batch (an
-- interrupt, a function that cannot be sent: forkpool.batch); either way
-- it is abandoned here, once, and the pool carries on.
local function conclude(a, job, err, value)
  if err then
    if job.err and not job.finished and not a.pool._closed then
      local kill = errors.is_error(err) and (err.kind == "interrupted" or err.kind == "spawn")
      E.abandon(a.pool, job, kill)
    end
    a.error = err
    if a.error_callback then a.error_callback(err) end
  else
    a.value = value
    if a.callback then a.callback(value) end
  end
end

-- Collect the outcome of a finished or failed job once: callbacks run here.
-- The outcome is stored before the callback runs, so a callback that
-- raises does not lose it.
local function settle(a)
  if a.settled or not async_done(a) then return end
  a.settled = true
  local job = a.job
  -- a batched call (no job of its own): its outcome, and the batch job
  if not job then return conclude(a, a.bjob, a.berr, a.bvalue) end
  if job.err then return conclude(a, job, job.err) end
  conclude(a, job, nil, job.sink:result(job))
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
function M.settle_all(pool)
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
function M.pump(pool, pred, timeout)
  local deadline = timeout and (core.now() + timeout)
  settle_finished(pool)
  while not pred() do
    local left = deadline and (deadline - core.now()) or -1
    if deadline and left <= 0 then break end
    local kind = E.step(pool, left)
    settle_finished(pool)
    if kind == "interrupted" then error(E.interrupted_error(), 0) end
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
    guarded(pool, E.step, pool, 0)
  end
  settle_now(self)
  return async_done(self)
end

-- a:wait([timeout]) -> ready()
function Async:wait(timeout)
  local pool = self.pool
  if not async_done(self) then
    call.check_self(pool, "wait")
    guarded(pool, M.pump, pool, function() return async_done(self) end, timeout)
  end
  settle_now(self)
  if self.settled then pool._asyncs[self] = nil end
  -- (not from a callback: the call running it stops the workers itself)
  if not pool._closed and not pool._busy and pool._active == 0 then
    guarded(pool, call.maybe_stop, pool)
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

-- async(pool, job, opts) -> the AsyncResult of a job not yet started.
-- Fields: pool, job, callback, error_callback, queued (in pool._settle),
-- settled, value or error.  Outstanding ones are in pool._asyncs.
function M.async(pool, job, opts)
  local a = setmetatable({ pool = pool, job = job, callback = opts.callback,
    error_callback = opts.error_callback }, Async)
  pool._asyncs[a] = a
  job.on_finish = function()
    if not a.queued then
      a.queued = true
      pool._settle[#pool._settle + 1] = a
    end
  end
  return a
end

-- batched(pool, opts) -> the AsyncResult of a call that joins a batch.
-- Instead of job it has (written by forkpool.batch) bjob, the batch job,
-- and arrived (its outcome reached the parent) with berr or bvalue.
function M.batched(pool, opts)
  local a = setmetatable({ pool = pool, callback = opts.callback,
    error_callback = opts.error_callback }, Async)
  pool._asyncs[a] = a
  return a
end

-- start(pool, job, opts, a) -> a: start the job of the AsyncResult a.
-- A value that cannot be sent fails the job here or at a later dispatch
-- (a is then ready, its error a marshal error); an error raised while
-- starting forgets a and is raised again.
function M.start(pool, job, opts, a)
  local ok, e = pcall(call.start_job, pool, job, opts, true)
  if not ok then
    M.forget(a)
    error(e, 0)
  end
  return a
end

-- The result was never returned (starting its job failed): no callbacks.
function M.forget(a)
  a.settled = true
  a.pool._asyncs[a] = nil
end

return M
