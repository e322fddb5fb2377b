-- A worker that dies during a map never hangs the caller: the map raises a
-- worker_died error naming the worker, its pid, the signal or exit code and
-- the item; the pool stays usable.
local forkpool = require "forkpool"

local items = require("support.util").items

local function segfault()
  local ffi = require "ffi"
  return ffi.cast("int *", 0)[0]
end

describe("a worker that dies", function()
  for _, keep in ipairs({ false, true }) do
    describe(keep and "(keep_alive)" or "(fresh workers)", function()
      local pool
      before_each(function() pool = forkpool.new{ n_jobs = 2, keep_alive = keep } end)
      after_each(function() pool:close() end)

      it("by segfault is reported with SIGSEGV, pid and item", function()
        local ok, err = pcall(pool.map, pool, function(x)
          if x == 7 then segfault() end
          return x
        end, items(20), { chunk_size = 1 })
        assert.is_false(ok)
        assert.is_true(forkpool.is_error(err, "worker_died"))
        assert.are.equal("SIGSEGV", err.signal)
        assert.are.equal(7, err.index)
        assert.is_number(err.pid)
        assert.is_number(err.worker_id)
        assert.matches("SIGSEGV%(%-11%)", tostring(err))
        assert.are.same({ 2, 4 }, { unpack(pool:map(function(x) return 2 * x end, { 1, 2 }), 1, 2) })
      end)

      it("by os.exit(3) is reported with its exit code", function()
        local ok, err = pcall(pool.map, pool, function(x)
          if x == 2 then os.exit(3) end
          return x
        end, items(4), { chunk_size = 1 })
        assert.is_false(ok)
        assert.is_true(forkpool.is_error(err, "worker_died"))
        assert.are.equal(3, err.exit_code)
        assert.are.equal(2, err.index)
        assert.are.equal(1, pool:map(function(x) return x end, { 1 })[1])
      end)

      it("by SIGKILL from outside is reported", function()
        local ok, err = pcall(pool.map, pool, function(x)
          if x == 1 then
            local ffi = require "ffi"
            pcall(ffi.cdef, "int kill(int, int); int getpid(void);")
            ffi.C.kill(ffi.C.getpid(), 9)
          end
          return x
        end, items(4), { chunk_size = 1 })
        assert.is_false(ok)
        assert.are.equal("worker_died", err.kind)
        assert.are.equal("SIGKILL", err.signal)
        assert.are.equal(1, pool:map(function(x) return x end, { 1 })[1])
      end)

      it("by abort in worker_init is reported", function()
        local ok, err = pcall(pool.map, pool, function(x) return x end, items(4), {
          worker_init = function()
            local ffi = require "ffi"
            pcall(ffi.cdef, "void abort(void);")
            ffi.C.abort()
          end,
        })
        assert.is_false(ok)
        assert.are.equal("worker_died", err.kind)
        assert.are.equal("SIGABRT", err.signal)
        assert.are.equal("worker_init", err.phase)
        assert.are.equal(1, pool:map(function(x) return x end, { 1 })[1])
      end)
    end)
  end

  it("prints output the parent buffered before the map only once (os.exit in a worker)", function()
    local util = require "support.util"
    local ok, out = util.run_lua([[
      local forkpool = require "forkpool"
      io.write("before-map ")
      local pool = forkpool.new{ n_jobs = 2 }
      pcall(pool.map, pool, function(x) os.exit(0) end, { 1, 2 })
      pool:close()
      io.write("after\n")
    ]], 30)
    assert.is_true(ok, out)
    assert.are.equal("before-map after\n", out)
  end)
end)
