-- forkpool.deaths: workers that leave.  The one place that handles a
-- worker's exit (planned or not), the deadlines we kill workers for
-- (task_timeout, worker_init_timeout, worker_exit_timeout), graceful
-- retirement (worker_max_memory, idle_timeout), and the error objects all
-- of these produce.

local core = require "forkpool.core"
local errors = require "forkpool.errors"
local J = require "forkpool.job"
local D = require "forkpool.dispatch"
local S = require "forkpool.spawn"
local ffi = require "ffi"

local min = math.min

local M = {}

-- How long a wait may sleep before timeouts are looked at again.
local MAX_SLEEP = 1.0

pcall(ffi.cdef, "int getpagesize(void);")
local PAGE_SIZE = tonumber(ffi.C.getpagesize())

------------------------------------------------------------------------
-- Error objects
------------------------------------------------------------------------

-- An error a worker reported (task, marshal, worker_init, worker_exit);
-- err is the decoded error value it sent.
function M.worker_error(kind, w, rec, index, err, extra)
  local f = {
    worker_id = w, pid = rec and rec.pid, index = (index and index > 0) and index or nil,
    message = err and err.message, traceback = err and err.traceback,
    value = err and err.value, path = err and err.path,
  }
  if extra then for k, v in pairs(extra) do f[k] = v end end
  return errors.new(kind, f)
end

-- What a job keeps of each death (job.deaths).
local function death_info(w, death)
  return {
    worker_id = w, pid = death.pid, signal = death.signal, signo = death.signo,
    exit_code = death.exit_code, index = death.index, phase = death.phase,
  }
end

-- worker_died, from the engine's death table (and the deaths of the job
-- so far, listed when more than one).
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

-- A worker we killed for taking longer than limit seconds in phase.
local function timeout_error(w, pid, phase, limit, index)
  return errors.new("timeout", {
    worker_id = w, pid = pid, phase = phase, index = index,
    message = ("%s took longer than %gs%s; worker %d was killed"):format(phase, limit,
      index and index > 0 and (" (item " .. index .. ")") or "", w),
  })
end

------------------------------------------------------------------------
-- Exits
------------------------------------------------------------------------

-- Whether item index of job jobid is in a chunk the worker still holds.
local function holds_item(rec, jobid, index)
  if not index then return false end
  for _, ch in ipairs(rec.chunks) do
    if ch.job.id == jobid and index >= ch.start and index < ch.start + ch.count then return true end
  end
  return false
end

