-- forkpool.shared: shared_array, FFI arrays in the shared arena (one
-- memfd mapped at the same address in the parent and every worker: see
-- engine/fp_shm.c).

local core = require "forkpool.core"
local options = require "forkpool.options"
local ffi = require "ffi"

local M = {}

local uintptr_t = ffi.typeof("uintptr_t")

local function free_shared(p)
  core.shared_free(tonumber(ffi.cast(uintptr_t, p)))
end

-- The pointer type "T *" for a ctype, by its name where it has one: busted
-- (and other test harnesses) wrap ffi.typeof with a cache keyed by the
-- declaration string alone, under which ffi.typeof("$ *", ct) returns the
-- type of its first call whatever ct is.
local function pointer_type(ctype)
  local name = tostring(ctype):match("^ctype<(.*)>$")
  if name then
    local ok, pt = pcall(ffi.typeof, name .. " *")
    if ok and tostring(pt) == "ctype<" .. name .. " *>" then return pt end
  end
  return ffi.typeof("$ *", ctype)
end

-- forkpool.shared_array(ctype, n) -> pointer to n zeroed elements of ctype
-- in shared memory: the parent and every worker (even kept-alive ones
-- started earlier) see the same memory at the same address, without
-- copies.  Index it from 0 like any FFI array.  Freed when the parent's
-- pointer is garbage-collected: keep it referenced while workers use it.
function M.shared_array(ct, n)
  local ok, ctype = pcall(ffi.typeof, ct)
  if not ok then
    error(("bad argument #1 to 'shared_array' (C type expected: %s)"):format(tostring(ctype)), 2)
  end
  local esize = ffi.sizeof(ctype)
  if not esize or esize == 0 then
    error("bad argument #1 to 'shared_array' (C type of known, non-zero size expected)", 2)
  end
  if not options.is_posint(n) then
    error(("bad argument #2 to 'shared_array' (positive integer expected, got %s)"):format(
      type(n) == "number" and tostring(n) or type(n)), 2)
  end
  local addr, msg = core.shared_alloc(esize * n)
  if not addr then error("forkpool.shared_array: " .. msg, 2) end
  local p = ffi.cast(pointer_type(ctype), ffi.cast("void *", addr))
  return ffi.gc(p, free_shared)
end

return M
