-- forkpool.jsontext: the JSON text rules of `forkpool map`, for the
-- worker side (forkpool.jsonl, whose header states the decisions): our own
-- lua-cjson instance and its settings, UTF-8 validation over a byte range,
-- and exact output of numbers of magnitude >= 1e14.

local ffi = require "ffi"
local cjson_mod = require "cjson"

local format = string.format
local type, tostring, tonumber, next = type, tostring, tonumber, next
local table_clear = require "table.clear"

local M = {}

------------------------------------------------------------------------
-- Our lua-cjson instance
------------------------------------------------------------------------
local cjson = cjson_mod.new()
cjson.encode_number_precision(14)  -- the maximum of lua-cjson 2.1.0
cjson.encode_invalid_numbers(false)
cjson.decode_invalid_numbers(false)
cjson.encode_sparse_array(false, 2, 10)
local encode = cjson.encode
M.decode, M.encode = cjson.decode, cjson.encode

------------------------------------------------------------------------
-- UTF-8 validation (RFC 3629) over a byte range, through the FFI
------------------------------------------------------------------------
local u8p_t = ffi.typeof("const uint8_t *")
local u64p_t = ffi.typeof("const uint64_t *")
local HIGH = 0x8080808080808080ULL
local band = bit.band

-- utf8_bad(p, i, n) -> the 0-based offset of the first byte of the first
-- invalid sequence in p[i .. n-1], or nil when the range is valid UTF-8.
-- A sequence cut by n is invalid.
local function utf8_bad(p, i, n)
  while i < n do
    -- ASCII fast path: eight bytes at a time (unaligned loads are fine on
    -- the targets LuaJIT runs on)
    while i + 8 <= n and band(ffi.cast(u64p_t, p + i)[0], HIGH) == 0ULL do i = i + 8 end
    if i >= n then return nil end
    local c = p[i]
    if c < 0x80 then
      i = i + 1
    else
      local need, lo, hi  -- continuation bytes, range of the first one
      if c >= 0xC2 and c <= 0xDF then need, lo, hi = 1, 0x80, 0xBF
      elseif c == 0xE0 then need, lo, hi = 2, 0xA0, 0xBF
      elseif c == 0xED then need, lo, hi = 2, 0x80, 0x9F   -- no surrogates
      elseif c >= 0xE1 and c <= 0xEF then need, lo, hi = 2, 0x80, 0xBF
      elseif c == 0xF0 then need, lo, hi = 3, 0x90, 0xBF
      elseif c >= 0xF1 and c <= 0xF3 then need, lo, hi = 3, 0x80, 0xBF
      elseif c == 0xF4 then need, lo, hi = 3, 0x80, 0x8F   -- <= U+10FFFF
      else return i end                                    -- 80-C1, F5-FF
      if i + need >= n then return i end
      local c1 = p[i + 1]
      if c1 < lo or c1 > hi then return i end
      for k = 2, need do
        local ck = p[i + k]
        if ck < 0x80 or ck > 0xBF then return i end
      end
      i = i + need + 1
    end
  end
  return nil
end

-- first_bad(s, from) -> the 1-based position of the first invalid UTF-8
-- byte of s at or after position from, or nil.
local function first_bad(s, from)
  local off = utf8_bad(ffi.cast(u8p_t, s), from - 1, #s)
  return off and off + 1
end
M.first_bad = first_bad

------------------------------------------------------------------------
-- Exact numbers of magnitude >= 1e14 (see "numbers" above)
------------------------------------------------------------------------
local BIG = 1e14

-- exact(v) -> the shortest %.Ng (14 <= N <= 17) that reads back as v.
local function exact(v)
  for prec = 14, 16 do
    local s = format("%." .. prec .. "g", v)
    if tonumber(s) == v then return s end
  end
  return format("%.17g", v)
end

-- Placeholders: a number to fix is replaced by a string that cjson writes
-- as "\u0000fpN<nonce>\u0000" and that nothing else can produce (a string
-- of the record could hold NUL bytes, but not this nonce, made from an
-- address and the clock when the module loads).
local NONCE = "z" .. (tostring({}):match("0x(%x+)") or "0") .. format("%x", os.time())
local PH_PAT = '"\\u0000fp(%d+)' .. NONCE .. '\\u0000"'
local fix_nums = {}

-- with_placeholders(v, depth) -> v, or a copy of v in which every number of
-- magnitude >= 1e14 that 14 digits would not round-trip is a placeholder;
-- the exact texts go to fix_nums.  Tables are copied only on the path to
-- such a number; the result's own tables are never changed.
local function with_placeholders(v, depth)
  local tv = type(v)
  if tv == "number" then
    if (v >= BIG or v <= -BIG) and v == v and v ~= 1 / 0 and v ~= -1 / 0 then
      local s = format("%.14g", v)
      if tonumber(s) ~= v then
        local k = #fix_nums + 1
        fix_nums[k] = exact(v)
        return "\0fp" .. k .. NONCE .. "\0"
      end
    end
    return v
  elseif tv == "table" and depth < 1000 then  -- (deeper: cjson refuses it)
    local copy
    for key, x in next, v do
      local y = with_placeholders(x, depth + 1)
      if y ~= x then
        if not copy then
          copy = {}
          for k2, x2 in next, v do copy[k2] = x2 end
        end
        copy[key] = y
      end
    end
    return copy or v
  end
  return v
end

-- encode_exact(res) -> the JSON text of res with big numbers exact; called
-- when cjson's text holds a digit, "e+" and a digit (an exponent: a number
-- >= 1e14, or those characters in a string; checked with a plain find
-- first, which costs nothing measurable).
local function encode_exact(res)
  table_clear(fix_nums)
  local v = with_placeholders(res, 0)
  if #fix_nums == 0 then return encode(res) end
  local s = encode(v)
  s = s:gsub(PH_PAT, function(k) return fix_nums[tonumber(k)] end)
  table_clear(fix_nums)
  return s
end
M.encode_exact = encode_exact

return M
