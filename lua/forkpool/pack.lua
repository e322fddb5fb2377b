-- forkpool.pack: packed chunks.  A chunk whose items (or results) are all
-- plain scalars -- numbers, strings, booleans, nil -- (results: or flat
-- arrays of them) travels as raw doubles (all numbers) or one
-- string.buffer encoding of the chunk, made and read by JIT-compiled Lua
-- (LuaJIT's own serializer beats any walk through the C API several times
-- over).  Anything else goes through forkpool's C codec.  Addresses cross
-- the C boundary as numbers (user-space pointers fit a double exactly).

local ffi = require "ffi"
local table_new = require "table.new"

local M = {}

local sbuf = require "string.buffer"
local enc_buf, dec_buf = sbuf.new(), sbuf.new()
local scratch, scratch_n = {}, 0
local cchar_ptr_t = ffi.typeof("const char *")
local f64_ptr_t = ffi.typeof("const double *")
local f64_arr_t = ffi.typeof("double[?]")

-- A packed body begins with an 8-byte tag saying how the rest is laid out:
--   "fp.f64\0\0"  n doubles (a chunk of plain numbers: the common case of
--                 numeric maps, read and written by a JIT-compiled loop);
--   "fp.f64a\0"  (results only) n, then for each result its length m and
--                 its m numbers, as doubles: every result a flat array of
--                 numbers (numeric vectors, image rows, samples);
--   "fp.sbuf\0"  one string.buffer encoding of the 1-based array.
-- This file makes them; a worker reads the chunks its parent made with
-- unpack.  The parent never decodes a worker's bytes in place here
-- (engine/fp_packed.h): "fp.sbuf" RESULTS are decoded in C (string.buffer's
-- decoder can crash on malformed input), raw doubles reach unpack_into
-- only as a private copy checked in C (a worker could change the bytes
-- between a check and a read).
local TAG_LEN = 8
local TAG_F64, TAG_F64A, TAG_SBUF = "fp.f64\0\0", "fp.f64a\0", "fp.sbuf\0"
local f64_buf, f64_cap = nil, 0

local function addr_of(p) return tonumber(ffi.cast("uintptr_t", p)) end

-- The doubles buffer with room for the tag and `slots` more doubles.
local function f64_space(slots, tag)
  if slots + 1 > f64_cap then
    f64_cap = math.max(slots + 1, 2 * f64_cap, 1024)
    f64_buf = f64_arr_t(f64_cap)
  end
  ffi.copy(f64_buf, tag, TAG_LEN)
  return f64_buf
end

-- All of t[first .. first+n-1] as doubles after the tag, or nil when one
-- is not a number.
local function pack_f64(t, first, n)
  local b, k = f64_space(n, TAG_F64), first - 1
  for i = 1, n do
    local v = rawget(t, k + i)
    if type(v) ~= "number" then return nil end
    b[i] = v
  end
  return addr_of(b), (n + 1) * 8
end

-- out[1..n], each a flat array of numbers (every key visited: see
-- flat_scalars), as TAG_F64A; nil when one is anything else.
local function pack_f64_arrays(out, n)
  local slots = 1
  for i = 1, n do
    local v = out[i]
    if type(v) ~= "table" or getmetatable(v) ~= nil then return nil end
    slots = slots + 1 + #v
  end
  local b = f64_space(slots, TAG_F64A)
  b[1] = n
  local pos = 2
  for i = 1, n do
    local v = out[i]
    local m, count = #v, 0
    b[pos] = m
    for k, x in next, v do
      if type(k) ~= "number" or k < 1 or k > m or k % 1 ~= 0 or type(x) ~= "number" then
        return nil
      end
      b[pos + k] = x
      count = count + 1
    end
    if count ~= m then return nil end
    pos = pos + 1 + m
  end
  return addr_of(b), pos * 8
end

local function pack_table(t)
  enc_buf:reset()
  enc_buf:put(TAG_SBUF)
  enc_buf:encode(t)
  local p, len = enc_buf:ref()
  return addr_of(p), len
end

-- Is t a plain array of scalars (no holes, no other keys, no metatable)?
-- Nothing in it can be shared or cyclic, so string.buffer's encoding (which
-- does not keep identity) means the same as forkpool's codec.
--
-- Every key is visited: checking 1..#t and then next(t, #t) == nil is not
-- enough, because when #t lies in the hash part, next() from it skips the
-- hash nodes before it (a table filled with string keys first, integers
-- after, passed that check with its string keys unchecked).
-- into (optional): a table that gets t's items as they are checked (the
-- workers' runner keeps a copy of such a result this way: forkpool.run).
local function flat_scalars(t, into)
  if getmetatable(t) ~= nil then return false end
  local m, count = #t, 0
  for k, v in next, t do
    if type(k) ~= "number" or k < 1 or k > m or k % 1 ~= 0 then return false end
    local tv = type(v)
    if tv ~= "number" and tv ~= "string" and tv ~= "boolean" then return false end
    if into then into[k] = v end
    count = count + 1
  end
  return count == m
