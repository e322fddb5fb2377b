-- The examples of mpire's documentation (shared/reference/), in Lua, and
-- the worker model they describe: argument order, worker_init/worker_exit,
-- exit results, lifespans, shared objects.
local forkpool = require "forkpool"

local function range(a, b)
  local t = {}
  for i = a, b do t[#t + 1] = i end
  return t
end

local function sum(t)
  local s = 0
  for _, v in ipairs(t) do s = s + v end
  return s
end

describe("mpire's documented examples", function()
  it("worker_init / worker_exit: counting even numbers in worker state", function()
    local function init_func(worker_state) worker_state.count_even = 0 end
    local function square_and_count_even(worker_state, x)
      if x % 2 == 0 then worker_state.count_even = worker_state.count_even + 1 end
      return x * x
    end
    local function exit_func(worker_state) return worker_state.count_even end
    local pool = forkpool.new{ n_jobs = 4, use_worker_state = true }
    local r = pool:map(square_and_count_even, range(0, 99),
      { worker_init = init_func, worker_exit = exit_func })
    local exits = pool:get_exit_results()
    pool:close()
    assert.are.equal(99 * 99, r[100])
    assert.is_true(#exits >= 1 and #exits <= 4)
    assert.are.equal(50, sum(exits))
  end)

  it("worker_state: a local sum per worker", function()
    local function task(worker_state, x)
      if worker_state.local_sum == nil then worker_state.local_sum = 0 end
      worker_state.local_sum = worker_state.local_sum + x
    end
    local pool = forkpool.new{ n_jobs = 4, use_worker_state = true }
    local r = pool:map(task, range(0, 99), { worker_exit = function(s) return s.local_sum end })
    pool:close()
    assert.are.equal(100, r.n)
    assert.are.equal(4950, sum(pool:get_exit_results()))
  end)

  it("set_use_worker_state", function()
    local pool = forkpool.new{ n_jobs = 4 }
    pool:set_use_worker_state()
    pool:map(function(state, _x) state.seen = true end, range(0, 99))
    pool:close()
  end)

  it("keep_alive: init runs once per worker, exit at the end with the last exit function", function()
    local pool = forkpool.new{ n_jobs = 4, keep_alive = true, use_worker_state = true }
    local function task(_s, x) return x end
    local function init_func_1(s) s.init = 1 end
    local function exit_func_1(s) return "exit_1:" .. s.init end
    local function init_func_2(s) s.init = 2 end
    local function exit_func_2(s) return "exit_2:" .. s.init end
    pool:map(task, range(0, 99), { worker_init = init_func_1, worker_exit = exit_func_1 })
    assert.are.same({}, pool:get_exit_results())
    pool:map(task, range(0, 99), { worker_init = init_func_2, worker_exit = exit_func_2 })
    pool:stop_and_join()
    local exits = pool:get_exit_results()
    assert.is_true(#exits >= 1)
    for _, e in ipairs(exits) do assert.are.equal("exit_2:1", e) end
    pool:close()
  end)

  it("worker_lifespan: restarts are counted through init and exit", function()
    local pool = forkpool.new{ n_jobs = 2, use_worker_state = true, worker_lifespan = 10,
      pass_worker_id = true }
    local r = pool:map(function(_wid, s, x) s.n = s.n + 1; return x * 2 end, range(1, 100), {
      worker_init = function(_wid, s) s.n = 0 end,
      worker_exit = function(_wid, s) return s.n end,
      chunk_size = 3,
    })
    pool:close()
    for i = 1, 100 do assert.are.equal(2 * i, r[i]) end
    local exits = pool:get_exit_results()
    -- every worker ran at most 10 tasks; together they ran all 100
    assert.are.equal(100, sum(exits))
    for _, n in ipairs(exits) do assert.is_true(n <= 10) end
    assert.is_true(#exits >= 10)
  end)

  it("worker_lifespan with keep_alive spans maps", function()
    local pool = forkpool.new{ n_jobs = 1, keep_alive = true, worker_lifespan = 5 }
    local ffi = require "ffi"
    pcall(ffi.cdef, "int getpid(void);")
    local pids = {}
    for _ = 1, 3 do
      local r = pool:map(function() return require("ffi").C.getpid() end, range(1, 4))
      for i = 1, r.n do pids[r[i]] = (pids[r[i]] or 0) + 1 end
    end
    pool:close()
    local n = 0
    for _, c in pairs(pids) do n = n + 1; assert.is_true(c <= 5) end
    assert.is_true(n >= 3)
  end)
end)

describe("the worker model", function()
  it("passes worker id, shared objects and worker state first, in that order", function()
    local shared = { tag = "S" }
    local pool = forkpool.new{ n_jobs = 2, pass_worker_id = true, shared_objects = shared,
      use_worker_state = true }
    local r = pool:map(function(wid, so, state, x)
      return { wid = wid, tag = so.tag, state = type(state), x = x }
    end, { "a", "b" }, {
      worker_init = function(wid, _so, state) state.inited = wid end,
      worker_exit = function(wid, so, state) return { wid = wid, tag = so.tag, inited = state.inited } end,
    })
    pool:close()
    for i, x in ipairs({ "a", "b" }) do
      assert.are.equal(x, r[i].x)
      assert.are.equal("S", r[i].tag)
      assert.are.equal("table", r[i].state)
      assert.is_true(r[i].wid == 1 or r[i].wid == 2)
    end
    for _, e in ipairs(pool:get_exit_results()) do
      assert.are.equal("S", e.tag)
      assert.are.equal(e.wid, e.inited)
    end
  end)

  it("shared objects reach workers through fork, not copied", function()
    local big = {}
    for i = 1, 1000 do big[i] = { i } end
    local addr = tostring(big)
    local pool = forkpool.new{ n_jobs = 2, shared_objects = big }
    local r = pool:map(function(so, _x) return tostring(so) .. "|" .. #so end, { 1, 2, 3 })
    pool:close()
    for i = 1, 3 do assert.are.equal(addr .. "|1000", r[i]) end
  end)

  it("runs worker_exit only for workers that ran a task", function()
    local pool = forkpool.new{ n_jobs = 4 }
    pool:map(function(x) return x end, { 1 }, { worker_exit = function() return 1 end, chunk_size = 1 })
    pool:close()
    assert.are.same({ 1 }, pool:get_exit_results())
  end)

  it("reports errors in worker_init and worker_exit, naming the phase", function()
    local pool = forkpool.new{ n_jobs = 2 }
    local ok, err = pcall(pool.map, pool, function(x) return x end, { 1, 2 },
      { worker_init = function() error("init failed") end })
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "worker_init"))
    assert.matches("init failed", err.message)
    assert.matches("stack traceback", err.traceback)
    ok, err = pcall(pool.map, pool, function(x) return x end, { 1, 2 },
      { worker_exit = function() error("exit failed") end })
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "worker_exit"))
    assert.matches("exit failed", err.message)
    -- still usable
    assert.are.equal(3, pool:map(function(x) return x + 1 end, { 2 })[1])
    pool:close()
  end)
end)
