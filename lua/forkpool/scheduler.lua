-- forkpool.scheduler: the parent's event loop.  It hands chunks of items to
-- workers, reacts to what comes back (results, errors, deaths, timeouts,
-- Ctrl-C) and keeps every job's books.  The public API (forkpool/init.lua)
-- builds jobs and calls submit / step / finish here.
--
-- A job is one map-family call.  Its source is an array (items) or an
-- iterator (iter, pulled lazily); its sink depends on its kind:
--   "map"            results[i] in input order (the C side decodes results
--                    straight into job.stage, which is the results table)
--   "unordered"      appended to job.out in completion order
--   "imap"           yielded in input order by an iterator (lazy)
--   "imap_unordered" yielded in completion order by an iterator (lazy)
--   "apply"          one result (apply, apply_async)
--
-- Bookkeeping invariants:
--   * pool._workers[w] describes slot w.  rec.pid is set while a process
--     lives in the slot (until its "exit" event has been handled).
--   * rec.chunks lists the chunks sent to that process and not answered;
--     every chunk gets exactly one answer, or the process dies and its
--     chunks are requeued or given up.
--   * pool._jobs holds the active jobs (in pool._order, oldest first);
--     pool._stages maps their ids to the tables results are decoded into.
--   * A failure is stored in job.err (never raised from the middle of event
--     handling) so the books stay true; whoever waits on the job raises it.
--   * Every chunk built is counted in job.pending until it is answered or
--     given up with its job; an error raised while building or sending one
--     (see S.dispatch) requeues it and fails the job, so a failed job is
--     never left waiting for a chunk that no worker holds.
--   * Items are read with raw access (rawget) everywhere: by the codec, by
--     worker.pack and by the workers' chunk runner, so fresh and kept-alive
--     workers see the same items and no metamethod runs while a chunk is
--     built.

local core = require "forkpool.core"
local errors = require "forkpool.errors"
local worker = require "forkpool.worker"

local min, max, floor = math.min, math.max, math.floor
local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local table_new = require "table.new"

local S = {}

-- How many chunks a worker holds at once: one running, one queued, so it
-- never waits for the parent between chunks.
local INFLIGHT = 2
-- How long a wait may sleep before timeouts are looked at again.
local MAX_SLEEP = 1.0
-- A worker keeps at most this many shipped functions.
local MAX_FNS = 4
-- Adaptive chunks (iterators of unknown length): grow while a chunk comes
-- back faster than this, shrink when slower than SLOW_CHUNK.
local FAST_CHUNK, SLOW_CHUNK, MAX_ADAPTIVE = 0.002, 0.05, 4096

S.INFLIGHT = INFLIGHT

------------------------------------------------------------------------
-- Module map (values reachable from package.loaded travel by name)
------------------------------------------------------------------------

-- Is t plain data: a table without a metatable holding only numbers,
-- strings, booleans and plain tables?  Such a table travels by value, so a
-- worker sees what the parent holds now (a kept-alive worker's copy is
-- stale; a table put into package.loaded by hand cannot be required).
-- memo: table -> verdict, shared across one build (a table being looked at
-- counts as plain, so cycles end).
local function plain_data(t, memo)
  local known = memo[t]
  if known ~= nil then return known end
  if getmetatable(t) ~= nil then memo[t] = false; return false end
  memo[t] = true
  for k, v in next, t do
    local tk, tv = type(k), type(v)
    if (tk == "table" and not plain_data(k, memo)) or (tv == "table" and not plain_data(v, memo))
        or (tk ~= "table" and tk ~= "number" and tk ~= "string" and tk ~= "boolean")
        or (tv ~= "table" and tv ~= "number" and tv ~= "string" and tv ~= "boolean") then
      memo[t] = false
      return false
    end
  end
  return true
end
S._plain_data = plain_data
-- Cold code, run interpreted: with this recursive walk JIT-compiled,
-- Debian's LuaJIT 2.1.0-beta3 crashed now and then (SIGSEGV in machine
-- code, in about 1 run in 10 of reliability_spec's "cannot be sent" tests;
-- none in 40 runs with it off).  Suspected, not proven, to be the cause.
if jit then jit.off(plain_data) end

-- Only functions and values that cannot be copied (modules with functions,
-- userdata, tables with metatables) travel by name: modules themselves
-- ("cjson"), then their fields ("string\0format").  Plain data travels by
-- value.  _G contributes only C functions: a user's global table or Lua
-- function must travel by value, not as the worker's stale copy.
local function build_modmap()
  local m, memo = {}, {}
  local function by_name(v, t)
    return t == "function" or t == "userdata" or (t == "table" and not plain_data(v, memo))
  end
  for name, mod in pairs(package.loaded) do
    local t = type(mod)
    if m[mod] == nil and by_name(mod, t) then
      m[mod] = name
    end
  end
  for name, mod in pairs(package.loaded) do
    if type(mod) == "table" then
      local is_g = (mod == _G)
      for k, v in pairs(mod) do
        local t = type(v)
        if type(k) == "string" and m[v] == nil and by_name(v, t) then
          if not is_g or (t == "function" and debug.getinfo(v, "S").what == "C") then
            m[v] = name .. "\0" .. k
          end
        end
      end
    end
  end
  return m
