-- pool:map_reduce: results folded in the workers, chunk by chunk, and the
-- chunks' values folded in the parent, in input order.
local forkpool = require "forkpool"
local util = require "support.util"

local items = util.items
local ffi = require "ffi"
pcall(ffi.cdef, "int usleep(unsigned int);")
pcall(ffi.cdef, "int getpid(void);")

local function add(a, b) return a + b end
-- associative, not commutative: shows the order of the fold
local function cat(a, b) return a .. "," .. b end

local tmpfile = util.tmpfile

local function seq_cat(n)
  local t = {}
  for i = 1, n do t[i] = tostring(i) end
  return table.concat(t, ",")
end

describe("map_reduce", function()
  it("folds every result in input order, fresh and kept-alive workers, any chunking", function()
    for _, keep in ipairs({ false, true }) do
      for _, nj in ipairs({ 1, 2, 3 }) do
        local pool = forkpool.new{ n_jobs = nj, keep_alive = keep }
        for _, opts in ipairs({ {}, { chunk_size = 1 }, { chunk_size = 7 }, { chunk_size = 1000 },
                                { n_splits = 5 } }) do
          local what = ("keep_alive=%s n_jobs=%d %s"):format(tostring(keep), nj,
            tostring(opts.chunk_size or opts.n_splits or "default"))
          assert.are.equal(seq_cat(300), pool:map_reduce(tostring, items(300), cat, opts), what)
          assert.are.equal(300 * 301, pool:map_reduce(function(x) return 2 * x end, items(300), add, opts),
            what)
        end
        pool:close()
      end
    end
  end)

  it("sends one value per chunk back: the parent folds the chunks' values only", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    local calls = 0  -- counts the reducer's calls in this process only
    local function counted(a, b)
      calls = calls + 1
      return a + b
    end
    assert.are.equal(5050, pool:map_reduce(function(x) return x end, items(100), counted, { chunk_size = 10 }))
    assert.are.equal(9, calls)  -- 10 chunks: 9 folds here, the other 90 in the workers
    calls = 0
    assert.are.equal(5050 + 7, pool:map_reduce(function(x) return x end, items(100), counted,
      { chunk_size = 10, initial = 7 }))
    assert.are.equal(10, calls)
    pool:close()
  end)

  it("folds the chunks' values in the parent while the map runs, not only at its end", function()
    -- the last item waits (at most 10 s) for a file that only the parent's
    -- reducer makes: folding at the end would make it time out
    local marker = tmpfile()
    local parent = ffi.C.getpid()
    local pool = forkpool.new{ n_jobs = 2 }
    local r = pool:map_reduce(function(x)
      if x == 40 then
        local deadline = os.time() + 10
        while not io.open(marker) and os.time() < deadline do require("ffi").C.usleep(10000) end
        local f = io.open(marker)
        if not f then return "late" end
        f:close()
      end
      return tostring(x)
    end, items(40), function(a, b)
      if ffi.C.getpid() == parent then  -- (the workers fold with it too)
        local f = io.open(marker, "w")
        f:close()
      end
      return a .. "," .. b
    end, { chunk_size = 4 })
    os.remove(marker)
    assert.are.equal(seq_cat(40), r)
    pool:close()
  end)

  it("applies initial once, before the first result; no items give initial (nil without it)", function()
    local pool = forkpool.new{ n_jobs = 2 }
    assert.are.equal("x,1,2,3,4,5", pool:map_reduce(tostring, items(5), cat, { initial = "x", chunk_size = 2 }))
    assert.are.equal(42, pool:map_reduce(tostring, {}, cat, { initial = 42 }))
    assert.is_nil(pool:map_reduce(tostring, {}, cat))
    assert.are.equal("1", pool:map_reduce(tostring, { 1 }, cat))
    -- a table initial: the reducer may update its first argument in place
    local counts = pool:map_reduce(function(w) return { [w] = 1 } end, { "a", "b", "a", "c", "a" },
      function(acc, t)
        for k, v in pairs(t) do acc[k] = (acc[k] or 0) + v end
        return acc
      end, { initial = {}, chunk_size = 2 })
    assert.are.same({ a = 3, b = 1, c = 1 }, counts)
    pool:close()
  end)

  it("passes nil results to the reducer like any other", function()
    local pool = forkpool.new{ n_jobs = 2 }
    local r = pool:map_reduce(function(x) if x % 3 ~= 0 then return x end end, items(30),
      function(a, b) return (a or 0) + (b or 0) end, { chunk_size = 4 })
    local want = 0
    for i = 1, 30 do if i % 3 ~= 0 then want = want + i end end
    assert.are.equal(want, r)
    -- a chunk whose fold is nil still counts (its place in the order is kept)
    assert.are.equal("nil,nil,3", pool:map_reduce(function(x) if x == 3 then return "3" end end, items(3),
      function(a, b) return tostring(a) .. "," .. tostring(b) end, { chunk_size = 1 }))
    pool:close()
  end)

  it("reads iterators, the lines of a file and shared_objects like map", function()
    local pool = forkpool.new{ n_jobs = 2 }
    local i = 0
    local it = function() i = i + 1; if i <= 50 then return i end end
    assert.are.equal(seq_cat(50), pool:map_reduce(tostring, it, cat))
    local path = tmpfile()
    local f = assert(io.open(path, "w"))
    for k = 1, 2000 do f:write("line ", k, "\n") end
    f:close()
    assert.are.equal(2000 * 2001 / 2, pool:map_reduce(function(l) return tonumber(l:match("%d+")) end,
      io.lines(path), add))
    os.remove(path)
    pool:close()
    pool = forkpool.new{ n_jobs = 2, shared_objects = { base = 1000 } }
    assert.are.equal(3 * 1000 + 6, pool:map_reduce(function(shared, x) return shared.base + x end, { 1, 2, 3 },
      add))
    pool:close()
  end)

  it("gives fn the worker id, shared objects and state as map does, and the reducer (acc, r) only", function()
    local pool = forkpool.new{ n_jobs = 2, pass_worker_id = true, shared_objects = 10, use_worker_state = true }
    local r = pool:map_reduce(function(wid, shared, state, x)
      assert(type(wid) == "number" and shared == 10 and type(state) == "table")
      return x * shared
    end, items(20), function(...)
      assert(select("#", ...) == 2, "reducer called with " .. select("#", ...) .. " arguments")
      local a, b = ...
      return a + b
    end, { chunk_size = 3 })
    assert.are.equal(2100, r)
    pool:close()
  end)

  it("raises a task error naming the item when fn or the reducer fails in a worker", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    local ok, e = pcall(pool.map_reduce, pool, function(x)
      if x == 37 then error("bad item") end
      return x
    end, items(100), add, { chunk_size = 10 })
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(e, "task"))
    assert.are.equal(37, e.index)
    assert.matches("bad item", e.message)
    ok, e = pcall(pool.map_reduce, pool, function(x) return x end, items(100), function(a, b)
      if b == 58 then error({ code = 58 }) end
      return a + b
    end, { chunk_size = 10 })
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(e, "task"))
    assert.are.equal(58, e.index)
    assert.are.same({ code = 58 }, e.value)
    -- the pool goes on
    assert.are.equal(5050, pool:map_reduce(function(x) return x end, items(100), add))
    pool:close()
  end)

  it("raises a task error of phase 'reduce' when the reducer fails folding the chunks' values", function()
    local pool = forkpool.new{ n_jobs = 2 }
    local ok, e = pcall(pool.map_reduce, pool, function(x) return x end, items(40), function(a, b)
      if b > 100 then error({ why = "too big" }) end
      return a + b
    end, { chunk_size = 10 })
    -- chunk values 55, 155, 255, 355: the workers' folds (b <= 40) pass, the parent's first fails
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(e, "task"))
    assert.are.equal("reduce", e.phase)
    assert.are.equal(11, e.index)  -- the chunk 11..20 was being folded in
    assert.are.same({ why = "too big" }, e.value)
    assert.matches("in the reducer", e.message)
    assert.matches("stack traceback", e.traceback)
    assert.are.equal(10, pool:map_reduce(function(x) return x end, items(4), add))
    pool:close()
  end)

  it("refuses a reducer or a folded value that cannot travel, naming it", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    pool:map(tostring, { 1, 2 })  -- workers started: the reducer must be sent
    local co = coroutine.create(print)
    local ok, e = pcall(pool.map_reduce, pool, tostring, items(4), function(a, b)
      local _ = co
      return a .. b
    end)
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(e, "marshal"))
    assert.matches("cannot send the reducer: <upvalue 'co'>: cannot send coroutine", e.message, 1, true)
    ok, e = pcall(pool.map_reduce, pool, function() return coroutine.create(print) end, items(6),
      function(a) return a end, { chunk_size = 3 })
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(e, "marshal"))
    assert.matches("the reduced value of items [14]%.%.[36]: cannot send coroutine", e.message)
    assert.are.equal("12", pool:map_reduce(tostring, { 1, 2 }, function(a, b) return a .. b end))
    pool:close()
  end)

  it("checks its arguments", function()
    local pool = forkpool.new{ n_jobs = 1 }
    assert.has_error(function() pool:map_reduce(tostring, { 1 }, 5) end,
      "bad argument #3 to 'map_reduce' (function expected, got number)")
    assert.has_error(function() pool:map_reduce(tostring, { 1 }) end,
      "bad argument #3 to 'map_reduce' (function expected, got nil)")
    assert.has_error(function() pool:map_reduce(5, { 1 }, add) end,
      "bad argument #1 to 'map_reduce' (function expected, got number)")
    assert.has_error(function() pool:map_reduce(tostring, 5, add) end,
      "bad argument #2 to 'map_reduce' (table or iterator function expected, got number)")
    assert.has_error(function() pool:map_reduce(tostring, { 1 }, add, { bogus = 1 }) end,
      "bad option 'bogus' to 'map_reduce' (unknown option)")
    assert.has_error(function() pool:map_reduce(tostring, { 1 }, add, { chunk_size = 0 }) end,
      "bad option 'chunk_size' to 'map_reduce' (positive integer expected, got 0)")
    pool:close()
  end)

  it("runs a dead worker's chunk again with max_retries; the fold is still in order", function()
    local marker = tmpfile()
    local pool = forkpool.new{ n_jobs = 2 }
    local r = pool:map_reduce(function(x)
      if x == 23 and not io.open(marker) then
        io.open(marker, "w"):close()
        require("ffi").cast("int *", 0)[0] = 1
      end
      return tostring(x)
    end, items(60), cat, { chunk_size = 5, max_retries = 1 })
    os.remove(marker)
    assert.are.equal(seq_cat(60), r)
    pool:close()
  end)

  it("treats one value for a map's chunk, or a map_reduce chunk not reduced, as a corrupted record", function()
    -- a worker that reduces when the parent does not expect it, and the
    -- reverse (the job's worker options changed behind the parent's back)
    local J = require "forkpool.job"
    local new = J.new
    local function run(kind_of_call, wopts)
      J.new = function(...)
        local job = new(...)
        job.wopts = wopts
        return job
      end
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      local ok, e = pcall(function()
        if kind_of_call == "map" then return pool:map(tostring, items(20)) end
        return pool:map_reduce(tostring, items(20), cat)
      end)
      J.new = new
      pool:terminate()
      return ok, e
    end
    local ok, e = run("map", J.wopts_for(false, false, false, cat))
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(e, "marshal"))
    assert.matches("corrupted record: one reduced value for the results of a chunk", e.message, 1, true)
    ok, e = run("map_reduce", J.wopts_for(false, false, false))
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(e, "marshal"))
    assert.matches("corrupted record: a map_reduce chunk not reduced", e.message, 1, true)
  end)

  it("works with task_timeout, worker lifespans and a progress bar", function()
    local out = tmpfile()
    local stream = assert(io.open(out, "w"))
    local pool = forkpool.new{ n_jobs = 2, worker_lifespan = 3 }
    assert.are.equal(seq_cat(40), pool:map_reduce(tostring, items(40), cat, {
      chunk_size = 2, task_timeout = 30, progress_bar = true, progress_bar_options = { stream = stream } }))
    pool:close()
    stream:close()
    local f = assert(io.open(out))
    local text = f:read("*a")
    f:close()
    os.remove(out)
    assert.matches("40/40", text)
  end)
end)
