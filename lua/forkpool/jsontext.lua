-- forkpool.jsontext: the JSON text rules of `forkpool map`, for the
-- worker side (forkpool.jsonl, whose header states the decisions):
-- * writing: forkpool.core.json_encode, the engine's encoder
--   (engine/fp_json.c, whose header has the rules: keys sorted bytewise,
--   numbers exact, UTF-8 checked, the same bytes in every process);
-- * reading: our own lua-cjson instance (cjson.new(), so a script that
--   changes `require "cjson"`'s settings does not change ours), strict;
-- * UTF-8 validation of input lines over a byte range.

local ffi = require "ffi"
local cjson_mod = require "cjson"
local core = require "forkpool.core"

local M = {}

------------------------------------------------------------------------
-- Writing: json_encode(v) -> text, or nil, kind ("utf8" | "encode"),
-- message ("PATH: what", PATH like $.tags[3]), path
------------------------------------------------------------------------
M.encode = core.json_encode

------------------------------------------------------------------------
-- Reading: our lua-cjson instance (only its decoder is used)
------------------------------------------------------------------------
local cjson = cjson_mod.new()
cjson.decode_invalid_numbers(false)  -- NaN, Infinity, hex are not JSON
M.decode = cjson.decode

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

return M
