-- Hostile workers (issue 10, items 6-8): the parent must survive anything a
-- worker writes into the shared memory it reads: its result lane's header,
-- the ring's bytes, record headers and counts, packed result bodies.
--
-- A task reaches its own result lane through core._test_lanes() (a test
-- hook of development builds) and scribbles on it with the FFI, or forges
-- whole records there.  Every case runs in a child luajit with a deadline
-- (util.run_lua) and checks: a marshal error naming the worker, at once;
-- the worker killed and reaped; close() returning; no crash of the parent.
local util = require "support.util"

local PRELUDE = [[
io.stdout:setvbuf("no")
local forkpool = require "forkpool"
local core = require "forkpool.core"
local ffi = require "ffi"
local t0 = core.now()
pcall(ffi.cdef, "int getpid(void);")

-- In a worker: forge a record of type rtype with the payload bytes in its
-- own result lane, published as the worker's producer would (the bytes,
-- then head).
local function forge(rtype, payload)
  local ffi = require "ffi"
  local lanes = require("forkpool.core")._test_lanes()
  local h = ffi.cast("volatile uint64_t *", lanes.results_hdr)
  local head = h[0]
  local pos = tonumber(head % lanes.results_cap)
  local ring = ffi.cast("uint8_t *", lanes.results_ring)
  local hdr = ffi.cast("uint32_t *", ring + pos)
  hdr[0] = #payload
  hdr[1] = rtype
  ffi.copy(ring + pos + 8, payload, #payload)
  h[0] = head + 8 + math.ceil(#payload / 8) * 8
  return ring + pos + 8  -- where the payload is, to scribble on it later
end

-- fp_chunk_hdr {u64 job, u64 fn, i64 start, i64 index, u32 count, u32 flags}
local function chunk_hdr(job, start, count, flags)
  local ffi = require "ffi"
  local b = ffi.new("uint64_t[5]")
  b[0], b[1], b[2], b[3] = job, job, start, 0
  ffi.cast("uint32_t *", b + 4)[0] = count
  ffi.cast("uint32_t *", b + 4)[1] = flags or 0
  return ffi.string(b, 40)
end

local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local s = f:read("*a")
  f:close()
  return true, s:match("%) (%S)")
end

local function say(k, v) io.write(k, " ", tostring(v), "\n") end

-- Run fn over items on a fresh pool; print what happened.
local function expect_marshal(fn, items, opts)
  opts = opts or {}
  local pool = forkpool.new{ n_jobs = 1, keep_alive = opts.keep_alive }
  local job = pool._job + 1
  local ok, e = pcall(pool.map, pool, fn(job), items or { 1 }, opts.map)
  local dt = core.now() - t0
  say("ok", ok)
  say("kind", forkpool.is_error(e) and e.kind or ("raw:" .. tostring(e)))
  say("worker", forkpool.is_error(e) and e.worker_id)
  say("message", forkpool.is_error(e) and e.message)
  say("fast", dt < 10)
  local pid = forkpool.is_error(e) and e.pid
  pool:close()
  say("closed", true)
  if pid then say("reaped", not alive(pid)) end
  -- no child left behind (killed and reaped)
  local me = ffi.C.getpid()
  local f = io.open(("/proc/%d/task/%d/children"):format(me, me))
  say("children", f and f:read("*a") == "")
  if f then f:close() end
  local f = io.open("/proc/self/status")
  local hwm = tonumber(f:read("*a"):match("VmHWM:%s*(%d+)"))
  f:close()
  say("small", hwm < 256 * 1024)
end
]]

local function child(code, timeout)
  return util.run_lua(PRELUDE .. code, timeout or 60)
end

local function check(ok, out, pattern)
  assert.is_true(ok, out)
  assert.matches("ok false", out, 1, true)
  assert.matches("kind marshal", out, 1, true)
  assert.matches("worker 1", out, 1, true)
  assert.matches("fast true", out, 1, true)
  assert.matches("closed", out, 1, true)
  assert.not_matches("reaped false", out, 1, true)
  assert.matches("children true", out, 1, true)
  assert.matches("small true", out, 1, true)
  if pattern then assert.matches(pattern, out) end
end

describe("a task that scribbles on its result lane", function()
  it("garbage in the lane's head: a marshal error at once, the worker reaped, close() returns", function()
    local ok, out = child([[
      expect_marshal(function()
        return function(x)
          local ffi = require "ffi"
          local lanes = require("forkpool.core")._test_lanes()
          local h = ffi.cast("volatile uint64_t *", lanes.results_hdr)
          h[0] = h[0] + 4 * lanes.results_cap + 8
          return x
        end
      end)
    ]])
    check(ok, out, "message worker 1 [^\n]*corrupt")
  end)

  it("a misaligned tail (the consumer's field): a marshal error", function()
    local ok, out = child([[
      expect_marshal(function()
        return function(x)
          local ffi = require "ffi"
          local lanes = require("forkpool.core")._test_lanes()
          local h = ffi.cast("volatile uint64_t *", lanes.results_hdr)
          h[8] = h[8] + 3   -- tail is at byte 64
          return x
        end
      end)
    ]])
    check(ok, out)
  end)

  it("garbage record headers in the ring bytes: a marshal error", function()
    for _, case in ipairs{ "0x7fffffff, 10", "16, 0x7ffffffe", "8, 0x80000000 + 10", "0, 99" } do
      local ok, out = child(([[
        expect_marshal(function()
          return function(x)
            local ffi = require "ffi"
            local lanes = require("forkpool.core")._test_lanes()
            local h = ffi.cast("volatile uint64_t *", lanes.results_hdr)
            local head = h[0]
            local p = ffi.cast("uint32_t *", ffi.cast("uint8_t *", lanes.results_ring)
              + tonumber(head %% lanes.results_cap))
            p[0], p[1] = %s
            h[0] = head + 8
            return x
          end
        end)
      ]]):format(case))
      check(ok, out)
    end
  end)

  it("garbage over the whole ring while the parent reads it: no crash, a marshal error", function()
    local ok, out = child([[
      expect_marshal(function()
        return function(x)
          local ffi = require "ffi"
          local lanes = require("forkpool.core")._test_lanes()
          local h = ffi.cast("volatile uint64_t *", lanes.results_hdr)
          local ring = ffi.cast("uint32_t *", lanes.results_ring)
          local seed = 12345
          for i = 0, lanes.results_cap / 4 - 1 do
            seed = (seed * 1103515245 + 12345) % 2147483648
            ring[i] = seed
          end
          h[0] = h[0] + 4096
          return x
        end
      end)
    ]])
    check(ok, out)
  end)
end)

describe("a task that scribbles on its task lane", function()
  it("a misaligned head (the parent's field): the parent never writes past the ring; a marshal error", function()
    local ok, out = child([[
      local items = {}
      for i = 1, 200 do items[i] = i end
      expect_marshal(function()
        return function(x)
          if x == 1 then
            local ffi = require "ffi"
            local lanes = require("forkpool.core")._test_lanes()
            local h = ffi.cast("volatile uint64_t *", lanes.tasks_hdr)
            local tail = h[8]
            h[0] = tail - tail % lanes.results_cap + lanes.results_cap - 3
          end
          return x
        end
      end, items, { map = { chunk_size = 1 } })
    ]])
    check(ok, out, "message cannot send to worker 1: it corrupted")
  end)
end)

describe("a task that forges its chunk's RESULTS record", function()
  -- the forged record comes before the worker's own reply
  local function forged(count, flags, body)
    local ok, out = child(([[
      expect_marshal(function(job)
        return function(x)
          forge(10, chunk_hdr(job, 1, %s, %s) .. %q)
          return x
        end
      end)
    ]]):format(count, flags, body))
    return ok, out
  end

  it("a count of 2^26 (1 byte of results): a marshal error, the parent does not grow", function()
    check(forged("2^26", 0, "\0"))
  end)

  it("a count of 2^31-1: a marshal error, not a raw 'table overflow'", function()
    check(forged("2^31-1", 0, "\0"))
    check(forged("2^32-1", 8, "fp.sbuf\0\12\1"))
  end)

  it("packed bodies that do not add up: marshal errors", function()
    local f64 = "fp.f64\0\0"
    local f64a = "fp.f64a\0"
    for _, case in ipairs{
      { 2, f64 .. ("\0"):rep(8) },                           -- 1 double for 2 results
      { 1, f64 .. ("\0"):rep(12) },                          -- not whole doubles
      { 1, f64a .. "\0\0\0\0\0\0\240\63" .. "\0\0\0\0\0\0\89\64" }, -- length 100, no doubles
      { 1, f64a .. "\0\0\0\0\0\0\0\64" },                    -- 2 results announced
      { 1, "fp.nope\0" .. "xxxxxxxx" },
      { 1, "fp" },
    } do
      check(forged(case[1], 8, case[2]))
    end
  end)

  it("malformed string.buffer bodies: marshal errors, never a crash", function()
    local S = "fp.sbuf\0"
    for _, body in ipairs{
      S,                                      -- nothing
      S .. "\12\255\255\255\255\127",         -- narray 2^31-1
      S .. "\13\1\255\255\255\255\127",       -- nhash 2^31-1
      S .. "\12\3\7\0\0\0\0\0\0\240",         -- truncated double
      S .. "\12\2\37abc",                     -- string longer than the bytes
      S .. "\12\2\3",                         -- NULL (light userdata)
      S .. "\12\2\16\1\2\3\4\5\6\7\8",        -- int64 cdata
      S .. "\14\0\12\2\1",                    -- metatable dictionary
      S .. "\12\2\15\0",                      -- string dictionary
      S .. "\10\2\1\1",                       -- index 0
      S .. "\9\2\7\0\0\0\0\0\0\240\63\1\7\0\0\0\0\0\0\240\63\1", -- key 1 twice
      S .. "\9\1\7\0\0\0\0\0\0\248\127\1",   -- key NaN
      S .. "\9\1\33x\1",                      -- string key
      S .. "\12\2\12\2\12\2\1",               -- nested too deep
      S .. "\12\2\12\3\1\0",                  -- nil inside a flat array
      S .. "\12\2\1\1",                       -- trailing bytes
      S .. "\32",                             -- not a table
    } do
      check(forged(1, 8, body))
    end
  end)
end)

describe("a task that changes its packed results while the parent reads them", function()
  it("is decoded from one consistent copy or refused; the parent never crashes", function()
    local ok, out = child([[
      local outcomes = {}
      for round = 1, 12 do
        local pool = forkpool.new{ n_jobs = 1 }
        local job = pool._job + 1
        local okm, e = pcall(pool.map, pool, function(x)
          local ffi = require "ffi"
          local buf = require "string.buffer"
          local vals = {}
          if round % 3 == 0 then
            -- f64a: lengths the parent must check
            local b = ffi.new("double[?]", 40)
            b[0], b[1] = 1, 38
            for i = 2, 39 do b[i] = i end
            vals = "fp.f64a\0" .. ffi.string(b, 8 * 40)
          else
            local t = {}
            for i = 1, 50 do t[i] = ("s"):rep(i % 7) end
            vals = "fp.sbuf\0" .. buf.encode({ t })
          end
          local p = forge(10, chunk_hdr(job, 1, 1, 8) .. vals)
          local body = ffi.cast("uint8_t *", p) + 40
          -- flip bytes for a while: the parent copies and checks meanwhile
          local seed = round
          local deadline = os.clock() + 0.3
          while os.clock() < deadline do
            seed = (seed * 1103515245 + 12345) % 2147483648
            local k = seed % #vals
            body[k] = bit.bxor(body[k], seed % 256)
          end
          return x
        end, { 1 })
        outcomes[#outcomes + 1] = okm and "ok" or (forkpool.is_error(e) and e.kind or ("raw:" .. tostring(e)))
        pool:close()
      end
      print("outcomes " .. table.concat(outcomes, ","))
      print("done")
    ]], 120)
    assert.is_true(ok, out)
    assert.matches("done", out, 1, true)
    for o in out:match("outcomes (%S+)"):gmatch("[^,]+") do
      assert.is_true(o == "ok" or o == "marshal", out)
    end
  end)
end)
