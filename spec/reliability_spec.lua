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

local items = util.items

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

local function is_closed_error(e) return forkpool.is_error(e, "closed") end

------------------------------------------------------------------------
-- 0. A value that cannot be sent
------------------------------------------------------------------------

describe("a value that cannot be sent", function()
  it("apply_async on a kept-alive pool fails its AsyncResult at once with a marshal error; close() returns", function()
    -- CPython's test_shutdown_deadlock_pickle: close() used to wait for
    -- ever on the failed call (4 runs in 5)
    local ok, out = child([[
      for round = 1, 10 do
        local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
        pool:map(function(x) return x end, { 1, 2, 3 })
        local a = pool:apply_async(function(c) return type(c) end, { coroutine.create(print) })
        if round % 2 == 0 then
          -- looked at before close: ready at once, without waiting
          print("ready", a:ready())
        end
        pool:close()
        local okg, e = pcall(a.get, a)
        print("get", okg, kind(e), e.path)
        print("after", a:ready(), a:successful())
      end
      print("done")
    ]], 60)
    assert.is_true(ok, out)
    assert.matches("done", out)
    local n = 0
    for line in out:gmatch("get[^\n]*") do
      n = n + 1
      assert.are.equal("get\tfalse\tmarshal\titem[1][1]", line)
    end
    assert.are.equal(10, n)
    for line in out:gmatch("ready[^\n]*") do assert.are.equal("ready\ttrue", line) end
    for line in out:gmatch("after[^\n]*") do assert.are.equal("after\ttrue\tfalse", line) end
  end)

  -- Every submission path, with workers forked for the call (the values
  -- reach them through fork: nothing is sent) and kept-alive workers (the
  -- values must be sent): either the call works or it raises a marshal
  -- error naming the path, and join, stop_and_join, map and close work
  -- afterwards.  Items from an iterator are always sent.
  local FAMILY = {
    "map", "map_unordered", "imap", "imap_unordered", "starmap", "starmap_unordered",
    "istarmap", "istarmap_unordered", "apply", "apply_async",
  }
  for _, fname in ipairs(FAMILY) do
    it(fname .. ": items and upvalues that cannot be sent, fresh and kept-alive workers", function()
      local ok, out = child(([[
        local fname = %q
        local star = fname:find("star") ~= nil
        local lazy = fname:find("^i") ~= nil
        local single = fname:find("^apply") ~= nil
        local co = coroutine.create(print)
        local function source(bad, iter)
          local list = { 1, bad == "item" and co or 2, 3 }
          if star then for i = 1, 3 do list[i] = { list[i] } end end
          if not iter then return list end
          local i = 0
          return function() i = i + 1; return list[i] end
        end
        local fn_item = function(x) return type(x) end
        local fn_up = function(_) return type(co) end
        -- "ok thread" when some result is "thread", else the error
        local function call(pool, bad, iter)
          local fn = bad == "upvalue" and fn_up or fn_item
          local src = source(bad, iter)
          local got = {}
          local okc, e = pcall(function()
            if single then
              local args = { bad == "item" and co or 1 }
              if fname == "apply" then got[1] = pool:apply(fn, args)
              else got[1] = pool:apply_async(fn, args):get(10) end
            elseif lazy then
              for v in pool[fname](pool, fn, src, { chunk_size = 1 }) do got[#got + 1] = v end
            else
              local r = pool[fname](pool, fn, src, { chunk_size = 1 })
              for i = 1, r.n do got[i] = r[i] end
            end
          end)
          if not okc then
            local path = forkpool.is_error(e) and e.path or ""
            return kind(e) .. " " .. tostring(path)
          end
          for _, v in pairs(got) do if v == "thread" then return "ok thread" end end
          return "ok nothread"
        end
        local function after(pool)
          pool:join()
          pool:stop_and_join()
          local r = pool:map(function(x) return x * 2 end, { 1, 2, 3 })
          assert(r[3] == 6)
          pool:close()
          return "after ok"
        end
        for _, workers in ipairs{ "fresh", "kept" } do
          for _, bad in ipairs{ "item", "upvalue" } do
            for _, iter in ipairs(single and { false } or { false, true }) do
              local pool = forkpool.new{ n_jobs = 2, keep_alive = workers == "kept" }
              if workers == "kept" then pool:map(function(x) return x end, { 1, 2 }) end
              local outcome = call(pool, bad, iter)
              print(("case %%s %%s %%s -> %%s; %%s"):format(workers, bad, iter and "iter" or "table",
                outcome, after(pool)))
            end
          end
        end
        print("done")
      ]]):format(fname), 120)
      assert.is_true(ok, out)
      assert.matches("done", out)
      local n = 0
      for workers, bad, src, outcome, tail in out:gmatch("case (%a+) (%a+) (%a+) %-> ([^;]*); ([^\n]*)") do
        n = n + 1
        local what = fname .. " " .. workers .. " " .. bad .. " " .. src
        assert.are.equal("after ok", tail, what)
        -- fresh workers have the function and a table's items through
        -- fork; items pulled from an iterator must be sent
        if workers == "fresh" and (src == "table" or bad == "upvalue") then
          assert.are.equal("ok thread", outcome, what)
        elseif bad == "item" then
          assert.matches("^marshal item%[%d+%]", outcome, nil, false, what)
        else
          assert.matches("^marshal fn<upvalue 'co'>", outcome, nil, false, what)
        end
      end
      assert.are.equal(fname:find("^apply") and 4 or 8, n)
    end)
  end
end)

------------------------------------------------------------------------
-- 1, 3. Closed and terminated pools
------------------------------------------------------------------------

describe("a pool closed or terminated", function()
  local pool
  before_each(function() pool = forkpool.new{ n_jobs = 2, keep_alive = true } end)
  after_each(function() if pool then pool:close() end end)

  for _, fname in ipairs{ "imap", "imap_unordered" } do
    it("by terminate() under an open " .. fname .. " makes the iterator raise a closed error", function()
      local it = pool[fname](pool, function(x) return x end, items(13), { chunk_size = 1 })
      local first = it()
      assert.is_number(first)
      pool:terminate()
      local ok, e = pcall(it)
      assert.is_false(ok)
      assert.is_true(is_closed_error(e), tostring(e))
      -- a for loop over the rest raises too, every time; close() is quiet
      ok, e = pcall(function() for _ in it do end end)
      assert.is_false(ok)
      assert.is_true(is_closed_error(e), tostring(e))
      it:close()
    end)
  end

  it("by close() under an open imap makes the iterator raise a closed error", function()
    local it = pool:imap(function(x) return x end, items(13), { chunk_size = 1 })
    assert.are.equal(1, it())
    pool:close()
    local ok, e = pcall(it)
    assert.is_false(ok)
    assert.is_true(is_closed_error(e), tostring(e))
  end)

  it("leaves an imap whose results are all in readable to the end", function()
    local it = pool:imap(function(x) return x * 10 end, items(13), { chunk_size = 13 })
    assert.are.equal(10, it())   -- the one chunk, hence every result, is in
    pool:terminate()
    local got = { 10 }
    for v in it do got[#got + 1] = v end
    assert.are.equal(13, #got)
    assert.are.equal(130, got[13])
  end)

  for _, keep in ipairs{ true, false } do
    it("by close() keeps the outcome of the calls it waited for (keep_alive " .. tostring(keep) .. ")", function()
      pool:close()
      pool = forkpool.new{ n_jobs = 2, keep_alive = keep }
      local calls = {}
      local function cb(name) return function(v) calls[#calls + 1] = name .. "=" .. tostring(v) end end
      local a_ok = pool:apply_async(function(x) return x + 1 end, { 41 }, { callback = cb("ok") })
      local a_err = pool:apply_async(function() error("mine") end, nil, {
        error_callback = function(e) calls[#calls + 1] = "err=" .. e.kind end })
      local a_slow = pool:apply_async(function(x)
        require("ffi").C.usleep(200000)
        return x
      end, { "slow" }, { callback = cb("slow") })
      pool:close()
      table.sort(calls)
      assert.are.same({ "err=task", "ok=42", "slow=slow" }, calls)
      for _ = 1, 2 do   -- and again: nothing changes, no callback runs twice
        assert.is_true(a_ok:ready())
        assert.is_true(a_ok:wait())
        assert.is_true(a_ok:wait(0))
        assert.is_true(a_ok:successful())
        assert.are.equal(42, a_ok:get())
        assert.are.equal(42, a_ok:get(1))
        assert.are.equal("slow", a_slow:get())
        assert.is_true(a_err:ready())
        assert.is_false(a_err:successful())
        local ok, e = pcall(a_err.get, a_err)
        assert.is_false(ok)
        assert.is_true(forkpool.is_error(e, "task"), tostring(e))
        assert.matches("mine", e.message)
      end
      assert.are.equal(3, #calls)
    end)
  end

  it("by terminate() fails the calls it dropped with a closed error; finished ones keep their value", function()
    local done = pool:apply_async(function() return "done" end)
    assert.are.equal("done", done:get(10))
    local seen
    local slow = pool:apply_async(function()
      require("ffi").C.usleep(30e6)
    end, nil, { error_callback = function(e) seen = e end })
    pool:terminate()
    assert.is_true(is_closed_error(seen), tostring(seen))
    assert.are.equal("done", done:get())
    assert.is_true(slow:ready())
    assert.is_true(slow:wait(1))
    assert.is_false(slow:successful())
    local ok, e = pcall(slow.get, slow)
    assert.is_false(ok)
    assert.is_true(is_closed_error(e), tostring(e))
  end)

  for _, how in ipairs{ "close", "terminate" } do
    it("by " .. how .. "() raises the closed error object on any other use", function()
      pool:map(function(x) return x end, { 1, 2 })
      local it = pool:imap(function(x) return x end, items(50), { chunk_size = 1 })
      it()
      pool[how](pool)
      local f = function(x) return x end
      local uses = {
        map = function() pool:map(f, { 1 }) end,
        map_unordered = function() pool:map_unordered(f, { 1 }) end,
        imap = function() pool:imap(f, { 1 }) end,
        imap_unordered = function() pool:imap_unordered(f, { 1 }) end,
        starmap = function() pool:starmap(f, { { 1 } }) end,
        starmap_unordered = function() pool:starmap_unordered(f, { { 1 } }) end,
        istarmap = function() pool:istarmap(f, { { 1 } }) end,
        istarmap_unordered = function() pool:istarmap_unordered(f, { { 1 } }) end,
        apply = function() pool:apply(f, { 1 }) end,
        apply_async = function() pool:apply_async(f, { 1 }) end,
        join = function() pool:join() end,
        stop_and_join = function() pool:stop_and_join() end,
        set_keep_alive = function() pool:set_keep_alive(false) end,
        set_use_worker_state = function() pool:set_use_worker_state(true) end,
        set_pass_worker_id = function() pool:set_pass_worker_id(true) end,
        set_shared_objects = function() pool:set_shared_objects({}) end,
        set_order_tasks = function() pool:set_order_tasks(true) end,
        get_insights = function() pool:get_insights() end,
        print_insights = function() pool:print_insights() end,
        ["open imap"] = function() it() end,
      }
      for name, use in pairs(uses) do
        local ok, e = pcall(use)
        assert.is_false(ok, name)
        assert.is_true(is_closed_error(e), name .. ": " .. tostring(e))
      end
      -- these stay allowed
      pool:close()
      pool:terminate()
      assert.are.same({}, pool:get_exit_results())
      assert.are.same({}, pool:worker_pids())
    end)
  end
end)

------------------------------------------------------------------------
-- 4. Input iterators that raise; 5. what the imap iterator keeps
------------------------------------------------------------------------

describe("imap over an input iterator", function()
  it("that raises delivers the results of the items pulled before, then raises its error", function()
    -- (k items, then the iterator raises or ends) for several chunkings;
    -- k at a chunk boundary with max_tasks_active = chunk_size once hung
    local ok, out = child([[
      local function source(k, raises)
        local i = 0
        return function()
          i = i + 1
          if i > k then
            if raises then error("source broke after " .. k, 0) end
            return nil
          end
          return i
        end
      end
      local shapes = {
        { 5, 1 }, { 6, 2 }, { 2, 2, 2 }, { 4, 2, 2 }, { 7, 3, 3 }, { 9, 3, 3 }, { 0, 1 }, { 0, 2, 2 },
        { 10 }, { 40 }, { 1, 1, 1 },
      }
      for _, keep in ipairs{ true, false } do
        local pool = forkpool.new{ n_jobs = 2, keep_alive = keep }
        for _, fname in ipairs{ "imap", "imap_unordered" } do
          for _, raises in ipairs{ true, false } do
            for _, s in ipairs(shapes) do
              local k, cs, mta = s[1], s[2], s[3]
              local got = {}
              local okc, e = pcall(function()
                for v, i in pool[fname](pool, function(x) return x * 10 end, source(k, raises),
                    { chunk_size = cs, max_tasks_active = mta }) do
                  assert(v == i * 10)
                  got[#got + 1] = i
                end
              end)
              if fname == "imap_unordered" then table.sort(got) end
              local want = true
              for j = 1, k do if got[j] ~= j then want = false end end
              if #got ~= k then want = false end
              print(("case %s %s %s k=%d cs=%s mta=%s -> %s %s"):format(tostring(keep), fname,
                raises and "raises" or "ends", k, tostring(cs), tostring(mta),
                want and "all-before" or ("got " .. table.concat(got, ",")),
                okc and "no-error" or tostring(e)))
              assert(pool:map(function(x) return x + 1 end, { 1 })[1] == 2)
            end
          end
        end
        pool:close()
      end
      print("done")
    ]], 120)
    assert.is_true(ok, out)
    assert.matches("done", out)
    local n = 0
    for line in out:gmatch("case [^\n]*") do
      n = n + 1
      local raises, k = line:match("case %a+ [%a_]+ (%a+) k=(%d+)")
      assert.matches("-> all%-before ", line, nil, false, line)
      if raises == "raises" then
        assert.matches("source broke after " .. k .. "$", line, nil, false, line)
      else
        assert.matches("no%-error$", line, nil, false, line)
      end
    end
    assert.are.equal(2 * 2 * 2 * 11, n)
  end)

  it("does not keep the result it yielded: one the caller dropped can be collected", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    for _, fname in ipairs{ "imap", "imap_unordered" } do
      local it = pool[fname](pool, function(x) return { string.rep("x", 1e5), x } end, items(8),
        { chunk_size = 4 })
      local weak = setmetatable({}, { __mode = "v" })
      local function take() local v = it(); weak[1] = v; return v[2] end
      local i1 = take()
      assert.is_table(weak[1])
      collectgarbage()
      collectgarbage()
      assert.is_nil(weak[1], fname)
      -- and the next ones are still there
      local i2 = take()
      assert.are_not.equal(i1, i2)
      it:close()
    end
    pool:close()
  end)
end)

------------------------------------------------------------------------
-- 11. Items tables with metamethods
------------------------------------------------------------------------

describe("an empty input", function()
  -- An empty iterator on a kept-alive pool whose workers were running hung
  -- every call of the family once (found by examples/wordcount.lua on an
  -- empty file); each call must return at once, empty.
  it("returns at once from every call of the family, fresh or kept-alive workers", function()
    local ok, out = child([[
      local function empty() return nil end
      for _, keep in ipairs { false, true } do
        local pool = forkpool.new { n_jobs = 2, keep_alive = keep }
        pool:map(function(x) return x end, { 1, 2, 3 })  -- workers running
        for _, fname in ipairs { "map", "map_unordered", "starmap", "starmap_unordered" } do
          for _, src in ipairs { empty, {} } do
            local r = pool[fname](pool, function(x) return x end, src)
            assert(r.n == 0 and r[1] == nil, fname)
          end
        end
        for _, fname in ipairs { "imap", "imap_unordered", "istarmap", "istarmap_unordered" } do
          for _, src in ipairs { empty, {} } do
            local n = 0
            for _ in pool[fname](pool, function(x) return x end, src) do n = n + 1 end
            assert(n == 0, fname)
          end
        end
        assert(pool:map(function(x) return x + 1 end, { 1 })[1] == 2)
        pool:close()
      end
      print("empty ok")
    ]], 60)
    assert.is_true(ok, out)
    assert.matches("empty ok", out)
  end)
end)

describe("items", function()
  it("are read raw, the same by fresh and kept-alive workers; an __index that raises breaks nothing", function()
    local ok, out = child([[
      local raising = { __index = function(_, k) error("__index ran for " .. tostring(k)) end }
      local default = { __index = function() return "default" end }
      local f = function(x) return type(x) == "table" and "star" or tostring(x) end
      local g = function(...) return select("#", ...) end
      for _, keep in ipairs{ false, true } do
        for mname, mt in pairs{ raising = raising, default = default } do
          local pool = forkpool.new{ n_jobs = 2, keep_alive = keep }
          if keep then pool:map(f, { 1, 2 }) end
          local its = setmetatable({ 1, nil, 3, n = 3 }, mt)
          local r = pool:map(f, its, { chunk_size = 1 })
          local u = pool:map_unordered(f, its)
          local seen = {}
          for v, i in pool:imap(f, its) do seen[i] = v end
          -- star items with a metatable: their n is read raw too
          local s = pool:starmap(g, { setmetatable({ 1, 2 }, mt), setmetatable({ 7 }, mt) })
          table.sort(u, function(a, b) return tostring(a) < tostring(b) end)
          print(("case %s %s -> %s %s %s | %s %s %s | %s %s | %d %d"):format(tostring(keep), mname,
            tostring(r[1]), tostring(r[2]), tostring(r[3]), tostring(u[1]), tostring(u[2]),
            tostring(u[3]), tostring(seen[2]), tostring(seen[3]), s[1], s[2]))
          pool:join()
          pool:stop_and_join()
          pool:close()
        end
      end
      print("done")
    ]], 60)
    assert.is_true(ok, out)
    assert.matches("done", out)
    local n = 0
    for line in out:gmatch("case [^\n]*") do
      n = n + 1
      assert.matches("%-> 1 nil 3 | 1 3 nil | nil 3 | 2 1$", line, nil, false, line)
    end
    assert.are.equal(4, n)
  end)

  it("an error raised while building or sending a chunk leaves the books consistent", function()
    -- faults injected into the sending path: forkpool.pack (items of a
    -- kept-alive map) and the codec's cdata helper (apply_async, starmap);
    -- each call raises a marshal error and nothing afterwards hangs
    local ok, out = child([[
      local P = require "forkpool.pack"
      local C = require "forkpool.cdata"
      local pack, cdata_kind = P.items, C.kind
      C.kind = function(v)
        if tostring(v) == "77LL" then error("injected cdata fault") end
        return cdata_kind(v)
      end
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      pool:map(function(x) return x end, { 1, 2 })
      local function check(name, okc, e)
        P.items = pack
        print(("case %s -> %s %s %s"):format(name, tostring(okc), kind(e),
          tostring(forkpool.is_error(e) and e.message or e):match("injected %a+ fault") or "?"))
        pool:join()
        pool:stop_and_join()
        assert(pool:map(function(x) return x * 2 end, { 1, 2, 3 })[3] == 6)
      end
      local function broken_pack() error("injected pack fault") end
      P.items = broken_pack
      check("map", pcall(pool.map, pool, function(x) return x end, { 1, 2, 3 }))
      P.items = broken_pack
      check("imap", pcall(function()
        for _ in pool:imap(function(x) return x end, { 1, 2, 3 }) do end
      end))
      check("starmap", pcall(pool.starmap, pool, function(x) return x end, { { 1 }, { 77LL } }))
      local a = pool:apply_async(function(x) return x end, { 77LL })
      check("apply_async", pcall(a.get, a, 10))
      pool:close()
      print("done")
    ]], 60)
    assert.is_true(ok, out)
    assert.matches("done", out)
    assert.matches("case map %-> false marshal injected pack fault", out)
    assert.matches("case imap %-> false marshal injected pack fault", out)
    assert.matches("case starmap %-> false marshal injected cdata fault", out)
    assert.matches("case apply_async %-> false marshal injected cdata fault", out)
  end)
end)

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
