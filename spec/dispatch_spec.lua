-- Dispatch and worker-side behaviour (issue 10, "Reliability, round two"):
-- where work goes (never queued behind a busy worker while another is
-- idle), what a result is (its value when its task returned), pools made
-- by a process the host forked, which values travel by name, memory and
-- idle limits.  Anything that could hang runs in a child process with a
-- deadline; every wait inside is bounded.  No timing thresholds: the specs
-- look at which worker got what and the order of events.
local util = require "support.util"

-- Run `code` in a fresh luajit (killed after `timeout` s); it prints "OK"
-- when all went well.
local function child(code, timeout)
  local ok, out = util.run_lua(code, timeout or 60)
  assert(ok and out:find("OK", 1, true), "child failed:\n" .. out)
  return out
end

describe("dispatch", function()
  it("gives the next chunk to the worker whose chunk just came back", function()
    -- one map after another, one item each: the worker that answered is
    -- awake and hot; handing the next item to a sleeping one instead made
    -- the single-item round trip 4x slower (35 us against 9 us)
    child([[
      local forkpool = require "forkpool"
      local pool = forkpool.new{ n_jobs = 4, keep_alive = true, pass_worker_id = true }
      pool:map(function(id) return id end, { 1, 2, 3, 4, 5, 6, 7, 8 }) -- all four started
      local first = pool:map(function(id) return id end, { 0 })[1]
      for i = 1, 200 do
        local got = pool:map(function(id) return id end, { i })[1]
        assert(got == first, ("map %d ran on worker %d, the last answer came from %d"):format(i, got, first))
      end
      pool:close()
      print("OK")
    ]])
  end)

  it("apply_async does not queue behind a blocked worker while another is idle", function()
    -- A blocks (bounded: 20 s) until B has run; with B queued behind A on
    -- A's worker, A gives up waiting and reports it
    child([[
      local forkpool = require "forkpool"
      local flag = forkpool.shared_array("int", 2)
      local pool = forkpool.new{ n_jobs = 2 }
      local ffi = require "ffi"
      pcall(ffi.cdef, "int usleep(unsigned int); int getpid(void);")
      local a = pool:apply_async(function()
        for _ = 1, 20000 do
          if flag[1] == 1 then return ffi.C.getpid() end
          ffi.C.usleep(1000)
        end
        return "A timed out waiting for B"
      end)
      local b = pool:apply_async(function() flag[1] = 1; return ffi.C.getpid() end)
      local pb = b:get(30)
      local pa = a:get(30)
      assert(type(pa) == "number", pa)
      assert(pa ~= pb, "A and B ran in the same worker")
      pool:close()
      print("OK")
    ]])
  end)

  it("a map's items go to idle workers first (each worker gets one chunk before any gets two)", function()
    -- two chunks of one item: each waits (bounded) for the other to start
    child([[
      local forkpool = require "forkpool"
      local seen = forkpool.shared_array("int", 3)
      local ffi = require "ffi"
      pcall(ffi.cdef, "int usleep(unsigned int);")
      for _, keep in ipairs{ false, true } do
        local pool = forkpool.new{ n_jobs = 2, keep_alive = keep }
        for round = 1, 3 do
          seen[1], seen[2] = 0, 0
          local r = pool:map(function(i)
            seen[i] = 1
            for _ = 1, 20000 do
              if seen[1] == 1 and seen[2] == 1 then return true end
              ffi.C.usleep(1000)
            end
            return false
          end, { 1, 2 }, { chunk_size = 1 })
          assert(r[1] == true and r[2] == true, "round " .. round .. ": the items ran one after the other")
        end
        pool:close()
      end
      print("OK")
    ]], 120)
  end)

  it("a second chunk goes to a busy worker only when no worker is idle", function()
    -- worker 1 blocks on A; a map of 4 one-item chunks then runs on worker 2
    -- alone, except what was prefetched while no worker was idle
    child([[
      local forkpool = require "forkpool"
      local flag = forkpool.shared_array("int", 2)
      local ffi = require "ffi"
      pcall(ffi.cdef, "int usleep(unsigned int); int getpid(void);")
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      pool:map(function(x) return x end, { 1, 2 })  -- both workers up
      local a = pool:apply_async(function()
        for _ = 1, 20000 do
          if flag[1] == 1 then return ffi.C.getpid() end
          ffi.C.usleep(1000)
        end
        return "A timed out"
      end)
      -- the map's first chunk goes to the idle worker; later ones may be
      -- prefetched on A's worker only once no worker is idle: the last item
      -- releases A, so the map can finish only if that holds
      local n = 6
      local r = pool:map(function(i)
        if i == n then flag[1] = 1 end
        return ffi.C.getpid()
      end, { 1, 2, 3, 4, 5, 6 }, { chunk_size = 1 })
      local pa = a:get(30)
      assert(type(pa) == "number", pa)
      assert(r[1] ~= pa, "the first chunk went to the busy worker")
      pool:close()
      print("OK")
    ]], 120)
  end)
end)

