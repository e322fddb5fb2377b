-- Fault tolerance: whatever happens to a worker, the caller gets a
-- meaningful error quickly, nothing hangs or leaks, nothing broken is read
-- as a result, and the pool recovers.  Cases that could hurt the test
-- runner (Ctrl-C, parent death, signal handling of the host) run in a child
-- process (support.util.run_lua).
local forkpool = require "forkpool"
local core = require "forkpool.core"
local util = require "support.util"
local ffi = require "ffi"

pcall(ffi.cdef, "int getpid(void); int kill(int, int); unsigned int sleep(unsigned int);")

local SIGSEGV, SIGABRT, SIGKILL, SIGTERM = 11, 6, 9, 15

local items = require("support.util").items

local tmpfile = require("support.util").tmpfile

local function lines(path)
  local t = {}
  local f = io.open(path)
  if not f then return t end
  for l in f:lines() do t[#t + 1] = l end
  f:close()
  return t
end

-- pcall a map and return the error (asserting it failed)
local function map_error(pool, fn, its, opts)
  local ok, err = pcall(pool.map, pool, fn, its, opts)
  assert.is_false(ok, "the map should have failed")
  return err
end

describe("a worker dying", function()
  after_each(function() core._set_worker_fault("task", 0) end)

  -- each phase, by fault injection; the pool keeps working
  local phases = {
    { "worker_init", SIGSEGV, "SIGSEGV" },
    { "decode", SIGABRT, "SIGABRT" },
    { "task", SIGKILL, "SIGKILL" },
    { "encode", SIGTERM, "SIGTERM" },
  }
  for _, c in ipairs(phases) do
    local phase, sig, name = c[1], c[2], c[3]
    it("in " .. phase .. " (" .. name .. ") raises worker_died naming pid, signal, phase and item", function()
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      if phase == "decode" then
        -- items are decoded only by workers kept from an earlier map
        pool:map(function(x) return x end, items(2))
      end
      -- (decode: the 1st decode is the shipped function, the 2nd the items)
      core._set_worker_fault(phase, sig, phase == "decode" and 2 or 1, 1)
      if phase == "decode" then
        -- the hook is inherited at fork: restart the workers to arm it
        pool:stop_and_join()
        pool:map(function(x) return x end, items(2))
      end
      local t0 = util.monotonic()
      local err = map_error(pool, function(x) return x * 10 end, items(40),
        { worker_init = function() end })
      local elapsed = util.monotonic() - t0
      core._set_worker_fault(phase, 0)
      assert.is_true(forkpool.is_error(err, "worker_died"), tostring(err))
      assert.are.equal(name, err.signal)
      assert.are.equal(phase, err.phase)
      assert.is_number(err.pid)
      assert.is_number(err.worker_id)
      if phase ~= "worker_init" then assert.is_number(err.index) end
      assert.is_true(elapsed < 1.0, "took " .. elapsed .. "s")
      assert.are.equal(1, err.worker_id)
      -- the next map works
      local r = pool:map(function(x) return x + 1 end, items(10))
      for i = 1, 10 do assert.are.equal(i + 1, r[i]) end
      pool:close()
    end)
  end

  it("while encoding a table result as its task returns names that item, in phase encode", function()
    -- records are encoded as their tasks return (engine/fp_worker.c,
    -- w_put): the 2nd entry into the encode phase is item 2's record
    core._set_worker_fault("encode", SIGTERM, 2, 1)
    local pool = forkpool.new{ n_jobs = 1, keep_alive = true }
    local err = map_error(pool, function(x) return { id = x } end, items(4), { chunk_size = 4 })
    core._set_worker_fault("encode", 0)
    assert.is_true(forkpool.is_error(err, "worker_died"), tostring(err))
    assert.are.equal("SIGTERM", err.signal)
    assert.are.equal("encode", err.phase)
    assert.are.equal(2, err.index)
    local r = pool:map(function(x) return { id = x } end, items(4), { chunk_size = 4 })
    for i = 1, 4 do assert.are.same({ id = i }, r[i]) end
    pool:close()
  end)

  it("in worker_exit is reported by stop_and_join, and the workers are reaped", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    core._set_worker_fault("worker_exit", SIGSEGV, 1, 2)
    pool:map(function(x) return x end, items(10), { worker_exit = function() return 1 end })
    core._set_worker_fault("worker_exit", 0)
    local ok, err = pcall(pool.stop_and_join, pool)
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "worker_died"), tostring(err))
    assert.are.equal("worker_exit", err.phase)
    assert.are.equal("SIGSEGV", err.signal)
    assert.are.same({}, pool:worker_pids())
    assert.are.equal(3, pool:map(function(x) return x + 1 end, { 2 })[1])
    pool:close()
  end)

  it("killed from outside with SIGTERM or SIGKILL is reported", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    for _, sig in ipairs({ "TERM", "KILL" }) do
      local pidfile = tmpfile()
      -- a separate process waits for the worker's pid, then kills it
      os.execute(("(i=0; while [ ! -s %s ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done; "
        .. "kill -%s $(cat %s)) >/dev/null 2>&1 &"):format(pidfile, sig, pidfile))
      local err = map_error(pool, function(x)
        if x == 3 then
          local f = io.open(pidfile, "w")
          f:write(require("ffi").C.getpid())
          f:close()
          require("ffi").C.sleep(30)
        end
        return x
      end, items(6), { chunk_size = 1 })
      os.remove(pidfile)
      assert.is_true(forkpool.is_error(err, "worker_died"), tostring(err))
      assert.are.equal("SIG" .. sig, err.signal)
      assert.are.equal(3, err.index)
    end
    assert.are.equal(1, pool:map(function(x) return x end, { 1 })[1])
    pool:close()
  end)

  it("while writing a 64 MiB result never yields a partial result", function()
    local pool = forkpool.new{ n_jobs = 1, keep_alive = true }
    local size = 64 * 1024 * 1024
    for _, delay_ms in ipairs({ 1, 20, 60, 150 }) do
      local ok, r = pcall(pool.map, pool, function(n)
        local s = string.rep("z", n)
        local f = require("ffi")
        pcall(f.cdef, [[ struct fp_itv { long is, iu, vs, vu; };
                         int setitimer(int, const struct fp_itv *, void *); ]])
        -- SIGALRM's default action kills the worker wherever it is then:
        -- encoding, copying into shared memory, or already done
        f.C.setitimer(0, f.new("struct fp_itv", 0, 0, 0, delay_ms * 1000), nil)
        return s
      end, { size })
      if ok then
        assert.are.equal(size, #r[1])
        assert.is_nil(r[1]:find("[^z]"))
      else
        assert.is_true(forkpool.is_error(r, "worker_died"), tostring(r))
        assert.are.equal("SIGALRM", r.signal)
      end
    end
    assert.are.equal("ok", pool:map(function() return "ok" end, { 1 })[1])
    pool:close()
  end)

  it("does not restart the other kept-alive workers, and loses none of their results", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true, use_worker_state = true,
      pass_worker_id = true }
    pool:map(function(wid, s, x) s.tag = "state of " .. wid; return x end, items(20), { chunk_size = 1 })
    local pids = pool:worker_pids()
    local err = map_error(pool, function(wid, _s, x)
      if wid == 1 then require("ffi").cast("int *", 0)[0] = 1 end
      return x
    end, items(20), { chunk_size = 1 })
    assert.are.equal("worker_died", err.kind)
    assert.are.equal(1, err.worker_id)
    local r = pool:map(function(wid, s, _x) return wid .. ":" .. tostring(s.tag) end, items(20), { chunk_size = 1 })
    local after = pool:worker_pids()
    assert.are.equal(pids[2], after[2])
    assert.are_not.equal(pids[1], after[1])
    for i = 1, 20 do
      if r[i]:sub(1, 1) == "2" then assert.are.equal("2:state of 2", r[i]) end
    end
    pool:close()
  end)
