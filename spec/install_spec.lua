-- First use as a new user meets it: clear refusals where forkpool cannot
-- run, the items table conventions, the version, and a default n_jobs that
-- respects the CPUs this process may use.
local util = require "support.util"
local forkpool = require "forkpool"
local cpus = require "forkpool.cpus"

-- Run `code` under interpreter `interp` (with this process's module paths),
-- killed after 30 s.  -> exit code, output
local function run_with(interp, code)
  local path = util.lua_script(code)
  local p = io.popen(("timeout -s KILL 30 %s %s 2>&1; echo \"__rc=$?\""):format(interp, path))
  local out = p:read("*a")
  p:close()
  os.remove(path)
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return rc, (out:gsub("__rc=%d+%s*$", ""))
end

local function have(cmd)
  return os.execute(("command -v %s >/dev/null 2>&1"):format(cmd)) == 0
end

describe("install and first use", function()
  it("has version 0.1.0", function()
    assert.are.equal("forkpool 0.1.0", forkpool._VERSION)
  end)

  it("refuses PUC Lua 5.1 to 5.4 with a clear message (not 'undefined symbol')", function()
    local ran = 0
    for _, v in ipairs { "5.1", "5.2", "5.3", "5.4" } do
      local interp = "lua" .. v
      if have(interp) then
        ran = ran + 1
        local rc, out = run_with(interp, [[
          local ok, err = pcall(require, "forkpool")
          assert(not ok)
          io.write(tostring(err))
        ]])
        assert.are.equal(0, rc, out)
        assert.are.equal("forkpool needs LuaJIT 2.1 (this is Lua " .. v .. ")", out)
      end
    end
    -- CI installs all four (dev.sh); on a developer's machine at least one
    if os.getenv("CI") then assert.are.equal(4, ran) end
    assert.is_true(ran >= 1, "no PUC Lua interpreter installed to test with")
  end)

  it("refuses an OS other than Linux at require time", function()
    local ok, out = util.run_lua([[
      jit.os = "OSX"
      local ok, err = pcall(require, "forkpool")
      assert(not ok)
      io.write(tostring(err))
    ]])
    assert.is_true(ok, out)
    assert.matches("^forkpool runs on Linux only %(.*this is OSX%)$", out)
  end)

  describe("items tables", function()
    local pool
    before_each(function() pool = forkpool.new { n_jobs = 2 } end)
    after_each(function() pool:close() end)

    it("a table with no array items but other keys raises, naming the argument", function()
      for _, fname in ipairs { "map", "map_unordered", "imap", "imap_unordered", "starmap" } do
        local ok, err = pcall(pool[fname], pool, function(x) return x end, { a = 1 })
        assert.is_false(ok)
        assert.matches("bad argument #2 to '" .. fname .. "' %(a sequence of items expected.*key 'a'",
          tostring(err))
      end
      local ok, err = pcall(pool.map, pool, function(x) return x end, { [2] = "b" })
      assert.is_false(ok)
      assert.matches("has the key 2", tostring(err))
      -- an empty table is an empty map
      assert.are.equal(0, pool:map(function(x) return x end, {}).n)
    end)

    it("items.n (the table.pack convention) maps items 1..n, holes included", function()
      local r = pool:map(function(x) return x == nil and "hole" or x * 2 end, { n = 5, 1, nil, 3, nil })
      assert.are.equal(5, r.n)
      assert.are.same({ 2, "hole", 6, "hole", "hole" }, { r[1], r[2], r[3], r[4], r[5] })
      -- n smaller than the array: only 1..n
      r = pool:map(function(x) return x end, { n = 2, "a", "b", "c" })
      assert.are.equal(2, r.n)
      assert.is_nil(r[3])
      r = pool:map(function(x) return x end, { n = 0, "a" })
      assert.are.equal(0, r.n)
      -- imap sees the same items (nil results are skipped, by index)
      local seen = {}
      for v, i in pool:imap(function(x) return x end, { n = 3, "x", nil, "z" }) do seen[i] = v end
      assert.are.same({ [1] = "x", [3] = "z" }, seen)
      -- the same on kept-alive workers
      local k = forkpool.new { n_jobs = 2, keep_alive = true }
      k:map(function(x) return x end, { 1, 2, 3 })
      r = k:map(function(x) return x == nil and "hole" or x end, { n = 3, nil, 2 })
      k:close()
      assert.are.same({ "hole", 2, "hole" }, { r[1], r[2], r[3] })
    end)

    it("a bad items.n raises, naming it", function()
      for _, n in ipairs { -1, 1.5, "3", true } do
        local ok, err = pcall(pool.map, pool, function(x) return x end, { n = n, 1 })
        assert.is_false(ok)
        assert.matches("bad argument #2 to 'map' %(items.n must be a non%-negative integer", tostring(err))
      end
    end)
  end)

  describe("default n_jobs", function()
    it("is the CPUs this process may run on: taskset -c 0 gets one worker", function()
      if not have("taskset") then pending("no taskset") return end
      local path = util.lua_script([[
        local p = require("forkpool").new()
        local r = p:map(function(x) return x + 1 end, { 1, 2, 3 })
        p:close()
        io.write(p.n_jobs, " ", r[3])
      ]])
      local f = io.popen("timeout -s KILL 30 taskset -c 0 luajit " .. path .. " 2>&1")
      local out = f:read("*a")
      f:close()
      os.remove(path)
      assert.are.equal("1 4", out)
    end)

    it("follows the affinity mask and is at least one", function()
      local n = cpus.affinity_count()
      assert.is_true(n >= 1)
      assert.is_true(cpus.usable() >= 1 and cpus.usable() <= n)
      assert.are.equal(cpus.usable(), forkpool.new().n_jobs)
    end)

    -- a fake cgroup tree: root/<path>/cpu.max and /proc/self/cgroup's line
    local function fake_cgroup(files, self_lines)
      local root = os.tmpname()
      os.remove(root)
      assert(os.execute("mkdir -p " .. root) == 0)
      for rel, content in pairs(files) do
        local dir = (root .. "/" .. rel):match("^(.*)/[^/]*$")
        assert(os.execute("mkdir -p '" .. dir .. "'") == 0)
        local f = assert(io.open(root .. "/" .. rel, "w"))
        f:write(content)
        f:close()
      end
      local self_file = root .. "/self-cgroup"
      local f = assert(io.open(self_file, "w"))
      f:write(self_lines)
      f:close()
      return root, self_file
    end

    it("is capped by a cgroup v2 quota (cpu.max, rounded up), the tightest of the ancestors", function()
      local root, self_file = fake_cgroup({
        ["cpu.max"] = "max 100000\n",
        ["a/cpu.max"] = "300000 100000\n",
        ["a/b/cpu.max"] = "150000 100000\n",
        ["a/b/c/cpu.max"] = "max 100000\n",
      }, "0::/a/b/c\n")
      assert.are.equal(2, cpus.cgroup_quota(root, self_file))  -- 1.5 CPUs -> 2
      local f = assert(io.open(root .. "/a/cpu.max", "w"))
      f:write("50000 100000\n")
      f:close()
      assert.are.equal(1, cpus.cgroup_quota(root, self_file))  -- 0.5 CPU -> 1
      os.execute("rm -rf '" .. root .. "'")
      -- no quota anywhere
      root, self_file = fake_cgroup({ ["cpu.max"] = "max 100000\n" }, "0::/\n")
      assert.is_nil(cpus.cgroup_quota(root, self_file))
      os.execute("rm -rf '" .. root .. "'")
    end)

    it("reads a cgroup v1 quota too (hybrid hierarchies)", function()
      local root, self_file = fake_cgroup({
        ["cpu/job/cpu.cfs_quota_us"] = "250000\n",
        ["cpu/job/cpu.cfs_period_us"] = "100000\n",
        ["cpu/cpu.cfs_quota_us"] = "-1\n",
        ["cpu/cpu.cfs_period_us"] = "100000\n",
      }, "4:memory:/x\n2:cpu,cpuacct:/job\n0::/\n")
      assert.are.equal(3, cpus.cgroup_quota(root, self_file))
      os.execute("rm -rf '" .. root .. "'")
    end)

    it("parses kernel CPU lists", function()
      local set, n = cpus.parse_list("0-3,8,10-11\n")
      assert.are.equal(7, n)
      assert.is_true(set[0] and set[3] and set[8] and set[11])
      assert.is_nil(set[4])
      assert.are.equal(0, select(2, cpus.parse_list("")))
    end)
  end)
end)
