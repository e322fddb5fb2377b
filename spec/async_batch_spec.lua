-- apply_async calls batched into one job (forkpool.batch): every call
-- keeps its own result, error, callbacks, death and timeout; the calls
-- that shared a chunk with one that failed still complete.
local forkpool = require "forkpool"
local util = require "support.util"

-- A task without upvalues (it joins a batch): x * 2, an error for
-- multiples of 7, its worker killed by SIGKILL when x == -1, a result
-- that cannot travel (a coroutine) when x == -2.
local function task(x)
  if x == -1 then
    local ffi = require "ffi"
    pcall(ffi.cdef, "int kill(int, int); int getpid(void);")
    ffi.C.kill(ffi.C.getpid(), 9)
  elseif x == -2 then
    return coroutine.create(print)
  elseif x % 7 == 0 then
    error("bad " .. x)
  end
  return x * 2
end

-- Keep both workers busy for a while, so that later calls pile up in a
-- batch (they are sent together, in chunks of many).
local function occupy(pool, seconds)
  local rs = {}
  for w = 1, pool.n_jobs do
    rs[w] = pool:apply_async(function(s) require("ffi").C.usleep(s * 1e6); return "slept" end, { seconds })
  end
  return rs
end

local ffi = require "ffi"
pcall(ffi.cdef, "int usleep(unsigned int);")