end)

describe("max_retries", function()
  it("runs the items of a dead worker again on a fresh worker, nothing else twice", function()
    local marker, log = tmpfile(), tmpfile()
    local pool = forkpool.new{ n_jobs = 2 }
    local r = pool:map(function(x)
      local f = io.open(log, "a")
      f:write(x, "\n")
      f:close()
      if x == 17 and not io.open(marker) then
        io.open(marker, "w"):close()
        require("ffi").cast("int *", 0)[0] = 1
      end
      return x * 3
    end, items(50), { chunk_size = 1, max_retries = 1 })
    pool:close()
    for i = 1, 50 do assert.are.equal(3 * i, r[i]) end
    local count = {}
    for _, l in ipairs(lines(log)) do count[tonumber(l)] = (count[tonumber(l)] or 0) + 1 end
    for i = 1, 50 do assert.are.equal(i == 17 and 2 or 1, count[i], "item " .. i) end
    os.remove(marker)
    os.remove(log)
  end)

  it("fails when retries run out, listing every death", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    local err = map_error(pool, function(x)
      if x == 5 then require("ffi").cast("int *", 0)[0] = 1 end
      return x
    end, items(10), { chunk_size = 1, max_retries = 2 })
    assert.is_true(forkpool.is_error(err, "worker_died"))
    assert.are.equal(3, #err.deaths)
    for _, d in ipairs(err.deaths) do
      assert.are.equal(5, d.index)
      assert.are.equal("SIGSEGV", d.signal)
    end
    assert.matches("3 deaths", err.message)
    assert.are.equal(2, pool:map(function(x) return x end, { 2 })[1])
    pool:close()
  end)

  it("is validated", function()
    local pool = forkpool.new{ n_jobs = 1 }
    assert.has_error(function() pool:map(print, { 1 }, { max_retries = -1 }) end,
      "bad option 'max_retries' to 'map' (non-negative integer expected, got -1)")
    pool:close()
  end)
end)

describe("timeouts", function()
  local pool
  before_each(function() pool = forkpool.new{ n_jobs = 2, keep_alive = true } end)
  after_each(function() pool:close() end)

  it("stop a JIT-compiled endless loop (task_timeout)", function()
    local t0 = util.monotonic()
    local err = map_error(pool, function(x)
      if x == 3 then
        local i = 0
        while true do i = i + 1 end
      end
      return x
    end, items(6), { chunk_size = 1, task_timeout = 0.5 })
    local elapsed = util.monotonic() - t0
    assert.is_true(forkpool.is_error(err, "timeout"), tostring(err))
    assert.are.equal("task", err.phase)
    assert.are.equal(3, err.index)
    assert.is_true(elapsed >= 0.5 and elapsed < 2.5, "took " .. elapsed)
    assert.are.equal(4, pool:map(function(x) return x * 2 end, { 2 })[1])
  end)

  it("stop a blocking C call (task_timeout)", function()
    local err = map_error(pool, function(x)
      require("ffi").C.sleep(60)
      return x
    end, { 1 }, { task_timeout = 0.3 })
    assert.is_true(forkpool.is_error(err, "timeout"))
    assert.are.equal(1, err.index)
  end)

  it("do not fire for tasks that finish in time", function()
    local r = pool:map(function(x)
      local t = os.clock() + 0.01
      while os.clock() < t do end
      return x
    end, items(40), { task_timeout = 0.5, chunk_size = 2 })
    assert.are.equal(40, r[40])
  end)

  it("stop a hanging worker_init (worker_init_timeout)", function()
    pool:terminate()
    pool = forkpool.new{ n_jobs = 2 }
    local err = map_error(pool, function(x) return x end, items(4), {
      worker_init = function() while true do end end, worker_init_timeout = 0.3,
    })
    assert.is_true(forkpool.is_error(err, "timeout"))
    assert.are.equal("worker_init", err.phase)
    assert.are.equal(1, pool:map(function(x) return x end, { 1 })[1])
  end)

  it("stop a hanging worker_exit; close still reaps every worker", function()
    pool:map(function(x) return x end, items(4), {
      worker_exit = function() require("ffi").C.sleep(60) end, worker_exit_timeout = 0.3,
    })
    local pids = pool:worker_pids()
    local t0 = util.monotonic()
    local ok, err = pcall(pool.close, pool)
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "timeout"), tostring(err))
    assert.are.equal("worker_exit", err.phase)
    assert.is_true(util.monotonic() - t0 < 2)
    for _, p in ipairs(pids) do assert.is_false(util.pid_alive(p)) end
    pool = forkpool.new{ n_jobs = 1 } -- for after_each
  end)

  it("are validated", function()
    assert.has_error(function() pool:map(print, { 1 }, { task_timeout = 0 }) end,
      "bad option 'task_timeout' to 'map' (positive number expected, got 0)")
    assert.has_error(function() pool:map(print, { 1 }, { worker_exit_timeout = "1" }) end,
      "bad option 'worker_exit_timeout' to 'map' (positive number expected, got string)")
  end)