end

-- Rebuilt only when an entry of package.loaded was added, removed or
-- replaced (its names and values are remembered: a count alone misses a
-- module dropped and another added), or when asked (a value was refused).
local modmap_cache, modmap_seen, modmap_size
local function get_modmap(fresh)
  local n, same = 0, modmap_seen ~= nil
  if same then
    for name, mod in pairs(package.loaded) do
      n = n + 1
      if modmap_seen[name] ~= mod then same = false; break end
    end
  end
  if fresh or not same or n ~= modmap_size then
    modmap_cache, modmap_seen, modmap_size = build_modmap(), {}, 0
    for name, mod in pairs(package.loaded) do
      modmap_seen[name] = mod
      modmap_size = modmap_size + 1
    end
  end
  return modmap_cache
end
if jit then jit.off(build_modmap); jit.off(get_modmap) end

------------------------------------------------------------------------
-- Small helpers
------------------------------------------------------------------------

local function empty_slot() return { chunks = {} } end
S.empty_slot = empty_slot

function S.live_workers(pool)
  local n = 0
  for w = 1, pool._n do if pool._workers[w].pid then n = n + 1 end end
  return n
end

local function fail(job, err)
  if not job.err then
    job.err = err
    if job.pool then job.pool._job_ends = job.pool._job_ends + 1 end
    if job.on_finish then job.on_finish(job) end
  end
end
S.fail = fail

local function worker_error(kind, w, rec, index, err, extra)
  local f = {
    worker_id = w, pid = rec and rec.pid, index = (index and index > 0) and index or nil,
    message = err and err.message, traceback = err and err.traceback,
    value = err and err.value, path = err and err.path,
  }
  if extra then for k, v in pairs(extra) do f[k] = v end end
  return errors.new(kind, f)
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
S.death_error = death_error

-- Find and remove the chunk (job id, start) from a worker's list.
local function take_chunk(rec, jobid, start)
  if not rec.chunks then return nil end
  for i, ch in ipairs(rec.chunks) do
    if ch.job.id == jobid and ch.start == start then
      table.remove(rec.chunks, i)
      return ch
    end
  end
  return nil
end

-- Resident memory of process pid in bytes (nil when it cannot be read).
local page_size
local function rss_bytes(pid)
  local f = io.open("/proc/" .. pid .. "/statm")
  if not f then return nil end
  local _, resident = f:read("*n", "*n")
  f:close()
  if not resident then return nil end
  if not page_size then
    local ffi = require "ffi"
    pcall(ffi.cdef, "long sysconf(int name);")
    page_size = tonumber(ffi.C.sysconf(30)) -- _SC_PAGESIZE
    if not page_size or page_size <= 0 then page_size = 4096 end
  end
  return resident * page_size
end
S.rss_bytes = rss_bytes

-- Retire the worker in slot w gracefully: it gets no more chunks, runs
-- those it holds, then worker_exit (its exit result is kept), and leaves;
-- its slot is refilled while there is work.  reason: "memory", "idle".
-- The stop record goes out now, or from dispatch when the lane is full.
local function retire(pool, w, reason)
  local rec = pool._workers[w]
  if not rec.pid or rec.stopping or rec.killed or rec.bye then return end
  rec.stopping, rec.retired = true, reason
  rec.stop_pending = not pool._core:send_stop(w)
  if rec.stop_pending then pool._stops_pending = true end
  if pool._on_retire then pool._on_retire(w, reason) end
end
S.retire = retire

-- Send the stop records that found their lane full.
function S.send_pending_stops(pool)
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

-- After a chunk came back: a worker over worker_max_memory is replaced.
local function check_memory(pool, w, rec)
  local limit = pool._max_memory
  if limit and rec.pid and not rec.stopping and not rec.bye and not rec.killed then
    local rss = rss_bytes(rec.pid)
    if rss and rss > limit then retire(pool, w, "memory") end
  end
end

-- Whether item index of job jobid is in a chunk the worker still holds.
local function holds_item(rec, jobid, index)
  if not index then return false end
  for _, ch in ipairs(rec.chunks) do
    if ch.job.id == jobid and index >= ch.start and index < ch.start + ch.count then return true end
  end
  return false
end

