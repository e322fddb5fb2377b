-- Big result arrays keep their memory mapped between maps (issue 14,
-- engine/fp_hotmem.h): the parent's allocator keeps the blocks of freed
-- result arrays and serves the next ones from them, never a live one.
local forkpool = require "forkpool"
local core = require "forkpool.core"
local util = require "support.util"

local LEN = 200000 -- 1.6 MB per array: above fp_hotmem's smallest kept block

-- The task: array i of the map (its numbers tell which map made it).
local function arrays(tag)
  return function(i)
    local t = {}
    for k = 1, LEN do t[k] = tag * 1e7 + i * LEN + k / 8 end
    return t
  end
end

local function check(res, tag, n)
  assert.equals(n, #res)
  for i = 1, n do
    local t = res[i]
    assert.equals(LEN, #t)
    for _, k in ipairs({ 1, 2, LEN / 2, LEN - 1, LEN }) do
      assert.equals(tag * 1e7 + i * LEN + k / 8, t[k])
    end
  end
end

describe("big result arrays' memory", function()
  local pool
  before_each(function() pool = forkpool.new{ n_jobs = 2, keep_alive = true } end)
  after_each(function() pool:close() end)

  it("is kept when the results are freed and reused by the next map", function()
    local res = pool:map(arrays(1), { 1, 2, 3, 4 }, { chunk_size = 1 })
    check(res, 1, 4)
    res = nil -- luacheck: ignore
    collectgarbage(); collectgarbage()
    local held = core.hot_held()
    assert.is_true(held >= 4 * LEN * 8, "kept " .. held .. " bytes")
    res = pool:map(arrays(2), { 1, 2, 3, 4 }, { chunk_size = 1 })
    check(res, 2, 4)
    assert.is_true(core.hot_held() < held, "the kept blocks were not reused")
  end)

  it("never hands out the memory of results still alive", function()
    local keep = pool:map(arrays(1), { 1, 2, 3 }, { chunk_size = 1 })
    for round = 2, 6 do
      local r = pool:map(arrays(round), { 1, 2, 3 }, { chunk_size = 1 })
      check(r, round, 3)
      r = nil -- luacheck: ignore
      collectgarbage()
      check(keep, 1, 3)
    end
  end)

  it("serves a big map's results table too, and never one in use", function()
    local items = {}
    for i = 1, 100000 do items[i] = i end -- results table: 800 KB of array
    local sq = function(x) return x * x end
    local keep = pool:map(sq, items)
    do
      local dropped = pool:map(sq, items)
      assert.equals(100000, dropped.n)
    end
    collectgarbage(); collectgarbage()
    local held = core.hot_held()
    assert.is_true(held >= 100000 * 8, "kept " .. held .. " bytes")
    local r = pool:map(sq, items)
    assert.is_true(core.hot_held() < held, "the results table did not reuse the kept block")
    for i = 1, 100000, 997 do
      assert.equals(i * i, r[i])
      assert.equals(i * i, keep[i])
    end
    assert.equals(100000, r.n)
  end)

  it("goes back when the pool is closed", function()
    local res = pool:map(arrays(1), { 1, 2 }, { chunk_size = 1 })
    check(res, 1, 2)
    res = nil -- luacheck: ignore
    collectgarbage(); collectgarbage()
    assert.is_true(core.hot_held() > 0)
    pool:close()
    assert.equals(0, core.hot_held())
  end)

  it("leaves lua_close sound with results alive and blocks kept", function()
    local ok, out, rc = util.run_lua([[
      local forkpool = require "forkpool"
      local LEN = 200000
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      local function f(i) local t = {} for k = 1, LEN do t[k] = i + k end return t end
      local a = pool:map(f, { 1, 2 }, { chunk_size = 1 })
      local b = pool:map(f, { 3, 4 }, { chunk_size = 1 })
      a = nil
      collectgarbage(); collectgarbage()
      assert(require("forkpool.core").hot_held() > 0)
      _G.KEEP = b
      io.write("closing\n")
      os.exit(0, true) -- lua_close: the pool, the kept blocks, the live arrays
    ]], 30)
    assert.is_true(ok, "child failed (rc " .. tostring(rc) .. "): " .. out)
    assert.matches("closing", out)
  end)
end)
