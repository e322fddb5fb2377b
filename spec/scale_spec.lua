-- Scaling the parent (issue 14): dispatch looks only at the workers that
-- can take a chunk (its work per chunk does not grow with n_jobs), and a
-- map over an array with the default chunk size grows its chunks while
-- the items prove fast, within the tail bound.  What dispatch did is read
-- from forkpool.dispatch's debug record (every chunk sent: job, start,
-- count, worker).  Whether items count as fast is forced through
-- chunking.MIN_CHUNK_TIME (huge: every item is fast; 0: none is), so no
-- assertion depends on how fast this machine is.  Each case runs in a
-- child process with a deadline (a worker never fed again would hang).
local util = require "support.util"

-- Helpers every child gets.
local PRELUDE = [==[
local forkpool = require "forkpool"
local D = require "forkpool.dispatch"
local chunking = require "forkpool.chunking"
local J = require "forkpool.job"
local ffi = require "ffi"
pcall(ffi.cdef, "int usleep(unsigned int); void _exit(int);")

local DEFAULT_MIN = chunking.MIN_CHUNK_TIME

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

-- Run fn(log) with dispatch recording into log, MIN_CHUNK_TIME = min_time
-- (nil: the default); both restored afterwards whatever happens.
local function recording(min_time, fn)
  local log = { chunks = {} }
  D.debug, chunking.MIN_CHUNK_TIME = log, min_time or DEFAULT_MIN
  local ok, err = pcall(fn, log)
  D.debug, chunking.MIN_CHUNK_TIME = nil, DEFAULT_MIN
  if not ok then error(err, 0) end
  return log
end

-- The chunks of the pool's last job from a log, in the order they were sent.
local function last_chunks(log, pool)
  local out = {}
  for _, ch in ipairs(log.chunks) do
    if ch.job == pool._job then out[#out + 1] = ch end
  end
  return out
end

-- Every item 1..n is in exactly one chunk (no retries in these maps).
local function assert_cover(chunks, n)
  local seen, total = {}, 0
  for _, ch in ipairs(chunks) do
    for i = ch.start, ch.start + ch.count - 1 do
      assert(not seen[i], "item " .. i .. " sent twice")
      seen[i] = true
    end
    total = total + ch.count
  end
  assert(total == n, ("%d items sent, want %d"):format(total, n))
end

-- dispatch's invariant (forkpool.dispatch, "The feed queues"): every live
-- worker that takes work and holds fewer than INFLIGHT chunks is queued
-- (its fq names the queue for its count, and the queue has its id), and
-- pool._vacant counts the slots without a process.
local function assert_queued(pool)
  local function has(q, w)
    for i = q.head, q.tail do if q[i] == w then return true end end
    return false
  end
  local vacant = 0
  for w = 1, pool._n do
    local rec = pool._workers[w]
    if not rec.pid then vacant = vacant + 1 end
    if rec.pid and not rec.bye and not rec.killed and not rec.stopping and #rec.chunks < J.INFLIGHT then
      local kind = #rec.chunks == 0 and "idle" or "room"
      assert(rec.fq == kind, ("worker %d holds %d chunks, fq = %s"):format(w, #rec.chunks, tostring(rec.fq)))
      assert(has(kind == "idle" and pool._feed_idle or pool._feed_room, w), "worker " .. w .. " not in its queue")
    end
  end
  assert(vacant == pool._vacant, ("%d slots empty, pool._vacant = %d"):format(vacant, pool._vacant))
  -- pool._cap_held counts the live workers holding chunks of the job
  -- saturation caps (none without a cap)
  local held = 0
  for w = 1, pool._n do
    local rec = pool._workers[w]
    if rec.pid then
      local has = pool._cap_job ~= nil and J.holds_chunk_of(rec, pool._cap_job)
      assert((rec.cap_held or false) == has,
        ("worker %d holds a chunk of the capped job: %s, cap_held = %s"):format(w, tostring(has),
          tostring(rec.cap_held)))
      if has then held = held + 1 end
    end
  end
  assert(held == pool._cap_held, ("%d workers hold chunks of the capped job, pool._cap_held = %d")
    :format(held, pool._cap_held))
end

-- Run fn with the saturation reading's threshold and window set (nil: the
-- defaults); both restored afterwards.
local SAT0, WIN0 = chunking.SATURATED, chunking.SAT_WINDOW
local function saturation(threshold, window, fn)
  chunking.SATURATED, chunking.SAT_WINDOW = threshold or SAT0, window or WIN0
  local ok, err = pcall(fn)
  chunking.SATURATED, chunking.SAT_WINDOW = SAT0, WIN0
  if not ok then error(err, 0) end
end

-- A task that only computes, for about ms milliseconds.
local function busy(ms)
  return function(x)
    local t0 = os.clock()
    while os.clock() - t0 < ms * 1e-3 do end
    return x * 2
  end
end

local cpus = require("forkpool.cpus").usable()

local N = 4000
local slow = function(x) ffi.C.usleep(100); return x * 2 end
local function check_doubles(r, n)
  for i = 1, n do assert(r[i] == i * 2, "result " .. i) end
end

-- fn(pool, mark) on a pool of cpus + 2 workers (extra options: opts)
-- whose first map read as saturating (forced), so its next growing map
-- starts capped; mark: a path that does not exist yet.  The pool is
-- closed and mark removed afterwards.
local function capped_pool(opts, fn)
  local o = { n_jobs = cpus + 2, keep_alive = true }
  for k, v in pairs(opts) do o[k] = v end
  local pool = forkpool.new(o)
  local mark = os.tmpname()
  os.remove(mark)
  saturation(0, 0, function()
    check_doubles(pool:map(slow, range(400)), 400)
    assert(pool._saturated)
    fn(pool, mark)
  end)
  os.remove(mark)
  pool:close()
end
]==]

-- Run a case in a fresh luajit (killed after `timeout` s); it prints "OK".
local function child(code, timeout)
  local ok, out = util.run_lua(PRELUDE .. code .. "\nprint('OK')\n", timeout or 120)
  assert(ok and out:find("OK", 1, true), "child failed:\n" .. out)
  return out
end

describe("dispatch with many workers", function()
  it("n_jobs = 32 on this machine: results right, every worker gets work", function()
    child([=[
      local pool = forkpool.new{ n_jobs = 32, keep_alive = true, pass_worker_id = true }
      local M = 20000
      for round = 1, 2 do -- the first map forks the workers, the second finds them warm
        local log = recording(nil, function()
          local r = pool:map(function(w, x) return { w, x * x } end, range(M))
          local by = {}
          for i = 1, M do
            assert(r[i][2] == i * i, "round " .. round .. ": result " .. i)
            by[r[i][1]] = (by[r[i][1]] or 0) + 1
          end
          for w = 1, 32 do assert(by[w] and by[w] > 0, "round " .. round .. ": worker " .. w .. " ran nothing") end
        end)
        local chunks = last_chunks(log, pool)
        assert_cover(chunks, M)
        local got = {}
        for _, ch in ipairs(chunks) do got[ch.worker] = true end
        for w = 1, 32 do assert(got[w], "round " .. round .. ": no chunk for worker " .. w) end
        assert_queued(pool)
      end
      pool:close()
    ]=])
  end)

  it("looks at a bounded number of workers per chunk, not at every slot", function()
    -- one-item chunks: one event per item.  Dispatch used to walk all 32
    -- slots (twice) after each; now it takes workers from its queues: an
    -- entry per chunk taken back, plus stale ones (a worker that moved from
    -- one queue to the other), plus the first round of each worker
    child([=[
      local n = 32
      local pool = forkpool.new{ n_jobs = n, keep_alive = true }
      local M = 3000
      pool:map(function(x) return x end, range(n * 4), { chunk_size = 1 }) -- forks the workers
      local log = recording(nil, function()
        local r = pool:map(function(x) return x + 1 end, range(M), { chunk_size = 1 })
        for i = 1, M do assert(r[i] == i + 1) end
      end)
      pool:close()
      assert(log.sent == M, ("%s chunks sent, want %d"):format(tostring(log.sent), M))
      assert(log.looked <= 2 * log.sent + 4 * n,
        ("dispatch looked at %d queue entries for %d chunks"):format(log.looked, log.sent))
    ]=])
  end)
end)

describe("the feed queues", function()
  it("hold every worker that may take a chunk, after maps, deaths, lifespans and async calls", function()
    child([=[
      local pool = forkpool.new{ n_jobs = 4, keep_alive = true, worker_lifespan = 50 }
      assert_queued(pool)
      for round = 1, 3 do
        local r = pool:map(function(x) return x + round end, range(1000))
        for i = 1, 1000 do assert(r[i] == i + round) end
        assert_queued(pool)
      end
      -- a worker dies on item 7 the first time (a file marks that it did)
      local mark = os.tmpname()
      os.remove(mark)
      local r = pool:map(function(x)
        if x == 7 then
          local f = io.open(mark, "r")
          if not f then
            f = io.open(mark, "w"); f:write("x"); f:close()
            ffi.C._exit(3)
          end
          f:close()
        end
        return x
      end, range(200), { chunk_size = 3, max_retries = 1 })
      os.remove(mark)
      for i = 1, 200 do assert(r[i] == i) end
      assert_queued(pool)
      local as = {}
      for i = 1, 50 do as[i] = pool:apply_async(function(x) return x * 3 end, { i }) end
      for i = 1, 50 do assert(as[i]:get() == i * 3) end
      assert_queued(pool)
      pool:close()
    ]=])
  end)
end)

describe("chunk growth", function()
  it("a map of fast items grows its chunks from the default size, within the tail bound", function()
    child([=[
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      local log = recording(1e9, function()
        check_doubles(pool:map(slow, range(N)), N)
      end)
      local chunks = last_chunks(log, pool)
      pool:close()
      assert_cover(chunks, N)
      local cs0 = math.ceil(N / (2 * 64))
      local biggest = 0
      for _, ch in ipairs(chunks) do
        biggest = math.max(biggest, ch.count)
        -- never more than the default size or 1 / (4 n_jobs) of what was not yet sent
        local left = N - ch.start + 1
        assert(ch.count <= math.max(cs0, math.floor(left / (J.TAIL_SHARE * 2))),
          ("chunk at %d has %d items, %d were left"):format(ch.start, ch.count, left))
      end
      assert(biggest > cs0, ("chunks did not grow: biggest %d, default %d"):format(biggest, cs0))
      assert(#chunks < N / cs0, ("%d chunks: no fewer than the default size gives"):format(#chunks))
    ]=])
  end)

  it("items that are not fast keep the default size", function()
    child([=[
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      local log = recording(0, function()
        check_doubles(pool:map(slow, range(N)), N)
      end)
      local chunks = last_chunks(log, pool)
      pool:close()
      assert_cover(chunks, N)
      local cs0 = math.ceil(N / (2 * 64))
      for k, ch in ipairs(chunks) do
        if k < #chunks then assert(ch.count == cs0, ("chunk %d has %d items"):format(k, ch.count)) end
      end
    ]=])
  end)

  it("never changes chunk_size, n_splits, max_tasks_active, order_tasks, imap's chunks", function()
    child([=[
      local cases = {
        { "chunk_size", function(p) return p:map(slow, range(N), { chunk_size = 10 }) end, 10 },
        { "n_splits", function(p) return p:map(slow, range(N), { n_splits = 16 }) end, N / 16 },
        { "max_tasks_active", function(p) return p:map(slow, range(N), { max_tasks_active = 200 }) end,
          math.ceil(N / 128) },
        { "imap", function(p)
            local out = {}
            for v, i in p:imap(slow, range(N)) do out[i] = v end
            return out
          end, math.ceil(N / 128) },
        { "order_tasks", function(p)
            p:set_order_tasks(true)
            local r = p:map(slow, range(N))
            p:set_order_tasks(false)
            return r
          end, math.ceil(N / 128) },
      }
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      for _, c in ipairs(cases) do
        local name, run, want = c[1], c[2], c[3]
        local log = recording(1e9, function() check_doubles(run(pool), N) end)
        local chunks = last_chunks(log, pool)
        assert_cover(chunks, N)
        for k, ch in ipairs(chunks) do
          -- (imap's window may cut a chunk short; the others are cut only at the end)
          local ok = ch.count == want or (k == #chunks or name == "imap") and ch.count < want
          assert(ok, ("%s: chunk %d has %d items, want %d"):format(name, k, ch.count, want))
        end
      end
      pool:close()
    ]=])
  end)

  it("fast items first, slow ones last: no chunk takes a large share of the slow tail", function()
    -- the first 3/4 of the items are instant, the last quarter sleep 1 ms;
    -- with every item counted as fast (the worst case for the tail) the
    -- chunks grow as far as the tail bound lets them
    child([=[
      local M = 2000
      local first_slow = M * 3 / 4 + 1
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true, pass_worker_id = true }
      local by = {}
      local log = recording(1e9, function()
        local r = pool:map(function(w, x)
          if x >= first_slow then ffi.C.usleep(1000) end
          return { w, x }
        end, range(M))
        for i = 1, M do
          assert(r[i][2] == i)
          if i >= first_slow then by[r[i][1]] = (by[r[i][1]] or 0) + 1 end
        end
      end)
      local chunks = last_chunks(log, pool)
      pool:close()
      assert_cover(chunks, M)
      local n_slow = M - first_slow + 1
      for _, ch in ipairs(chunks) do
        local lo, hi = math.max(ch.start, first_slow), ch.start + ch.count - 1
        local slow_in = math.max(0, hi - lo + 1)
        assert(slow_in <= n_slow / (J.TAIL_SHARE * 2),
          ("chunk at %d holds %d of the %d slow items"):format(ch.start, slow_in, n_slow))
      end
      assert(by[1] and by[2], "one worker ran every slow item")
    ]=])
  end)
end)

describe("saturation: more workers than CPUs, tasks that only compute", function()
  it("holds at most as many workers busy as there are CPUs, chunks sized for them", function()
    child([=[
      local n = cpus + 2
      local pool = forkpool.new{ n_jobs = n, keep_alive = true }
      local M = 600
      saturation(0, 0, function()
        -- the first map forks the workers and finds the CPUs saturated ...
        check_doubles(pool:map(slow, range(M)), M)
        assert(pool._saturated, "not saturated after the first map")
        assert(pool._cap == nil, "the cap outlived its job")
        assert_queued(pool)
        -- ... so the next one starts capped: never more than cpus workers hold chunks
        local most = 0
        local log = recording(nil, function()
          check_doubles(pool:map(slow, range(M)), M)
        end)
        local chunks = last_chunks(log, pool)
        assert_cover(chunks, M)
        for _, ch in ipairs(chunks) do
          assert(ch.capped, "a chunk of the capped map has no count of its holders")
          most = math.max(most, ch.busy)
        end
        assert(most <= cpus, ("%d workers held chunks at once, %d CPUs"):format(most, cpus))
        -- chunks as a pool of cpus workers gets them (the default size for
        -- cpus workers), not n_jobs' small ones
        local want = math.ceil(M / (cpus * 64))
        for k = 1, #chunks - 1 do
          assert(chunks[k].count >= want, ("chunk %d has %d items, want %d"):format(k, chunks[k].count, want))
        end
        assert_queued(pool)
      end)
      pool:close()
    ]=])
  end)

  it("is not entered by tasks that block, nor with no more workers than CPUs", function()
    child([=[
      local n = cpus + 2
      local pool = forkpool.new{ n_jobs = n, keep_alive = true }
      saturation(nil, 0.001, function()
        local sleepy = function(x) ffi.C.usleep(2000); return x * 2 end
        for _ = 1, 2 do
          local log = recording(nil, function() check_doubles(pool:map(sleepy, range(300)), 300) end)
          assert(not pool._saturated, "tasks that sleep read as saturating")
          local got = {}
          for _, ch in ipairs(last_chunks(log, pool)) do got[ch.worker] = true end
          for w = 1, n do assert(got[w], "worker " .. w .. " got no chunk") end
        end
      end)
      pool:close()
      local small = forkpool.new{ n_jobs = cpus, keep_alive = true }
      saturation(0, 0, function()
        check_doubles(small:map(slow, range(300)), 300)
        check_doubles(small:map(slow, range(300)), 300)
        assert(not small._saturated and small._cap == nil, "capped with no more workers than CPUs")
      end)
      small:close()
    ]=])
  end)

  it("reads tasks that only compute as saturating, and lifts the cap when they start to block", function()
    child([=[
      local n = cpus + 2
      local pool = forkpool.new{ n_jobs = n, keep_alive = true }
      saturation(nil, 0.02, function()
        check_doubles(pool:map(busy(2), range(200)), 200)
        assert(pool._saturated, "tasks that only compute did not read as saturating")
        -- now blocking tasks: the map starts capped and the readings lift it
        local log = recording(nil, function()
          check_doubles(pool:map(function(x) ffi.C.usleep(3000); return x * 2 end, range(400)), 400)
        end)
        assert(not pool._saturated, "still saturated after tasks that sleep")
        local got, k = {}, 0
        for _, ch in ipairs(last_chunks(log, pool)) do
          if not got[ch.worker] then got[ch.worker] = true; k = k + 1 end
        end
        assert(k > cpus, ("only %d workers ran the sleeping tasks"):format(k))
      end)
      pool:close()
    ]=])
  end)

  it("caps the map's own chunks: a call beside it runs on a worker the map leaves idle", function()
    child([=[
      capped_pool({}, function(pool, mark)
        -- a call that waits (at most 20 s) for the map's last item: it
        -- holds its worker for the whole map
        local a = pool:apply_async(function(path)
          for _ = 1, 20000 do
            local f = io.open(path, "r")
            if f then f:close(); return "marked" end
            ffi.C.usleep(1000)
          end
          return "no mark"
        end, { mark })
        local M = 1000
        local log = recording(nil, function()
          check_doubles(pool:map(function(x)
            if x == M then local f = assert(io.open(mark, "w")); f:close() end
            return slow(x)
          end, range(M)), M)
        end)
        assert(a:get() == "marked")
        -- the map had its cap of workers beside the call's: cpus + 1 busy
        local chunks = last_chunks(log, pool)
        assert_cover(chunks, M)
        local most = 0
        for _, ch in ipairs(chunks) do
          assert(ch.capped and ch.capped <= cpus,
            ("%s workers held chunks of the capped map, %d CPUs"):format(tostring(ch.capped), cpus))
          most = math.max(most, ch.busy)
        end
        assert(most == cpus + 1, ("at most %d workers were busy, want the call's and %d of the map's")
          :format(most, cpus))
        assert_queued(pool)
      end)
    ]=])
  end)

  it("never stalls a capped map: deaths, task errors, lifespans, apply_async beside it", function()
    child([=[
      capped_pool({ worker_lifespan = 40 }, function(pool, mark)
        -- a worker dies on item 77 the first time
        local r = pool:map(function(x)
          if x == 77 then
            local f = io.open(mark, "r")
            if not f then
              f = io.open(mark, "w"); f:write("x"); f:close()
              ffi.C._exit(3)
            end
            f:close()
          end
          return x * 2
        end, range(400), { max_retries = 1 })
        check_doubles(r, 400)
        assert_queued(pool)
        -- a task error fails the map and lifts the cap
        local ok, e = pcall(pool.map, pool, function(x)
          if x == 150 then error("item 150 failed", 0) end
          return x
        end, range(400))
        assert(not ok and tostring(e.message):find("item 150 failed", 1, true), tostring(e))
        assert(pool._cap == nil, "the cap outlived a failed job")
        assert_queued(pool)
        -- calls of their own beside a capped map
        local as = {}
        for i = 1, 20 do as[i] = pool:apply_async(function(x) return x + 1 end, { i }, { max_retries = 0 }) end
        check_doubles(pool:map(slow, range(400)), 400)
        for i = 1, 20 do assert(as[i]:get() == i + 1) end
        assert_queued(pool)
      end)
    ]=], 180)
  end)
end)
