-- forkpool.worker: the Lua half of the worker loop, used inside forked
-- workers (the C half is engine/fp_worker.c), and the codec's cdata helpers.
--
-- The chunk runner calls the task function over a slice of items in one
-- JIT-compilable loop.  Before each item it stores the item's index in the
-- worker's shared status block (so a crash can be reported with the item it
-- held) and checks the block's cancel word (so a cancelled job stops between
-- items).  Both are plain 64-bit loads/stores through the FFI.

local ffi = require "ffi"

local M = {}

local int64_t, uint64_t = ffi.typeof("int64_t"), ffi.typeof("uint64_t")
local cur_ptr_t = ffi.typeof("volatile int64_t *")
local cancel_ptr_t = ffi.typeof("volatile uint64_t *")

local stamp_fn_t = ffi.typeof("void (*)(void)")

-- make_runner(cur, cancel, stamp): cur and cancel are light userdata
-- pointing at the worker's status block, stamp a C function that records
-- when an item begins (used only for timed chunks, when a task_timeout is
-- set).  The runner returns true when every item ran, false when the job
-- was cancelled; errors propagate (the C side catches them).
function M.make_runner(cur_p, cancel_p, stamp_p)
  local cur = ffi.cast(cur_ptr_t, cur_p)
  local cancel = ffi.cast(cancel_ptr_t, cancel_p)
  local stamp = ffi.cast(stamp_fn_t, stamp_p)
  return function(fn, items, first, last, off, job, out, timed, nlead, a1, a2, a3)
    local k = 1 - first
    if timed then
      for i = first, last do
        cur[0] = i + off
        stamp()
        if cancel[0] == job then return false end
        if nlead == 0 then out[i + k] = fn(items[i])
        elseif nlead == 1 then out[i + k] = fn(a1, items[i])
        elseif nlead == 2 then out[i + k] = fn(a1, a2, items[i])
        else out[i + k] = fn(a1, a2, a3, items[i]) end
      end
    elseif nlead == 0 then
      for i = first, last do
        cur[0] = i + off
        if cancel[0] == job then return false end
        out[i + k] = fn(items[i])
      end
    elseif nlead == 1 then
      for i = first, last do
        cur[0] = i + off
        if cancel[0] == job then return false end
        out[i + k] = fn(a1, items[i])
      end
    elseif nlead == 2 then
      for i = first, last do
        cur[0] = i + off
        if cancel[0] == job then return false end
        out[i + k] = fn(a1, a2, items[i])
      end
    else
      for i = first, last do
        cur[0] = i + off
        if cancel[0] == job then return false end
        out[i + k] = fn(a1, a2, a3, items[i])
      end
    end
    return true
  end
end

-- Codec helper: what kind of cdata v is ("i64", "u64", or its ctype name).
function M.cdata_kind(v)
  if ffi.istype(int64_t, v) then return "i64" end
  if ffi.istype(uint64_t, v) then return "u64" end
  return tostring(ffi.typeof(v))
end

-- Codec helper: a fresh boxed integer whose bytes the decoder fills.
function M.cdata_new(kind)
  if kind == "i64" then return int64_t(0) end
  return uint64_t(0)
end

return M
