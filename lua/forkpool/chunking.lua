-- forkpool.chunking: how big the next chunks of a job are, from how its
-- chunks came back.  An iterator of unknown length (job.adaptive) doubles
-- its chunks while they come back fast and halves them when slow; a map
-- over an array with the default chunk size (job.grow, set by
-- forkpool.job) grows its chunks to MIN_CHUNK_TIME of the workers' own CPU
-- time per chunk.  Called by the event loop for every chunk that comes
-- back (forkpool.events); forkpool.job's
-- build_chunk keeps a grown size within the tail bound.

local core = require "forkpool.core"
local cpus = require "forkpool.cpus"
local J = require "forkpool.job"

local min, max, floor = math.min, math.max, math.floor

local M = {}

-- Adaptive chunks (iterators of unknown length): grow while a chunk comes
-- back faster than this, shrink when slower than SLOW_CHUNK.
local FAST_CHUNK, SLOW_CHUNK, MAX_ADAPTIVE = 0.002, 0.05, 4096
-- Growing chunks (maps over arrays with the default chunk size, job.grow):
-- a chunk should carry at least MIN_CHUNK_TIME seconds of work (the
-- parent spends some microseconds per chunk whatever its size: at 2 ms a
-- chunk that is under 1% per worker); the work per item is measured at
-- most once per GROW_WINDOW seconds; a grown chunk has at most MAX_GROWN
-- items (the adaptive chunks' bound: results of one chunk travel as one
-- record).  A field, so that specs can make every map's items look fast
-- (huge) or slow (0).
M.MIN_CHUNK_TIME = 0.002
local GROW_WINDOW, MAX_GROWN = 0.005, 4096

-- How many workers can run at once: n_jobs, or fewer when the process may
-- use fewer CPUs (forkpool.cpus; read once).
local usable_cpus
local function parallelism(pool)
  usable_cpus = usable_cpus or cpus.usable()
  return min(pool._n, usable_cpus)
end

-- The CPU time (seconds) process pid has run and the time it has waited
-- for a CPU while runnable, or nil when unknown (/proc/<pid>/schedstat:
-- nanoseconds on a CPU, then nanoseconds on a run queue; ~8 us to read).
local function cpu_time(pid)
  local f = io.open("/proc/" .. pid .. "/schedstat", "r")
  if not f then return nil end
  local ns, wait = f:read("*n", "*n")
  f:close()
  return ns and ns * 1e-9, (wait or 0) * 1e-9
end

-- A worker that was running or waiting for a CPU this share of its time
-- running chunks never blocked: its tasks want CPU, not I/O.  A field, so
-- that specs can force either answer (0: always; huge: never).
M.SATURATED = 0.9

-- Saturation: a growing job whose workers outnumber the usable CPUs and
-- whose tasks only want CPU gains nothing from more workers running at
-- once than there are CPUs, and loses to them (on 2 cores, 128 workers
-- each holding a chunk ran a map at 0.50x the throughput of 2 workers:
-- every chunk a switch into a cold process).  So dispatch holds back:
-- while pool._cap is set, at most that many workers hold chunks of the
-- job (the others stay idle, or run other jobs' chunks: an apply_async
-- beside the map), and the job's chunks are sized as for that many
-- workers.  Lifted as soon as a reading says the tasks block (I/O, sleep),
-- and when the job ends (forkpool.dispatch).
local function saturate(pool, job, on)
  pool._saturated = on
  if on then
    if pool._cap_job == job then return end
    local cap = parallelism(pool)
    J.set_cap(pool, cap, job)
    job.min_chunk0 = job.min_chunk0 or job.min_chunk
    job.min_chunk = max(job.min_chunk0, J.default_chunk(job.total, cap))
    job.chunk_size = max(job.chunk_size, job.min_chunk)
    job.tail_div = J.TAIL_SHARE * cap
  elseif pool._cap_job == job then
    J.set_cap(pool, nil)
    job.min_chunk = job.min_chunk0
    job.tail_div = J.TAIL_SHARE * pool._n
  end
end