-- A worker that was running (ready) died: the job whose item it ran is
-- retried or fails; other jobs get their chunks back.
local function died_running(pool, w, rec, death, info, held_by, give_back)
  local culprit = death.job and pool._jobs[death.job]
  if culprit and not holds_item(rec, culprit.id, death.index) then culprit = nil end
  for job, list in pairs(held_by) do
    if job == culprit and job.batch then
      -- apply_async calls batched into one job (forkpool.batch): the call
      -- that ran fails as it would alone (its own item 1), the others of
      -- its chunk run again
      local own = {}
      for k, v in pairs(death) do own[k] = v end
      own.index = 1
      local own_info = death_info(w, own)
      for _, ch in ipairs(list) do
        if death.index >= ch.start and death.index < ch.start + ch.count then
          job.batch.lost(job, ch, death.index, w, function() return death_error(w, own, { own_info }) end)
        else
          D.requeue(job, ch, w)
        end
      end
    elseif job == culprit then
      job.deaths[#job.deaths + 1] = info
      local over = job.max_retries == 0 or #job.deaths > (job.max_retries + 1) * pool._n
      for _, ch in ipairs(list) do
        if death.index >= ch.start and death.index < ch.start + ch.count then
          ch.attempts = ch.attempts + 1
          if ch.attempts > job.max_retries then over = true end
        end
      end
      if over then J.fail(job, death_error(w, death, job.deaths)) else give_back(job, list) end
    else
      -- it died between this job's items: an innocent bystander
      give_back(job, list)
    end
  end
  if not culprit then
    -- died between items, holding nothing started: count it against
    -- runaway loops only
    pool._free_deaths = pool._free_deaths + 1
    if pool._free_deaths > 8 * pool._n then
      for job in pairs(held_by) do J.fail(job, death_error(w, death, { info })) end
    end
  end
end

-- The process in slot w is gone (event "exit"; death: the engine's table,
-- see engine/fp_events.c).  Decide what it means for each job it held
-- chunks of: nothing (it said goodbye, or it died between items), a timeout
-- we caused, or a death that fails or retries the job.  Then refill the
-- slot while some job has work.  Returns the worker_died error of an exit
-- nobody planned (nil for a goodbye or a kill of ours): joining collects it.
function M.on_exit(pool, w, death)
  local rec = pool._workers[w]
  D.vacate(pool, w)
  if pool._ins then pool._ins:exit(w) end
  -- held chunks by job; chunks of jobs that are over are forgotten
  local held_by = {}
  for _, ch in ipairs(rec.chunks) do
    local job = ch.job
    if pool._jobs[job.id] == job then
      local l = held_by[job]
      if not l then l = {}; held_by[job] = l end
      l[#l + 1] = ch
    end
  end
  local function give_back(job, list)
    for i = #list, 1, -1 do D.requeue(job, list[i], w) end
  end
  local unplanned
  local killed = rec.killed
  if killed then
    local timed_out = killed.reason == "timeout" and pool._jobs[killed.job]
    for job, list in pairs(held_by) do
      if job ~= timed_out then give_back(job, list) end
    end
    -- a task that timed out fails its job; so does worker_init (the job the
    -- worker was born for), held chunks or not
    if timed_out and (held_by[timed_out] or killed.phase ~= "task") then
      J.fail(timed_out, timeout_error(w, death.pid, killed.phase, killed.limit, killed.index))
    end
  elseif rec.bye and rec.bye ~= "init_failed" then
    -- a planned exit (lifespan, stop): nothing it held was lost
    for job, list in pairs(held_by) do give_back(job, list) end
  elseif not rec.bye then
    local info = death_info(w, death)
    unplanned = death_error(w, death)
    if not rec.ready or death.phase == "worker_exit" then
      -- died starting up (or leaving): every job it served fails
      local any = false
      for job in pairs(held_by) do J.fail(job, death_error(w, death, { info })); any = true end
      if not any then
        for _, id in ipairs(pool._order) do
          local job = pool._jobs[id]
          if job and (job.id == rec.born_job or J.has_work(job)) then
            job.deaths[#job.deaths + 1] = info
            J.fail(job, death_error(w, death, job.deaths))
          end
        end
      end
    else
      died_running(pool, w, rec, death, info, held_by, give_back)
    end
  end
  S.fill(pool)
  return unplanned
end

------------------------------------------------------------------------
-- Deadlines
------------------------------------------------------------------------

-- Kill worker w, remembering why (the exit is then ours, not a death).
function M.kill(pool, w, why)
  pool._core:kill(w, core.SIGKILL)
  local rec = pool._workers[w]
  rec.killed = rec.killed or why
end

-- Look at the clocks of busy workers; kill those past a timeout.  Returns
-- how long the caller may sleep before the next deadline (-1: no limit).
function M.check_timeouts(pool)
  if not pool._exit_timeout_active and pool._timed_jobs == 0 then return -1 end
  local c = pool._core
  local now = core.now()
  local sleep = MAX_SLEEP
  for w = 1, pool._n do
    local rec = pool._workers[w]
    if rec.pid and not rec.killed then
      local st = c:worker_status(w)
      local limit, since, jobid
      if st.phase == "task" then
        local job = pool._jobs[st.job]
        if job and job.task_timeout then limit, since, jobid = job.task_timeout, st.item_since, job.id end
      elseif st.phase == "worker_init" and rec.init_timeout then
        limit, since, jobid = rec.init_timeout, st.phase_since, rec.born_job
      elseif st.phase == "worker_exit" and pool._exit_timeout then
        limit, since = pool._exit_timeout, st.phase_since
      end
      if limit and since > 0 then
        local left = since + limit - now
        if left <= 0 then
          local index = st.phase == "task" and st.index or nil
          if st.phase == "worker_exit" then
            pool._exit_error = pool._exit_error or timeout_error(w, rec.pid, st.phase, limit)
          end
          M.kill(pool, w, { reason = "timeout", phase = st.phase, limit = limit, job = jobid, index = index })
        else
          sleep = min(sleep, left)
        end
      end
    end
  end
  return sleep
end

-- Joining with worker_exit_timeout: past the deadline, the workers still
-- there are killed, whatever state they are in (SIGKILL ends stopped
-- processes too).
function M.kill_stragglers(pool)
  for w = 1, pool._n do
    local rec = pool._workers[w]
    if rec.pid and not rec.killed then
      pool._exit_error = pool._exit_error or errors.new("timeout", {
        worker_id = w, pid = rec.pid, phase = "stop",
        message = ("worker %d did not stop within worker_exit_timeout (%gs); it was killed"):format(
          w, pool._exit_timeout),
      })
      M.kill(pool, w, { reason = "timeout", phase = "stop", limit = pool._exit_timeout })
    end
  end
end

------------------------------------------------------------------------
-- Retirement
------------------------------------------------------------------------

-- Resident memory of process pid in bytes (nil when it cannot be read).
function M.rss_bytes(pid)
  local f = io.open("/proc/" .. pid .. "/statm")
  if not f then return nil end
  local _, resident = f:read("*n", "*n")
  f:close()
  return resident and resident * PAGE_SIZE
end

-- Retire the worker in slot w gracefully: it gets no more chunks, runs
-- those it holds, then worker_exit (its exit result is kept), and leaves;
-- its slot is refilled while there is work.  reason: "memory", "idle".
-- The stop record goes out now, or from dispatch when the lane is full.
function M.retire(pool, w, reason)
  local rec = pool._workers[w]
  if not rec.pid or rec.stopping or rec.killed or rec.bye then return end
  rec.stopping, rec.retired = true, reason
  rec.stop_pending = not pool._core:send_stop(w)
  if rec.stop_pending then pool._stops_pending = true end
  if pool._ins then pool._ins:retire(w, reason) end
end

-- After a chunk came back: a worker over worker_max_memory is replaced.
function M.check_memory(pool, w)
  local rec, limit = pool._workers[w], pool._max_memory
  if limit and rec.pid and not rec.stopping and not rec.bye and not rec.killed then
    local rss = M.rss_bytes(rec.pid)
    if rss and rss > limit then M.retire(pool, w, "memory") end
  end
end

return M
