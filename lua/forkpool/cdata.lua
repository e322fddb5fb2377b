-- forkpool.cdata: the codec's helpers for cdata values (engine/fp_codec.c
-- calls them through the pool's helpers table and the workers' context):
-- which cdata travel (64-bit integers, pointers into the shared arena) and
-- how a decoded one is made.

local ffi = require "ffi"

local M = {}

local int64_t, uint64_t = ffi.typeof("int64_t"), ffi.typeof("uint64_t")
local core = require "forkpool.core"
local uintptr_t = ffi.typeof("uintptr_t")
local u64ptr_t = ffi.typeof("const uint64_t *")

-- Codec helper: what kind of cdata v is: "i64", "u64", "shptr:<type>" for a
-- pointer into the shared arena (forkpool.shared_array), or the name of its
-- C type (such values are refused).
function M.kind(v)
  if ffi.istype(int64_t, v) then return "i64" end
  if ffi.istype(uint64_t, v) then return "u64" end
  local name = tostring(ffi.typeof(v)):match("^ctype<(.*)>$") or "?"
  if name:sub(-1) == "*" and core.shared_contains(tonumber(ffi.cast(uintptr_t, v))) then
    return "shptr:" .. name
  end
  return name
end

-- Codec helper: a fresh cdata whose bytes the decoder fills: a boxed integer
-- ("i64" / "u64"), or a pointer of the named type ("shptr"; addr is its
-- 8-byte value, which must lie in the shared arena).
function M.new(kind, tname, addr)
  if kind == "i64" then return int64_t(0) end
  if kind == "u64" then return uint64_t(0) end
  if kind == "shptr" then
    local a = ffi.cast(u64ptr_t, ffi.cast("const char *", addr))[0]
    if not core.shared_contains(tonumber(a)) then
      error("pointer outside forkpool's shared arena")
    end
    local ct = ffi.typeof(tname)
    return ffi.cast(ct, nil)
  end
  error("unknown cdata kind " .. tostring(kind))
end

return M