end)

describe("errors in worker_init and worker_exit", function()
  it("an always-failing worker_init does not cause a respawn storm", function()
    local log = tmpfile()
    local pool = forkpool.new{ n_jobs = 2 }
    for _ = 1, 3 do
      local err = map_error(pool, function(x) return x end, items(100), {
        worker_init = function()
          local f = io.open(log, "a"); f:write("init\n"); f:close()
          error("cannot initialise")
        end,
        max_retries = 5,
      })
      assert.is_true(forkpool.is_error(err, "worker_init"))
      assert.matches("cannot initialise", err.message)
      assert.matches("stack traceback", err.traceback)
    end
    pool:close()
    assert.is_true(#lines(log) <= 6, #lines(log) .. " inits")
    os.remove(log)
  end)

  it("a worker_init that fails after its own map is over fails the next map instead of hanging it", function()
    -- worker 2 is forked for the first map but fails its worker_init only
    -- after that map is done; the error goes to the map running then (it
    -- used to be dropped, losing the chunks worker 2 held: the map hung).
    -- In a child process, so that a hang is a timeout, not a stuck run.
    local ok, out = util.run_lua([[
      local ffi = require "ffi"
      pcall(ffi.cdef, "int usleep(unsigned int);")
      local forkpool = require "forkpool"
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true, pass_worker_id = true }
      local ok1, r1 = pcall(pool.map, pool, function(_wid, x) return x end, { 1 }, {
        worker_init = function(wid)
          if wid == 2 then
            require("ffi").C.usleep(500000)
            error("late init failure")
          end
        end,
      })
      print("first", ok1, ok1 and r1[1] or r1.kind)
      local ok2, r2 = pcall(pool.map, pool, function(_wid, x) return x * 2 end, { 1, 2, 3, 4, 5, 6, 7, 8 },
        { chunk_size = 1 })
      print("second", ok2, ok2 and r2[8] or r2.kind .. " " .. r2.message)
      pool:close()
      print("closed")
    ]], 30)
    assert.is_true(ok, out)
    -- the first map's one item normally goes to worker 1 and succeeds; if
    -- worker 2 took it, the first map fails and the second runs clean
    if out:match("first\ttrue\t1") then
      assert.matches("second\tfalse\tworker_init [^\n]*late init failure", out)
    else
      assert.matches("first\tfalse\tworker_init", out)
      assert.matches("second\ttrue\t16", out)
    end
    assert.matches("closed", out)
  end)

  it("close reaps every worker when worker_exit raises", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    pool:map(function(x) return x end, items(4), { worker_exit = function() error("exit boom") end })
    local pids = pool:worker_pids()
    local ok, err = pcall(pool.close, pool)
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "worker_exit"))
    assert.matches("exit boom", err.message)
    for _, p in ipairs(pids) do assert.is_false(util.pid_alive(p)) end
    local ok2, err2 = pcall(pool.map, pool, print, { 1 })
    assert.is_false(ok2)
    assert.are.equal("closed", err2.kind)
  end)
