-- The map family: map_unordered, imap, imap_unordered, starmap and its
-- variants, apply, apply_async; chunking options; placement.
local forkpool = require "forkpool"
local util = require "support.util"
local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void); unsigned int sleep(unsigned int); int usleep(unsigned int);")

local items = require("support.util").items

local function sorted(t, n)
  local c = {}
  for i = 1, n or #t do c[i] = t[i] end
  table.sort(c)
  return c
end

-- an iterator over 1..n (or forever when n is nil)
local function counter(n)
  local i = 0
  return function()
    i = i + 1
    if n and i > n then return nil end
    return i
  end
end

describe("the map family", function()
  local pool
  before_each(function() pool = forkpool.new{ n_jobs = 2, keep_alive = true } end)
  after_each(function() if pool then pool:close() end end)

  it("map_unordered returns every result once, in completion order", function()
    local r = pool:map_unordered(function(x)
      if x % 7 == 0 then require("ffi").C.usleep(2000) end
      return x * 2
    end, items(200), { chunk_size = 3 })
    assert.are.equal(200, r.n)
    local want = {}
    for i = 1, 200 do want[i] = 2 * i end
    assert.are.same(want, sorted(r, r.n))
  end)

  it("map and map_unordered accept an iterator; iterable_len is used for chunking", function()
    local r = pool:map(function(x) return x + 1 end, counter(1000))
    assert.are.equal(1000, r.n)
    for i = 1, 1000 do assert.are.equal(i + 1, r[i]) end
    r = pool:map_unordered(function(x) return x end, counter(50), { iterable_len = 50 })
    assert.are.same(items(50), sorted(r, r.n))
  end)

  it("imap yields results in input order, lazily", function()
    local got = {}
    for v, i in pool:imap(function(x) return x * x end, items(500), { chunk_size = 7 }) do
      got[#got + 1] = v
      assert.are.equal(#got, i)
    end
    assert.are.equal(500, #got)
    for i = 1, 500 do assert.are.equal(i * i, got[i]) end
  end)

  it("imap_unordered yields the same set as map", function()
    local f = function(x) return (x * 37) % 101 end
    local m = pool:map(f, items(300))
    local got, n = {}, 0
    for v in pool:imap_unordered(f, items(300), { chunk_size = 5 }) do
      n = n + 1
      got[n] = v
    end
    assert.are.same(sorted(m, 300), sorted(got, n))
  end)

  it("the caller's for loop over an imap iterator is compiled by LuaJIT", function()
    -- An iterator whose common case runs a loop makes that loop an inner
    -- loop of the trace of the caller's for loop: LuaJIT then gives up on
    -- both and interprets them (it made imap's parent ~5 × slower).  This
    -- watches LuaJIT's trace events for a trace that starts in the
    -- consumer's function and is completed.
    if not (jit and jit.status()) then return pending("the JIT is off") end
    local consumers = {}
    local started, compiled = {}, {}
    local function on_trace(what, tr, func)
      if what == "start" then started[tr] = func
      elseif what == "stop" and started[tr] and consumers[started[tr]] then
        compiled[consumers[started[tr]]] = true
      end
    end
    -- two copies on purpose: each loop gets traces of its own
    local function drain_imap(it) local s = 0; for v in it do s = s + v end; return s end
    local function drain_unordered(it) local s = 0; for v in it do s = s + v end; return s end
    consumers[drain_imap], consumers[drain_unordered] = "imap", "imap_unordered"
    local N = 200000
    local id = function(x) return x end
    jit.attach(on_trace, "trace")
    local ok1, s1 = pcall(drain_imap, pool:imap(id, counter(N)))
    local ok2, s2 = pcall(drain_unordered, pool:imap_unordered(id, items(N)))
    jit.attach(on_trace)
    assert(ok1, s1)
    assert(ok2, s2)
    assert.are.equal(N * (N + 1) / 2, s1)
    assert.are.equal(N * (N + 1) / 2, s2)
    for _, name in pairs(consumers) do
      assert.is_true(compiled[name], "no trace of the loop over the iterator of " .. name .. " was completed")
    end
  end)

  it("imap, imap_unordered and map_unordered: nil results, table results, a retried crash", function()
    -- nil results are skipped by the iterators (the index shows where),
    -- kept as holes by map_unordered; tables go through the codec
    local f = function(x)
      if x % 4 == 0 then return nil end
      if x % 4 == 1 then return { x = x } end
      return x
    end
    local want = {}
    for i = 1, 103 do if i % 4 ~= 0 then want[#want + 1] = i end end
    local key = function(v) return type(v) == "table" and v.x or v end
    local got, idx = {}, {}
    for v, i in pool:imap(f, items(103), { chunk_size = 5 }) do
      got[#got + 1] = key(v); idx[#idx + 1] = i
    end
    assert.are.same(want, got)
    assert.are.same(want, idx)
    got = {}
    for v, i in pool:imap_unordered(f, counter(103), { chunk_size = 4 }) do
      assert.are.equal(i, key(v)); got[#got + 1] = key(v)
    end
    assert.are.same(want, sorted(got))
    local r = pool:map_unordered(f, items(103), { chunk_size = 6 })
    assert.are.equal(103, r.n)
    got = {}
    for k = 1, r.n do if r[k] ~= nil then got[#got + 1] = key(r[k]) end end
    assert.are.same(want, sorted(got))
    -- a worker dies once on item 50: its chunk is retried, every result
    -- arrives once, in order
    local flag = os.tmpname()
    got = {}
    for v in pool:imap(function(x)
      if x == 50 then
        local fh = io.open(flag, "r")
        if fh and fh:read("*a") == "" then
          fh:close()
          fh = io.open(flag, "w"); fh:write("died"); fh:close()
          require("forkpool.core")._exit(9)
        end
        if fh then fh:close() end
      end
      return x
    end, items(100), { chunk_size = 8, max_retries = 1 }) do got[#got + 1] = v end
    local fh = assert(io.open(flag, "r"))
    local died = fh:read("*a")
    fh:close()
    os.remove(flag)
    assert.are.equal("died", died)
    assert.are.same(items(100), got)
  end)

  it("imap pulls an iterator only as workers have room (max_tasks_active)", function()
    local pulled = 0
    local src = function()
      pulled = pulled + 1
      return pulled
    end
    local it = pool:imap(function(x) return x end, src, { chunk_size = 4, max_tasks_active = 16 })
    for i = 1, 10 do assert.are.equal(i, it()) end
    -- never more than the active limit plus what was already yielded
    assert.is_true(pulled <= 10 + 16 + 1, "pulled " .. pulled)
    it:close()
    -- the pool is usable afterwards
    assert.are.equal(4, pool:map(function(x) return x * 2 end, { 2 })[1])
  end)

  it("imap over an endless iterator, stopped early, leaves nothing behind", function()
    local it = pool:imap(function(x) return x end, counter(nil))
    local s = 0
    for v in it do
      s = s + v
      if v == 1000 then break end
    end
    it:close()
    assert.are.equal(500500, s)
    assert.are.equal(3, pool:apply(function(a, b) return a + b end, { 1, 2 }))
  end)

  it("an imap iterator dropped without close is cancelled when collected", function()
    do
      local it = pool:imap(function(x) return x end, counter(nil))
      it()
    end
    collectgarbage()
    collectgarbage()
    assert.are.equal(1, pool:map(function(x) return x end, { 1 })[1])
  end)

  it("an input iterator that raises gives the caller that error; the pool stays usable", function()
    local i = 0
    local src = function()
      i = i + 1
      if i == 50 then error("source broke") end
      return i
    end
    local ok, err = pcall(pool.map, pool, function(x) return x end, src, { chunk_size = 3 })
    assert.is_false(ok)
    assert.matches("source broke", tostring(err))
    i = 0
    local it = pool:imap(function(x) return x end, src, { chunk_size = 3 })
    ok, err = pcall(function() for _ in it do end end)
    assert.is_false(ok)
    assert.matches("source broke", tostring(err))
    assert.are.equal(5, pool:map(function(x) return x + 1 end, { 4 })[1])
  end)

  it("an imap consumed in a coroutine: its input iterator may yield that coroutine", function()
    -- (a producer fed by a scheduler; nothing between the consumer's loop
    -- and the input iterator may be a C function calling back into Lua)
    local co = coroutine.create(function()
      local i = 0
      local src = function()
        i = i + 1
        if i % 10 == 0 then coroutine.yield("need more") end
        if i <= 100 then return i end
      end
      local s = 0
      for v in pool:imap(function(x) return 2 * x end, src) do s = s + v end
      return s
    end)
    local yields, r = 0
    while true do
      local ok
      ok, r = coroutine.resume(co)
      assert(ok, r)
      if coroutine.status(co) == "dead" then break end
      assert.are.equal("need more", r)
      yields = yields + 1
    end
    assert.are.equal(10100, r)
    assert.are.equal(10, yields)
  end)

  it("imap over a 10-million-line input runs in constant memory", function()
    local n = 0
    local src = function()
      n = n + 1
      if n > 1e7 then return nil end
      return "line " .. n
    end
    local count, mem0 = 0, nil
    for _ in pool:imap(function(s) return #s end, src) do
      count = count + 1
      if count == 100000 then collectgarbage(); mem0 = collectgarbage("count") end
    end
    collectgarbage()
    assert.are.equal(1e7, count)
    -- the parent's Lua heap did not grow with the input
    assert.is_true(collectgarbage("count") - mem0 < 8192, "heap grew by "
      .. (collectgarbage("count") - mem0) .. " KB")
  end)

  it("a map-family call while an imap is being consumed raises instead of deadlocking", function()
    local it = pool:imap(function(x) return x end, items(100))
    it()
    local ok, err = pcall(pool.map, pool, function(x) return x end, { 1 })
    assert.is_false(ok)
    assert.matches("imap of this pool is still being consumed", err)
    ok, err = pcall(pool.apply_async, pool, print, {})
    assert.is_false(ok)
    assert.matches("imap of this pool is still being consumed", err)
    it:close()
    assert.are.equal(1, pool:map(function(x) return x end, { 1 })[1])
  end)

  it("starmap unpacks each item as the arguments", function()
    local r = pool:starmap(function(a, b, c) return a * b + (c or 0) end,
      { { 2, 3 }, { 4, 5, 1 }, { 6, 7 } })
    assert.are.same({ 6, 21, 42 }, { r[1], r[2], r[3] })
    local s = pool:starmap_unordered(function(a, b) return a + b end, { { 1, 1 }, { 2, 2 } })
    assert.are.same({ 2, 4 }, sorted(s, s.n))
    local got = {}
    for v, i in pool:istarmap(function(a, b) return a .. b end, { { "a", "b" }, { "c", "d" } }) do
      got[i] = v
    end
    assert.are.same({ "ab", "cd" }, got)
  end)

  it("apply runs one call on a worker", function()
    local pid = pool:apply(function() return require("ffi").C.getpid() end)
    assert.are_not.equal(util.getpid(), pid)
    assert.are.equal(7, pool:apply(function(a, b) return a + b end, { 3, 4 }))
    assert.are.same({ 1, 2 }, pool:apply(function(...) return { ... } end, { 1, 2 }))
    local ok, err = pcall(pool.apply, pool, function() error("nope") end)
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "task"))
  end)

  it("apply_async: many outstanding, mixed success and failure, callbacks, any order", function()
    local seen_ok, seen_err = {}, {}
    local rs = {}
    for i = 1, 40 do
      rs[i] = pool:apply_async(function(x)
        if x % 10 == 0 then error("bad " .. x) end
        return x * 3
      end, { i }, {
        callback = function(v) seen_ok[#seen_ok + 1] = v end,
        error_callback = function(e) seen_err[#seen_err + 1] = e end,
      })
    end
    -- wait in reverse order
    for i = 40, 1, -1 do
      if i % 10 == 0 then
        local ok, err = pcall(rs[i].get, rs[i])
        assert.is_false(ok)
        assert.is_true(forkpool.is_error(err, "task"))
        assert.matches("bad " .. i, err.message)
        assert.is_false(rs[i]:successful())
      else
        assert.are.equal(i * 3, rs[i]:get())
        assert.is_true(rs[i]:successful())
        assert.is_true(rs[i]:ready())
      end
    end
    assert.are.equal(36, #seen_ok)
    assert.are.equal(4, #seen_err)
    for _, e in ipairs(seen_err) do assert.is_true(forkpool.is_error(e, "task")) end
  end)

  it("apply_async: get with a timeout, wait, ready, successful before ready", function()
    local r = pool:apply_async(function() require("ffi").C.usleep(300000); return "late" end)
    assert.is_false(r:ready())
    assert.has_error(function() r:successful() end)
    local ok, err = pcall(r.get, r, 0.05)
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "timeout"))
    assert.is_false(r:wait(0.01))
    assert.are.equal("late", r:get(5))
  end)

  it("apply_async: a crash or timeout fails only that call; the pool carries on", function()
    local good = pool:apply_async(function() require("ffi").C.usleep(200000); return "fine" end)
    local crash = pool:apply_async(function()
      require("ffi").cast("int *", 0)[0] = 1
    end)
    local slow = pool:apply_async(function() require("ffi").C.sleep(30) end, nil, { task_timeout = 0.3 })
    local ok, err = pcall(crash.get, crash)
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "worker_died"))
    ok, err = pcall(slow.get, slow)
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "timeout"))
    assert.are.equal("fine", good:get())
    assert.are.equal(2, pool:apply(function() return 2 end))
  end)

  it("join waits for every outstanding apply_async and runs its callbacks", function()
    local n = 0
    for i = 1, 10 do
      pool:apply_async(function(x) return x end, { i }, { callback = function() n = n + 1 end })
    end
    pool:join()
    assert.are.equal(10, n)
  end)

  it("cannot be called from inside a task", function()
    local p = pool
    local ok, err = pcall(pool.map, pool, function()
      return p:apply(function() return 1 end)
    end, { 1 })
    assert.is_false(ok)
    assert.matches("inside a worker", err.message)
  end)

  describe("options", function()
    it("n_splits splits the input into that many chunks", function()
      local wids = pool:map(function(x) return x end, items(100), { n_splits = 4 })
      assert.are.equal(100, wids.n)
      assert.has_error(function() pool:map(print, counter(10), { n_splits = 2 }) end,
        "bad option 'n_splits' to 'map' (the input's length is unknown: give iterable_len)")
    end)

    it("max_tasks_active must be at least the chunk size", function()
      assert.has_error(function() pool:imap(print, items(10), { chunk_size = 8, max_tasks_active = 4 }) end,
        "bad option 'max_tasks_active' to 'imap' (must be at least the chunk size, 8; got 4)")
    end)

    it("unknown or mistyped options are named", function()
      assert.has_error(function() pool:imap(print, items(3), { chunk = 1 }) end,
        "bad option 'chunk' to 'imap' (unknown option)")
      assert.has_error(function() pool:apply_async(print, {}, { callback = 1 }) end,
        "bad option 'callback' to 'apply_async' (function expected, got number)")
      assert.has_error(function() pool:map_unordered(print, items(3), { progress_bar = "yes" }) end,
        "bad option 'progress_bar' to 'map_unordered' (boolean expected, got string)")
      assert.has_error(function() pool:map(print, items(3), { progress_bar_options = { colour = 1 } }) end)
      assert.has_error(function() pool:apply(print, 5) end,
        "bad argument #2 to 'apply' (table of arguments expected, got number)")
    end)
  end)
end)

describe("placement", function()
  it("order_tasks sends chunk i to worker ((i-1) mod n) + 1, from worker 1 in every map", function()
    local pool = forkpool.new{ n_jobs = 2, pass_worker_id = true, order_tasks = true, keep_alive = true }
    for _ = 1, 2 do
      local r = pool:map(function(wid, x)
        require("ffi").C.usleep((x % 3) * 1000)
        return wid
      end, items(40), { chunk_size = 5 })
      for i = 1, 40 do
        local chunk = math.floor((i - 1) / 5) + 1
        assert.are.equal((chunk - 1) % 2 + 1, r[i], "item " .. i)
      end
    end
    pool:set_order_tasks(false)
    pool:close()
  end)

  it("cpu_ids pins workers, one list for all or one entry per worker", function()
    local function allowed(pid)
      local f = assert(io.open("/proc/" .. pid .. "/status"), "worker " .. pid .. " is gone")
      local s = f:read("*a")
      f:close()
      return s:match("Cpus_allowed_list:%s*(%S+)")
    end
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true, cpu_ids = { 0 } }
    pool:map(function(x) return x end, { 1, 2 })
    for _, pid in ipairs(pool:worker_pids()) do assert.are.equal("0", allowed(pid)) end
    pool:close()
    pool = forkpool.new{ n_jobs = 2, keep_alive = true, cpu_ids = { 1, { 0, 1 } } }
    pool:map(function(x) return x end, { 1, 2 })
    local pids = pool:worker_pids()
    assert.are.equal("1", allowed(pids[1]))
    assert.are.equal("0-1", allowed(pids[2]))
    pool:close()
  end)

  it("cpu_ids are checked, naming the bad ones", function()
    assert.has_error(function() forkpool.new{ n_jobs = 2, cpu_ids = { 0, 99 } } end)
    local ok, err = pcall(forkpool.new, { n_jobs = 2, cpu_ids = { 0, 99 } })
    assert.is_false(ok)
    assert.matches("invalid CPU id 99", err)
    ok, err = pcall(forkpool.new, { n_jobs = 3, cpu_ids = { 0, 1 } })
    assert.is_false(ok)
    assert.matches("2 entries for 3 workers", err)
    ok, err = pcall(forkpool.new, { n_jobs = 1, cpu_ids = { "x" } })
    assert.is_false(ok)
    assert.matches("invalid CPU id x", err)
  end)
end)

describe("progress_bar", function()
  it("draws from the parent onto the chosen stream (a pipe: plain lines and a final one)", function()
    local path = os.tmpname()
    local stream = io.popen("cat > " .. path, "w")
    local pool = forkpool.new{ n_jobs = 2 }
    local r = pool:map(function(x) return x end, items(1000), {
      progress_bar = true,
      progress_bar_options = { desc = "squares", stream = stream, min_interval = 0.01 },
    })
    pool:close()
    stream:close()
    local f = io.open(path)
    local out = f:read("*a")
    f:close()
    os.remove(path)
    assert.are.equal(1000, r.n)
    assert.matches("squares: 1000/1000 %(100%%%)", out)
    assert.is_nil(out:find("\r"))
  end)

  it("shows counts without a total for an iterator of unknown length", function()
    local path = os.tmpname()
    local stream = io.popen("cat > " .. path, "w")
    local pool = forkpool.new{ n_jobs = 2 }
    local n = 0
    for _ in pool:imap(function(x) return x end, counter(300), {
      progress_bar = true, progress_bar_options = { desc = "lines", stream = stream },
    }) do n = n + 1 end
    pool:close()
    stream:close()
    local f = io.open(path)
    local out = f:read("*a")
    f:close()
    os.remove(path)
    assert.are.equal(300, n)
    assert.matches("lines: 300", out)
  end)
end)

-- dispatch reuses the encoded bytes of a function without upvalues across
-- jobs with the same worker options (apply_async in a loop); jobs with
-- other options (star, timed) or a worker_exit must get their own.
describe("one function without upvalues shared by many calls", function()
  it("runs right as a plain map, a starred apply, timed and untimed apply_async, with a worker_exit", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    local fn = function(a, b) return (b or 0) + a * 2 end
    local function check_map()
      local r = pool:map(fn, { 1, 2, 3 })
      assert.are.same({ 2, 4, 6 }, { r[1], r[2], r[3] })
    end
    check_map()
    assert.are.equal(7, pool:apply(fn, { 1, 5 }))
    local rs = {}
    for i = 1, 200 do
      rs[i] = pool:apply_async(fn, { i, 1 }, i % 2 == 0 and { task_timeout = 30 } or nil)
    end
    for i = 1, 200 do assert.are.equal(2 * i + 1, rs[i]:get()) end
    check_map()
    local r = pool:map(fn, { 4 }, { worker_exit = function() return "bye" end })
    assert.are.equal(8, r[1])
    pool:close()
    local exits = pool:get_exit_results()
    assert.is_true(#exits >= 1)
    for _, e in ipairs(exits) do assert.are.equal("bye", e) end
  end)
end)
