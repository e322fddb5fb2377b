-- Scaling the parent (issue 14): dispatch looks only at the workers that
-- can take a chunk (its work per chunk does not grow with n_jobs), and a
-- map over an array with the default chunk size grows its chunks while
-- the items prove fast, within the tail bound.  What dispatch did is read
-- from forkpool.dispatch's debug record (every chunk sent: job, start,
-- count, worker).  Whether items count as fast is forced through
-- dispatch.MIN_CHUNK_TIME (huge: every item is fast; 0: none is), so no
-- assertion depends on how fast this machine is.
local forkpool = require "forkpool"
local D = require "forkpool.dispatch"
local J = require "forkpool.job"
local ffi = require "ffi"
pcall(ffi.cdef, "int usleep(unsigned int);")

local DEFAULT_MIN = D.MIN_CHUNK_TIME

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

-- Run fn(log) with dispatch recording into log, MIN_CHUNK_TIME = min_time
-- (nil: the default); both restored afterwards whatever happens.
local function recording(min_time, fn)
  local log = { chunks = {} }
  D.debug, D.MIN_CHUNK_TIME = log, min_time or DEFAULT_MIN
  local ok, err = pcall(fn, log)
  D.debug, D.MIN_CHUNK_TIME = nil, DEFAULT_MIN
  if not ok then error(err, 0) end
  return log
end

-- The chunks of one job from a log, in the order they were sent.
local function chunks_of(log, jobid)
  local out = {}
  for _, ch in ipairs(log.chunks) do
    if ch.job == jobid then out[#out + 1] = ch end
  end
  return out
end

-- Every item 1..n is in exactly one chunk (retries aside: none here).
local function assert_cover(chunks, n)
  local seen, total = {}, 0
  for _, ch in ipairs(chunks) do
    for i = ch.start, ch.start + ch.count - 1 do
      assert(not seen[i], "item " .. i .. " sent twice")
      seen[i] = true
    end
    total = total + ch.count
  end
  assert.equal(n, total)
end

local function last_job(pool) return pool._job end

describe("dispatch with many workers", function()
  it("n_jobs = 32 on this machine: results right, every worker gets work", function()
    local pool = forkpool.new{ n_jobs = 32, keep_alive = true, pass_worker_id = true }
    local N = 20000
    for round = 1, 2 do -- the first map forks the workers, the second finds them warm
      local log = recording(nil, function()
        local r = pool:map(function(w, x) return { w, x * x } end, range(N))
        local by = {}
        for i = 1, N do
          assert(r[i][2] == i * i, "round " .. round .. ": result " .. i)
          by[r[i][1]] = (by[r[i][1]] or 0) + 1
        end
        for w = 1, 32 do assert(by[w] and by[w] > 0, "round " .. round .. ": worker " .. w .. " ran nothing") end
      end)
      local chunks = chunks_of(log, last_job(pool))
      assert_cover(chunks, N)
      local got = {}
      for _, ch in ipairs(chunks) do got[ch.worker] = true end
      for w = 1, 32 do assert(got[w], "round " .. round .. ": no chunk for worker " .. w) end
    end
    pool:close()
  end)

  it("looks at a bounded number of workers per chunk, not at every slot", function()
    -- one-item chunks: one event per item.  Dispatch used to walk all 32
    -- slots (twice) after each; now it takes workers from its queues: an
    -- entry per chunk taken back, plus stale ones (a worker that moved from
    -- one queue to the other), plus the first round of each worker
    local n = 32
    local pool = forkpool.new{ n_jobs = n, keep_alive = true }
    local N = 3000
    pool:map(function(x) return x end, range(n * 4), { chunk_size = 1 }) -- forks the workers
    local log = recording(nil, function()
      local r = pool:map(function(x) return x + 1 end, range(N), { chunk_size = 1 })
      for i = 1, N do assert(r[i] == i + 1) end
    end)
    pool:close()
    assert.equal(N, log.sent)
    assert(log.looked <= 2 * log.sent + 4 * n,
      ("dispatch looked at %d queue entries for %d chunks"):format(log.looked, log.sent))
  end)
end)

describe("chunk growth", function()
  local N = 4000
  local slow = function(x) ffi.C.usleep(100); return x * 2 end

  local function check_doubles(r, n)
    for i = 1, n do assert(r[i] == i * 2, "result " .. i) end
  end

  it("a map of fast items grows its chunks from the default size, within the tail bound", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    local log = recording(1e9, function()
      check_doubles(pool:map(slow, range(N)), N)
    end)
    pool:close()
    local chunks = chunks_of(log, last_job(pool))
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
  end)

  it("items that are not fast keep the default size", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    local log = recording(0, function()
      check_doubles(pool:map(slow, range(N)), N)
    end)
    pool:close()
    local chunks = chunks_of(log, last_job(pool))
    assert_cover(chunks, N)
    local cs0 = math.ceil(N / (2 * 64))
    for k, ch in ipairs(chunks) do
      if k < #chunks then assert.equal(cs0, ch.count) end
    end
  end)

  it("never changes chunk_size, n_splits, max_tasks_active, order_tasks, imap's chunks", function()
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
      local chunks = chunks_of(log, last_job(pool))
      assert_cover(chunks, N)
      for k, ch in ipairs(chunks) do
        -- (imap's window may cut a chunk short; the others are cut only at the end)
        local ok = ch.count == want or (k == #chunks or name == "imap") and ch.count < want
        assert(ok, ("%s: chunk %d has %d items, want %d"):format(name, k, ch.count, want))
      end
    end
    pool:close()
  end)

  it("fast items first, slow ones last: no chunk takes a large share of the slow tail", function()
    -- the first 3/4 of the items are instant, the last quarter sleep 1 ms;
    -- with every item counted as fast (the worst case for the tail) the
    -- chunks grow as far as the tail bound lets them
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
    pool:close()
    local chunks = chunks_of(log, last_job(pool))
    assert_cover(chunks, M)
    local n_slow = M - first_slow + 1
    for _, ch in ipairs(chunks) do
      local lo, hi = math.max(ch.start, first_slow), ch.start + ch.count - 1
      local slow_in = math.max(0, hi - lo + 1)
      assert(slow_in <= n_slow / (J.TAIL_SHARE * 2),
        ("chunk at %d holds %d of the %d slow items"):format(ch.start, slow_in, n_slow))
    end
    assert(by[1] and by[2], "one worker ran every slow item")
  end)
end)
