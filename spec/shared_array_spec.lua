-- forkpool.shared_array: FFI arrays in shared memory that the parent and
-- every worker see without copies.
local forkpool = require "forkpool"
local ffi = require "ffi"

describe("forkpool.shared_array", function()
  it("is zeroed, indexable from 0, and written by workers in place", function()
    local W, H = 64, 48
    local fb = forkpool.shared_array("uint8_t", W * H)
    assert.are.equal(0, fb[0])
    assert.are.equal(0, fb[W * H - 1])
    local rows = {}
    for y = 0, H - 1 do rows[#rows + 1] = y end
    local pool = forkpool.new{ n_jobs = 2 }
    -- each task fills its own row of a shared frame buffer
    pool:map(function(y)
      for x = 0, W - 1 do fb[y * W + x] = (x + y) % 256 end
      return true
    end, rows, { chunk_size = 4 })
    pool:close()
    for y = 0, H - 1 do
      for x = 0, W - 1 do assert.are.equal((x + y) % 256, fb[y * W + x]) end
    end
  end)

  it("reaches kept-alive workers started before it existed, as an upvalue or an item", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
    pool:map(function(x) return x end, { 1, 2 })
    local pids = pool:worker_pids()
    local a = forkpool.shared_array("double", 1000)
    for i = 0, 999 do a[i] = i * 0.5 end
    local r = pool:map(function(k)
      local s = 0
      for i = 0, 999 do s = s + a[i] end
      a[k] = -1
      return s
    end, { 1, 2, 3 })
    assert.are.same(pids, pool:worker_pids())
    -- (each task also sets a[k] = -1, so a later sum may be a little lower)
    for i = 1, 3 do assert.is_true(r[i] <= 249750 and r[i] >= 249750 - 5) end
    assert.are.same({ -1, -1, -1 }, { a[1], a[2], a[3] })
    -- as an item: the pointer itself travels, pointing at the same memory
    r = pool:map(function(p) p[10] = 42; return p[11] end, { a })
    assert.are.equal(5.5, r[1])
    assert.are.equal(42, a[10])
    pool:close()
  end)

  it("works as shared_objects", function()
    local a = forkpool.shared_array("int32_t", 4)
    local pool = forkpool.new{ n_jobs = 2, shared_objects = a }
    pool:map(function(so, i) so[i] = i * 10 end, { 0, 1, 2, 3 })
    pool:close()
    assert.are.same({ 0, 10, 20, 30 }, { a[0], a[1], a[2], a[3] })
  end)

  it("refuses pointers to other memory, naming them", function()
    local pool = forkpool.new{ n_jobs = 1, keep_alive = true }
    pool:map(function(x) return x end, { 1 })
    local private = ffi.new("double[4]")
    local ok, err = pcall(pool.map, pool, function(_x) return private[0] end, { 1 })
    assert.is_false(ok)
    assert.are.equal("marshal", err.kind)
    assert.matches("cannot send cdata<double %[4%]>", err.message)
    local p = ffi.cast("double *", private)
    ok, err = pcall(pool.map, pool, function(_x) return p[0] end, { 1 })
    assert.is_false(ok)
    assert.matches("cannot send cdata<double %*>", err.message)
    pool:close()
  end)

  it("can only be made by the parent", function()
    local pool = forkpool.new{ n_jobs = 1 }
    local ok, err = pcall(pool.map, pool, function() return forkpool.shared_array("int", 4) end, { 1 })
    pool:close()
    assert.is_false(ok)
    assert.matches("only be made by the process that loaded forkpool", err.message)
  end)

  it("gives its memory back when collected; new arrays read as zeros", function()
    for _ = 1, 20 do
      local a = forkpool.shared_array("double", 1024 * 1024) -- 8 MiB each
      a[0], a[1024 * 1024 - 1] = 1, 2
      -- drop the only reference, so that the collector frees the mapping
      a = nil -- luacheck: ignore 311
      collectgarbage()
    end
    local b = forkpool.shared_array("double", 1024 * 1024)
    assert.are.equal(0, b[0])
    assert.are.equal(0, b[1024 * 1024 - 1])
  end)

  it("gives each call its own element type (even from a hot loop)", function()
    local kinds = { "uint8_t", "double", "int32_t", "float" }
    for i = 1, 200 do
      local k = kinds[i % 4 + 1]
      local p = forkpool.shared_array(k, 4)
      assert.is_true(ffi.istype(k .. " *", p), k)
    end
  end)

  it("validates its arguments", function()
    assert.has_error(function() forkpool.shared_array("no such type", 3) end)
    assert.has_error(function() forkpool.shared_array("double", 0) end,
      "bad argument #2 to 'shared_array' (positive integer expected, got 0)")
    assert.has_error(function() forkpool.shared_array("double", "x") end,
      "bad argument #2 to 'shared_array' (positive integer expected, got string)")
  end)
end)
