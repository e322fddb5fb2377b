-- pool:map basics: results, order, chunking, arguments, errors, validation.
local forkpool = require "forkpool"
local util = require "support.util"

describe("pool:map", function()
  local pool
  after_each(function() if pool then pool:close() end pool = nil end)

  it("returns fn(item) for every item, in input order, with results.n", function()
    pool = forkpool.new{ n_jobs = 2 }
    local items = {}
    for i = 1, 1000 do items[i] = i end
    local r = pool:map(function(x) return x * x end, items)
    assert.are.equal(1000, r.n)
    for i = 1, 1000 do assert.are.equal(i * i, r[i]) end
  end)

  it("keeps the position of nil results and takes only the first return value", function()
    pool = forkpool.new{ n_jobs = 2 }
    local r = pool:map(function(x)
      if x % 3 == 0 then return nil end
      return x, "second"
    end, { 1, 2, 3, 4, 5, 6, 7 })
    assert.are.equal(7, r.n)
    assert.are.same({ 1, 2, nil, 4, 5, nil, 7 }, { r[1], r[2], r[3], r[4], r[5], r[6], r[7] })
  end)

  it("returns an empty result for an empty input without starting workers", function()
    pool = forkpool.new{ n_jobs = 2 }
    local r = pool:map(function(x) return x end, {})
    assert.are.equal(0, r.n)
    assert.are.same({}, pool:worker_pids())
  end)

  it("runs on several worker processes, none of them the caller", function()
    pool = forkpool.new{ n_jobs = 2, pass_worker_id = true }
    local ffi = require "ffi"
    pcall(ffi.cdef, "int getpid(void);")
    local r = pool:map(function(wid, x)
      -- make the tasks slow enough that both workers take some
      local t = os.clock() + 0.002
      while os.clock() < t do end
      return { pid = ffi.C.getpid(), wid = wid, x = x }
    end, { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 }, { chunk_size = 1 })
    local pids, wids = {}, {}
    for i = 1, r.n do
      assert.are.equal(i, r[i].x)
      assert.are_not.equal(util.getpid(), r[i].pid)
      pids[r[i].pid] = true
      wids[r[i].wid] = true
    end
    local np = 0
    for _ in pairs(pids) do np = np + 1 end
    assert.are.equal(2, np)
    assert.is_true(wids[1] and wids[2])
  end)

  it("handles any chunk_size, including 1 and more than the input", function()
    pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    local items = {}
    for i = 1, 257 do items[i] = i end
    for _, cs in ipairs({ 1, 3, 64, 256, 1000 }) do
      local r = pool:map(function(x) return -x end, items, { chunk_size = cs })
      assert.are.equal(257, r.n)
      for i = 1, 257 do assert.are.equal(-i, r[i]) end
    end
  end)

  it("maps a million trivial items", function()
    pool = forkpool.new{ n_jobs = 2 }
    local items = {}
    for i = 1, 1e6 do items[i] = i end
    local r = pool:map(function(x) return x + 1 end, items)
    assert.are.equal(1e6, r.n)
    assert.are.equal(2, r[1])
    assert.are.equal(1e6 + 1, r[1e6])
    local s = 0
    for i = 1, 1e6 do s = s + r[i] end
    assert.are.equal(1e6 * (1e6 + 1) / 2 + 1e6, s)
  end)

  it("gives the task its upvalues as they were at the call", function()
    pool = forkpool.new{ n_jobs = 2 }
    local offset = 10
    local f = function(x) return x + offset end
    assert.are.same({ 11, 12 }, { unpack(pool:map(f, { 1, 2 }), 1, 2) })
    offset = 100
    assert.are.same({ 101, 102 }, { unpack(pool:map(f, { 1, 2 }), 1, 2) })
  end)

  it("raises a task error object with message, traceback, index and worker id", function()
    pool = forkpool.new{ n_jobs = 2 }
    local items = {}
    for i = 1, 100 do items[i] = i end
    local ok, err = pcall(pool.map, pool, function(x)
      if x == 42 then error("bad item " .. x) end
      return x
    end, items)
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err))
    assert.is_true(forkpool.is_error(err, "task"))
    assert.are.equal("task", err.kind)
    assert.are.equal(42, err.index)
    assert.is_number(err.worker_id)
    assert.matches("bad item 42", err.message)
    assert.matches("stack traceback", err.traceback)
    assert.matches("map_spec.lua", err.traceback)
    local s = tostring(err)
    assert.matches("error in task", s)
    assert.matches("item 42", s)
    -- the pool stays usable
    local r = pool:map(function(x) return x * 2 end, { 1, 2, 3 })
    assert.are.same({ 2, 4, 6 }, { r[1], r[2], r[3] })
  end)

  it("carries non-string error values", function()
    pool = forkpool.new{ n_jobs = 1 }
    local ok, err = pcall(pool.map, pool, function() error({ code = 7 }) end, { 1 })
    assert.is_false(ok)
    assert.are.equal("task", err.kind)
    assert.are.same({ code = 7 }, err.value)
    ok, err = pcall(pool.map, pool, function()
      error(setmetatable({}, { __tostring = function() return "custom!" end }))
    end, { 1 })
    assert.is_false(ok)
    assert.matches("custom!", err.message)
  end)

  it("refuses to map from inside a task", function()
    pool = forkpool.new{ n_jobs = 1 }
    local p = pool
    local ok, err = pcall(pool.map, pool, function(x)
      return p:map(function(y) return y end, { x })
    end, { 1 })
    assert.is_false(ok)
    assert.are.equal("task", err.kind)
    assert.matches("inside a worker", err.message)
  end)

  describe("validates its arguments", function()
    it("in new", function()
      assert.has_error(function() forkpool.new{ n_jobs = "2" } end,
        "bad option 'n_jobs' to 'new' (positive integer expected, got string)")
      assert.has_error(function() forkpool.new{ n_jobs = 0 } end,
        "bad option 'n_jobs' to 'new' (positive integer expected, got 0)")
      assert.has_error(function() forkpool.new{ n_jobs = 1.5 } end,
        "bad option 'n_jobs' to 'new' (positive integer expected, got 1.5)")
      assert.has_error(function() forkpool.new{ keep_alive = 1 } end,
        "bad option 'keep_alive' to 'new' (boolean expected, got number)")
      assert.has_error(function() forkpool.new{ njobs = 2 } end,
        "bad option 'njobs' to 'new' (unknown option)")
      assert.has_error(function() forkpool.new(5) end,
        "bad argument to 'new' (options table expected, got number)")
    end)

    it("in map", function()
      pool = forkpool.new{ n_jobs = 1 }
      assert.has_error(function() pool:map(nil, {}) end,
        "bad argument #1 to 'map' (function expected, got nil)")
      assert.has_error(function() pool:map(print, "abc") end,
        "bad argument #2 to 'map' (table or iterator function expected, got string)")
      assert.has_error(function() pool:map(print, {}, { chunk_size = -1 }) end,
        "bad option 'chunk_size' to 'map' (positive integer expected, got -1)")
      assert.has_error(function() pool:map(print, {}, { worker_init = 3 }) end,
        "bad option 'worker_init' to 'map' (function expected, got number)")
      assert.has_error(function() pool:map(print, {}, { chunksize = 3 }) end,
        "bad option 'chunksize' to 'map' (unknown option)")
    end)
  end)

  it("uses the number of online CPUs by default", function()
    pool = forkpool.new()
    local f = io.popen("nproc")
    local n = tonumber(f:read("*l"))
    f:close()
    assert.are.equal(n, pool.n_jobs)
  end)
end)
