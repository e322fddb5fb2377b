-- forkpool.job: a job's state and life.  A job is one call of the map
-- family (map, imap, apply_async, ...): a source of items (an array, or an
-- iterator pulled lazily), a task function, and a sink for the results
-- (forkpool.sinks).  This module creates a job (the one place that lists
-- its fields), pulls chunks from its source, and ends it (finished or
-- failed).  Dispatch (forkpool.dispatch) sends its chunks; the event loop
-- (forkpool.events) answers them.
--
-- Books kept per job (the invariants the rest of the parent relies on):
--   * every item pulled from the source is in exactly one chunk, and every
--     chunk is in one place: the job's queue (or a worker queue when tasks
--     are ordered), a worker's list of chunks sent (pool._workers[w].chunks),
--     or answered.  job.pending counts items pulled and not answered.
--   * a failure is stored in job.err (never raised from the middle of event
--     handling) so the books stay true; whoever waits on the job raises it.
--   * items are read with raw access everywhere (the codec, forkpool.pack,
--     the workers' runner), so fresh and kept-alive workers see the same
--     items and no metamethod runs while a chunk is built.

local sinks = require "forkpool.sinks"
local lines = require "forkpool.lines"
local table_new = require "table.new"

local min, max, ceil, floor = math.min, math.max, math.ceil, math.floor

local M = {}

-- How many chunks a worker holds at once: one running, one queued, so it
-- never waits for the parent between chunks.
M.INFLIGHT = 2
-- Default chunking: about this many chunks per worker (mpire's rule) to
-- start with; a map over an array may then grow its chunks (job.grow).
local CHUNKS_PER_WORKER = 64

-- The default chunk size of n items on w workers (also what a saturated
-- map sizes its chunks by, for as many workers as CPUs: forkpool.chunking).
function M.default_chunk(n, w) return max(1, ceil(n / (w * CHUNKS_PER_WORKER))) end
-- A grown chunk holds at most 1 / (TAIL_SHARE * n_jobs) of the items not
-- yet sent, so that the end of the map stays balanced over the workers
-- whatever the items cost there.
M.TAIL_SHARE = 4

-- new(pool, kind, fn, source, total, opts, star, fname, level) -> job.
-- kind is a sink kind (forkpool.sinks); source an array (total: its
-- length) or an iterator (total: iterable_len or nil); opts the call's
-- checked options.  Options that do not fit the input raise, naming fname,
-- at level (as for error(), counted from the caller of new).
-- The workers' options of a job (what forkpool.run sees): timed = stamp
-- each item's start, star = items are argument lists, each = every item is
-- a call of its own whose error is caught (forkpool.batch), reduce = the
-- reducer of a map_reduce (the chunk's results are folded in the worker).  One shared,
-- read-only table per combination, so that equal options are the same
-- table (dispatch's setup cache compares them by identity).  A new option
-- the workers must see goes here.
local WOPTS = {}
local function wopts_for(timed, star, each, reduce)
  timed, star, each = not not timed, not not star, not not each
  -- (a reducer travels with the options: a table of its own per job)
  if reduce then return { timed = timed, star = star, each = each, reduce = reduce } end
  local k = (timed and 1 or 0) + (star and 2 or 0) + (each and 4 or 0)
  local w = WOPTS[k]
  if not w then
    w = { timed = timed, star = star, each = each }
    WOPTS[k] = w
  end
  return w
end
M.wopts_for = wopts_for

function M.new(pool, kind, fn, source, total, opts, star, fname, level)
  local n = pool._n
  pool._job = pool._job + 1
  -- Fields: written here unless said otherwise.
  local job = {
    id = pool._job,         -- key of pool._jobs and of the workers' setup cache
    kind = kind,            -- the sink's kind
    fn = fn, star = star or false,  -- task; star: each item is an argument list
    init = opts.worker_init, exit = opts.worker_exit,
    items = nil,            -- array source (read raw), or
    iter = nil,             -- iterator source
    lines = nil,            -- ... read as blocks of lines (forkpool.lines) when it is io.lines'
    total = total,          -- number of items when known
    next = 1,               -- index of the next item to pull (build_chunk)
    done = 0,               -- items answered (sink delivery)
    active = 0,             -- items pulled and not yet handed to the caller
    pending = 0,            -- items pulled and not yet answered
    chunk_no = 0,           -- chunks built so far (ordered tasks pin chunk k to a worker)
    queue = {},             -- chunks to (re)send, oldest first
    wq = nil,               -- order_tasks: per-worker queues instead of queue
    wq_n = 0,               -- chunks in those queues (dispatch, requeue)
    deaths = {},            -- death infos of workers lost running this job's items
    max_retries = opts.max_retries or 0,
    task_timeout = opts.task_timeout,
    init_timeout = opts.worker_init_timeout,
    -- What the workers' runner (forkpool.run) sees of the job (wopts_for):
    -- shipped once with the function (dispatch), handed to the runner with
    -- every chunk.
    wopts = wopts_for(opts.task_timeout ~= nil or pool._insights, star, false, opts.reducer),
    chunk_size = nil,       -- items per chunk (adaptive and growing jobs change it: forkpool.chunking)
    adaptive = false,       -- chunk size follows chunk round-trip times
    -- A map over an array with the default chunk size: chunks grow while
    -- the items prove fast (forkpool.chunking), never below min_chunk (the
    -- default size) and never past the tail bound (build_chunk).  grow_t,
    -- grow_done: the start of the current measuring window (dispatch).
    grow = false, min_chunk = nil, tail_div = nil, grow_t = nil, grow_done = nil,
    max_active = nil,       -- cap on job.active (max_tasks_active, or lazy windows)
    progress = nil,         -- progress bar
    sink = nil,             -- where results go (forkpool.sinks)
    -- Set later: pool (by events.submit), runnable (run queue membership:
    -- dispatch), exhausted / source_failed / source_error (build_chunk),
    -- setup_bytes (dispatch's setup cache), err (fail), finished (finish),
    -- cancelled (events.abandon), orphaned (an imap iterator collected),
    -- on_finish (apply_async's settle hook: forkpool.results).
  }
  if type(source) == "table" then job.items = source
  else
    job.iter = source
    -- the lines of a file: read in blocks, cut by the workers (not for
    -- starred jobs: their items must be argument tables)
    if not star then job.lines = lines.reader(source) end
  end
  local cs = opts.chunk_size
  if not cs and opts.n_splits then
    if not total then
      error(("bad option 'n_splits' to '%s' (the input's length is unknown: give iterable_len)")
        :format(fname), level + 1)
    end
    cs = max(1, ceil(total / opts.n_splits))
  end
  local default_size = false
  if not cs then
    if total then cs, default_size = M.default_chunk(total, n), true
    else cs, job.adaptive = 1, true end
  end
  job.chunk_size = cs
  local lazy = sinks.lazy[kind]
  -- Only an array source (pulling from an iterator has effects), results
  -- not taken lazily (imap's window stays what it was), no max_tasks_active
  -- (a chunk must fit in it) and no order_tasks (chunk k goes to worker
  -- k mod n: the chunks stay what that rule was given).
  -- And only when the tail bound leaves room to grow (not for apply_async,
  -- a job of one item, nor for maps too small to gain from it).
  if default_size and job.items and not lazy and not opts.max_tasks_active and not pool._order_tasks
    and floor(total / (M.TAIL_SHARE * n)) > cs then
    job.grow, job.min_chunk, job.tail_div = true, cs, M.TAIL_SHARE * n
  end
  if opts.max_tasks_active then
    if opts.max_tasks_active < cs then
      error(("bad option 'max_tasks_active' to '%s' (must be at least the chunk size, %d; got %d)")
        :format(fname, cs, opts.max_tasks_active), level + 1)
    end
    job.max_active = opts.max_tasks_active
    job.adaptive = false
  elseif job.iter or lazy then
    job.max_active = cs * n * M.INFLIGHT
  else
    job.max_active = math.huge
  end
  job.sink = sinks.new(kind, total, opts)
  if pool._order_tasks then
    job.wq = {}
    for w = 1, n do job.wq[w] = {} end
  end
  if opts.progress_bar then
    local po = opts.progress_bar_options or {}
    job.progress = require("forkpool.progress").new{
      total = total, desc = po.desc, stream = po.stream, min_interval = po.min_interval,
      width = po.width,
    }
  end
  return job
end

-- Is there nothing more to pull from the job's source?
local function source_done(job)
  if job.items then return job.next > job.total end
  return job.exhausted or (job.total and job.next > job.total)
end
M.source_done = source_done

-- Are chunks waiting to be (re)sent?
local function has_queued(job)
  if #job.queue > 0 then return true end
  return job.wq_n > 0
end

-- Has the job something to send (pull or resend)?
function M.has_work(job)
  return not job.err and not job.finished and (not source_done(job) or has_queued(job))
end

-- Does worker record rec hold a chunk of job (sent, not answered)?
function M.holds_chunk_of(rec, job)
  for _, ch in ipairs(rec.chunks) do
    if ch.job == job then return true end
  end
  return false
end

-- Saturation's cap (forkpool.chunking): at most cap workers hold chunks of
-- job (nil: no cap).  The cap is the job's own: other jobs (an apply_async
-- beside the map) still get the idle workers.  pool._cap_held counts the
-- live workers holding a chunk of pool._cap_job (rec.cap_held: this one
-- does; kept by forkpool.dispatch's send_chunk, note and vacate), counted
-- afresh here whenever the capped job changes (rare: a reading that flips,
-- a job that ends).
function M.set_cap(pool, cap, job)
  if not cap then job = nil end
  pool._cap, pool._cap_job = cap, job
  local held = 0
  for w = 1, pool._n do
    local rec = pool._workers[w]
    local has = job ~= nil and rec.pid ~= nil and M.holds_chunk_of(rec, job)
    rec.cap_held = has
    if has then held = held + 1 end
  end
  pool._cap_held = held
end

-- Store the job's failure (the first one wins) and count it as an end.
function M.fail(job, err)
  if not job.err then
    job.err = err
    local pool = job.pool
    if pool then
      pool._job_ends = pool._job_ends + 1
      if pool._cap_job == job then M.set_cap(pool, nil) end
    end
    if job.on_finish then job.on_finish(job) end
  end
end

-- Pull up to count items from an iterator into its[1..], stopping at the
-- first nil; returns how many.  (When the iterator raises, its holds the
-- items before the error, with no hole: #its counts them.)
local function pull(iter, its, count)
  for k = 1, count do
    local v = iter()
    if v == nil then return k - 1 end
    its[k] = v
  end
  return count
end

-- Build the next chunk from the job's source (nil when it has none now).
-- limit: the most items this chunk may have.  An iterator that raises ends
-- the source: a lazy job (imap) first delivers the items pulled before the
-- error, then its iterator raises it (job.source_failed, job.source_error),
-- as CPython's imap does; any other job fails at once.
function M.build_chunk(job, limit)
  if source_done(job) then return nil end
  local cs = job.chunk_size
  if job.grow and cs > job.min_chunk then
    cs = max(job.min_chunk, min(cs, floor((job.total - job.next + 1) / job.tail_div)))
  end
  local count = min(cs, limit, job.max_active - job.active)
  if job.total then count = min(count, job.total - job.next + 1) end
  if count <= 0 then return nil end
  -- chunk fields: job, start (first item index), count, attempts (deaths
  -- while running it), no (sequence number), items (pulled items, for
  -- iterator sources: no worker has them in memory, and retries need them;
  -- or text, the block of lines they are, for a job.lines source),
  -- fn (the id the worker runs it with) and sent_at (adaptive jobs): dispatch
  local ch = { job = job, start = job.next, count = count, attempts = 0 }
  if job.iter then
    -- one protected call per chunk, not per item; the items pulled
    -- before an error are kept
    local its, text
    local ok, n_or_err
    if job.lines then
      -- a block of lines (text), or lines as items (NUL bytes), or none
      local t, a, b
      ok, t, a, b = pcall(job.lines.next_block, job.lines, count)
      if not ok then n_or_err, its = t, {}
      elseif t then text, n_or_err = t, a
      elseif a then its, n_or_err = a, b
      else n_or_err = 0 end
    else
      its = table_new(count, 0)
      ok, n_or_err = pcall(pull, job.iter, its, count)
    end
    local n = ok and n_or_err or #its
    if not ok then
      job.exhausted = true
      if sinks.lazy[job.kind] then
        job.source_failed, job.source_error = true, n_or_err
      else
        M.fail(job, { source_error = n_or_err })
      end
    elseif n < count then
      job.exhausted = true
    end
    if n == 0 then return nil end
    ch.count, ch.items, ch.text = n, its, text
  end
  job.next = job.next + ch.count
  job.active = job.active + ch.count
  job.pending = job.pending + ch.count
  ch.no = job.chunk_no + 1
  job.chunk_no = ch.no
  return ch
end

-- Put a chunk back at the front of its job's queue (or of worker w's queue
-- when tasks are ordered).  The caller makes the job runnable.
function M.requeue(job, ch, w)
  if job.wq then
    table.insert(job.wq[w], 1, ch)
    job.wq_n = job.wq_n + 1
  else
    table.insert(job.queue, 1, ch)
  end
end

-- Drop finished jobs from pool._order (lazily: only when they are many).
local function compact_order(pool)
  local order, n = pool._order, 0
  for i = 1, #order do
    local id = order[i]
    order[i] = nil
    if pool._jobs[id] then n = n + 1; order[n] = id end
  end
  pool._active = n
end

-- The job is over (done, or failed and abandoned): forget it.
function M.finish(pool, job)
  if job.finished then return end
  job.finished = true
  pool._job_ends = pool._job_ends + 1
  if pool._cap_job == job then M.set_cap(pool, nil) end -- (forkpool.chunking)
  pool._jobs[job.id] = nil
  pool._stages[job.id] = nil
  pool._active = pool._active - 1
  if #pool._order > 2 * pool._active + 16 then compact_order(pool) end
  if job.task_timeout or job.init_timeout then pool._timed_jobs = pool._timed_jobs - 1 end
  if job.progress then
    pool._progress_jobs = pool._progress_jobs - 1
    if not job.err then
      job.progress:set_total(job.done)
      job.progress:update(job.done)
    end
    job.progress:close()
  end
  if job.on_finish then job.on_finish(job) end
end

-- Finish the job when everything of it is done.
function M.check_complete(pool, job)
  if job.finished or job.err then return end
  if source_done(job) and job.pending == 0 and not has_queued(job) then
    M.finish(pool, job)
  end
end

-- The oldest active job (pool._order is compacted lazily, so it may still
-- list finished ones), or nil.
function M.oldest(pool)
  for _, id in ipairs(pool._order) do
    local j = pool._jobs[id]
    if j then return j end
  end
  return nil
end

return M
