-- keep_alive, worker state, function shipping, restarts on changed settings.
local forkpool = require "forkpool"

local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")

local function pidset(r)
  local s, n = {}, 0
  for i = 1, r.n do if not s[r[i]] then s[r[i]] = true; n = n + 1 end end
  return s, n
end

local items = require("support.util").items

-- each task sleeps a little so that every worker takes some
local function busy_pid()
  local t = os.clock() + 0.002
  while os.clock() < t do end
  return require("ffi").C.getpid()
end

describe("keep_alive", function()
  local pool
  after_each(function() if pool then pool:close() end pool = nil end)

  it("starts new workers at every map by default", function()
    pool = forkpool.new{ n_jobs = 2 }
    local a = pidset(pool:map(busy_pid, items(20), { chunk_size = 1 }))
    local b = pidset(pool:map(busy_pid, items(20), { chunk_size = 1 }))
    for p in pairs(a) do assert.is_nil(b[p]) end
    assert.are.same({}, pool:worker_pids())
  end)

  it("reuses the same worker processes across maps, even when fn changes", function()
    pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    local _, n1 = pidset(pool:map(busy_pid, items(20), { chunk_size = 1 }))
    local pids = pool:worker_pids()
    assert.are.equal(2, n1)
    local other = function(x)
      local t = os.clock() + 0.002
      while os.clock() < t do end
      return x and require("ffi").C.getpid()
    end
    local b = pidset(pool:map(other, items(20), { chunk_size = 1 }))
    for p in pairs(b) do assert.is_true(p == pids[1] or p == pids[2]) end
    assert.are.same(pids, pool:worker_pids())
  end)

  it("set_keep_alive switches it on", function()
    pool = forkpool.new{ n_jobs = 2 }
    pool:map(busy_pid, items(4))
    assert.are.same({}, pool:worker_pids())
    pool:set_keep_alive()
    pool:map(busy_pid, items(4))
    local pids = pool:worker_pids()
    assert.are.equal(2, #pids)
    pool:map(busy_pid, items(4))
    assert.are.same(pids, pool:worker_pids())
    pool:set_keep_alive(false)
    pool:map(busy_pid, items(4))
    assert.are.same({}, pool:worker_pids())
  end)

  it("keeps worker state across maps", function()
    pool = forkpool.new{ n_jobs = 2, keep_alive = true, use_worker_state = true }
    local function add(state, x)
      state.sum = (state.sum or 0) + x
      return state.sum
    end
    pool:map(add, items(10))
    pool:map(add, items(10))
    pool:stop_and_join()
    -- state survives: read it back through worker_exit
    -- (as in mpire, each map's worker_exit replaces the previous one)
    local function report(state) return state.sum end
    pool:map(add, items(10), { worker_exit = report })
    pool:map(add, items(10), { worker_exit = report })
    pool:stop_and_join()
    local total = 0
    for _, v in ipairs(pool:get_exit_results()) do total = total + v end
    assert.are.equal(110, total)
  end)

  it("ships a new function with its upvalues by value, and modules by name", function()
    pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    pool:map(function(x) return x end, items(4))
    local cjson = require "cjson"
    local floor = math.floor
    local cfg = { scale = 3, names = { "a", "b" } }
    local function helper(x) return floor(x * cfg.scale / 2) end
    local r = pool:map(function(x)
      return cjson.encode({ v = helper(x), n = cfg.names[2] })
    end, items(3))
    assert.are.same({ v = 1, n = "b" }, cjson.decode(r[1]))
    assert.are.same({ v = 4, n = "b" }, cjson.decode(r[3]))
    -- upvalues are taken as they are at each call
    cfg.scale = 10
    r = pool:map(function(x) return helper(x) end, items(2))
    assert.are.same({ 5, 10 }, { r[1], r[2] })
  end)

  it("ships recursive and mutually referencing functions", function()
    pool = forkpool.new{ n_jobs = 1, keep_alive = true }
    pool:map(function(x) return x end, { 1 })
    local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
    local r = pool:map(fib, { 10, 20 })
    assert.are.same({ 55, 6765 }, { r[1], r[2] })
  end)

  it("ships items to workers forked for an earlier map", function()
    pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    pool:map(function(x) return x end, { 1, 2 })
    local data = {}
    for i = 1, 500 do data[i] = { id = i, name = "n" .. i, tags = { "x", i } } end
    local r = pool:map(function(rec) return rec.name .. ":" .. rec.tags[2] end, data)
    for i = 1, 500 do assert.are.equal("n" .. i .. ":" .. i, r[i]) end
  end)

  it("names an upvalue that cannot travel and suggests worker_init or shared_objects", function()
    pool = forkpool.new{ n_jobs = 1, keep_alive = true }
    pool:map(function(x) return x end, { 1 })
    local co = coroutine.create(function() end)
    local ok, err = pcall(pool.map, pool, function(x) return coroutine.status(co) .. x end, { 1 })
    assert.is_false(ok)
    assert.are.equal("marshal", err.kind)
    assert.matches("co", err.message)
    assert.matches("coroutine", err.message)
    assert.matches("worker_init", err.message)
    assert.matches("shared_objects", err.message)
    -- the pool is still usable, with the same workers
    local pids = pool:worker_pids()
    assert.are.equal(7, pool:map(function(x) return x + 6 end, { 1 })[1])
    assert.are.same(pids, pool:worker_pids())
  end)

  it("a task error does not restart kept-alive workers", function()
    pool = forkpool.new{ n_jobs = 2, keep_alive = true, use_worker_state = true }
    pool:map(function(s, x) s.mark = "kept"; return x end, items(10))
    local pids = pool:worker_pids()
    local ok, err = pcall(pool.map, pool, function(_, x)
      if x == 5 then error("boom") end
      return x
    end, items(50), { chunk_size = 1 })
    assert.is_false(ok)
    assert.are.equal("task", err.kind)
    assert.are.same(pids, pool:worker_pids())
    local r = pool:map(function(s) return s.mark end, items(10), { chunk_size = 1 })
    for i = 1, 10 do assert.are.equal("kept", r[i]) end
  end)

  it("restarts workers when use_worker_state, pass_worker_id or shared_objects change", function()
    pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    pool:map(busy_pid, items(4))
    local p1 = pool:worker_pids()
    pool:set_pass_worker_id(true)
    local r = pool:map(function(wid, _x) return wid end, items(4))
    for i = 1, 4 do assert.is_true(r[i] == 1 or r[i] == 2) end
    local p2 = pool:worker_pids()
    assert.are_not.equal(p1[1], p2[1])
    pool:set_use_worker_state(true)
    r = pool:map(function(_wid, state, _x) return type(state) end, items(2))
    assert.are.equal("table", r[1])
    local p3 = pool:worker_pids()
    assert.are_not.equal(p2[1], p3[1])
    pool:set_shared_objects({ k = 1 })
    r = pool:map(function(_wid, shared, _state, _x) return shared.k end, items(2))
    assert.are.equal(1, r[1])
    assert.are_not.equal(p3[1], pool:worker_pids()[1])
    -- setting the same value again does not restart
    local p4 = pool:worker_pids()
    pool:set_pass_worker_id(true)
    pool:map(function(_wid, _shared, _state, x) return x end, items(2))
    assert.are.same(p4, pool:worker_pids())
  end)
end)

describe("pool lifecycle", function()
  it("close stops workers, runs worker_exit, and later use raises a closed error", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    pool:map(function(x) return x end, items(10), { worker_exit = function() return "bye" end })
    pool:close()
    assert.are.same({ "bye", "bye" }, pool:get_exit_results())
    local ok, err = pcall(pool.map, pool, function(x) return x end, { 1 })
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "closed"))
    assert.matches("pool is closed", tostring(err))
    pool:close() -- closing twice is fine
  end)

  it("terminate kills workers without worker_exit; the pool is closed afterwards", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    pool:map(function(x) return x end, items(10), { worker_exit = function() return "bye" end })
    pool:terminate()
    assert.are.same({}, pool:worker_pids())
    assert.are.same({}, pool:get_exit_results())
    local ok, err = pcall(pool.map, pool, function(x) return x * 2 end, { 1 })
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "closed"))
    assert.matches("terminated", err.message)
    pool:close()
    pool:terminate()
  end)

  it("a pool dropped without close is reaped by the garbage collector", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    pool:map(function(x) return x end, items(4))
    local pids = pool:worker_pids()
    -- drop the only reference, so that the collector can reap the pool
    pool = nil -- luacheck: ignore 311
    collectgarbage("collect")
    collectgarbage("collect")
    local util = require "support.util"
    for _, p in ipairs(pids) do
      assert.is_true(util.wait_for(function() return not util.pid_alive(p) end, 5))
    end
  end)
end)