describe("results", function()
  local forkpool = require "forkpool"
  local pool
  after_each(function() if pool then pool:close(); pool = nil end end)

  -- every task returns the same table, changed: result i must show the
  -- state after task i, whatever the chunk size
  local function counting(state, x)
    state.n = (state.n or 0) + 1
    state.last = x
    state.seen = state.seen or {}
    state.seen[#state.seen + 1] = x
    return state
  end

  for _, cs in ipairs{ 1, 3, 10 } do
    it("are the value when their task returned (worker state, chunk_size " .. cs .. ")", function()
      pool = forkpool.new{ n_jobs = 1, use_worker_state = true }
      local r = pool:map(counting, { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, { chunk_size = cs })
      for i = 1, 10 do
        assert.are.equal(i, r[i].n)
        assert.are.equal(i, r[i].last)
        assert.are.equal(i, #r[i].seen)
      end
    end)
  end

  it("are the value when their task returned: a shared table, nested, with a metatable", function()
    pool = forkpool.new{ n_jobs = 1, keep_alive = true }
    local fns = { 1, 2, 3, 4, 5, 6 }
    for _, kind in ipairs{ "map", "map_unordered", "imap", "starmap" } do
      local r
      local fn = function(x)
        local acc = _G.__acc or setmetatable({ list = {} }, { __index = { tag = "acc" } })
        _G.__acc = acc
        acc.list[#acc.list + 1] = x
        acc.count = #acc.list
        acc.self = acc  -- a cycle: kept in the copy
        return acc
      end
      local opts = { chunk_size = 6 }
      if kind == "imap" then
        r = {}
        for v, i in pool:imap(fn, fns, opts) do r[i] = v end
      elseif kind == "starmap" then
        local args = {}
        for i = 1, #fns do args[i] = { fns[i] } end
        r = pool:starmap(fn, args, opts)
      else
        r = pool[kind](pool, fn, fns, opts)
      end
      local counts = {}
      for i = 1, 6 do
        counts[#counts + 1] = r[i].count
        assert.are.equal(r[i].count, #r[i].list)
        assert.are.equal(r[i], r[i].self)
      end
      table.sort(counts)
      -- _G.__acc lives on in the kept-alive worker: counts go on growing
      for i = 2, 6 do assert.are.equal(counts[i - 1] + 1, counts[i], kind) end
      pool:map(function() _G.__acc = nil end, { 1 })
    end
  end)

  it("snapshot copies sharing, cycles, table keys and metatables", function()
    local run = require "forkpool.run"
    local shared = { 1, 2 }
    local key = { "k" }
    local mt = { __metatable = "locked" }
    local t = setmetatable({ a = shared, b = shared, [key] = "v", 3 }, mt)
    t.me = t
    local c = run.snapshot(t)
    assert.are_not.equal(t, c)
    assert.are.equal(c.a, c.b)
    assert.are_not.equal(shared, c.a)
    assert.are.same({ 1, 2 }, c.a)
    assert.are.equal(c, c.me)
    assert.are.equal("locked", getmetatable(c))
    assert.are.equal(mt, debug.getmetatable(c))
    local n = 0
    for k, v in pairs(c) do
      if type(k) == "table" then n = n + 1; assert.are.same({ "k" }, k); assert.are.equal("v", v) end
    end
    assert.are.equal(1, n)
    local flat = run.snapshot({ 1, 2, x = "y" })
    assert.are.same({ 1, 2, x = "y" }, flat)
  end)

  -- The runner keeps a table result when its task returns: encoded at once
  -- by the worker (put, engine/fp_worker.c), or, a flat array of scalars
  -- while the chunk can still travel packed, copied (run.flat_copy).

  it("flat_copy copies flat arrays of scalars only", function()
    local run = require "forkpool.run"
    local t = { 1, "two", true }
    local c = run.flat_copy(t)
    assert.are_not.equal(t, c)
    assert.are.same(t, c)
    assert.are.same({}, run.flat_copy({}))
    assert.is_nil(run.flat_copy({ 1, { 2 } }))
    assert.is_nil(run.flat_copy({ 1, 2, x = 3 }))
    assert.is_nil(run.flat_copy({ x = 1 }))
    assert.is_nil(run.flat_copy({ 1, nil, 3 }))
    assert.is_nil(run.flat_copy({ 1, print }))
    assert.is_nil(run.flat_copy(setmetatable({ 1 }, {})))
  end)

  -- fn(..., x): the item is the last argument (leading ones: worker id,
  -- shared objects, state).  Every task changes the same worker-global
  -- tables and returns one of them: odd x the nested one, even x its flat
  -- array part.
  local function changing(...)
    local x = select(select("#", ...), ...)
    if type(x) == "table" then x = x[1] end -- starmap: {x} unpacked already
    local t = _G.__enc_t
    if not t then
      t = { sub = {}, flat = {} }
      _G.__enc_t = t
    end
    t.v, t.sub[1], t.flat[1], t.flat[2] = x, x, x, x * 2
    if x % 2 == 1 then return t end
    return t.flat
  end
  local function expect_changing(x, r, what)
    if x % 2 == 1 then
      assert.are.same({ v = x, sub = { x }, flat = { x, x * 2 } }, r, what)
    else
      assert.are.same({ x, x * 2 }, r, what)
    end
  end

  it("are the value when their task returned, in every runner path and chunk size", function()
    -- flat arrays first (copied while the chunk could be packed), then
    -- nested tables and flat arrays mixed (encoded at once)
    local xs = { 2, 4, 6, 1, 3, 8, 5, 10, 7, 12, 14, 9 }
    local paths = {
      { "map", {} },
      { "map, worker id", { pass_worker_id = true } },
      { "map, worker id and state", { pass_worker_id = true, use_worker_state = true } },
      { "map, worker id, shared objects and state",
        { pass_worker_id = true, use_worker_state = true, shared_objects = { 1 } } },
      { "starmap", {}, true },
      { "map, task_timeout (timed chunks)", {}, false, { task_timeout = 30 } },
    }
    for _, p in ipairs(paths) do
      local popts = { n_jobs = 1, keep_alive = true }
      for k, v in pairs(p[2]) do popts[k] = v end
      pool = forkpool.new(popts)
      for _, cs in ipairs{ 1, 5, #xs } do
        local mopts = { chunk_size = cs }
        for k, v in pairs(p[4] or {}) do mopts[k] = v end
        local r
        if p[3] then
          local args = {}
          for i, x in ipairs(xs) do args[i] = { x } end
          r = pool:starmap(changing, args, mopts)
        else
          r = pool:map(changing, xs, mopts)
        end
        for i, x in ipairs(xs) do expect_changing(x, r[i], p[1] .. ", chunk_size " .. cs .. ", item " .. i) end
      end
      pool:close()
      pool = nil
    end
  end)

  it("keep numbers, strings, booleans, nil and tables of a chunk in their order", function()
    pool = forkpool.new{ n_jobs = 1, keep_alive = true }
    local function mixed(i)
      local m = i % 7
      if m == 0 then return i
      elseif m == 1 then return { id = i, tags = { "t" .. i } }
      elseif m == 2 then return "s" .. i
      elseif m == 3 then return { i, i + 1 }
      elseif m == 4 then return nil
      elseif m == 5 then return i % 2 == 0
      else return { i } end
    end
    local n = 50
    for _, cs in ipairs{ 1, 7, n } do
      local r = pool:map(mixed, require("support.util").items(n), { chunk_size = cs })
      for i = 1, n do assert.are.same(mixed(i), r[i], "chunk_size " .. cs .. ", item " .. i) end
    end
    -- a chunk that starts with scalars and ends with a record, and one
    -- whose only table is its last result
    local r = pool:map(function(i) return i < 5 and i or { id = i } end, { 1, 2, 3, 4, 5, 6 }, { chunk_size = 6 })
    assert.are.same({ 1, 2, 3, 4, { id = 5 }, { id = 6 }, n = 6 }, r)
    r = pool:map(function(i) return i < 6 and i or { id = i } end, { 1, 2, 3, 4, 5, 6 }, { chunk_size = 6 })
    assert.are.same({ 1, 2, 3, 4, 5, { id = 6 }, n = 6 }, r)
  end)

  it("come back whole from a large chunk of records", function()
    pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    local n = 20000
    local recs = {}
    for i = 1, n do
      recs[i] = { id = i, name = "user" .. i, tags = { "alpha", "beta", "t" .. i % 10 }, score = i * 0.5 }
    end
    local r = pool:map(function(x) return x end, recs, { chunk_size = n / 2 })
    assert.are.equal(n, r.n)
    for i = 1, n do
      -- (one record at a time: a failure prints only that one)
      assert.are.same(recs[i], r[i], "item " .. i)
    end
    -- records built by the task, int64 boxes inside (the codec's cdata
    -- helper is called from put)
    r = pool:map(function(i) return { id = i, big = i * 1LL, list = { i } } end,
      require("support.util").items(3000), { chunk_size = 3000 })
    for i = 1, 3000 do
      assert.are.equal(i, r[i].id)
      assert.are.equal(tostring(i * 1LL), tostring(r[i].big))
      assert.are.same({ i }, r[i].list)
    end
  end)

  it("that cannot be sent fail the chunk after it ran, naming the first one, as before", function()
    pool = forkpool.new{ n_jobs = 1, keep_alive = true }
    local fn = function(x)
      _G.__ran = (_G.__ran or 0) + 1
      if x == 5 or x == 7 then return { id = x, list = { x }, f = function() end } end
      if x % 2 == 0 then return { x, x } end
      return { id = x, tags = { "t" .. x } }
    end
    for _, cs in ipairs{ 9, 6, 5 } do
      pool:map(function() _G.__ran = 0 end, { 1 })
      local ok, err = pcall(pool.map, pool, fn, { 1, 2, 3, 4, 5, 6, 7, 8, 9 }, { chunk_size = cs })
      assert.is_false(ok)
      assert.are.equal("marshal", err.kind)
      assert.are.equal("result[5].f: cannot send function", err.message)
      assert.are.equal("result[5].f", err.path)
      assert.are.equal(5, err.index)
      -- the failing chunk ran to its end (items 1..cs at least)
      local ran = pool:map(function() return _G.__ran end, { 1 })[1]
      assert.is_true(ran >= cs, "ran " .. ran .. " of chunk " .. cs)
    end
    -- only flat arrays before the bad one (the chunk was still packable)
    local ok, err = pcall(pool.map, pool, function(x)
      if x == 3 then return { 1, { f = print } } end
      return { x, x }
    end, { 1, 2, 3, 4, 5 }, { chunk_size = 5 })
    assert.is_false(ok)
    assert.are.equal("result[3][2].f: cannot send C function", err.message)
    -- a value nested too deeply, in the middle
    ok, err = pcall(pool.map, pool, function(x)
      if x ~= 2 then return { x = x } end
      local d = {}
      local c = d
      for _ = 1, 100000 do c[1] = {}; c = c[1] end
      return d
    end, { 1, 2, 3 }, { chunk_size = 3 })
    assert.is_false(ok)
    assert.are.equal("marshal", err.kind)
    assert.are.equal(2, err.index)
    assert.matches("^result%[2%].*too deep", err.message)
    -- a task error after a result that cannot be sent: the task error
    ok, err = pcall(pool.map, pool, function(x)
      if x == 2 then return { f = print } end
      if x == 4 then error("boom " .. x, 0) end
      return { x = x }
    end, { 1, 2, 3, 4, 5 }, { chunk_size = 5 })
    assert.is_false(ok)
    assert.are.equal("task", err.kind)
    assert.are.equal("boom 4", err.message)
    assert.are.equal(4, err.index)
    -- and the worker goes on
    assert.are.same({ { x = 1 }, { x = 2 }, n = 2 },
      pool:map(function(x) return { x = x } end, { 1, 2 }, { chunk_size = 2 }))
  end)
end)

describe("a process the host forks", function()
  it("can make and use pools of its own; the parent's pools raise a clear error there", function()
    child([[
      local forkpool = require "forkpool"
      local ffi = require "ffi"
      pcall(ffi.cdef, "int fork(void); int waitpid(int, int *, int); void _exit(int);")
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      assert(pool:map(function(x) return x + 1 end, { 1, 2, 3 })[3] == 4)
      local before = pool:worker_pids()
      local arr = forkpool.shared_array("double", 2)
      for _, how in ipairs{ "_exit", "os.exit" } do
        local pid = ffi.C.fork()
        if pid == 0 then
          local ok, e = pcall(function()
            -- twice: a pool closed, then another made
            for _ = 1, 2 do
              local p2 = forkpool.new{ n_jobs = 2, keep_alive = true }
              local r = p2:map(function(x) return x * 2 end, { 1, 2, 3 })
              assert(r[3] == 6, "map in the child")
              assert(p2:apply(function(a) return a + 1 end, { 41 }) == 42)
              local a = p2:apply_async(function() return "async" end)
              assert(a:get(30) == "async")
              p2:close()
            end
            -- the parent's shared array is shared memory: still readable
            arr[0] = 7
            -- the parent's pool: a clear error, its workers untouched
            local ok2, e2 = pcall(pool.map, pool, function(x) return x end, { 1 })
            assert(not ok2 and tostring(e2):find("process that created it", 1, true), tostring(e2))
            -- new shared arrays belong to the process that loaded forkpool
            local ok3, e3 = pcall(forkpool.shared_array, "double", 2)
            assert(not ok3 and tostring(e3):find("loaded forkpool", 1, true), tostring(e3))
          end)
          if not ok then io.stderr:write("CHILD: ", tostring(e), "\n") end
          io.stderr:flush()
          if how == "_exit" then ffi.C._exit(ok and 0 or 1) end
          os.exit(ok and 0 or 1, true)  -- closes the state: the parent's pool is collected here
        end
        local st = ffi.new("int[1]")
        assert(ffi.C.waitpid(pid, st, 0) == pid)
        assert(st[0] == 0, "the child failed (" .. how .. ")")
        assert(arr[0] == 7)
        arr[0] = 0
      end
      -- the parent's pool and its workers are as they were
      local after = pool:worker_pids()
      for w, p in pairs(before) do assert(after[w] == p, "worker " .. w .. " changed") end
      assert(pool:map(function(x) return x + 1 end, { 1, 2, 3 })[3] == 4)
      pool:close()
      print("OK")
    ]], 120)
  end)
end)

describe("values reachable from package.loaded", function()
  local forkpool = require "forkpool"
  local pool
  before_each(function()
    pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    pool:map(function(x) return x end, { 1, 2 })  -- workers up before the changes below
  end)
  after_each(function()
    pool:close()
    pool = nil
    package.loaded.fp_test_cfg, package.loaded.fp_test_mod, package.loaded.fp_test_late = nil, nil, nil
  end)

  it("plain data travels by value: kept-alive workers see the parent's changes", function()
    package.loaded.fp_test_cfg = { threshold = 1, nested = { 1, 2 } }
    package.loaded.fp_test_mod = { f = function() return "f" end, data = { x = 1 } }
    pool:map(function(x) return x end, { 1, 2 })
    local cfg = package.loaded.fp_test_cfg
    local data = package.loaded.fp_test_mod.data
    local function read() return { cfg.threshold, #cfg.nested, data.x } end
    local r = pool:map(function() return read() end, { 1, 2 }, { chunk_size = 1 })
    assert.are.same({ 1, 2, 1 }, r[1])
    assert.are.same({ 1, 2, 1 }, r[2])
    cfg.threshold, data.x = 2, 3
    cfg.nested[3] = 3
    r = pool:map(function() return read() end, { 1, 2 }, { chunk_size = 1 })
    assert.are.same({ 2, 3, 3 }, r[1])
    assert.are.same({ 2, 3, 3 }, r[2])
  end)

  it("a table put into package.loaded after the workers started travels by value", function()
    package.loaded.fp_test_late = { v = 5, list = { "a", "b" } }
    local late = package.loaded.fp_test_late
    local r = pool:map(function(i) return late.list[i] .. late.v end, { 1, 2 }, { chunk_size = 1 })
    assert.are.same({ "a5", "b5" }, { r[1], r[2] })
    -- and as an item
    r = pool:map(function(t) return t.v end, { late, late })
    assert.are.same({ 5, 5 }, { r[1], r[2] })
  end)

  it("functions and modules with functions still travel by name", function()
    local fmt = string.format
    local mod = { f = function() return "f" end }
    package.loaded.fp_test_mod = mod
    -- the worker loaded no such module: it must have been there before
    -- the fork to travel by name, so fork fresh workers first
    pool:close()
    pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    pool:map(function(x) return x end, { 1, 2 })
    local r = pool:map(function(x)
      return { fmt("%d", x), mod == package.loaded.fp_test_mod, mod.f() }
    end, { 1, 2 }, { chunk_size = 1 })
    assert.are.same({ "1", true, "f" }, r[1])
    assert.are.same({ "2", true, "f" }, r[2])
  end)

  it("plain_data tells plain tables from the rest", function()
    local plain = require("forkpool.modmap").plain_data
    assert.is_true(plain({ 1, "a", true, { x = { 2 } } }, {}))
    assert.is_false(plain({ 1, { f = print } }, {}))
    assert.is_false(plain({ setmetatable({}, {}) }, {}))
    local cyc = { 1 }
    cyc.me = cyc
    assert.is_true(plain(cyc, {}))
  end)
end)

describe("worker_max_memory", function()
  it("replaces a worker whose resident memory exceeds it after a task; worker_exit runs", function()
    child([[
      local forkpool = require "forkpool"
      local S = require "forkpool.deaths"
      local ffi = require "ffi"
      pcall(ffi.cdef, "int getpid(void);")
      -- a worker's resident memory with nothing of its own yet
      local probe = forkpool.new{ n_jobs = 1 }
      local base = probe:apply(function() return S.rss_bytes(ffi.C.getpid()) end)
      probe:close()
      local limit = base + 32 * 2^20
      for _, keep in ipairs{ false, true } do
        local pool = forkpool.new{ n_jobs = 1, worker_max_memory = limit, keep_alive = keep,
          enable_insights = true }
        local r = pool:map(function(x)
          if x == 3 then _G.hog = ("x"):rep(64 * 2^20) end
          return ffi.C.getpid()
        end, { 1, 2, 3, 4, 5, 6 }, { chunk_size = 1, worker_exit = function() return ffi.C.getpid() end })
        assert(r[1] == r[3], "items 1..3 ran in one worker")
        assert(r[6] ~= r[1], "the worker over the limit was not replaced")
        local ins = pool:get_insights()
        assert(ins.total_memory_replacements == 1, "insights: " .. tostring(ins.total_memory_replacements))
        assert(ins.n_memory_replacements[1] == 1)
        if keep then pool:stop_and_join() end
        local ex = pool:get_exit_results()
        assert(#ex == 2, "exit results: " .. #ex)
        assert(ex[1] == r[1] and ex[2] == r[6], "exit results in order")
        pool:close()
      end
      -- under the limit: one worker throughout
      local pool = forkpool.new{ n_jobs = 1, worker_max_memory = limit }
      local r = pool:map(function() return ffi.C.getpid() end, { 1, 2, 3, 4 }, { chunk_size = 1 })
      assert(r[1] == r[4])
      pool:close()
      local ok, e = pcall(forkpool.new, { worker_max_memory = -1 })
      assert(not ok and tostring(e):find("worker_max_memory", 1, true))
      print("OK")
    ]], 120)
  end)
end)

describe("idle_timeout", function()
  it("kept-alive workers idle that long stop by themselves; the next call starts fresh ones", function()
    child([[
      local forkpool = require "forkpool"
      local util = require "support.util"
      local ffi = require "ffi"
      pcall(ffi.cdef, "int getpid(void);")
      local exit = function() return ffi.C.getpid() end
      local pid = function() return ffi.C.getpid() end
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true, idle_timeout = 0.2 }
      local r1 = pool:map(pid, { 1, 2 }, { chunk_size = 1, worker_exit = exit })
      local old = pool:worker_pids()
      local n = 0
      for _, p in pairs(old) do
        n = n + 1
        assert(util.wait_for(function() return not util.pid_alive(p) end, 20), "worker " .. p .. " still there")
      end
      assert(n == 2)
      local r2 = pool:map(pid, { 1, 2 }, { chunk_size = 1, worker_exit = exit })
      for i = 1, 2 do
        assert(r2[i] ~= r1[1] and r2[i] ~= r1[2], "an old worker ran item " .. i)
      end
      -- the exit results of the workers that stopped idle were collected
      local ex = pool:get_exit_results()
      local got = {}
      for _, v in ipairs(ex) do got[v] = true end
      for _, p in pairs(old) do assert(got[p], "no exit result from idle worker " .. p) end
      pool:close()
      -- busy enough: the same workers serve call after call
      pool = forkpool.new{ n_jobs = 1, keep_alive = true, idle_timeout = 30 }
      local a = pool:apply(pid)
      assert(pool:apply(pid) == a and pool:map(pid, { 1 })[1] == a)
      pool:close()
      -- a worker that goes idle in the middle of a call is replaced when needed
      pool = forkpool.new{ n_jobs = 2, keep_alive = true, idle_timeout = 0.2 }
      pool:map(pid, { 1, 2 }, { chunk_size = 1 })
      local slow = pool:apply_async(function()
        local t = os.clock() + 0.8
        while os.clock() < t do end
        return "slow"
      end)
      assert(slow:get(30) == "slow")
      local rs = pool:map(function(x) return x * 2 end, { 1, 2, 3, 4 }, { chunk_size = 1 })
      assert(rs[4] == 8)
      pool:close()
      local ok, e = pcall(forkpool.new, { idle_timeout = 0 })
      assert(not ok and tostring(e):find("idle_timeout", 1, true))
      print("OK")
    ]], 120)
  end)
end)