describe("batched apply_async", function()
  local pool
  before_each(function() pool = forkpool.new{ n_jobs = 2, keep_alive = true } end)
  after_each(function() pool:terminate() end)

  it("many outstanding calls share one job, and each gets its own result or error; callbacks fire once each", function()
    local busy = occupy(pool, 0.2)
    local oks, errs = {}, {}
    local rs = {}
    local N = 600
    for i = 1, N do
      rs[i] = pool:apply_async(task, { i }, {
        callback = function(v) oks[i] = (oks[i] or 0) + 1; assert.are.equal(2 * i, v) end,
        error_callback = function(e) errs[i] = (errs[i] or 0) + 1; assert.is_true(forkpool.is_error(e, "task")) end,
      })
    end
    -- batched: one job holds the 600 calls (the two sleepers are jobs of their own)
    assert.is_true(pool._active <= 3, "active jobs: " .. pool._active)
    for i = N, 1, -1 do
      if i % 7 == 0 then
        local ok, e = pcall(rs[i].get, rs[i])
        assert.is_false(ok)
        assert.is_true(forkpool.is_error(e, "task"))
        assert.matches("bad " .. i, e.message)
        assert.are.equal(1, e.index)
        assert.matches("traceback", e.traceback)
        assert.is_number(e.worker_id)
        assert.is_false(rs[i]:successful())
      else
        assert.are.equal(2 * i, rs[i]:get())
        assert.is_true(rs[i]:successful())
      end
    end
    for w = 1, 2 do assert.are.equal("slept", busy[w]:get()) end
    for i = 1, N do
      if i % 7 == 0 then
        assert.are.equal(1, errs[i]); assert.is_nil(oks[i])
      else
        assert.are.equal(1, oks[i]); assert.is_nil(errs[i])
      end
    end
    pool:join()
    assert.are.equal(0, pool._active)
  end)

  it("function literals in a loop (a new closure at each turn) join one batch too", function()
    local busy = occupy(pool, 0.2)
    local rs = {}
    for i = 1, 300 do
      rs[i] = pool:apply_async(function(x) if x % 100 == 0 then error("hundred") end return x + 1 end, { i })
    end
    assert.is_true(pool._active <= 3, "active jobs: " .. pool._active)
    for i = 1, 300 do
      local ok, v = pcall(rs[i].get, rs[i])
      if i % 100 == 0 then
        assert.is_false(ok); assert.matches("hundred", v.message)
      else
        assert.are.equal(i + 1, v)
      end
    end
    for w = 1, 2 do busy[w]:get() end
  end)

  it("an error value that cannot travel keeps its message; nil and multiple results", function()
    local busy = occupy(pool, 0.1)
    local rs = {}
    for i = 1, 50 do
      rs[i] = pool:apply_async(function(x)
        if x == 10 then error(setmetatable({}, { __tostring = function() return "odd error" end })) end
        if x == 20 then error({ code = 20, f = print }) end
        if x == 30 then error({ code = 30, list = { 1, 2, "x" } }) end
        if x == 40 then return nil end
        return x, "second"
      end, { i })
    end
    for i = 1, 50 do
      local ok, v = pcall(rs[i].get, rs[i])
      if i == 10 then
        assert.is_false(ok); assert.are.equal("odd error", v.message); assert.is_nil(v.value)
      elseif i == 20 then
        assert.is_false(ok); assert.is_nil(v.value)
      elseif i == 30 then
        assert.is_false(ok); assert.are.same({ code = 30, list = { 1, 2, "x" } }, v.value)
      elseif i == 40 then
        assert.is_true(ok); assert.is_nil(v)
      else
        assert.is_true(ok); assert.are.equal(i, v)
      end
    end
    for w = 1, 2 do busy[w]:get() end
  end)

  it("a worker killed by SIGKILL while running a batch: that call fails naming it, the others complete", function()
    local busy = occupy(pool, 0.2)
    local rs = {}
    for i = 1, 300 do rs[i] = pool:apply_async(task, { i == 150 and -1 or i }) end
    for i = 1, 300 do
      if i == 150 then
        local ok, e = pcall(rs[i].get, rs[i])
        assert.is_false(ok)
        assert.is_true(forkpool.is_error(e, "worker_died"), tostring(e))
        assert.are.equal("SIGKILL", e.signal)
        assert.are.equal(1, e.index)
        assert.matches("while running item 1", e.message)
      elseif i % 7 == 0 then
        assert.is_false((pcall(rs[i].get, rs[i])))
      else
        assert.are.equal(2 * i, rs[i]:get())
      end
    end
    for w = 1, 2 do busy[w]:get() end
    assert.are.equal(42, pool:apply(function(x) return x * 2 end, { 21 }))
  end)

  it("a result that cannot be sent fails that call only", function()
    local busy = occupy(pool, 0.1)
    local rs = {}
    for i = 1, 100 do rs[i] = pool:apply_async(task, { i == 50 and -2 or i }) end
    for i = 1, 100 do
      if i == 50 then
        local ok, e = pcall(rs[i].get, rs[i])
        assert.is_false(ok)
        assert.is_true(forkpool.is_error(e, "marshal"), tostring(e))
        -- as the call alone says it, whether or not its chunk had a task
        -- error too (its results then travel tagged)
        assert.are.equal("result[1]", e.path)
        assert.matches("^result%[1%]: ", e.message)
      elseif i % 7 ~= 0 then
        assert.are.equal(2 * i, rs[i]:get())
      end
    end
    for w = 1, 2 do busy[w]:get() end
  end)

  it("task_timeout hits only the slow call (beside a batch)", function()
    local rs = {}
    for i = 1, 100 do rs[i] = pool:apply_async(task, { i }) end
    local slow = pool:apply_async(function() require("ffi").C.usleep(20e6) end, nil, { task_timeout = 0.3 })
    for i = 101, 200 do rs[i] = pool:apply_async(task, { i }) end
    local ok, e = pcall(slow.get, slow)
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(e, "timeout"), tostring(e))
    for i = 1, 200 do
      if i % 7 ~= 0 then assert.are.equal(2 * i, rs[i]:get()) end
    end
  end)

  it("calls of different functions, and closures with upvalues, each get their own results", function()
    local add = 1000
    local closure = function(x) return x + add end
    local f = function(x) return x + 1 end
    local g = function(x) return x - 1 end
    local rs = {}
    for i = 1, 300 do
      local fn = (i % 3 == 0 and f) or (i % 3 == 1 and g) or closure
      rs[i] = pool:apply_async(fn, { i })
    end
    for i = 1, 300 do
      local want = (i % 3 == 0 and i + 1) or (i % 3 == 1 and i - 1) or i + 1000
      assert.are.equal(want, rs[i]:get())
    end
  end)

  it("arguments are taken when the call is made: changing them afterwards changes nothing, sinks nothing", function()
    local busy = occupy(pool, 0.2)
    local rs, lists, tabs = {}, {}, {}
    for i = 1, 100 do
      tabs[i] = { v = i }
      lists[i] = { i, tabs[i] }
      rs[i] = pool:apply_async(function(x, t) return x * 1000 + t.v end, lists[i])
    end
    for i = 1, 100 do
      -- queued behind the sleepers: not sent yet
      lists[i][1] = -1
      tabs[i].v = coroutine.create(print)
    end
    for i = 1, 100 do assert.are.equal(i * 1000 + i, rs[i]:get()) end
    for w = 1, 2 do busy[w]:get() end
  end)

  it("arguments: none, several with holes (n), tables of scalars", function()
    local rs = {}
    for i = 1, 100 do
      if i % 3 == 0 then
        rs[i] = pool:apply_async(function() return "none" end)
      elseif i % 3 == 1 then
        rs[i] = pool:apply_async(function(a, b, c) return tostring(a) .. tostring(b) .. tostring(c) end,
          { n = 3, i, nil, "z" })
      else
        rs[i] = pool:apply_async(function(t) return t.k .. #t end, { { 1, 2, k = "v" .. i } })
      end
    end
    for i = 1, 100 do
      local want = (i % 3 == 0 and "none") or (i % 3 == 1 and (i .. "nilz")) or ("v" .. i .. "2")
      assert.are.equal(want, rs[i]:get())
    end
  end)
end)