end)

describe("bad values", function()
  it("a result that cannot be sent does not kill the worker", function()
    local pool = forkpool.new{ n_jobs = 1, keep_alive = true }
    pool:map(function(x) return x end, { 1 })
    local pid = pool:worker_pids()[1]
    local err = map_error(pool, function() return { h = io.tmpfile() } end, { 1 })
    assert.are.equal("marshal", err.kind)
    assert.are.equal(pid, pool:worker_pids()[1])
    pool:close()
  end)
end)

describe("misuse", function()
  it("every use of a closed or terminated pool raises a closed error", function()
    for _, how in ipairs({ "close", "terminate" }) do
      local pool = forkpool.new{ n_jobs = 1 }
      pool[how](pool)
      for _, call in ipairs({
        function() pool:map(print, { 1 }) end,
        function() pool:stop_and_join() end,
        function() pool:set_keep_alive(true) end,
      }) do
        local ok, err = pcall(call)
        assert.is_false(ok)
        assert.is_true(forkpool.is_error(err, "closed"))
      end
      pool:close()
      pool:terminate()
    end
  end)
end)

describe("fork failures", function()
  it("raise a spawn error and reap the workers already started", function()
    local pool = forkpool.new{ n_jobs = 4 }
    core._fail_fork_after(3)
    local err = map_error(pool, function(x) return x end, items(10))
    core._fail_fork_after(0)
    assert.is_true(forkpool.is_error(err, "spawn"), tostring(err))
    assert.matches("fork", err.message)
    assert.are.same({}, pool:worker_pids())
    assert.are.equal(1, pool:map(function(x) return x end, { 1 })[1])
    pool:close()
  end)
end)