-- Put a chunk back at the front of its job's queue (or its worker's queue
-- when tasks are ordered).
-- pool._rq: a queue (rq.head .. rq.tail) of the jobs that may have chunks
-- to send, oldest first.  Jobs whose work is all sent are popped from the
-- front as dispatch meets them there; one found in the middle is skipped
-- and popped when it reaches the front.
local function make_runnable(job)
  local pool = job.pool
  if pool and not job.runnable and not job.finished then
    job.runnable = true
    local rq = pool._rq
    rq.tail = rq.tail + 1
    rq[rq.tail] = job
  end
end

local function requeue(job, ch, w)
  if job.wq then
    table.insert(job.wq[w], 1, ch)
  else
    table.insert(job.queue, 1, ch)
  end
  make_runnable(job)
end

------------------------------------------------------------------------
-- Jobs: sources, sinks, completion
------------------------------------------------------------------------

-- Is there nothing more to pull from the job's source?
local function source_done(job)
  if job.items then return job.next > job.total end
  return job.exhausted or (job.total and job.next > job.total)
end

local function has_queued(job)
  if #job.queue > 0 then return true end
  if job.wq then
    for w = 1, #job.wq do if #job.wq[w] > 0 then return true end end
  end
  return false
end

-- Does the job still need workers (something to send, or to wait for)?
local function has_work(job)
  return not job.err and not job.finished and (not source_done(job) or has_queued(job))
end

-- Build the next chunk from the job's source (nil when it has none now).
-- limit: the most items this chunk may have.  An iterator that raises ends
-- the source: a lazy job (imap) first delivers the items pulled before the
-- error, then its iterator raises it (job.source_failed, job.source_error),
-- as CPython's imap does; any other job fails at once.
local function build_chunk(job, limit)
  if source_done(job) then return nil end
  local count = min(job.chunk_size, limit, job.max_active - job.active)
  if job.total then count = min(count, job.total - job.next + 1) end
  if count <= 0 then return nil end
  local ch = { job = job, start = job.next, count = count, attempts = 0 }
  if job.iter then
    -- pull lazily; the chunk keeps its items (for retries, and because
    -- no worker has them in memory)
    local its, n = {}, 0
    for _ = 1, count do
      local ok, v = pcall(job.iter)
      if not ok then
        job.exhausted = true
        if job.kind == "imap" or job.kind == "imap_unordered" then
          job.source_failed, job.source_error = true, v
        else
          fail(job, { source_error = v })
        end
        break
      end
      if v == nil then job.exhausted = true; break end
      n = n + 1
      its[n] = v
    end
    if n == 0 then return nil end
    ch.count, ch.items = n, its
  end
  job.next = job.next + ch.count
  job.active = job.active + ch.count
  job.pending = job.pending + ch.count
  ch.no = job.chunk_no + 1
  job.chunk_no = ch.no
  return ch
end