describe("batched apply_async with pool options", function()
  it("worker_lifespan: workers are replaced between chunks, every call completes once", function()
    local pool = forkpool.new{ n_jobs = 2, worker_lifespan = 7, keep_alive = true }
    local rs = {}
    for i = 1, 200 do rs[i] = pool:apply_async(function(x) return x * 3 end, { i }) end
    for i = 1, 200 do assert.are.equal(3 * i, rs[i]:get()) end
    pool:close()
  end)

  it("pass_worker_id and worker state reach every call", function()
    local pool = forkpool.new{ n_jobs = 2, pass_worker_id = true, use_worker_state = true }
    local rs = {}
    for i = 1, 100 do
      rs[i] = pool:apply_async(function(wid, state, x)
        state.n = (state.n or 0) + 1
        return wid * 1000 + x
      end, { i })
    end
    for i = 1, 100 do
      local v = rs[i]:get()
      assert.are.equal(i, v % 1000)
      assert.is_true(v > 1000 and v < 3000)
    end
    pool:close()
  end)

  it("order_tasks and enable_insights: calls (and a crash among them) still each get their own outcome", function()
    for _, opts in ipairs{ { order_tasks = true }, { enable_insights = true } } do
      opts.n_jobs, opts.keep_alive = 2, true
      local pool = forkpool.new(opts)
      local busy = occupy(pool, 0.1)
      local rs = {}
      for i = 1, 300 do rs[i] = pool:apply_async(task, { i == 200 and -1 or i }) end
      for i = 1, 300 do
        local ok, v = pcall(rs[i].get, rs[i])
        if i == 200 then
          assert.is_false(ok); assert.is_true(forkpool.is_error(v, "worker_died"))
        elseif i % 7 == 0 then
          assert.is_false(ok); assert.is_true(forkpool.is_error(v, "task"))
        else
          assert.is_true(ok); assert.are.equal(2 * i, v)
        end
      end
      for w = 1, 2 do busy[w]:get() end
      pool:close()
    end
  end)

  it("a map on the pool while batched calls are outstanding: both complete", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    local n = 0
    local rs = {}
    for i = 1, 500 do
      rs[i] = pool:apply_async(function(x) return -x end, { i }, { callback = function() n = n + 1 end })
    end
    local m = pool:map(function(x) return x * x end, util.items(1000))
    for i = 1, 1000 do assert.are.equal(i * i, m[i]) end
    for i = 1, 500 do assert.are.equal(-i, rs[i]:get()) end
    assert.are.equal(500, n)
    pool:close()
  end)

  it("without keep_alive, the workers stop once the last call is in", function()
    local pool = forkpool.new{ n_jobs = 2 }
    local rs = {}
    for i = 1, 100 do rs[i] = pool:apply_async(function(x) return x end, { i }) end
    for i = 1, 100 do assert.are.equal(i, rs[i]:get()) end
    assert.are.same({}, pool:worker_pids())
    pool:close()
  end)

  it("close waits for outstanding calls; terminate fails them (callbacks run once)", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    local n = 0
    local rs = {}
    for i = 1, 200 do
      rs[i] = pool:apply_async(function(x) return x end, { i }, { callback = function() n = n + 1 end })
    end
    pool:close()
    assert.are.equal(200, n)
    for i = 1, 200 do assert.are.equal(i, rs[i]:get()) end

    pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    local errs = 0
    rs = {}
    for i = 1, 200 do
      rs[i] = pool:apply_async(function(x) require("ffi").C.usleep(20000); return x end, { i },
        { error_callback = function() errs = errs + 1 end })
    end
    pool:terminate()
    local failed = 0
    for i = 1, 200 do
      local ok, e = pcall(rs[i].get, rs[i])
      if not ok then
        failed = failed + 1
        assert.is_true(forkpool.is_error(e, "closed"), tostring(e))
      end
    end
    assert.is_true(failed > 0)
    assert.are.equal(failed, errs)
  end)
end)