describe("resources", function()
  it("10,000 keep_alive maps leave fds and memory flat", function()
    local leak = require "support.leakcheck"
    local function rss(pid)
      local f = io.open("/proc/" .. pid .. "/status")
      local s = f:read("*a")
      f:close()
      return tonumber(s:match("VmRSS:%s*(%d+)"))
    end
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    local fn = function(x) return x + 1 end
    local its = items(4)
    -- warm-up: until the 1 MiB rings have wrapped once, each map touches
    -- new shared pages (they count in RSS); after that nothing may grow
    for _ = 1, 12000 do pool:map(fn, its) end
    collectgarbage()
    local fds, me, heap = #leak.fds(), rss("self"), collectgarbage("count")
    local wr = {}
    for w, p in ipairs(pool:worker_pids()) do wr[w] = rss(p) end
    for _ = 1, 10000 do pool:map(fn, its) end
    collectgarbage()
    assert.are.equal(fds, #leak.fds())
    assert.is_true(collectgarbage("count") - heap < 64, "Lua heap grew")
    -- ASan's allocator keeps freed memory in quarantine: RSS says nothing there
    local slack = os.getenv("FORKPOOL_ASAN") and 16384 or 1024
    assert.is_true(rss("self") - me < slack, "parent RSS grew by " .. (rss("self") - me) .. " kB")
    for w, p in ipairs(pool:worker_pids()) do
      assert.is_true(rss(p) - wr[w] < slack, "worker RSS grew by " .. (rss(p) - wr[w]) .. " kB")
    end
    pool:close()
  end)
end)

describe("in a child process", function()
  it("Ctrl-C to the parent alone raises interrupted within a second; the pool recovers", function()
    local script = [[
      local forkpool = require "forkpool"
      local ffi = require "ffi"
      pcall(ffi.cdef, "int kill(int, int); int getpid(void); unsigned int sleep(unsigned int);")
      local core = require "forkpool.core"
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      pool:map(function(x) return x end, { 1, 2 })
      local pids = pool:worker_pids()
      local me = ffi.C.getpid()
      -- a separate process sends SIGINT to us (not to the workers) in 0.3 s
      os.execute("(sleep 0.3; kill -INT " .. me .. ") &")
      local t0 = core.now()
      local ok, err = pcall(pool.map, pool, function(x) require("ffi").C.sleep(30); return x end, { 1, 2, 3, 4 })
      local dt = core.now() - t0
      print("kind", forkpool.is_error(err) and err.kind or tostring(err))
      print("fast", dt < 1.5)
      local alive = 0
      for _, p in ipairs(pids) do if io.open("/proc/" .. p .. "/stat") then alive = alive + 1 end end
      print("alive", alive)
      print("again", pool:map(function(x) return x * 2 end, { 21 })[1])
      pool:close()
    ]]
    local ok, out = util.run_lua(script, 60)
    assert.is_true(ok, out)
    assert.matches("kind\tinterrupted", out)
    assert.matches("fast\ttrue", out)
    assert.matches("alive\t0", out)
    assert.matches("again\t42", out)
    assert.is_nil(out:find("traceback"))
  end)

  it("Ctrl-C to the whole process group: workers print nothing, the parent raises", function()
    local script = [[
      local forkpool = require "forkpool"
      local pool = forkpool.new{ n_jobs = 2 }
      io.write("ready\n"); io.flush()
      local ok, err = pcall(pool.map, pool, function(x) require("ffi").C.sleep(30); return x end,
        { 1, 2, 3, 4 }, { worker_init = function()
          local ffi = require "ffi"
          pcall(ffi.cdef, "int kill(int, int); int getpgrp(void); unsigned int sleep(unsigned int);")
        end })
      print("kind", forkpool.is_error(err) and err.kind or tostring(err))
      pool:close()
    ]]
    local path = util.lua_script(script)
    local out = os.tmpname()
    -- setsid: its own process group, as a terminal's foreground job is
    local p = io.popen(("setsid luajit %s >%s 2>&1 & echo $!"):format(path, out))
    local pid = tonumber(p:read("*l"))
    p:close()
    assert.is_true(util.wait_for(function()
      local g = io.open(out)
      local s = g and g:read("*a") or ""
      if g then g:close() end
      return s:find("ready") ~= nil
    end, 10))
    util.sleep(0.3)
    util.kill(-pid, 2) -- SIGINT to the whole process group
    local done = util.wait_for(function() return not util.pid_alive(pid) end, 5)
    if not done then util.kill(pid, 9) end
    local g = io.open(out)
    local s = g:read("*a")
    g:close()
    os.remove(path)
    os.remove(out)
    assert.is_true(done, "the parent did not stop: " .. s)
    assert.matches("kind\tinterrupted", s)
    assert.is_nil(s:find("traceback"))
  end)

  it("when the parent is SIGKILLed mid-map, every worker exits within two seconds", function()
    local pidfile = tmpfile()
    local script = ([[
      local forkpool = require "forkpool"
      local pool = forkpool.new{ n_jobs = 2 }
      pool:map(function(x) require("ffi").C.sleep(60); return x end, { 1, 2 }, {
        worker_init = function()
          local ffi = require "ffi"
          pcall(ffi.cdef, "int getpid(void); unsigned int sleep(unsigned int);")
          local f = io.open(%q, "a"); f:write(ffi.C.getpid(), "\n"); f:close()
        end })
    ]]):format(pidfile)
    local path = util.lua_script(script)
    local shm_before = require("support.leakcheck").devshm()
    local p = io.popen(("luajit %s >/dev/null 2>&1 & echo $!"):format(path))
    local parent = tonumber(p:read("*l"))
    p:close()
    assert.is_true(util.wait_for(function() return #lines(pidfile) == 2 end, 10))
    local workers = lines(pidfile)
    util.kill(parent, 9)
    local t0 = util.monotonic()
    local gone = util.wait_for(function()
      for _, w in ipairs(workers) do if util.pid_alive(tonumber(w)) then return false end end
      return true
    end, 2)
    assert.is_true(gone, "workers still alive after " .. (util.monotonic() - t0) .. "s")
    assert.are.same(shm_before, require("support.leakcheck").devshm())
    os.remove(path)
    os.remove(pidfile)
  end)

  it("a host that ignores SIGCHLD still gets deaths reported, with the signal", function()
    local ok, out = util.run_lua([[
      local ffi = require "ffi"
      ffi.cdef "typedef void (*sighandler_t)(int); sighandler_t signal(int, sighandler_t);"
      ffi.C.signal(17, ffi.cast("sighandler_t", 1)) -- SIG_IGN
      local forkpool = require "forkpool"
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      local r = pool:map(function(x) return x * 2 end, { 1, 2, 3 })
      print("map", r[3])
      local ok, err = pcall(pool.map, pool, function(x)
        if x == 2 then require("ffi").cast("int *", 0)[0] = 1 end
        return x
      end, { 1, 2, 3 }, { chunk_size = 1 })
      print("err", err.kind, err.signal, err.index)
      ok, err = pcall(pool.map, pool, function(x) if x == 1 then os.exit(7) end return x end, { 1 })
      print("exit", err.kind, err.exit_code)
      print("again", pool:map(function(x) return x + 1 end, { 1 })[1])
      pool:close()
    ]], 60)
    assert.is_true(ok, out)
    assert.matches("map\t6", out)
    assert.matches("err\tworker_died\tSIGSEGV\t2", out)
    assert.matches("exit\tworker_died\t7", out)
    assert.matches("again\t2", out)
  end)

  it("signal handlers without SA_RESTART firing during maps break nothing", function()
    local ok, out = util.run_lua([==[
      local ffi = require "ffi"
      ffi.cdef [[
        struct fp_sa { void *handler; unsigned long mask[16]; int flags; void *restorer; };
        int sigaction(int, const struct fp_sa *, struct fp_sa *);
        struct fp_itv2 { long is, iu, vs, vu; };
        int setitimer(int, const struct fp_itv2 *, void *);
        int getpid(void);
      ]]
      -- SIGALRM every millisecond, handled (by a harmless libc function)
      -- without SA_RESTART, so every blocking call sees EINTR
      local sa = ffi.new("struct fp_sa")
      sa.handler = ffi.cast("void *", ffi.C.getpid)
      sa.flags = 0
      assert(ffi.C.sigaction(14, sa, nil) == 0)
      ffi.C.setitimer(0, ffi.new("struct fp_itv2", 0, 1000, 0, 1000), nil)
      local forkpool = require "forkpool"
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      local t = {}
      for i = 1, 20000 do t[i] = i end
      local good = true
      for round = 1, 5 do
        local r = pool:map(function(x) return { x, string.rep("a", x % 50) } end, t, { chunk_size = 64 })
        for i = 1, #t do
          if r[i][1] ~= i or #r[i][2] ~= i % 50 then good = false end
        end
        local big = pool:map(function(n) return string.rep("b", n) end, { 3e6, 5e6 })
        if #big[1] ~= 3e6 or #big[2] ~= 5e6 then good = false end
      end
      local ok, err = pcall(pool.map, pool, function(x) if x == 2 then os.exit(5) end return x end, { 1, 2 })
      print("death", err.kind, err.exit_code)
      print("good", good)
      pool:close()
      ffi.C.setitimer(0, ffi.new("struct fp_itv2", 0, 0, 0, 0), nil)
    ]==], 120)
    assert.is_true(ok, out)
    assert.matches("good\ttrue", out)
    assert.matches("death\tworker_died\t5", out)
  end)
end)

describe("a kept-alive worker that died while idle", function()
  it("is replaced silently at the next map: it held nothing", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true, use_worker_state = true }
    pool:map(function(s, x) s.v = "kept"; return x end, items(10), { chunk_size = 1 })
    local pids = pool:worker_pids()
    util.kill(pids[1], 9)
    assert.is_true(util.wait_for(function() return not util.pid_alive(pids[1]) end, 5))
    local r = pool:map(function(s, _x) return s.v or "fresh" end, items(20), { chunk_size = 1 })
    local seen = {}
    for i = 1, 20 do seen[r[i]] = true end
    assert.is_true(seen.kept)
    local after = pool:worker_pids()
    assert.are.equal(pids[2], after[2])
    assert.are_not.equal(pids[1], after[1])
    pool:close()
  end)
end)

describe("the OOM killer", function()
  it("killing a worker (memory cgroup limit) is reported as worker_died, and the pool recovers", function()
    local cg = "/sys/fs/cgroup/memory/forkpool_oom_" .. util.getpid()
    os.execute("mkdir " .. cg .. " 2>/dev/null")
    local f = io.open(cg .. "/memory.limit_in_bytes", "w")
    if not f then
      pending("no writable cgroup v1 memory controller here")
      return
    end
    f:write("50M")
    f:close()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    local err = map_error(pool, function(x)
      if x == 2 then
        -- join the small cgroup, then allocate far past its limit
        local g = io.open(cg .. "/cgroup.procs", "w")
        g:write(require("ffi").C.getpid())
        g:close()
        local t = {}
        for i = 1, 400 do t[i] = string.rep(string.char(i % 256), 1024 * 1024) end
        return #t
      end
      return x
    end, items(4), { chunk_size = 1 })
    assert.is_true(forkpool.is_error(err, "worker_died"), tostring(err))
    assert.are.equal("SIGKILL", err.signal)
    assert.are.equal(2, err.index)
    assert.are.equal(5, pool:map(function(x) return x + 1 end, { 4 })[1])
    pool:close()
    assert.is_true(util.wait_for(function() return os.execute("rmdir " .. cg .. " 2>/dev/null") == 0 end, 5))
  end)
end)
