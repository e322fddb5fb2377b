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
  for _, with_timeout in ipairs{ true, false } do
    it("while idle: close() resumes it and returns at once" ..
       (with_timeout and " (worker_exit_timeout set)" or ""), function()
      local out = child(PRELUDE .. [[
        local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
        pool:map(function(x) return x end, { 1, 2 }, ]] ..
          (with_timeout and "{ worker_exit_timeout = 1 }" or "nil") .. [[)
        local pids = pool:worker_pids()
        ffi.C.kill(pids[1], 19) -- SIGSTOP, idle
        local t0 = core.now()
        local ok, err = pcall(pool.close, pool)
        local dt = core.now() - t0
        print("dt", dt < 1, dt)
        print("ok", ok, tostring(err))
        print("gone", wait_for(function() return not alive(pids[1]) and not alive(pids[2]) end, 2))
      ]], 30)
      assert.matches("dt\ttrue", out)
      assert.matches("ok\ttrue", out)
      assert.matches("gone\ttrue", out)
    end)
  end

  it("stopped inside worker_exit: close() returns within worker_exit_timeout plus a second", function()
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

describe("group signals the parent handles", function()
  it("SIGHUP and SIGQUIT to the process group leave workers alone; parent death is still seen", function()
    local out = child(PRELUDE .. [[
      ffi.cdef "typedef void (*fp_sh_t)(int); fp_sh_t signal(int, fp_sh_t); int getpgrp(void);"
      local got = 0
      local h = ffi.cast("fp_sh_t", function() got = got + 1 end)
      ffi.C.signal(1, h); ffi.C.signal(3, h)
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      pool:map(function(x) return x end, { 1, 2 })
      local pids = pool:worker_pids()
      -- the whole group, as a terminal's hangup would (the workers, in
      -- groups of their own, are sent it directly too)
      ffi.C.kill(-ffi.C.getpgrp(), 1)
      ffi.C.kill(-ffi.C.getpgrp(), 3)
      for _, p in ipairs(pids) do ffi.C.kill(p, 1); ffi.C.kill(p, 3) end
      os.execute("sleep 0.2")
      local r = pool:map(function(x) return x * 2 end, { 1, 2, 3 })
      print("map", r[3])
      local same = pool:worker_pids()
      print("same", same[1] == pids[1] and same[2] == pids[2])
      pool:close()
    ]], 30)
    assert.matches("map\t6", out)
    assert.matches("same\ttrue", out)
  end)
end)

describe("a parent that exec()s another program", function()
  it("its kept-alive workers exit within two seconds", function()
    local pidfile = os.tmpname()
    -- the program the parent becomes: are the workers gone in time?
    local checker = util.lua_script(([[
      for i = 1, 40 do
        local n = 0
        for l in io.lines(%q) do
          local g = io.open("/proc/" .. l .. "/stat")
          if g then
            local s = g:read("*a"); g:close()
            if not s:match("%%) [ZX]") then n = n + 1 end
          end
        end
        if n == 0 then print("gone", i * 0.1 <= 2.5, i * 0.1); os.exit(0) end
        os.execute("sleep 0.1")
      end
      print("gone", false)
    ]]):format(pidfile))
    local out = child(PRELUDE .. ([[
      ffi.cdef "int execvp(const char *file, char *const argv[]);"
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      pool:map(function(x) return x end, { 1, 2 })
      local f = io.open(%q, "w")
      for _, p in ipairs(pool:worker_pids()) do f:write(p, "\n") end
      f:close()
      io.stdout:flush()
      local argv = ffi.new("char *[3]")
      argv[0] = ffi.cast("char *", "luajit"); argv[1] = ffi.cast("char *", %q)
      ffi.C.execvp("luajit", argv)
      print("exec failed")
    ]]):format(pidfile, checker), 30)
    os.remove(pidfile)
    os.remove(checker)
    assert.matches("gone\ttrue", out)
  end)
end)

