-- A hostile host (issue 10, round two): workers stopped, group signals, a
-- parent that exec()s, tasks that close descriptors or leave children
-- behind, pools' memory seen by other pools' workers, inherited
-- descriptors.  Everything that could hang or kill the runner runs in a
-- child process (support.util.run_lua) with a deadline.
local util = require "support.util"

-- run script in a child luajit (killed after timeout s); returns its output
local function child(script, timeout)
  local ok, out, rc = util.run_lua(script, timeout or 30)
  assert.is_true(ok, "child failed (rc " .. tostring(rc) .. "): " .. out)
  return out
end

local PRELUDE = [[
  local forkpool = require "forkpool"
  local core = require "forkpool.core"
  local ffi = require "ffi"
  pcall(ffi.cdef, "int kill(int, int); int getpid(void); unsigned int sleep(unsigned int);")
  local function alive(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    if not f then return false end
    local s = f:read("*a"); f:close()
    local st = s:match("%) (%S)")
    return st ~= "Z" and st ~= "X"
  end
  local function wait_for(cond, t)
    local dl = core.now() + t
    while core.now() < dl do
      if cond() then return true end
      os.execute("sleep 0.02")
    end
    return cond()
  end
]]

describe("a worker stopped with SIGSTOP", function()
  it("close() with worker_exit_timeout returns within the timeout plus a second", function()
    local out = child(PRELUDE .. [[
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      pool:map(function(x) return x end, { 1, 2 }, { worker_exit_timeout = 1 })
      local pids = pool:worker_pids()
      ffi.C.kill(pids[1], 19) -- SIGSTOP, idle
      local t0 = core.now()
      local ok, err = pcall(pool.close, pool)
      local dt = core.now() - t0
      print("dt", dt < 2, dt)
      print("err", ok or err.kind)
      print("gone", wait_for(function() return not alive(pids[1]) and not alive(pids[2]) end, 2))
    ]], 30)
    assert.matches("dt\ttrue", out)
    assert.matches("err\ttimeout", out)
    assert.matches("gone\ttrue", out)
  end)

  it("stopped inside worker_exit: close() is bounded too", function()
    local out = child(PRELUDE .. [[
      local pool = forkpool.new{ n_jobs = 1, keep_alive = true }
      pool:map(function(x) return x end, { 1 }, { worker_exit_timeout = 1, worker_exit = function()
        require("ffi").C.kill(require("ffi").C.getpid(), 19)
      end })
      local t0 = core.now()
      local ok, err = pcall(pool.close, pool)
      local dt = core.now() - t0
      print("dt", dt < 2, dt)
      print("err", ok or err.kind)
    ]], 30)
    assert.matches("dt\ttrue", out)
    assert.matches("err\ttimeout", out)
  end)
end)
