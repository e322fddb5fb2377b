-- forkpool.dispatch: handing work to workers.  The run queue of jobs that
-- may have chunks to send and the choice of which worker gets which chunk
-- (which task functions each worker holds: forkpool.setup; starting the
-- worker processes: forkpool.spawn).
--
-- pool._rq: a queue (rq.head .. rq.tail) of the jobs that may have chunks
-- to send, oldest first.  Jobs whose work is all sent are popped from the
-- front as dispatch meets them there; one found in the middle is skipped
-- and popped when it reaches the front.  job.runnable: the job is in it.
--
-- A worker record (pool._workers[w], made by forkpool.spawn, emptied by
-- forkpool.deaths when its process is gone) has: wid (w); pid; born_job (the job it
-- was forked for: it has that job's function and array items through
-- fork); chunks (sent, not answered, oldest first); dispatched (items sent,
-- for worker_lifespan); fns (setup cache: {bytes, id} most recently used
-- last); init_timeout; and, set by the event loop: ready (worker_init
-- done), bye (the reason it said it leaves), stopping / stop_pending /
-- retired (a graceful stop asked: forkpool.deaths), killed ({reason, ...}:
-- we killed it); fq (which feed queue it is in, below); answered (items
-- it answered, all jobs: forkpool.events); cpu_job, cpu_first, items_first,
-- cpu_seen, cpu_items (its CPU time and answered when first and last read
-- for job cpu_job), sat_cpu, wait_seen, work_seen (its CPU time, time
-- waiting for a CPU and time running chunks at its last saturation
-- reading): forkpool.chunking; cap_held (it holds a chunk of the job
-- saturation caps: counted in pool._cap_held, forkpool.job's set_cap).
--
-- The feed queues (pool._feed_idle, pool._feed_room: head .. tail, served
-- from the head; a worker whose chunk just came back joins the idle queue
-- at the head, others at the tail) hold the workers that may take a chunk now, so that after an
-- event dispatch looks at those, not at every slot (its cost per chunk
-- does not grow with n_jobs).  Invariant: a live worker that takes work
-- (takes_work) and holds no chunk has rec.fq == "idle" and its id is in
-- _feed_idle; one holding 1 .. INFLIGHT - 1 chunks has fq == "room" and is
-- in _feed_room; apart from the worker dispatch is feeding at the moment.
-- An entry whose record's fq names the other queue (or nothing) is stale
-- (the worker moved, or its slot has a new process that was queued anew)
-- and is skipped.  A worker that stops taking work (bye, killed,
-- stopping: never undone for a record) is dropped when met.  Whoever takes
-- a chunk off a worker's list calls M.note.  pool._vacant counts the slots
-- without a process (spawn, M.vacate).

local core = require "forkpool.core"
local errors = require "forkpool.errors"
local J = require "forkpool.job"
local modmap = require "forkpool.modmap"
local pack = require "forkpool.pack"
local setup = require "forkpool.setup"

local M = {}

-- Put the job in the run queue (once).
function M.make_runnable(job)
  local pool = job.pool
  if pool and not job.runnable and not job.finished then
    job.runnable = true
    local rq = pool._rq
    rq.tail = rq.tail + 1
    rq[rq.tail] = job
  end
end

-- Put a chunk back for sending (after a worker gave it back or died).
function M.requeue(job, ch, w)
  J.requeue(job, ch, w)
  M.make_runnable(job)
end

-- Pop the jobs with nothing left to send from the front of the queue.
local function prune_runnable(pool)
  local rq = pool._rq
  while rq.head <= rq.tail and not J.has_work(rq[rq.head]) do
    rq[rq.head].runnable = false
    rq[rq.head] = nil
    rq.head = rq.head + 1
  end
end

------------------------------------------------------------------------
-- The feed queues
------------------------------------------------------------------------

-- Drop the stale entries of queue q (whose records' fq is kind), keeping
-- one entry per worker, in order.
local function compact(pool, q, kind)
  local workers, seen, n = pool._workers, {}, 0
  for i = q.head, q.tail do
    local w = q[i]
    q[i] = nil
    if workers[w].fq == kind and not seen[w] then
      seen[w] = true
      n = n + 1
      q[n] = w
    end
  end
  q.head, q.tail = 1, n
end

local function push(pool, q, kind, w)
  -- stale entries are dropped as dispatch meets them; a queue that holds
  -- many more than there are workers is cleaned at once, so that its
  -- length stays O(n_jobs) whatever the order of events
  if q.tail - q.head > 4 * pool._n + 64 then compact(pool, q, kind) end
  q.tail = q.tail + 1
  q[q.tail] = w
end

-- At the front: the worker that has just gone idle is fed first (its
-- process is awake and its caches hot: a single-item map given to the
-- other, sleeping worker measured 35 us against 9 us a round trip).
local function push_front(pool, q, kind, w)
  if q.tail - q.head > 4 * pool._n + 64 then compact(pool, q, kind) end
  q.head = q.head - 1
  q[q.head] = w
end

local function pop(q)
  local h = q.head
  local w = q[h]
  q[h] = nil
  if h == q.tail then q.head, q.tail = 1, 0 else q.head = h + 1 end
  return w
end

-- Can worker slot w take chunks now?
local function takes_work(rec)
  return rec.pid and not rec.bye and not rec.killed and not rec.stopping
end

-- Worker w is new, or one of its chunks was taken off its list: queue it
-- where its count of chunks now puts it (nothing when it is full or takes
-- no work).  answered: a chunk of it came back (it goes idle at the front
-- of the idle queue; a worker dispatch found nothing for goes to the back).
function M.note(pool, w, answered)
  local rec = pool._workers[w]
  local n = #rec.chunks
  if rec.cap_held and not J.holds_chunk_of(rec, pool._cap_job) then
    rec.cap_held = false
    pool._cap_held = pool._cap_held - 1
  end
  if not takes_work(rec) then return end
  if n == 0 then
    if rec.fq ~= "idle" then
      rec.fq = "idle"
      if answered then push_front(pool, pool._feed_idle, "idle", w)
      else push(pool, pool._feed_idle, "idle", w) end
    end
  elseif n < J.INFLIGHT then
    if rec.fq ~= "room" then rec.fq = "room"; push(pool, pool._feed_room, "room", w) end
  end
end

-- Slot w's process is gone: an empty record there (forkpool.deaths).
function M.vacate(pool, w)
  local rec = pool._workers[w]
  if rec.pid then pool._vacant = pool._vacant + 1 end
  if rec.cap_held then pool._cap_held = pool._cap_held - 1 end
  pool._workers[w] = M.empty_slot()
end

-- The next chunk for worker w, within the worker's lifespan budget.
local function next_chunk(pool, job, w, budget)
  if job.wq then
    -- ordered tasks: chunk i goes to worker ((i-1) mod n) + 1
    local q = job.wq[w]
    while #q == 0 do
      local ch = J.build_chunk(job, math.huge)
      if not ch then break end
      local tq = job.wq[(ch.no - 1) % pool._n + 1]
      tq[#tq + 1] = ch
      job.wq_n = job.wq_n + 1
    end
    if #q == 0 or q[1].count > budget then return nil end
    job.wq_n = job.wq_n - 1
    return table.remove(q, 1)
  end
  local q = job.queue
  if #q > 0 then
    if q[1].count <= budget then return table.remove(q, 1) end
    return nil
  end
  return J.build_chunk(job, budget)
end

------------------------------------------------------------------------
-- Sending chunks
------------------------------------------------------------------------

-- Send one chunk to worker w.  Returns true when sent.
local function send_chunk(pool, job, w, ch)
  local rec = pool._workers[w]
  local fn = setup.worker(pool, w, job)
  if not fn then return false end
  ch.fn = fn
  local c = pool._core
  local ok, _, msg, path
  -- items the worker does not have in memory: packed when all are scalars
  local addr, len
  if not job.star and not ch.text and (ch.items or rec.born_job ~= job.id) then
    if ch.items then addr, len = pack.items(ch.items, 1, ch.count)
    else addr, len = pack.items(job.items, ch.start, ch.count) end
  end
  if ch.text then
    ok, _, msg = c:send_chunk_lines(w, job.id, fn, ch.start, ch.count, ch.text)
  elseif addr then
    ok, _, msg = c:send_chunk_packed(w, job.id, fn, ch.start, ch.count, addr, len)
  elseif ch.items then
    ok, _, msg, path = c:send_chunk(w, job.id, fn, ch.start, ch.count, ch.items, modmap.get(), 1)
  elseif rec.born_job == job.id then
    ok, _, msg = c:send_chunk(w, job.id, fn, ch.start, ch.count)
  else
    ok, _, msg, path = c:send_chunk(w, job.id, fn, ch.start, ch.count, job.items, modmap.get())
  end
  if ok == nil then
    -- (path nil: the lane refused the record, e.g. its header was corrupted)
    J.fail(job, errors.new("marshal", { message = msg, path = path, worker_id = not path and w or nil,
      index = tonumber((path or ""):match("^item%[(%d+)%]")) }))
    return false
  end
  if ok then
    if job == pool._cap_job and not rec.cap_held then
      rec.cap_held = true
      pool._cap_held = pool._cap_held + 1
    end
    rec.chunks[#rec.chunks + 1] = ch
    rec.dispatched = rec.dispatched + ch.count
    if job.adaptive then ch.sent_at = core.now() end
    local dbg = M.debug
    if dbg then
      dbg.sent = (dbg.sent or 0) + 1
      local l = dbg.chunks
      if l then
        -- busy: live workers holding a chunk of any job, counted from
        -- their lists (not from the books the cap keeps)
        local busy = 0
        for v = 1, pool._n do
          local r = pool._workers[v]
          if r.pid and #r.chunks > 0 then busy = busy + 1 end
        end
        l[#l + 1] = { job = job.id, start = ch.start, count = ch.count, worker = w, busy = busy,
          capped = job == pool._cap_job and pool._cap_held or nil }
      end
    end
  end
  return ok
end

-- send_chunk, protected: an error raised while sending (a Lua error from
-- the codec's helpers, out of memory, a fault injected by a test) puts the
-- chunk back and fails the job with a marshal error, so the books stay
-- true and whoever waits on the job raises it.
local function try_send_chunk(pool, job, w, ch)
  local ok, sent = pcall(send_chunk, pool, job, w, ch)
  if ok then return sent end
  local e = sent
  if not errors.is_error(e) then
    e = errors.new("marshal", { index = ch.start,
      message = ("cannot send items %d..%d: %s"):format(ch.start, ch.start + ch.count - 1, tostring(e)) })
  end
  J.fail(job, e)
  return false
end

-- Send worker w one chunk of the oldest job that has one it may take (a
-- job saturation caps is not one while cap workers hold its chunks and w
-- is not one of them).
-- Returns true when one was sent; else false and whether no worker could
-- get one now either (no job has a chunk to give: then dispatch stops
-- looking; not so when the cause may be this worker's: its lifespan
-- budget, its queue of ordered tasks, its lane full, a send that failed).
local function feed(pool, w)
  local rec = pool._workers[w]
  local budget = pool._lifespan and (pool._lifespan - rec.dispatched) or math.huge
  local anyone = budget == math.huge
  local rq = pool._rq
  prune_runnable(pool)
  local capped = pool._cap_job
  if capped and (rec.cap_held or pool._cap_held < pool._cap) then capped = nil end
  for i = rq.head, rq.tail do
    local job = rq[i]
    if job ~= capped and J.has_work(job) then
      if job.wq then anyone = false end
      local ch = next_chunk(pool, job, w, budget)
      if ch then
        if try_send_chunk(pool, job, w, ch) then return true end
        M.requeue(job, ch, w)
        return false, false
      end
      if job.err then return false, false end
      -- an iterator found empty with every chunk answered: nothing
      -- else would notice that the job is complete
      if J.source_done(job) then J.check_complete(pool, job) end
    end
  end
  return false, anyone
end

-- Send the stop records that found their lane full (forkpool.deaths).
local function send_pending_stops(pool)
  local left = false
  for w = 1, pool._n do
    local rec = pool._workers[w]
    if rec.pid and rec.stop_pending then
      rec.stop_pending = not pool._core:send_stop(w)
      left = left or rec.stop_pending
    end
  end
  pool._stops_pending = left
end

-- Debugging and specs: a table here gets counts of what dispatch does
-- (looked: feed-queue entries examined; sent: chunks sent) and, in .chunks,
-- one { job =, start =, count =, worker =, busy =, capped = } per chunk
-- sent (busy: live workers holding chunks once it was sent; capped, for a
-- chunk of the job saturation caps: those holding chunks of that job).
-- nil: nothing is recorded.
M.debug = nil

-- Give workers chunks of the jobs that have some, oldest job first, in two
-- rounds.  First every idle worker (holding no chunk) gets one.  Then, only
-- when no worker is idle, each gets its second (prefetched) chunk: work is
-- never queued behind a busy worker while another could start it now (an
-- apply_async that blocks does not hold up the next one; the tail of a map
-- with uneven task times stays short).  A worker still idle after the
-- first round found nothing it may take (ordered tasks pin chunks to
-- workers, a lifespan budget may be too small), so it does not hold back
-- the others; an empty slot does (fill is about to start a worker there).
-- Only the workers in the feed queues are looked at, and a round stops at
-- the first worker for which no job had a chunk at all (feed).
-- Returns true when a job failed or finished meanwhile (so the caller must
-- not wait for an event that may never come: a job that failed while being
-- dispatched, or one whose iterator turned out to be empty, has nothing to
-- wait for).
function M.dispatch(pool)
  local ends = pool._job_ends
  if pool._stops_pending then send_pending_stops(pool) end
  prune_runnable(pool)
  local rq = pool._rq
  if rq.head > rq.tail then return false end
  local workers, dbg = pool._workers, M.debug
  -- each queue is walked at most once around: a worker that got nothing
  -- goes to the back of its queue
  local q = pool._feed_idle
  for _ = 1, q.tail - q.head + 1 do
    if q.head > q.tail then break end
    local w = pop(q)
    local rec = workers[w]
    if dbg then dbg.looked = (dbg.looked or 0) + 1 end
    if rec.fq == "idle" then
      rec.fq = nil
      local sent, nobody = false, false
      if takes_work(rec) then sent, nobody = feed(pool, w) end
      M.note(pool, w)
      if not sent and nobody then break end
    end
  end
  if pool._vacant > 0 then return pool._job_ends ~= ends end
  q = pool._feed_room
  for _ = 1, q.tail - q.head + 1 do
    if q.head > q.tail then break end
    local w = pop(q)
    local rec = workers[w]
    if dbg then dbg.looked = (dbg.looked or 0) + 1 end
    if rec.fq == "room" then
      rec.fq = nil
      local nobody = false
      while takes_work(rec) and #rec.chunks < J.INFLIGHT do
        local sent, none = feed(pool, w)
        if not sent then nobody = none; break end
      end
      M.note(pool, w)
      if nobody then break end
    end
  end
  return pool._job_ends ~= ends
end

------------------------------------------------------------------------

-- An empty worker record (a slot with no process).
function M.empty_slot() return { chunks = {} } end

return M