end
M.flat_scalars = flat_scalars

-- choose(t, first, n, results) -> address, length of the packing of
-- t[first .. first+n-1] (valid until the next call), or nil when the
-- values do not fit a packed format (the codec sends them then).  The
-- formats are tried from the cheapest: all numbers (f64); for results,
-- all flat arrays of numbers (f64a); all scalars, and for results flat
-- arrays of scalars too (sbuf).  results: t is a worker's fresh results
-- table, exactly the n values (1-based); items are copied to a scratch
-- array first.  (If string.buffer refuses something the checks missed,
-- the worker's pcall falls back to the codec.)
local function choose(t, first, n, results)
  local a, len = pack_f64(t, first, n)
  if a then return a, len end
  if results and n > 0 and type(t[1]) == "table" then
    a, len = pack_f64_arrays(t, n)
    if a then return a, len end
  end
  local s = results and t or scratch
  for i = 1, n do
    local v = rawget(t, first + i - 1)
    local tv = type(v)
    if tv == "table" then
      if not results or not flat_scalars(v) then return nil end
    elseif tv ~= "number" and tv ~= "string" and tv ~= "boolean" and v ~= nil then
      return nil
    end
    if not results then s[i] = v end
  end
  if not results then
    for i = n + 1, scratch_n do s[i] = nil end
    scratch_n = n
  end
  return pack_table(s)
end

-- items(t, first, n): a chunk's items, in the parent (plain scalars only).
function M.items(t, first, n) return choose(t, first, n, false) end

-- results(out, n): a chunk's results, in a worker.
function M.results(out, n) return choose(out, 1, n, true) end

-- The layout of a packed body: "f64" (and the count of doubles), "f64a"
-- (and the count of doubles) or "sbuf".
local function body_kind(addr, len)
  if len < TAG_LEN then error("packed body of " .. len .. " bytes") end
  local tag = ffi.string(ffi.cast(cchar_ptr_t, addr), TAG_LEN)
  if tag == TAG_F64 or tag == TAG_F64A then
    if len % 8 ~= 0 then error("f64 body of " .. len .. " bytes") end
    return tag == TAG_F64 and "f64" or "f64a", len / 8 - 1
  elseif tag == TAG_SBUF then
    return "sbuf"
  end
  error("unknown packed body tag")
end

local function decode_sbuf(addr, len)
  dec_buf:set(ffi.cast(cchar_ptr_t, addr) + TAG_LEN, len - TAG_LEN)
  local t = dec_buf:decode()
  dec_buf:reset()
  return t
end

-- dst[first + i - 1] = the i-th array of a TAG_F64A body of `slots`
-- doubles after the tag; checks that the lengths fit.
local function decode_f64a(dst, first, n, addr, slots)
  local p = ffi.cast(f64_ptr_t, addr)
  if slots < 1 or p[1] ~= n then error(("f64a body for %s results, expected %d"):format(p[1], n)) end
  local pos, k = 2, first - 1
  for i = 1, n do
    local m = pos <= slots and p[pos] or -1
    if m < 0 or m % 1 ~= 0 or pos + m > slots then error("f64a body: bad length") end
    local a = table_new(m, 0)
    for j = 1, m do a[j] = p[pos + j] end
    dst[k + i] = a
    pos = pos + 1 + m
  end
  if pos ~= slots + 1 then error("f64a body: trailing bytes") end
end

-- unpack(addr, len) -> the table packed there (1-based).  In a worker, on
-- the parent's chunk bodies.
function M.unpack(addr, len)
  local kind, n = body_kind(addr, len)
  if kind == "sbuf" then return decode_sbuf(addr, len) end
  if kind == "f64a" then
    local t = {}
    decode_f64a(t, 1, ffi.cast(f64_ptr_t, addr)[1], addr, n)
    return t
  end
  local p, t = ffi.cast(f64_ptr_t, addr), table_new(n, 0)
  for i = 1, n do t[i] = p[i] end
  return t
end

-- unpack_into(dst, first, n, addr, len): dst[first + i - 1] = packed[i].
-- In the parent, for f64 / f64a bodies only, on the private copy
-- fp_packed_copy checked for a count of n (the checks here are a second
-- line, not the first).
function M.unpack_into(dst, first, n, addr, len)
  local kind, m = body_kind(addr, len)
  local k = first - 1
  if kind == "f64" then
    if m ~= n then error(("%d doubles for %d results"):format(m, n)) end
    local p = ffi.cast(f64_ptr_t, addr)
    for i = 1, n do dst[k + i] = p[i] end
    return
  elseif kind == "f64a" then
    return decode_f64a(dst, first, n, addr, m)
  end
  -- string.buffer bodies come from worker memory and are decoded in C
  -- (fp_packed_decode_sbuf): string.buffer must never see them here.
  error("unpack_into: " .. kind .. " bodies are decoded by the engine")
end

return M
