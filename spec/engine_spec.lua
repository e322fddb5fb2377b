-- Process-level behaviour of the engine: workers ignore SIGINT, idle
-- processes sleep instead of spinning, and the leak helper itself works.
local forkpool = require "forkpool"
local util = require "support.util"

-- CPU time (user + system, in clock ticks) a process has used so far
local function cpu_ticks(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  local s = f:read("*a")
  f:close()
  local fields = {}
  for x in s:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = x end
  -- after the command: state(1) ppid(2) ... utime(12) stime(13)
  return tonumber(fields[12]) + tonumber(fields[13])
end

describe("the engine", function()
  it("workers ignore SIGINT (Ctrl-C reaches only the parent)", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    pool:map(function(x) return x end, { 1, 2 })
    for _, pid in ipairs(pool:worker_pids()) do util.kill(pid, 2) end
    util.sleep(0.05)
    for _, pid in ipairs(pool:worker_pids()) do assert.is_true(util.pid_alive(pid)) end
    local r = pool:map(function(x) return x + 1 end, { 1, 2 })
    assert.are.same({ 2, 3 }, { r[1], r[2] })
    pool:close()
  end)

  it("idle workers sleep: no CPU time used between maps", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    pool:map(function(x) return x end, { 1, 2 })
    util.sleep(0.1)
    local before = {}
    for w, pid in ipairs(pool:worker_pids()) do before[w] = cpu_ticks(pid) end
    util.sleep(1.0)
    for w, pid in ipairs(pool:worker_pids()) do
      -- a spinning worker would use ~100 ticks per second
      assert.is_true(cpu_ticks(pid) - before[w] <= 2)
    end
    pool:close()
  end)

  it("the waiting parent sleeps while workers run a long task", function()
    local pool = forkpool.new{ n_jobs = 1 }
    local me = util.getpid()
    local t0 = cpu_ticks(me)
    pool:map(function()
      local ffi = require "ffi"
      pcall(ffi.cdef, "int usleep(unsigned int);")
      ffi.C.usleep(800000)
    end, { 1 })
    assert.is_true(cpu_ticks(me) - t0 <= 10)
    pool:close()
  end)

  it("the leak helper fails a spec file that leaves workers behind", function()
    local p = io.popen("busted --lua=luajit -o utfTerminal --pattern=_fixture spec/fixtures 2>&1")
    local out = p:read("*a")
    p:close()
    assert.matches("leak check failed", out)
    assert.matches("child processes left", out)
  end)
end)
