-- The pool's fork hooks (before_fork, after_fork_parent, after_fork_child):
-- when they run, in which process, in which order, and how their errors
-- are reported.  The C API's hooks (forkpool_set_fork_hooks) are tested by
-- tests/host/test_threads_hooks.c.
local forkpool = require "forkpool"

local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")

describe("fork hooks", function()
  local pool
  after_each(function() if pool then pcall(pool.close, pool) end pool = nil end)

  it("run around every worker fork, in order, the child's before worker_init", function()
    local log = {}
    pool = forkpool.new{
      n_jobs = 2, use_worker_state = true,
      before_fork = function(w) log[#log + 1] = "before " .. w end,
      after_fork_parent = function(w, pid)
        assert(type(pid) == "number" and pid > 0)
        log[#log + 1] = "parent " .. w
      end,
      -- runs in the worker: what it sets is seen by worker_init there
      after_fork_child = function(w) _G.hook_child = { w = w, pid = ffi.C.getpid() } end,
    }
    local out = pool:map(function(state)
      return state.seen.w .. ":" .. tostring(state.seen.pid == ffi.C.getpid())
    end, { 1, 2, 3, 4 }, {
      chunk_size = 1,
      worker_init = function(state) state.seen = _G.hook_child end,
    })
    for _, v in ipairs(out) do assert.truthy(v == "1:true" or v == "2:true", v) end
    assert.are.same({ "before 1", "parent 1", "before 2", "parent 2" }, log)
    assert.is_nil(_G.hook_child) -- never in the parent
    -- a second map forks fresh workers (no keep_alive): the hooks run again
    pool:map(function(x) return x end, { 1, 2 }, { chunk_size = 1 })
    assert.are.equal(8, #log)
  end)

  it("do not run when no worker is forked (keep_alive workers reused)", function()
    local n = 0
    pool = forkpool.new{ n_jobs = 1, keep_alive = true, before_fork = function() n = n + 1 end }
    pool:map(function(x) return x end, { 1, 2, 3 })
    pool:map(function(x) return x end, { 1, 2, 3 })
    assert.are.equal(1, n)
  end)

  it("an error in before_fork fails the map naming the option; no worker is forked", function()
    local after = 0
    pool = forkpool.new{
      n_jobs = 1,
      before_fork = function() error("host lock unavailable") end,
      after_fork_parent = function() after = after + 1 end,
    }
    local ok, err = pcall(pool.map, pool, function(x) return x end, { 1 })
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "spawn"))
    assert.matches("error in before_fork: .*host lock unavailable", tostring(err))
    assert.are.equal("before_fork", err.hook)
    assert.are.equal(0, after)
    assert.are.same({}, pool:worker_pids())
  end)

  it("an error in after_fork_parent fails the map naming the option", function()
    pool = forkpool.new{ n_jobs = 1, after_fork_parent = function() error("oops") end }
    local ok, err = pcall(pool.map, pool, function(x) return x end, { 1 })
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "spawn"))
    assert.matches("error in after_fork_parent: .*oops", tostring(err))
    -- the worker was forked (it lives, and is reaped at close); the next
    -- call runs the hook again and fails again
    assert.has_error(function() pool:map(function(x) return x end, { 1 }) end)
  end)

  it("an error in after_fork_child is reported like a worker_init failure", function()
    local inits = 0
    pool = forkpool.new{ n_jobs = 1, after_fork_child = function() error("no device") end }
    local ok, err = pcall(pool.map, pool, function(x) return x end, { 1, 2 }, {
      worker_init = function() inits = inits + 1 end,
    })
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "worker_init"))
    assert.matches("in after_fork_child: .*no device", tostring(err))
    assert.are.equal("after_fork_child", err.phase)
  end)

  it("are checked as functions", function()
    for _, k in ipairs({ "before_fork", "after_fork_parent", "after_fork_child" }) do
      local ok, e = pcall(forkpool.new, { n_jobs = 1, [k] = 42 })
      assert.is_false(ok)
      assert.matches("bad option '" .. k .. "' to 'new' %(function expected", e)
    end
  end)
end)
