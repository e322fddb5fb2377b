-- Reliability, round two (issue 10): values that cannot be sent, pools
-- closed or terminated under open iterators and outstanding results, input
-- iterators that raise, results the imap iterator must not keep, nested
-- re-entrancy guards, items tables with metamethods.
--
-- Everything that could hang (the bugs these specs keep fixed did) or take
-- the runner down runs in a child process with a deadline (util.run_lua);
-- waits in this process have deadlines too (get(timeout), wait_for).
local forkpool = require "forkpool"
local util = require "support.util"
local ffi = require "ffi"
pcall(ffi.cdef, "int usleep(unsigned int);")

-- Run a script in a child luajit (killed after `timeout` seconds) with a
-- common prelude; returns ok, output.
local PRELUDE = [[
io.stdout:setvbuf("no")
local forkpool = require "forkpool"
local ffi = require "ffi"
pcall(ffi.cdef, "int kill(int, int); int getpid(void); int getppid(void); int usleep(unsigned int);")
local function kind(e)
  if forkpool.is_error(e) then return e.kind end
  return "raw:" .. tostring(e)
end
]]
local function child(code, timeout)
  return util.run_lua(PRELUDE .. code, timeout or 60)
end

------------------------------------------------------------------------
-- 12. Nested re-entrancy guards
------------------------------------------------------------------------

describe("a callback", function()
  for _, look in ipairs{ "ready", "get", "wait" } do
    it("that calls other:" .. look .. "() leaves the pool busy: a map from it is refused", function()
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      local other = pool:apply_async(function() return "other" end)
      assert.are.equal("other", other:get(10))
      local outcome
      local a = pool:apply_async(function() return 1 end, nil, { callback = function()
        assert(other[look](other, 1))
        local ok, e = pcall(pool.map, pool, function(x) return x end, { 1 })
        outcome = { ok = ok, e = tostring(e) }
      end })
      assert.are.equal(1, a:get(10))
      assert.is_false(outcome.ok)
      assert.matches("busy", outcome.e)
      -- and the pool is usable once the callback is over
      assert.are.equal(2, pool:map(function(x) return x * 2 end, { 1 })[1])
      pool:close()
    end)
  end

  it("that waits on another pool leaves its own pool busy", function()
    local a_pool = forkpool.new{ n_jobs = 1, keep_alive = true }
    local b_pool = forkpool.new{ n_jobs = 1, keep_alive = true }
    local outcome
    local a = a_pool:apply_async(function() return 1 end, nil, { callback = function()
      local r = b_pool:map(function(x) return x + 1 end, { 1 })
      local ok, e = pcall(a_pool.map, a_pool, function(x) return x end, { 1 })
      outcome = { r = r[1], ok = ok, e = tostring(e) }
    end })
    assert.are.equal(1, a:get(10))
    assert.are.equal(2, outcome.r)
    assert.is_false(outcome.ok)
    assert.matches("busy", outcome.e)
    b_pool:close()
    a_pool:close()
  end)

  for _, nested in ipairs{ "other:ready()", "another pool's map" } do
    it("that calls " .. nested .. " leaves the SIGINT guard armed: Ctrl-C raises interrupted", function()
      -- a shell sends SIGINT to the parent once the callback has run (it
      -- waits for a file the callback writes), while the parent waits in
      -- join() for a long task; LuaJIT's own "interrupted!" must not get
      -- through
      local flag = os.tmpname()
      os.remove(flag)
      local ok, out = child(([[
        local flag, nested = %q, %q
        local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
        local other_pool = forkpool.new{ n_jobs = 1 }
        local other = pool:apply_async(function() return "other" end)
        assert(other:get(10) == "other")
        os.execute(("(for i in $(seq 2000); do if [ -e %%s ]; then kill -INT %%d; exit; fi; "
          .. "sleep 0.01; done) >/dev/null 2>&1 &"):format(flag, ffi.C.getpid()))
        pool:apply_async(function() return 1 end, nil, { callback = function()
          if nested == "other:ready()" then assert(other:ready())
          else assert(other_pool:map(function(x) return x end, { 5 })[1] == 5) end
          io.open(flag, "w"):close()
        end })
        -- submitted after the callback's call, so never ahead of it
        pool:apply_async(function() require("ffi").C.usleep(30e6) end)
        local t0 = require("forkpool.core").now()
        local okj, e = pcall(pool.join, pool)
        print("join", okj, kind(e), require("forkpool.core").now() - t0 < 15)
        pool:close()
        other_pool:close()
        os.remove(flag)
        print("done")
      ]]):format(flag, nested), 60)
      os.remove(flag)
      assert.is_true(ok, out)
      assert.matches("join\tfalse\tinterrupted\ttrue", out)
      assert.matches("done", out)
    end)
  end
end)