describe("a task's background children", function()
  local function tree_script(how)
    return PRELUDE .. [[
      local pool = forkpool.new{ n_jobs = 1, keep_alive = true }
      local f = os.tmpname()
      local ok = pcall(pool.map, pool, function(file)
        os.execute("sleep 100 & echo $! > " .. file)
        ]] .. (how == "timeout" and "require('ffi').C.sleep(30)" or "") .. [[
        return 1
      end, { f }, { task_timeout = 1 })
      print("map ok", ok)
      local g = io.open(f); local bg = tonumber(g:read("*l")); g:close(); os.remove(f)
      print("bg alive", alive(bg))
      ]] .. (how == "close" and "pool:close()" or "") .. [[
      print("bg gone", wait_for(function() return not alive(bg) end, 2))
      if alive(bg) then ffi.C.kill(bg, 9) end
      pool:close()
    ]]
  end
  it("die when the pool is closed", function()
    local out = child(tree_script("close"), 30)
    assert.matches("map ok\ttrue", out)
    assert.matches("bg alive\ttrue", out)
    assert.matches("bg gone\ttrue", out)
  end)
  it("die when their worker is killed for a timeout", function()
    local out = child(tree_script("timeout"), 30)
    assert.matches("map ok\tfalse", out)
    assert.matches("bg gone\ttrue", out)
  end)
end)

describe("a task that closes every fd >= 3", function()
  local CLOSE_ALL = [[
    local ffi = require "ffi"
    pcall(ffi.cdef, "int close(int);")
    for fd = 3, 1023 do ffi.C.close(fd) end
  ]]
  it("delivers its results; a file it opens then gets none of forkpool's bytes", function()
    local f = os.tmpname()
    local out = child(PRELUDE .. ([[
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      pool:map(function(x) return x end, { 1, 2 })
      local r = pool:map(function(x)
        %s
        local g = io.open(%q, "a"); g:write("mine\n")
        require("ffi").C.sleep(1) -- the parent sleeps meanwhile
        g:write("end\n"); g:close()
        return x * 2
      end, { 21 }, { chunk_size = 1 })
      print("r", r[1])
      -- the pool goes on (a new worker replaces the one that retired)
      print("again", pool:map(function(x) return x + 1 end, { 1, 2, 3 })[3])
      pool:close()
    ]]):format(CLOSE_ALL, f), 30)
    local g = io.open(f)
    local s = g:read("*a")
    g:close()
    os.remove(f)
    assert.matches("r\t42", out)
    assert.are.equal("mine\nend\n", s)
    assert.matches("again\t4", out)
  end)

  it("a large result it cannot send becomes a clear error; worker_init doing it fails the map", function()
    local out = child(PRELUDE .. [[
      local pool = forkpool.new{ n_jobs = 1, keep_alive = true }
      local ok, err = pcall(pool.map, pool, function()
        ]] .. CLOSE_ALL .. [[
        return string.rep("x", 4 * 1024 * 1024)
      end, { 1 })
      print("big", ok, tostring(err))
      ok, err = pcall(pool.map, pool, function(x) return x end, { 1 }, { worker_init = function()
        ]] .. CLOSE_ALL .. [[
      end })
      print("init", ok, tostring(err))
      print("again", pool:map(function(x) return x + 1 end, { 1 })[1])
      pool:close()
    ]], 30)
    assert.matches("big\tfalse\t[^\n]*file descriptors", out)
    assert.matches("init\tfalse\t[^\n]*file descriptors", out)
    assert.matches("again\t2", out)
  end)
end)