-- The next chunk for worker w, within the worker's lifespan budget.
local function next_chunk(pool, job, w, budget)
  if job.wq then
    -- ordered tasks: chunk i goes to worker ((i-1) mod n) + 1
    local q = job.wq[w]
    while #q == 0 do
      local ch = build_chunk(job, math.huge)
      if not ch then break end
      local to = (ch.no - 1) % pool._n + 1
      local tq = job.wq[to]
      tq[#tq + 1] = ch
    end
    if #q == 0 then return nil end
    if q[1].count > budget then return nil end
    return table.remove(q, 1), true
  end
  local q = job.queue
  if #q > 0 then
    local ch = q[1]
    if ch.count <= budget then return table.remove(q, 1), true end
    return nil
  end
  local ch = build_chunk(job, budget)
  return ch, false
end

-- Hand a finished chunk's results to the job's sink.
-- job.pending counts items pulled and not yet answered; job.active those
-- pulled and not yet handed to the caller (for imap, results wait in the
-- iterator until consumed, and count against max_tasks_active until then).
local function deliver(pool, job, ch)
  job.done = job.done + ch.count
  job.pending = job.pending - ch.count
  local kind = job.kind
  if kind ~= "imap" and kind ~= "imap_unordered" then job.active = job.active - ch.count end
  if kind == "unordered" then
    local r, out, n = job.stage[ch.start], job.out, job.out_n
    job.stage[ch.start] = nil
    for k = 1, ch.count do out[n + k] = r[k] end
    job.out_n = n + ch.count
  elseif kind == "imap" then
    job.done_ranges[ch.start] = ch.count
  elseif kind == "imap_unordered" then
    -- a queue of (start, count) pairs; the reader clears what it took, so
    -- the length operator would be ambiguous: keep the tail explicitly
    local t = job.ready_tail
    job.ready_q[t], job.ready_q[t + 1] = ch.start, ch.count
    job.ready_tail = t + 2
  end
  if job.adaptive and ch.sent_at then
    local dt = core.now() - ch.sent_at
    if dt < FAST_CHUNK then job.chunk_size = min(job.chunk_size * 2, MAX_ADAPTIVE)
    elseif dt > SLOW_CHUNK then job.chunk_size = max(1, floor(job.chunk_size / 2)) end
    job.max_active = max(job.max_active, job.chunk_size * pool._n * INFLIGHT)
  end
  if job.progress then job.progress:update(job.done) end
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

local function finish_job(pool, job)
  if job.finished then return end
  job.finished = true
  pool._job_ends = pool._job_ends + 1
  pool._jobs[job.id] = nil
  pool._stages[job.id] = nil
  pool._active = pool._active - 1
  if #pool._order > 2 * pool._active + 16 then compact_order(pool) end
  if job.task_timeout or job.init_timeout then pool._timed_jobs = pool._timed_jobs - 1 end
  if job.progress then pool._progress_jobs = pool._progress_jobs - 1 end
  if job.progress then
    if job.err then job.progress:close() else
      job.progress:set_total(job.done)
      job.progress:update(job.done)
      job.progress:close()
    end
  end
  if job.on_finish then job.on_finish(job) end
end
S.finish_job = finish_job

-- Is everything of the job done?
local function check_complete(pool, job)
  if job.finished or job.err then return end
  if source_done(job) and job.pending == 0 and not has_queued(job) then
    finish_job(pool, job)
  end
end

------------------------------------------------------------------------
-- Starting, shipping to and killing workers
------------------------------------------------------------------------

-- Start a worker process in slot w for `job` (its function and, for array
-- sources, its items reach the child through fork).  Returns nil or a
-- spawn error object.
local function spawn_worker(pool, w, job)
  local ctx = {
    wid = w, job = job.id, fn = job.fn, items = job.items,
    init = job.init, exit = job.exit,
    shared = pool._shared, has_shared = pool._shared ~= nil,
    use_state = pool._use_state, pass_id = pool._pass_id,
    lifespan = pool._lifespan, cpus = pool._cpus and pool._cpus[w],
    idle_timeout = pool._keep_alive and pool._idle_timeout or nil,
    insights = pool._insights,
    make_runner = worker.make_runner,
    cdata_kind = worker.cdata_kind, cdata_new = worker.cdata_new,
    pack_results = worker.pack_results, unpack = worker.unpack,
  }
  local pid, msg, errno = pool._core:spawn(w, ctx)
  if not pid then
    return errors.new("spawn", { message = msg, worker_id = w, errno = errno })
  end
  pool._workers[w] = {
    pid = pid, born_job = job.id, chunks = {}, dispatched = 0, fns = {},
    init_timeout = job.init_timeout,
  }
  if pool._on_spawn then pool._on_spawn(w, pid) end
  return nil
end
S.spawn_worker = spawn_worker

-- The wire encoding of the job's function and worker_exit, made once per
-- job; equal bytes mean a worker already has exactly this function with
-- these upvalue values.
local function job_setup_bytes(pool, job)
  if job.setup_bytes then return job.setup_bytes end
  local v = { fn = job.fn, exit = job.exit }
  local bytes, _, msg, path = pool._core:encode(v, get_modmap())
  if not bytes then bytes, _, msg, path = pool._core:encode(v, get_modmap(true)) end
  if not bytes then
    msg = msg:gsub("^%.", "")
    fail(job, errors.new("marshal", { message = "cannot send the task function: " .. msg
      .. "; pass such values through worker_init or shared_objects",
      path = path and (path:gsub("^%.", "")) }))
    return nil
  end
  job.setup_bytes = bytes
  return bytes
end

-- The id under which worker w runs the job's function: the job itself for
-- a worker forked for it, else a function shipped now or earlier.  Returns
-- nil when it cannot be shipped now (lane full) or at all (job.err).
local function setup_worker(pool, w, job)
  local rec = pool._workers[w]
  if rec.born_job == job.id then return job.id end
  local bytes = job_setup_bytes(pool, job)
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
  local ok, _, msg = pool._core:send_setup(w, job.id, drop_at and fns[drop_at].id or 0, bytes)
  if ok == nil then
    fail(job, errors.new("marshal", { message = msg, worker_id = w }))
    return nil
  end
  if not ok then return nil end
  if drop_at then table.remove(fns, drop_at) end
  fns[#fns + 1] = { bytes = bytes, id = job.id }
  return job.id
end

-- Send one chunk to worker w.  Returns true when sent.
local function send_chunk(pool, job, w, ch)
  local rec = pool._workers[w]
  local fn = setup_worker(pool, w, job)
  if not fn then return false end
  ch.fn = fn
  local flags = (job.timed and "t" or "") .. (job.star and "s" or "")
  local ok, _, msg, path
  -- items the worker does not have in memory: packed when all are scalars
  local addr, len
  if not job.star and (ch.items or rec.born_job ~= job.id) then
    if ch.items then addr, len = worker.pack(ch.items, 1, ch.count)
    else addr, len = worker.pack(job.items, ch.start, ch.count) end
  end
  if addr then
    ok, _, msg = pool._core:send_chunk_packed(w, job.id, fn, ch.start, ch.count, addr, len, flags)
  elseif ch.items then
    ok, _, msg, path = pool._core:send_chunk(w, job.id, fn, ch.start, ch.count, ch.items,
      get_modmap(), flags, 1)
  elseif rec.born_job == job.id then
    ok, _, msg = pool._core:send_chunk(w, job.id, fn, ch.start, ch.count, nil, nil, flags)
  else
    ok, _, msg, path = pool._core:send_chunk(w, job.id, fn, ch.start, ch.count, job.items,
      get_modmap(), flags)
  end
  if ok == nil then
    -- (path nil: the lane refused the record, e.g. its header was corrupted)
    fail(job, errors.new("marshal", { message = msg, path = path, worker_id = not path and w or nil,
      index = tonumber((path or ""):match("^item%[(%d+)%]")) }))
    return false
  end
  if ok then
    rec.chunks[#rec.chunks + 1] = ch
    rec.dispatched = rec.dispatched + ch.count
    if job.adaptive then ch.sent_at = core.now() end
  end
  return ok
end

local function sendable(job)
  return not job.finished and not job.err and (not source_done(job) or has_queued(job))
end

-- Pop the jobs with nothing left to send from the front of the queue.
local function prune_runnable(pool)
  local rq = pool._rq
  while rq.head <= rq.tail and not sendable(rq[rq.head]) do
    rq[rq.head].runnable = false
    rq[rq.head] = nil
    rq.head = rq.head + 1
  end
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
  fail(job, e)
  return false
end

-- Can worker slot w take chunks now?
local function takes_work(rec)
  return rec.pid and not rec.bye and not rec.killed and not rec.stopping
end

-- Send worker w one chunk of the oldest job that has one it may take.
-- Returns true when one was sent.
local function feed(pool, w)
  local rec = pool._workers[w]
  local budget = pool._lifespan and (pool._lifespan - rec.dispatched) or math.huge
  local rq = pool._rq
  prune_runnable(pool)
  for i = rq.head, rq.tail do
    local job = rq[i]
    if sendable(job) then
      local ch = next_chunk(pool, job, w, budget)
      if ch then
        if try_send_chunk(pool, job, w, ch) then return true end
        requeue(job, ch, w)
        return false
      end
      if job.err then return false end
      -- an iterator found empty with every chunk answered: nothing
      -- else would notice that the job is complete
      if source_done(job) then check_complete(pool, job) end
    end
  end
  return false
end

-- Give workers chunks of the jobs that have some, oldest job first, in two
-- rounds.  First every idle worker (holding no chunk) gets one.  Then, only
-- when no worker is idle, each gets its second (prefetched) chunk: work is
-- never queued behind a busy worker while another could start it now (an
-- apply_async that blocks does not hold up the next one; the tail of a map
-- with uneven task times stays short).  A worker still idle after the
-- first round found nothing it may take (ordered tasks pin chunks to
-- workers, a lifespan budget may be too small), so it does not hold back
-- the others; an empty slot does (fill_workers is about to start a worker
-- there).
-- Returns true when a job failed or finished meanwhile (so the caller must
-- not wait for an event that may never come: a job that failed while being
-- dispatched, or one whose iterator turned out to be empty, has nothing to
-- wait for).
function S.dispatch(pool)
  local ends = pool._job_ends
  if pool._stops_pending then S.send_pending_stops(pool) end
  prune_runnable(pool)
  local rq = pool._rq
  if rq.head > rq.tail then return false end
  local workers, empty_slot_seen = pool._workers, false
  for w = 1, pool._n do
    local rec = workers[w]
    if not rec.pid then
      empty_slot_seen = true
    elseif takes_work(rec) and #rec.chunks == 0 then
      feed(pool, w)
    end
  end
  if empty_slot_seen then return pool._job_ends ~= ends end
  for w = 1, pool._n do
    while takes_work(workers[w]) and #workers[w].chunks < INFLIGHT do
      if not feed(pool, w) then break end
    end
  end
  return pool._job_ends ~= ends
end

-- Make sure every slot has a worker (spawning where empty) while some job
-- has work.  Workers are born for the oldest job with work.
function S.fill_workers(pool)
  local birth
  local rq = pool._rq
  for i = rq.head, rq.tail do
    if has_work(rq[i]) then birth = rq[i]; break end
  end
  if not birth then return end
  for w = 1, pool._n do
    if not pool._workers[w].pid then
      local err = spawn_worker(pool, w, birth)
      if err then
        fail(birth, err)
        return
      end
      -- give it work before forking the next one: the first result then
      -- waits for one fork, not n_jobs of them (a fork of a big parent
      -- costs milliseconds)
      if w < pool._n then S.dispatch(pool) end
    end
  end
end

-- Kill the live workers for which pick(rec) is true (all when pick is nil)
-- and wait until they are reaped; no worker_exit.  Other events that arrive
-- meanwhile are handled normally.
function S.kill_workers(pool, pick)
  local c = pool._core
  local victims = {}
  for w = 1, pool._n do
    local rec = pool._workers[w]
    if rec.pid and (not pick or pick(rec)) then
      c:kill(w, core.SIGKILL)
      rec.killed = rec.killed or { reason = "killed" }
      victims[w] = true
    end
  end
  local function pending()
    for w in pairs(victims) do if pool._workers[w].pid then return true end end
    return false
  end
  -- SIGKILL cannot be ignored: each wait returns as soon as one is reaped
  local deadline = core.now() + 30
  while pending() and core.now() < deadline do
    local kind, w, a, b, cnt, idx, value = c:poll(pool._stages, 1)
    if kind ~= "timeout" and kind ~= "eintr" and kind ~= "interrupted" then
      S.handle_event(pool, kind, w, a, b, cnt, idx, value)
    end
  end
end

------------------------------------------------------------------------
-- Events
------------------------------------------------------------------------

-- The process in slot w is gone (event "exit").  Decide what it means for
-- each job it held chunks of: nothing (it said goodbye, or it died between
-- items), a timeout we caused, or a death that fails or retries the job.
local function on_worker_exit(pool, w, death)
  local rec = pool._workers[w]
  pool._workers[w] = empty_slot()
  if pool._on_exit then pool._on_exit(w, rec, death) end
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
    for i = #list, 1, -1 do requeue(job, list[i], w) end
  end
  -- the job whose item the worker was running when it died
  local culprit = death.job and pool._jobs[death.job]
  if culprit and not holds_item(rec, culprit.id, death.index) then culprit = nil end

  if rec.killed then
    for job, list in pairs(held_by) do
      if rec.killed.reason == "timeout" and job.id == rec.killed.job then
        fail(job, errors.new("timeout", {
          worker_id = w, pid = death.pid, phase = rec.killed.phase, index = rec.killed.index,
          message = ("%s took longer than %gs%s; worker %d was killed"):format(
            rec.killed.phase, rec.killed.limit,
            rec.killed.index and rec.killed.index > 0 and (" (item " .. rec.killed.index .. ")") or "", w),
        }))
      else
        give_back(job, list)
      end
    end
    if rec.killed.reason == "timeout" and rec.killed.phase ~= "task" then
      local job = pool._jobs[rec.killed.job]
      if job then
        fail(job, errors.new("timeout", {
          worker_id = w, pid = death.pid, phase = rec.killed.phase,
          message = ("%s took longer than %gs; worker %d was killed"):format(
            rec.killed.phase, rec.killed.limit, w),
        }))
      end
    end
  elseif rec.bye and rec.bye ~= "init_failed" then
    -- a planned exit (lifespan, stop): nothing it held was lost
    for job, list in pairs(held_by) do give_back(job, list) end
  elseif not rec.bye then
    local info = death_info(w, death)
    if not rec.ready or death.phase == "worker_exit" then
      -- died starting up (or leaving): every job it served fails
      local any = false
      for job in pairs(held_by) do fail(job, death_error(w, death, { info })); any = true end
      if not any then
        for _, id in ipairs(pool._order) do
          local job = pool._jobs[id]
          if job and (job.id == rec.born_job or has_work(job)) then
            job.deaths[#job.deaths + 1] = info
            fail(job, death_error(w, death, job.deaths))
          end
        end
      end
    else
      for job, list in pairs(held_by) do
        if job == culprit then
          job.deaths[#job.deaths + 1] = info
          local over = job.max_retries == 0 or #job.deaths > (job.max_retries + 1) * pool._n
          for _, ch in ipairs(list) do
            if death.index >= ch.start and death.index < ch.start + ch.count then
              ch.attempts = ch.attempts + 1
              if ch.attempts > job.max_retries then over = true end
            end
          end
          if over then
            fail(job, death_error(w, death, job.deaths))
          else
            give_back(job, list)
          end
        else
          -- it died between this job's items: an innocent bystander
          give_back(job, list)
        end
      end
      if not culprit then
        -- died between items, holding nothing started: count it against
        -- runaway loops only
        pool._free_deaths = (pool._free_deaths or 0) + 1
        if pool._free_deaths > 8 * pool._n then
          for job in pairs(held_by) do fail(job, death_error(w, death, { info })) end
        end
      end
    end
  end
  -- replace it while some job has work
  S.fill_workers(pool)
end

-- Handle one event from core:poll.
function S.handle_event(pool, kind, w, ejob, start, _count, index, value)
  local rec = w and pool._workers[w]
  local job = type(ejob) == "number" and pool._jobs[ejob] or nil
  if kind == "results" then
    local ch = take_chunk(rec, ejob, start)
    if ch and job and ch.job == job and not value then
      deliver(pool, job, ch)
      check_complete(pool, job)
    end
    if pool._max_memory then check_memory(pool, w, rec) end
  elseif kind == "cancelled" then
    local ch = take_chunk(rec, ejob, start)
    if ch and job and ch.job == job and not job.err then
      -- cancelled but still wanted (cannot happen today): run it again
      requeue(job, ch, w)
    end
  elseif kind == "task_error" or kind == "marshal_error" then
    local ch = take_chunk(rec, ejob, start)
    if ch and job and ch.job == job then
      fail(job, worker_error(kind == "task_error" and "task" or "marshal", w, rec, index, value))
    end
  elseif kind == "setup_error" then
    if job then
      fail(job, worker_error("marshal", w, rec, nil, value, {
        message = "cannot load the task function in worker " .. w .. ": " .. tostring(value and value.message),
      }))
    end
  elseif kind == "init_error" then
    local j = pool._jobs[rec.born_job]
    if not j then
      -- the job it was forked for is over: blame the oldest active job
      -- (pool._order is compacted lazily, so it may still list finished ones)
      for _, id in ipairs(pool._order) do
        j = pool._jobs[id]
        if j then break end
      end
    end
    if j then fail(j, worker_error("worker_init", w, rec, nil, value, { phase = "worker_init" })) end
  elseif kind == "exit_error" then
    pool._exit_error = pool._exit_error
      or worker_error("worker_exit", w, rec, nil, value, { phase = "worker_exit" })
  elseif kind == "exit_result" then
    pool._exit_results[#pool._exit_results + 1] = value
  elseif kind == "ready" then
    rec.ready = true
    if pool._on_ready then pool._on_ready(w) end
  elseif kind == "bye" then
    rec.bye = value
    if value == "stop" and not rec.stopping then
      -- unasked: it was idle for idle_timeout seconds
      rec.retired = "idle"
      pool._idle_exits = true
      if pool._on_retire then pool._on_retire(w, "idle") end
    end
  elseif kind == "exit" then
    on_worker_exit(pool, w, ejob)
  elseif kind == "corrupt" then
    pool._core:kill(w, core.SIGKILL)
    rec.killed = { reason = "corrupt" }
    local err = errors.new("marshal", { worker_id = w, pid = rec.pid, message = ejob })
    for _, ch in ipairs(rec.chunks) do fail(ch.job, err) end
  elseif kind == "interrupted" then
    pool._interrupted = true
    local err = errors.new("interrupted", { message = "interrupted by SIGINT" })
    for _, id in ipairs(pool._order) do
      local j = pool._jobs[id]
      if j then fail(j, err) end
    end
  end
end

-- Handle the events already there, without waiting (at the start of a
-- call: workers that left by themselves after idle_timeout are reaped and
-- their exit results collected).
function S.drain(pool)
  local c = pool._core
  for _ = 1, 16 * pool._n + 16 do
    local kind, w, ejob, start, count, index, value = c:poll(pool._stages, 0)
    if kind == "timeout" or kind == "eintr" then break end
    S.handle_event(pool, kind, w, ejob, start, count, index, value)
  end
end

-- Look at the clocks of busy workers; kill those past a timeout.  Returns
-- how long the caller may sleep before the next deadline (-1: no limit).
function S.check_timeouts(pool)
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
          c:kill(w, core.SIGKILL)
          rec.killed = { reason = "timeout", phase = st.phase, limit = limit, job = jobid,
            index = st.phase == "task" and st.index or nil }
          if st.phase == "worker_exit" then
            pool._exit_error = pool._exit_error or errors.new("timeout", {
              worker_id = w, pid = rec.pid, phase = "worker_exit",
              message = ("worker_exit took longer than %gs; worker %d was killed"):format(limit, w),
            })
          end
        else
          sleep = min(sleep, left)
        end
      end
    end
  end
  return sleep
end

-- One turn of the loop: send what can be sent, wait (at most timeout
-- seconds; negative: until something happens) for one event, handle it.
function S.step(pool, timeout)
  -- a job that failed or ended while being dispatched (a function or item
  -- that cannot be sent, an iterator that raised or ran out) has nothing
  -- to wait for
  if S.dispatch(pool) then return "failed" end
  local wait = S.check_timeouts(pool)
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
  local kind, w, ejob, start, count, index, value = pool._core:poll(pool._stages, wait)
  if kind ~= "timeout" and kind ~= "eintr" then
    S.handle_event(pool, kind, w, ejob, start, count, index, value)
  end
  if pool._progress_jobs > 0 then
    for _, id in ipairs(pool._order) do
      local job = pool._jobs[id]
      if job and job.progress then job.progress:update(job.done) end
    end
  end
  return kind
end

-- Register a job and start workers for it.
function S.submit(pool, job)
  job.pool = pool
  pool._jobs[job.id] = job
  pool._order[#pool._order + 1] = job.id
  pool._active = pool._active + 1
  if job.task_timeout or job.init_timeout then pool._timed_jobs = pool._timed_jobs + 1 end
  if job.progress then pool._progress_jobs = pool._progress_jobs + 1 end
  make_runnable(job)
  S.fill_workers(pool)
  -- results are only decoded by poll, after this: a big results table is
  -- made (and page-faulted) while the workers run the first chunks
  if not job.stage then job.stage = job.stage_size and table_new(job.stage_size, 1) or {} end
  if not job.finished then pool._stages[job.id] = job.stage end
  check_complete(pool, job)
end

-- Number of active jobs.
function S.active(pool) return pool._active end

-- After a job failed: forget it, stop its work everywhere.  Kept-alive
-- workers that finished starting keep running (their queued chunks answer
-- CANCELLED and are drained later); workers still starting, or all of them
-- (kill_everything, or no keep_alive and nothing else running), are
-- killed and reaped.
function S.abandon(pool, job, kill_everything)
  job.cancelled = true
  if not job.finished then finish_job(pool, job) end
  for w = 1, pool._n do
    local rec = pool._workers[w]
    if rec.pid then
      for _, ch in ipairs(rec.chunks) do
        if ch.job == job then pool._core:cancel(w, job.id); break end
      end
    end
  end
  if kill_everything or (not pool._keep_alive and pool._active == 0) then
    S.kill_workers(pool, nil)
  else
    S.kill_workers(pool, function(rec) return not rec.ready or rec.killed end)
  end
end

-- Wait for events until every worker is gone, collecting exit results.
-- Used by stop_and_join, close, restarts, and at the end of calls without
-- keep_alive.  Raises the first worker_exit error, timeout or death.
function S.join_all(pool)
  local c = pool._core
  pool._exit_error = nil
  pool._exit_timeout_active = pool._exit_timeout ~= nil
  -- With worker_exit_timeout, joining is bounded whatever state a worker is
  -- in (stopped again, blocked before its worker_exit phase): past the
  -- deadline (half a second after worker_exit's own, which names the
  -- phase) the rest are killed: SIGKILL ends stopped processes too.
  local deadline = pool._exit_timeout and core.now() + pool._exit_timeout + 0.5
  for w = 1, pool._n do
    local rec = pool._workers[w]
    if rec.pid and (not rec.stopping or rec.stop_pending) then
      rec.stopping, rec.stop_pending = true, false
      -- a worker stopped (SIGSTOP, SIGTSTP) could never read the request
      c:kill(w, core.SIGCONT)
      -- the stop record is tiny; a full lane only means replies are pending
      while pool._workers[w].pid and not (deadline and core.now() > deadline) and not c:send_stop(w) do
        local kind, ew, a, b, cnt, idx, val = c:poll(pool._stages, 0.01)
        if kind ~= "timeout" and kind ~= "eintr" then S.handle_event(pool, kind, ew, a, b, cnt, idx, val) end
      end
    end
  end
  local err
  while S.live_workers(pool) > 0 do
    local sleep = S.check_timeouts(pool)
    if deadline then
      local left = deadline - core.now()
      if left <= 0 then
        for w2 = 1, pool._n do
          local rec = pool._workers[w2]
          if rec.pid and not rec.killed then
            c:kill(w2, core.SIGKILL)
            rec.killed = { reason = "timeout", phase = "stop", limit = pool._exit_timeout }
            pool._exit_error = pool._exit_error or errors.new("timeout", {
              worker_id = w2, pid = rec.pid, phase = "stop",
              message = ("worker %d did not stop within worker_exit_timeout (%gs); it was killed"):format(
                w2, pool._exit_timeout),
            })
          end
        end
        deadline = nil
      elseif sleep < 0 or left < sleep then
        sleep = left
      end
    end
    local kind, w, ejob, s, cnt, idx, val = c:poll(pool._stages, sleep)
    if kind == "exit" then
      local rec = pool._workers[w]
      if not rec.bye and not rec.killed then
        err = err or death_error(w, ejob)
      end
      pool._workers[w] = empty_slot()
      if pool._on_exit then pool._on_exit(w, rec, ejob) end
    elseif kind == "interrupted" then
      err = err or errors.new("interrupted", { message = "interrupted by SIGINT" })
      S.kill_workers(pool, nil)
    elseif kind ~= "timeout" and kind ~= "eintr" then
      S.handle_event(pool, kind, w, ejob, s, cnt, idx, val)
    end
  end
  pool._exit_timeout_active = false
  pool._idle_exits = false -- an explicit stop ends the generation
  err = pool._exit_error or err
  pool._exit_error = nil
  if err then error(err, 0) end
end

return S