describe("batched apply_async in a child process", function()
  it("leaves the host's SIGINT handler in place between calls, queued behind busy workers or not", function()
    local ok, out = util.run_lua([=[
      local forkpool = require "forkpool"
      local ffi = require "ffi"
      ffi.cdef[[
        struct fp_spec_sa { void *handler; unsigned long mask[16]; int flags; void *restorer; };
        int sigaction(int, const struct fp_spec_sa *, struct fp_spec_sa *);
        int usleep(unsigned int);
      ]]
      local function handler()
        local sa = ffi.new("struct fp_spec_sa")
        assert(ffi.C.sigaction(2, nil, sa) == 0)
        return tonumber(ffi.cast("uintptr_t", sa.handler))
      end
      local host = handler()
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      local same = true
      local rs = {}
      for i = 1, 2000 do
        rs[i] = pool:apply_async(function(x) require("ffi").C.usleep(100); return x end, { i })
        if handler() ~= host then same = false end
      end
      for i = 1, 2000 do
        assert(rs[i]:get() == i)
        if handler() ~= host then same = false end
      end
      pool:close()
      print("same", same, handler() == host)
    ]=], 60)
    assert.is_true(ok, out)
    assert.matches("same\ttrue\ttrue", out)
  end)

  it("SIGINT while get() waits on a batch raises interrupted promptly; every call fails, the pool recovers", function()
    local ok, out = util.run_lua([[
      local forkpool = require "forkpool"
      local ffi = require "ffi"
      pcall(ffi.cdef, "int getpid(void); int usleep(unsigned int);")
      local core = require "forkpool.core"
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      local rs = {}
      for i = 1, 100 do
        rs[i] = pool:apply_async(function(x) require("ffi").C.usleep(200000); return x end, { i })
      end
      os.execute("(sleep 0.3; kill -INT " .. ffi.C.getpid() .. ") &")
      local t0 = core.now()
      local okg, err = pcall(rs[100].get, rs[100])
      print("kind", forkpool.is_error(err) and err.kind or tostring(err))
      print("fast", core.now() - t0 < 1.5)
      -- the calls that ran before the signal keep their results
      local all = true
      for i = 1, 100 do
        local okr, e = pcall(rs[i].get, rs[i])
        if not (okr and e == i) and not forkpool.is_error(e, "interrupted") then all = false end
      end
      print("all", all)
      print("again", pool:apply_async(function(x) return x * 2 end, { 21 }):get())
      pool:close()
    ]], 60)
    assert.is_true(ok, out)
    assert.matches("kind\tinterrupted", out)
    assert.matches("fast\ttrue", out)
    assert.matches("all\ttrue", out)
    assert.matches("again\t42", out)
  end)
end)