describe("pools' shared memory in other pools' workers", function()
  it("a worker maps only its own pool's shared memory, however many pools live", function()
    local out = child(PRELUDE .. [[
      local function shared_maps(pid)
        local n = 0
        for l in io.lines("/proc/" .. pid .. "/maps") do
          if l:match("^%S+ ..%-s ") then n = n + 1 end
        end
        return n
      end
      local function probe()
        local b = forkpool.new{ n_jobs = 1, keep_alive = true }
        b:map(function(x) return x end, { 1 })
        local n = shared_maps(b:worker_pids()[1])
        b:close()
        return n
      end
      local alone = probe()
      local others = {}
      for i = 1, 10 do
        others[i] = forkpool.new{ n_jobs = 2, keep_alive = true }
        others[i]:map(function(x) return x end, { 1, 2 })
      end
      local among = probe()
      for i = 1, 10 do others[i]:close() end
      print("maps", alone, among, among == alone)
    ]], 60)
    assert.matches("maps\t%d+\t%d+\ttrue", out)
  end)

  it("a worker of pool B holds none of pool A's big-record memory", function()
    local out = child(PRELUDE .. [[
      -- kB of shared mappings in a process, but for the shared arena's
      -- reservation (sized RAM + swap, over a GiB)
      local function shared_kb(pid)
        local kb = 0
        for l in io.lines("/proc/" .. pid .. "/maps") do
          local lo, hi = l:match("^(%x+)-(%x+) ..%-s ")
          local size = lo and (tonumber(hi, 16) - tonumber(lo, 16)) / 1024 or 0
          if size < 1024 * 1024 then kb = kb + size end
        end
        return kb
      end
      local a = forkpool.new{ n_jobs = 1, keep_alive = true }
      local r = a:map(function() return string.rep("x", 24 * 1024 * 1024) end, { 1 })
      print("len", #r[1])
      r = nil
      collectgarbage()
      -- B's worker is forked while the parent still has A's big window
      local b = forkpool.new{ n_jobs = 1, keep_alive = true }
      b:map(function(x) return x end, { 1 })
      local kb = shared_kb(b:worker_pids()[1])
      print("small", kb < 8 * 1024, kb)
      a:close()
      b:close()
    ]], 60)
    assert.matches("len\t25165824", out)
    assert.matches("small\ttrue", out)
  end)
end)

describe("an idle pool's big-record memory", function()
  it("goes back within about two seconds, on both sides; the next big map still works", function()
    local out = child(PRELUDE .. [[
      local function shmem_kb(pid)
        for l in io.lines("/proc/" .. pid .. "/status") do
          local kb = l:match("^RssShmem:%s+(%d+)")
          if kb then return tonumber(kb) end
        end
      end
      local pool = forkpool.new{ n_jobs = 1, keep_alive = true }
      local big = string.rep("y", 24 * 1024 * 1024)
      local function once()
        local r = pool:map(function(s) return s:upper() end, { big })
        return #r[1] == #big and r[1]:sub(1, 3) == "YYY"
      end
      print("first", once() and once())
      local me, wpid = "self", pool:worker_pids()[1]
      local p0, w0 = shmem_kb(me), shmem_kb(wpid)
      -- both 24 MiB records (item and result) are mapped on both sides now
      print("held", p0 > 40 * 1024, w0 > 40 * 1024, p0, w0)
      local freed = wait_for(function()
        return shmem_kb(me) < p0 - 40 * 1024 and shmem_kb(wpid) < w0 - 40 * 1024
      end, 5)
      print("freed", freed, shmem_kb(me), shmem_kb(wpid))
      print("again", once(), pool:worker_pids()[1] == wpid)
      pool:close()
    ]], 60)
    assert.matches("first\ttrue", out)
    assert.matches("held\ttrue\ttrue", out)
    assert.matches("freed\ttrue", out)
    assert.matches("again\ttrue\ttrue", out)
  end)
end)

describe("the close_fds option", function()
  it("closes inherited descriptors in workers but 0-2, the engine's and the listed ones", function()
    local out = child(PRELUDE .. [[
      ffi.cdef "int open(const char *, int); int fcntl(int, int, ...);"
      local a, b = ffi.C.open("/dev/null", 0), ffi.C.open("/dev/null", 0)
      local function probe(fa, fb)
        local C = require("ffi").C
        pcall(require("ffi").cdef, "int fcntl(int, int, ...);")
        return (C.fcntl(fa, 1) >= 0 and "a" or "-") .. (C.fcntl(fb, 1) >= 0 and "b" or "-")
      end
      for _, opt in ipairs{ "none", "true", "list" } do
        local cf = opt == "true" or (opt == "list" and { a }) or nil
        local pool = forkpool.new{ n_jobs = 2, close_fds = cf }
        local r = pool:starmap(probe, { { a, b }, { a, b } })
        print(opt, r[1], r[2])
        pool:close()
      end
      print("bad", pcall(forkpool.new, { close_fds = "yes" }))
      print("bad2", pcall(forkpool.new, { close_fds = { -1 } }))
    ]], 30)
    assert.matches("none\tab\tab", out)
    assert.matches("true\t%-%-\t%-%-", out)
    assert.matches("list\ta%-\ta%-", out)
    assert.matches("bad\tfalse\t[^\n]*close_fds", out)
    assert.matches("bad2\tfalse\t[^\n]*close_fds", out)
  end)

  it("an io.popen(cmd, 'w') opened before a keep_alive pool closes without waiting for the pool", function()
    local out = child(PRELUDE .. [[
      local p = io.popen("cat >/dev/null", "w")
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true, close_fds = true }
      pool:map(function(x) return x end, { 1, 2 })
      local t0 = core.now()
      p:close() -- waits for cat, which waits for EOF: no worker holds the pipe
      print("popen closed", core.now() - t0 < 2)
      pool:close()
    ]], 20)
    assert.matches("popen closed\ttrue", out)
  end)
end)
