-- forkpool.events: the parent's event loop.  One turn sends what can be
-- sent (forkpool.dispatch), waits for one event from the engine
-- (pool:poll, engine/fp_events.c) and handles it: results go to their
-- job's sink, errors fail their job, exits go to forkpool.deaths.  Also
-- here: submitting a job, abandoning one, and joining the workers.

local core = require "forkpool.core"
local errors = require "forkpool.errors"
local J = require "forkpool.job"
local D = require "forkpool.dispatch"
local S = require "forkpool.spawn"
local chunking = require "forkpool.chunking"
local deaths = require "forkpool.deaths"

local M = {}

local function interrupted_error()
  return errors.new("interrupted", { message = "interrupted by SIGINT" })
end
M.interrupted_error = interrupted_error

-- Find and remove the chunk (job id, start) from worker w's list; the
-- worker may then take another (dispatch's feed queues).
local function take_chunk(pool, w, rec, jobid, start)
  if not rec.chunks then return nil end
  for i, ch in ipairs(rec.chunks) do
    if ch.job.id == jobid and ch.start == start then
      table.remove(rec.chunks, i)
      D.note(pool, w, true)
      return ch
    end
  end
  return nil
end

-- A chunk's results arrived (value: its fresh results array, true when
-- they were decoded into the sink's table, nil when the job was unknown).
-- job.pending counts items pulled and not yet answered; job.active those
-- pulled and not yet handed to the caller (lazy sinks hand them over when
-- taken).
local function on_corrupt(pool, w, rec, message, job)
  local err = errors.new("marshal", { worker_id = w, pid = rec.pid, message = message })
  deaths.kill(pool, w, { reason = "corrupt" })
  for _, ch in ipairs(rec.chunks) do J.fail(ch.job, err) end
  if job then J.fail(job, err) end
end

-- The RESULTS index of a reduced chunk (FP_RESULTS_REDUCED, engine/fp_proto.h).
local REDUCED = -2

local function on_results(pool, w, rec, job, jobid, start, value, index)
  local ch = take_chunk(pool, w, rec, jobid, start)
  if ch and job and ch.job == job and value then
    -- (one value stands for the chunk only in a map_reduce: anything else
    -- would leave results missing)
    if (index == REDUCED) ~= (job.kind == "reduce") then
      return on_corrupt(pool, w, rec, ("worker %d sent a corrupted record: %s"):format(w,
        index == REDUCED and "one reduced value for the results of a chunk" or "a map_reduce chunk not reduced"),
        job)
    end
    local n = ch.count
    job.done = job.done + n
    job.pending = job.pending - n
    if not job.sink.lazy then job.active = job.active - n end
    job.sink:deliver(start, n, value, index, w, rec)
    if rec.pid then rec.answered = rec.answered + n end
    chunking.adapt(pool, job, ch, rec)
    if job.progress then job.progress:update(job.done) end
    J.check_complete(pool, job)
  end
  if pool._max_memory then deaths.check_memory(pool, w) end
end

-- Handle one event from pool:poll: kind, worker id, job id, start, count,
-- item index, value (the fields' meaning is fixed; see engine/fp_events.c).
local function handle(pool, kind, w, jobid, start, _, index, value)
  local rec = w and pool._workers[w]
  local job = jobid and pool._jobs[jobid] or nil
  if kind == "results" then
    on_results(pool, w, rec, job, jobid, start, value, index)
  elseif kind == "cancelled" then
    take_chunk(pool, w, rec, jobid, start)
  elseif kind == "chunk_error" then
    -- the worker names the error's kind (engine/fp_worker.c)
    local ch = take_chunk(pool, w, rec, jobid, start)
    if ch and job and ch.job == job then
      local ekind = type(value) == "table" and errors.KINDS[value.kind] and value.kind or "task"
      if job.batch then
        -- batched apply_async calls: only the call at index fails
        job.batch.lost(job, ch, index, w, function()
          return deaths.worker_error(ekind, w, rec, 1, job.batch.as_own(value, index))
        end)
      else
        J.fail(job, deaths.worker_error(ekind, w, rec, index, value))
      end
    end
  elseif kind == "setup_error" then
    if job then
      J.fail(job, deaths.worker_error("marshal", w, rec, nil, value, {
        message = "cannot load the task function in worker " .. w .. ": " .. tostring(value and value.message),
      }))
    end
  elseif kind == "init_error" then
    -- the job it was forked for, or when that is over the oldest one
    local j = pool._jobs[rec.born_job] or J.oldest(pool)
    -- (phase: "after_fork_child" when that hook failed, engine/fp_worker.c)
    local phase = type(value) == "table" and value.hook or "worker_init"
    if j then J.fail(j, deaths.worker_error("worker_init", w, rec, nil, value, { phase = phase })) end
  elseif kind == "exit_error" then
    pool._exit_error = pool._exit_error
      or deaths.worker_error("worker_exit", w, rec, nil, value, { phase = "worker_exit" })
  elseif kind == "exit_result" then
    pool._exit_results[#pool._exit_results + 1] = value
  elseif kind == "ready" then
    rec.ready = true
  elseif kind == "bye" then
    rec.bye = value
    if value == "stop" and not rec.stopping then
      -- unasked: it was idle for idle_timeout seconds
      rec.retired = "idle"
      pool._idle_exits = true
      if pool._ins then pool._ins:retire(w, "idle") end
    end
  elseif kind == "exit" then
    local err = deaths.on_exit(pool, w, value)
    if err and pool._joining then pool._join_error = pool._join_error or err end
  elseif kind == "corrupt" then
    on_corrupt(pool, w, rec, value)
  elseif kind == "interrupted" then
    local err = interrupted_error()
    for _, id in ipairs(pool._order) do
      local j = pool._jobs[id]
      if j then J.fail(j, err) end
    end
  end
end

-- Wait at most timeout seconds (negative: no limit) for one event and
-- handle it.  Returns its kind ("timeout", "eintr" when nothing came).
local function turn(pool, timeout)
  local kind, w, jobid, start, count, index, value = pool._core:poll(pool._stages, timeout)
  if kind ~= "timeout" and kind ~= "eintr" then handle(pool, kind, w, jobid, start, count, index, value) end
  return kind
end

-- One step of a call: send what can be sent, wait (at most timeout
-- seconds; negative: until something happens) for one event, handle it.
-- Returns the event's kind, or "failed" when a job failed or ended while
-- being dispatched (a function or item that cannot be sent, an iterator
-- that raised or ran out): it has nothing to wait for.
function M.step(pool, timeout)
  if D.dispatch(pool) then return "failed" end
  local wait = deaths.check_timeouts(pool)
  if timeout and timeout >= 0 and (wait < 0 or timeout < wait) then wait = timeout end
  if pool._progress_jobs > 0 then
    for _, id in ipairs(pool._order) do
      local job = pool._jobs[id]
      if job and job.progress then
        local t = job.progress:next_wakeup()
        if wait < 0 or t < wait then wait = t end
      end
    end
  end
  local kind = turn(pool, wait)
  if pool._progress_jobs > 0 then
    for _, id in ipairs(pool._order) do
      local job = pool._jobs[id]
      if job and job.progress then job.progress:update(job.done) end
    end
  end
  return kind
end

-- Handle the events already there, without waiting (at the start of a
-- call: workers that left by themselves after idle_timeout are reaped and
-- their exit results collected).
function M.drain(pool)
  for _ = 1, 16 * pool._n + 16 do
    local kind = turn(pool, 0)
    if kind == "timeout" or kind == "eintr" then break end
  end
end

-- Number of workers with a live (or not yet reaped) process.
function M.live_workers(pool)
  local n = 0
  for w = 1, pool._n do if pool._workers[w].pid then n = n + 1 end end
  return n
end

-- Kill the live workers for which pick(rec) is true (all when pick is nil)
-- and wait until they are reaped; no worker_exit.  Other events that arrive
-- meanwhile are handled normally.
function M.kill_workers(pool, pick)
  local victims = {}
  for w = 1, pool._n do
    local rec = pool._workers[w]
    if rec.pid and (not pick or pick(rec)) then
      deaths.kill(pool, w, { reason = "killed" })
      victims[w] = true
    end
  end
  local function pending()
    for w in pairs(victims) do if pool._workers[w].pid then return true end end
    return false
  end
  -- SIGKILL cannot be ignored: each wait returns as soon as one is reaped
  local deadline = core.now() + 30
  while pending() and core.now() < deadline do turn(pool, 1) end
end

-- Register a job and start workers for it.
function M.submit(pool, job)
  job.pool = pool
  pool._jobs[job.id] = job
  pool._order[#pool._order + 1] = job.id
  pool._active = pool._active + 1
  if job.task_timeout or job.init_timeout then pool._timed_jobs = pool._timed_jobs + 1 end
  if job.progress then pool._progress_jobs = pool._progress_jobs + 1 end
  chunking.submitted(pool, job)
  D.make_runnable(job)
  S.fill(pool)
  -- results are only decoded by poll, after this: a big results table is
  -- made (and page-faulted) while the workers run the first chunks
  local target = job.sink:target()
  if not job.finished then pool._stages[job.id] = target end
  J.check_complete(pool, job)
end

-- After a job failed: forget it, stop its work everywhere.  Kept-alive
-- workers that finished starting keep running (their queued chunks answer
-- CANCELLED and are drained later); workers still starting, or all of them
-- (kill_everything, or no keep_alive and nothing else running), are
-- killed and reaped.
function M.abandon(pool, job, kill_everything)
  job.cancelled = true
  J.finish(pool, job)
  for w = 1, pool._n do
    local rec = pool._workers[w]
    if rec.pid and J.holds_chunk_of(rec, job) then pool._core:cancel(w, job.id) end
  end
  if kill_everything or (not pool._keep_alive and pool._active == 0) then
    M.kill_workers(pool, nil)
  else
    M.kill_workers(pool, function(rec) return not rec.ready or rec.killed end)
  end
end

-- Ask every live worker to stop (worker_exit runs); a stopped (SIGSTOP)
-- worker is continued first, since it could never read the request.  The
-- stop record is tiny: a full lane only means replies are pending.
local function ask_to_stop(pool, deadline)
  local c = pool._core
  for w = 1, pool._n do
    local rec = pool._workers[w]
    if rec.pid and (not rec.stopping or rec.stop_pending) then
      rec.stopping, rec.stop_pending = true, false
      c:kill(w, core.SIGCONT)
      while pool._workers[w].pid and not (deadline and core.now() > deadline) and not c:send_stop(w) do
        turn(pool, 0.01)
      end
    end
  end
end

-- Wait for events until every worker is gone, collecting exit results.
-- Used by stop_and_join, close, restarts, and at the end of calls without
-- keep_alive.  Raises the first worker_exit error or timeout, else the
-- first unplanned death or interrupt (pool._join_error).
function M.join_all(pool)
  pool._exit_error, pool._join_error = nil, nil
  pool._exit_timeout_active = pool._exit_timeout ~= nil
  pool._joining = true
  -- With worker_exit_timeout, joining is bounded whatever state a worker is
  -- in (stopped again, blocked before its worker_exit phase): past the
  -- deadline (half a second after worker_exit's own, which names the
  -- phase) the rest are killed.
  local deadline = pool._exit_timeout and core.now() + pool._exit_timeout + 0.5
  ask_to_stop(pool, deadline)
  while M.live_workers(pool) > 0 do
    local sleep = deaths.check_timeouts(pool)
    if deadline then
      local left = deadline - core.now()
      if left <= 0 then
        deaths.kill_stragglers(pool)
        deadline = nil
      elseif sleep < 0 or left < sleep then
        sleep = left
      end
    end
    if turn(pool, sleep) == "interrupted" then
      pool._join_error = pool._join_error or interrupted_error()
      M.kill_workers(pool, nil)
    end
  end
  pool._joining = false
  pool._exit_timeout_active = false
  pool._idle_exits = false -- an explicit stop ends the generation
  local err = pool._exit_error or pool._join_error
  pool._exit_error, pool._join_error = nil, nil
  if err then error(err, 0) end
end

return M