-- Seconds of work per item of a growing job, measured when a chunk of it
-- came back from the worker rec; nil when this result gives no measure.
-- The worker's own CPU time per item answered (its own overhead included,
-- so chunks err on the small side), the larger of: since its last reading
-- (quick to see items get slower) and since its first one in this job (a
-- reading also counts the part of the next chunk the worker has run, so
-- one window alone can be well off).  Wall time would not do: with more
-- workers than cores (or other processes on them) a chunk's wall time is
-- mostly waiting for a core, and the pool's items per second fall when
-- the parent is the bottleneck, which is when chunks should grow.
-- Without /proc: wall time of the window * parallelism / items answered
-- in it.
-- A growing job starts capped when the last reading of the pool said its
-- CPUs were saturated (the next map of a pool mapping CPU-bound tasks):
-- otherwise each of its workers would get a chunk before the first one
-- comes back.  Its own readings lift the cap if its tasks block.
function M.submitted(pool, job)
  if job.grow and pool._saturated and not pool._cap then saturate(pool, job, true) end
end

-- A reading of worker rec for saturation (above): its time running
-- chunks (wall, the worker's own count) against its CPU time plus its
-- time waiting for a CPU, since its last decision (across jobs: between
-- jobs it neither works nor runs; from its start for its first), once
-- that spans SAT_WINDOW of work (schedstat's CPU time of a running
-- process lags by up to a scheduler tick, a few ms: windows of 5 ms of work
-- read some CPU-bound workers as blocked).  Only with more workers than
-- CPUs.  A field for the specs.
M.SAT_WINDOW = 0.05
local function saturation_reading(pool, job, rec, cpu, wait)
  if pool._n <= parallelism(pool) then return end
  local work = pool._core:worker_work(rec.wid)
  local dw = work - (rec.work_seen or 0)
  if dw >= M.SAT_WINDOW then
    saturate(pool, job, (cpu - (rec.sat_cpu or 0) + wait - (rec.wait_seen or 0)) >= M.SATURATED * dw)
    rec.work_seen, rec.sat_cpu, rec.wait_seen = work, cpu, wait
  end
end

local function work_per_item(pool, job, rec, now, window_over)
  local cpu, wait
  if rec.pid then cpu, wait = cpu_time(rec.pid) end
  if cpu then
    saturation_reading(pool, job, rec, cpu, wait)
    local n = rec.answered
    if rec.cpu_job ~= job.id then
      rec.cpu_job, rec.cpu_first, rec.items_first = job.id, cpu, n
      rec.cpu_seen, rec.cpu_items = cpu, n
      return nil
    end
    local per_item
    if n > rec.cpu_items then
      per_item = max((cpu - rec.cpu_seen) / (n - rec.cpu_items), (cpu - rec.cpu_first) / (n - rec.items_first))
      job.grow_t = now
    end
    rec.cpu_seen, rec.cpu_items = cpu, n
    return per_item
  end
  if window_over and job.done > job.grow_done then
    local per_item = (now - job.grow_t) * parallelism(pool) / (job.done - job.grow_done)
    job.grow_t, job.grow_done = now, job.done
    return per_item
  end
  return nil
end

-- A chunk came back from worker rec: adapt the chunk size of an iterator
-- of unknown length, or grow that of a map over an array.
--
-- Growing: at most once per GROW_WINDOW (and for a worker not yet read in
-- this job, to have a first reading), the work per item is measured
-- (work_per_item); the chunk size becomes what holds MIN_CHUNK_TIME of
-- it, at most twice the last one, never below the default size;
-- build_chunk keeps it to the tail bound.
function M.adapt(pool, job, ch, rec)
  if job.adaptive and ch.sent_at then
    local dt = core.now() - ch.sent_at
    if dt < FAST_CHUNK then job.chunk_size = min(job.chunk_size * 2, MAX_ADAPTIVE)
    elseif dt > SLOW_CHUNK then job.chunk_size = max(1, floor(job.chunk_size / 2)) end
    job.max_active = max(job.max_active, job.chunk_size * pool._n * J.INFLIGHT)
  elseif job.grow then
    local now = core.now()
    if not job.grow_t then job.grow_t, job.grow_done = now, job.done end
    local window_over = now - job.grow_t >= GROW_WINDOW
    if window_over or (rec.pid and rec.cpu_job ~= job.id) then
      local per_item = work_per_item(pool, job, rec, now, window_over)
      if per_item then
        local want = floor(M.MIN_CHUNK_TIME / per_item)
        job.chunk_size = max(job.min_chunk, min(job.chunk_size * 2, MAX_GROWN, want))
      end
    end
  end
end

return M
