-- Values through the engine: what the codec carries between parent and
-- workers, in both directions, and the errors for what it cannot carry.
local forkpool = require "forkpool"
local ffi = require "ffi"
local items = require("support.util").items

local function roundtrip(pool, v)
  -- the value goes to kept-alive workers as an item and comes back as a result
  local r = pool:map(function(x) return x end, { v }, { chunk_size = 1 })
  return r[1]
end

describe("values", function()
  local pool
  setup(function()
    pool = forkpool.new{ n_jobs = 1, keep_alive = true }
    pool:map(function(x) return x end, { 0 }) -- later items are shipped, not inherited
  end)
  teardown(function() pool:close() end)

  it("numbers exactly: NaN, infinities, -0.0, integers, fractions", function()
    local nan = roundtrip(pool, 0 / 0)
    assert.is_true(nan ~= nan)
    assert.are.equal(math.huge, roundtrip(pool, math.huge))
    assert.are.equal(-math.huge, roundtrip(pool, -math.huge))
    local nz = roundtrip(pool, -0.0)
    assert.are.equal(0, nz)
    assert.are.equal(-math.huge, 1 / nz)
    for _, v in ipairs({ 0, 1, -1, 2^31, -2^31 - 1, 2^53, 1.5, 1e-300, 123456789.123 }) do
      assert.are.equal(v, roundtrip(pool, v))
    end
  end)

  it("booleans and binary-safe strings", function()
    assert.are.equal(true, roundtrip(pool, true))
    assert.are.equal(false, roundtrip(pool, false))
    local s = "a\0b\255\n" .. string.rep("xyz", 100000)
    assert.are.equal(s, roundtrip(pool, s))
    assert.are.equal("", roundtrip(pool, ""))
  end)

  it("nested tables with holes, shared references and cycles", function()
    local shared = { "shared" }
    local t = { 1, nil, 3, name = "n", [true] = "yes", [1.5] = "float", nested = { a = shared, b = shared } }
    t.self = t
    t[5] = 5
    local r = roundtrip(pool, t)
    assert.are.equal(1, r[1])
    assert.is_nil(r[2])
    assert.are.equal(3, r[3])
    assert.is_nil(r[4])
    assert.are.equal(5, r[5])
    assert.are.equal("n", r.name)
    assert.are.equal("yes", r[true])
    assert.are.equal("float", r[1.5])
    assert.are.equal(r, r.self)
    assert.are.equal(r.nested.a, r.nested.b)
    assert.are.same({ "shared" }, r.nested.a)
  end)

  it("tables as keys", function()
    local k = { "key" }
    local r = roundtrip(pool, { [k] = "v", k })
    assert.are.equal("v", r[r[1]])
  end)

  it("int64 and uint64 cdata", function()
    local a = roundtrip(pool, -9007199254740993LL)
    assert.is_true(ffi.istype("int64_t", a))
    assert.are.equal(-9007199254740993LL, a)
    local b = roundtrip(pool, 18446744073709551615ULL)
    assert.is_true(ffi.istype("uint64_t", b))
    assert.are.equal(18446744073709551615ULL, b)
  end)

  it("values reachable from package.loaded by name (io.stderr, string.format)", function()
    local r = pool:map(function(x) return x.out == io.stderr and x.fmt == string.format end,
      { { out = io.stderr, fmt = string.format } })
    assert.is_true(r[1])
  end)

  it("light userdata by value (cjson.null)", function()
    local cjson = require "cjson"
    local r = pool:map(function(s) return require("cjson").decode(s) end, { '{"a":null,"b":[1,null]}' })
    assert.are.equal(cjson.null, r[1].a)
    assert.are.equal(cjson.null, r[1].b[2])
  end)

  it("chunks of scalars and flat arrays (packed) and of anything else (codec) mean the same", function()
    local r = pool:map(function(x)
      if x == 1 then return { 1.5, "two", true, -0.0 } end
      if x == 2 then return { 1, nil, 3 } end          -- a hole: not flat
      if x == 3 then local t = { 7 }; t.self = t; return t end -- a cycle
      if x == 4 then return { a = 1 } end
      if x == 5 then return nil end
      return x
    end, { 1, 2, 3, 4, 5, 6 }, { chunk_size = 6 })
    assert.are.same({ 1.5, "two", true, -0.0 }, r[1])
    assert.are.equal(-math.huge, 1 / r[1][4])
    assert.are.equal(1, r[2][1]); assert.is_nil(r[2][2]); assert.are.equal(3, r[2][3])
    assert.are.equal(r[3], r[3].self)
    assert.are.same({ a = 1 }, r[4])
    assert.is_nil(r[5])
    assert.are.equal(6, r[6])
    -- all scalars, with a nil among them
    r = pool:map(function(x) if x == 2 then return nil end return x * 0.5 end, { 1, 2, 3 })
    assert.are.equal(0.5, r[1]); assert.is_nil(r[2]); assert.are.equal(1.5, r[3])
    -- scalar items sent packed to kept-alive workers: NaN, -0.0, binary strings
    r = pool:map(function(x) return type(x) == "number" and (x ~= x and "nan" or 1 / x) or #x end,
      { 0 / 0, -0.0, "a\0b" })
    assert.are.same({ "nan", -math.huge, 3 }, { r[1], r[2], r[3] })
  end)

  it("a table with an array part and other keys is never mistaken for a flat array", function()
    -- string keys set first, integers after: #t can lie in the hash part,
    -- where a shortcut check would miss the keys before it
    local r = pool:map(function(x)
      local sub = { "shared" }
      local t = {}
      for s = 1, x % 7 + 1 do t["k" .. (x * 7 + s)] = sub end
      for i = 1, x % 5 + 1 do t[i] = i end
      return t
    end, items(300), { chunk_size = 1 }) -- one result per chunk: each is packed alone
    for x = 1, 300 do
      local t = r[x]
      local first
      for s = 1, x % 7 + 1 do
        local v = t["k" .. (x * 7 + s)]
        assert.are.same({ "shared" }, v)
        first = first or v
        assert.are.equal(first, v, "shared table duplicated in result " .. x)
      end
      for i = 1, x % 5 + 1 do assert.are.equal(i, t[i]) end
    end
  end)

  it("results that are arrays of numbers (raw doubles) come back exactly, other shapes too", function()
    local r = pool:map(function(x)
      if x == 1 then return {} end
      if x == 2 then return { 0 / 0, -0.0, math.huge, 2 ^ 53, 5e-324 } end
      local t = {}
      for i = 1, x * 1000 do t[i] = i * 0.25 end
      return t
    end, { 1, 2, 3, 40 }, { chunk_size = 4 })
    assert.are.same({}, r[1])
    assert.is_true(r[2][1] ~= r[2][1])
    assert.are.equal(-math.huge, 1 / r[2][2])
    assert.are.equal(math.huge, r[2][3]); assert.are.equal(2 ^ 53, r[2][4]); assert.are.equal(5e-324, r[2][5])
    assert.are.equal(5, #r[2])
    assert.are.equal(3000, #r[3]); assert.are.equal(750, r[3][3000])
    assert.are.equal(40000, #r[4]); assert.are.equal(0.25, r[4][1]); assert.are.equal(10000, r[4][40000])
    -- one result in the chunk is not a flat array of numbers: the chunk
    -- goes another way, nothing is lost
    r = pool:map(function(x)
      if x == 2 then return { 1, 2, name = "two" } end
      if x == 3 then return { 1, nil, 3 } end
      if x == 4 then return { 1, "s" } end
      return { x, x }
    end, { 1, 2, 3, 4, 5 }, { chunk_size = 5 })
    assert.are.same({ 1, 1 }, r[1])
    assert.are.same({ 1, 2, name = "two" }, r[2])
    assert.are.equal(1, r[3][1]); assert.is_nil(r[3][2]); assert.are.equal(3, r[3][3])
    assert.are.same({ 1, "s" }, r[4])
    assert.are.same({ 5, 5 }, r[5])
    -- which lane each shape takes (forkpool.pack's packers, called here)
    local w = require "forkpool.pack"
    local function tag(out, n)
      local addr = w.results(out, n)
      return addr and ffi.string(ffi.cast("const char *", addr), 8):gsub("%z", "") or "codec"
    end
    assert.are.equal("fp.f64", tag({ 1, 2.5 }, 2))
    assert.are.equal("fp.f64a", tag({ { 1, 2 }, {} }, 2))
    assert.are.equal("fp.sbuf", tag({ { 1, "s" } }, 1))
    assert.are.equal("codec", tag({ { 1, 2, name = "n" } }, 1))
    assert.are.equal("codec", tag({ { { 1 } } }, 1))
    local back = {}
    local addr, len = w.results({ { 1, 2 }, {}, { -0.0 } }, 3)
    w.unpack_into(back, 5, 3, addr, len)
    assert.are.same({ 1, 2 }, back[5]); assert.are.same({}, back[6]); assert.are.equal(-math.huge, 1 / back[7][1])
  end)

  it("chunks of plain numbers (raw doubles both ways) keep every double exactly", function()
    local specials = { 0 / 0, -0.0, math.huge, -math.huge, 2 ^ 53, -(2 ^ 53) + 1, 5e-324,
      1.7976931348623157e308, 0.1, -1 }
    local nums = {}
    for i = 1, 5000 do nums[i] = specials[(i - 1) % #specials + 1] end
    -- identity: results are numbers too, so both directions use the f64 lane
    local r = pool:map(function(x) return x end, nums, { chunk_size = 777 })
    for i = 1, #nums do
      local a, b = nums[i], r[i]
      if a ~= a then assert.is_true(b ~= b, "NaN at " .. i)
      else
        assert.are.equal(a, b)
        if a == 0 then assert.are.equal(1 / a, 1 / b) end -- the sign of zero
      end
    end
    -- a chunk that is numbers up to a point, then not: the whole chunk goes
    -- the other way, nothing is lost or shifted
    r = pool:map(function(x) return type(x) == "number" and x + 1 or x .. "!" end,
      { 1, 2, 3, "s", 5, 6 }, { chunk_size = 6 })
    assert.are.same({ 2, 3, 4, "s!", 6, 7, n = 6 }, r)
    -- numeric items, results that are not all numbers (and the reverse)
    r = pool:map(function(x) return x % 2 == 0 and tostring(x) or x end, { 1, 2, 3, 4 }, { chunk_size = 4 })
    assert.are.same({ 1, "2", 3, "4", n = 4 }, r)
    r = pool:map(function(s) return #s end, { "a", "bb", "ccc" }, { chunk_size = 3 })
    assert.are.same({ 1, 2, 3, n = 3 }, r)
    -- a chunk larger than any before it grows the packing buffer
    local big = {}
    for i = 1, 300000 do big[i] = i * 0.5 end
    r = pool:map(function(x) return -x end, big, { n_splits = 2 })
    assert.are.equal(300000, #r)
    assert.are.equal(-0.5, r[1]); assert.are.equal(-150000, r[300000])
  end)

  it("metatables are not sent", function()
    local r = roundtrip(pool, setmetatable({ 1 }, { __index = function() return "mt" end }))
    assert.is_nil(getmetatable(r))
    assert.is_nil(r.anything)
  end)

  it("refuses a userdata in a result, naming its path", function()
    local ok, err = pcall(pool.map, pool, function(x)
      if x == 3 then return { id = x, handle = io.stdout } end
      return { id = x }
    end, { 1, 2, 3, 4 })
    assert.is_false(ok)
    assert.is_true(forkpool.is_error(err, "marshal"))
    assert.matches("result%[3%]%.handle: cannot send userdata", err.message)
    assert.are.equal(3, err.index)
    -- the worker survived
    assert.are.equal(1, roundtrip(pool, 1))
  end)

  it("refuses coroutines, functions and other cdata in results", function()
    local cases = {
      { function() return { co = coroutine.create(print) } end, "result%[1%]%.co: cannot send coroutine" },
      { function() return { f = function() end } end, "result%[1%]%.f: cannot send function" },
      { function() return { p = require("ffi").new("int[3]") } end, "result%[1%]%.p: cannot send cdata" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(pool.map, pool, c[1], { 1 })
      assert.is_false(ok)
      assert.are.equal("marshal", err.kind)
      assert.matches(c[2], err.message)
    end
  end)

  it("refuses bad items before dispatching them, naming the path", function()
    local ok, err = pcall(pool.map, pool, function(x) return x end, { 1, 2, { deep = { newproxy() } } })
    assert.is_false(ok)
    assert.are.equal("marshal", err.kind)
    assert.matches("item%[3%]%.deep%[1%]: cannot send userdata", err.message)
  end)

  it("refuses values nested too deeply, without crashing either process", function()
    local deep = {}
    local cur = deep
    for _ = 1, 100000 do cur.next = {}; cur = cur.next end
    local ok, err = pcall(pool.map, pool, function(x) return x end, { deep })
    assert.is_false(ok)
    assert.are.equal("marshal", err.kind)
    assert.matches("too deep", err.message)
    ok, err = pcall(pool.map, pool, function()
      local d = {}
      local c = d
      for _ = 1, 100000 do c[1] = {}; c = c[1] end
      return d
    end, { 1 })
    assert.is_false(ok)
    assert.are.equal("marshal", err.kind)
    assert.matches("too deep", err.message)
    assert.are.equal(2, roundtrip(pool, 2))
  end)

  it("returns very large results whole (a 256 MiB string)", function()
    local r = pool:map(function(n) return string.rep("ab", n / 2) end, { 256 * 1024 * 1024 })
    assert.are.equal(256 * 1024 * 1024, #r[1])
    assert.are.equal("abab", r[1]:sub(1, 4))
    assert.are.equal("abab", r[1]:sub(-4))
    -- drop the 256 MiB result before the next spec
    r = nil -- luacheck: ignore 311
    collectgarbage()
  end)

  it("sends large items to kept-alive workers", function()
    local s = string.rep("q", 8 * 1024 * 1024)
    local r = pool:map(function(x) return #x end, { s, s .. "x" })
    assert.are.same({ 8 * 1024 * 1024, 8 * 1024 * 1024 + 1 }, { r[1], r[2] })
  end)
end)
