-- Address-space limits: forkpool loads and works under `ulimit -v`, its
-- address space per worker is a small constant (not the machine's memory),
-- so 256 workers fit, and the shared arena's size can be set with
-- FORKPOOL_SHARED_MEMORY.  Everything runs in child luajit processes, each
-- killed after a deadline.
local util = require "support.util"

local LIMIT_KB = 4000000  -- ulimit -v, in KiB (about 3.8 GiB)
-- AddressSanitizer (make asan, inherited by the child luajit through
-- LD_PRELOAD) reserves terabytes of shadow memory: no ulimit -v there.
local ASAN = os.getenv("FORKPOOL_ASAN") ~= nil
local LIMIT = not ASAN and LIMIT_KB or nil

-- run(code, opts) -> ok, output: code runs in a fresh luajit (same module
-- paths) under `ulimit -v opts.limit` when given, with opts.env prepended
-- (a string of NAME=value words), killed after opts.timeout seconds.
local function run(code, opts)
  opts = opts or {}
  local path = util.lua_script(code)
  local inner = ("%sexec luajit %s"):format(opts.limit and ("ulimit -v %d && "):format(opts.limit) or "", path)
  local cmd = ("%s timeout -s KILL %d sh -c '%s' 2>&1; echo \"__rc=$?\""):format(
    opts.env and ("env " .. opts.env) or "", opts.timeout or 60, inner)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  os.remove(path)
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  out = out:gsub("__rc=%d+%s*$", "")
  return rc == 0, out
end

local function field(out, name)
  return tonumber(out:match(name .. "=(%d+)"))
end

describe(ASAN and "under AddressSanitizer (no ulimit -v)" or ("under ulimit -v " .. LIMIT_KB), function()
  it("loads, maps, carries a 50 MB result and a 40 MB item, and makes shared arrays", function()
    local ok, out = run([[
      local forkpool = require "forkpool"
      local core = require "forkpool.core"
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      local r = pool:map(function(n) return string.rep("x", n) end, { 50e6, 3 }, { chunk_size = 1 })
      assert(#r[1] == 50e6 and not r[1]:find("[^x]") and r[2] == "xxx", "50 MB result")
      r = nil
      local big = string.rep("y", 40e6)
      assert(pool:map(function(s) return #s end, { big })[1] == 40e6, "40 MB item")
      big = nil
      collectgarbage()
      -- made after the workers started: still seen by them
      local a = forkpool.shared_array("double", 1e6)
      pool:map(function(i) a[i] = i * 2 end, { 0, 1, 999999 }, { chunk_size = 1 })
      assert(a[1] == 2 and a[999999] == 1999998, "shared array")
      -- again, so that the big areas are reused
      r = pool:map(function(n) return string.rep("z", n) end, { 50e6 })
      assert(#r[1] == 50e6, "second 50 MB result")
      pool:close()
      print("arena=" .. core.shared_size())
      print("ok")
    ]], { limit = LIMIT, timeout = 120 })
    assert.is_true(ok, out)
    assert.matches("ok", out)
    -- the arena takes a quarter of the limit, whole MiB
    local arena = field(out, "arena")
    assert.is_true(arena > 0 and (ASAN or arena <= LIMIT_KB * 1024 / 4), out)
    assert.are.equal(0, arena % (1024 * 1024))
  end)

  it("runs a pool of 256 workers; each costs a small constant of address space", function()
    local ok, out = run([[
      local forkpool = require "forkpool"
      local function vmsize(pid)
        local f = io.open("/proc/" .. pid .. "/status")
        if not f then return nil end
        local kb = f:read("*a"):match("VmSize:%s*(%d+)")
        f:close()
        return tonumber(kb) * 1024
      end
      local before = vmsize("self")
      local pool = forkpool.new{ n_jobs = 256, keep_alive = true }
      local items = {}
      for i = 1, 512 do items[i] = i end
      local r = pool:map(function(x) return x * 2 end, items, { chunk_size = 1 })
      assert(#r == 512 and r[512] == 1024)
      local pids = pool:worker_pids()
      local n, worst = 0, 0
      for _, pid in pairs(pids) do
        n = n + 1
        local v = vmsize(pid)
        if v and v > worst then worst = v end
      end
      local after = vmsize("self")
      pool:close()
      print(("workers=%d parent_growth=%d worker_max=%d parent_before=%d"):format(
        n, after - before, worst, before))
    ]], { limit = LIMIT, timeout = 180 })
    assert.is_true(ok, out)
    assert.are.equal(256, field(out, "workers"), out)
    local growth, worker, base = field(out, "parent_growth"), field(out, "worker_max"), field(out, "parent_before")
    -- the parent: two 1 MiB rings per worker and a little more
    assert.is_true(growth / 256 < 8 * 1024 * 1024, out)
    -- a worker: what it inherited from the parent plus its own lanes
    assert.is_true(worker - base < 64 * 1024 * 1024, out)
  end)
end)

describe("FORKPOOL_SHARED_MEMORY", function()
  it("sets the shared arena's size when forkpool is loaded", function()
    local ok, out = run([[
      local forkpool = require "forkpool"
      print("arena=" .. require("forkpool.core").shared_size())
      local a = forkpool.shared_array("uint8_t", 60 * 1024 * 1024)
      a[0] = 1
      local ok, err = pcall(forkpool.shared_array, "uint8_t", 8 * 1024 * 1024)
      print(ok, err)
    ]], { env = "FORKPOOL_SHARED_MEMORY=64M" })
    assert.is_true(ok, out)
    assert.are.equal(64 * 1024 * 1024, field(out, "arena"))
    assert.matches("false.*out of shared memory.*FORKPOOL_SHARED_MEMORY", out)
  end)

  it("0 means no arena; a value that is not a size is an error naming the variable", function()
    local ok, out = run([[
      local forkpool = require "forkpool"
      print("arena=" .. require("forkpool.core").shared_size())
      print(pcall(forkpool.shared_array, "int", 1))
    ]], { env = "FORKPOOL_SHARED_MEMORY=0" })
    assert.is_true(ok, out)
    assert.are.equal(0, field(out, "arena"))
    assert.matches("false.*out of shared memory", out)
    ok, out = run([[ require "forkpool" ]], { env = "FORKPOOL_SHARED_MEMORY=lots" })
    assert.is_false(ok)
    assert.matches("FORKPOOL_SHARED_MEMORY must be a size in bytes.*'lots'", out)
  end)
end)
