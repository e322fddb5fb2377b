-- forkpool.run: the chunk runner, inside the workers (its C half is
-- engine/fp_worker.c, which calls it once per chunk).
--
-- The runner calls the task function over a slice of items in one
-- JIT-compilable loop.  Before each item it stores the item's index in the
-- worker's shared status block (so a crash can be reported with the item it
-- held) and checks the block's cancel word (so a cancelled job stops between
-- items).  Both are plain 64-bit loads/stores through the FFI.
--
-- Items are read with raw access (rawget; unpack is raw too), here and in
-- forkpool.pack: a worker forked during the map reads the parent's items
-- table itself, a kept-alive one a decoded copy made with raw reads, and
-- both must see the same items (no __index runs for a hole).

local ffi = require "ffi"

local M = {}

local cur_ptr_t = ffi.typeof("volatile int64_t *")
local cancel_ptr_t = ffi.typeof("volatile uint64_t *")

local stamp_fn_t = ffi.typeof("void (*)(void)")

local table_new = require "table.new"
local flat_scalars = require("forkpool.pack").flat_scalars
local getmt, setmt = debug.getmetatable, setmetatable

-- A result is its value when its task returned, though a later task of the
-- chunk may change a table it returned (the same table returned again,
-- worker state, a cache), and results are sent once the whole chunk ran.
-- The runner's plain paths (make_runner) keep a table result either by
-- having the worker encode it right away (put, engine/fp_worker.c) or, a
-- flat array of scalars while the chunk can still travel packed, by a
-- one-level copy (flat_copy).  Per-item mode (run_each) encodes after the
-- whole chunk ran: every result's form depends on whether any item failed
-- (tag_results), so a table is copied first (snapshot), with its
-- sub-tables (sharing and cycles kept) and metatables.  Functions, userdata
-- and cdata are kept as they are.  The last result of a chunk is encoded
-- before anything else runs and needs neither.
local function snap_deep(t, seen)
  local c = seen[t]
  if c then return c end
  c = table_new(#t, 0)
  seen[t] = c
  for k, v in next, t do
    if type(k) == "table" then k = snap_deep(k, seen) end
    if type(v) == "table" then v = snap_deep(v, seen) end
    c[k] = v
  end
  local mt = getmt(t)
  if mt then setmt(c, mt) end
  return c
end

local seen_map = {}
local table_clear = require "table.clear"

local function snapshot(t)
  -- one level of scalars (the common case) without the identity map
  local c = table_new(#t, 0)
  for k, v in next, t do
    if type(v) == "table" or type(k) == "table" then
      -- (no metamethod runs while copying: the map is reused)
      table_clear(seen_map)  -- (after an out-of-memory error midway)
      c = snap_deep(t, seen_map)
      table_clear(seen_map)
      return c
    end
    c[k] = v
  end
  local mt = getmt(t)
  if mt then setmt(c, mt) end
  return c
end
M.snapshot = snapshot

-- A copy of t when it is a flat array of scalars (no metatable, keys 1..#t
-- only, numbers, strings and booleans), else nil: the results forkpool.pack
-- can still send packed with the chunk (its flat_scalars makes the copy,
-- so both use the one test), much cheaper than the codec for both sides.
-- One level, so a plain copy is the value when the task returned.
local function flat_copy(t)
  local c = table_new(#t, 0)
  if flat_scalars(t, c) then return c end
  return nil
end
M.flat_copy = flat_copy

------------------------------------------------------------------------
-- Per-item mode (opts.each: apply_async calls batched into one job,
-- forkpool.batch): every item is one call of its own, so a task error is
-- caught and kept as that item's outcome, and the other items run on.
------------------------------------------------------------------------

-- An error value that the worker's codec (no functions, no userdata) is
-- sure to encode: scalars, and tables of them (nested, acyclic, no
-- metatables).  Anything else is dropped from the error (its message and
-- traceback stay), as the C side does for a chunk's error.
local function plain(v, depth)
  local tv = type(v)
  if tv == "string" or tv == "number" or tv == "boolean" then return true end
  if tv ~= "table" or depth > 8 or getmt(v) ~= nil then return false end
  for k, x in next, v do
    if not plain(k, depth + 1) or not plain(x, depth + 1) then return false end
  end
  return true
end

-- The results of a chunk in which some item failed, tagged in place:
-- {value} for a success, {e = error table} for a failure (errs[k]).
local function tag_results(out, n, errs)
  for k = 1, n do
    local e = errs[k]
    if e then
      if type(e) ~= "table" then e = { message = tostring(e) } end
      if e.value ~= nil and not plain(e.value, 0) then e.value = nil end
      out[k] = { e = e }
    else
      out[k] = { out[k] }
    end
  end
end

-- run_each(cur, cancel, stamp, msgh, <the runner's arguments>): the runner
-- below, for a starred job, each item under xpcall.  Returns true when every
-- item succeeded (out holds plain values), the number of failures when some
-- failed (out is tagged: engine/fp_worker.c marks the reply), false when the
-- job was cancelled.
local function run_each(cur, cancel, stamp, msgh, fn, items, first, last, off, job, out, opts,
                        nlead, a1, a2, a3)
  local k, timed, errs, failed = 1 - first, opts.timed, nil, 0
  for i = first, last do
    cur[0] = i + off
    if timed then stamp() end
    if cancel[0] == job then return false end
    local it = rawget(items, i)
    local ok, r
    if type(it) ~= "table" then
      ok, r = false, { message = ("item %d is a %s, not a table of arguments"):format(i + off, type(it)) }
    else
      local n = rawget(it, "n") or #it
      if nlead == 0 then ok, r = xpcall(fn, msgh, unpack(it, 1, n))
      elseif nlead == 1 then ok, r = xpcall(fn, msgh, a1, unpack(it, 1, n))
      elseif nlead == 2 then ok, r = xpcall(fn, msgh, a1, a2, unpack(it, 1, n))
      else ok, r = xpcall(fn, msgh, a1, a2, a3, unpack(it, 1, n)) end
    end
    if ok then
      if type(r) == "table" and i ~= last then r = snapshot(r) end
      out[i + k] = r
    else
      errs = errs or {}
      errs[i + k] = r
      failed = failed + 1
    end
  end
  if failed == 0 then return true end
  tag_results(out, last - first + 1, errs)
  return failed
end

------------------------------------------------------------------------
-- Reduce mode (opts.reduce: pool:map_reduce): the chunk's results are
-- folded in item order, acc = reduce(acc, r), starting from the first
-- result, and only the fold travels back (out[1]; the runner returns
-- "reduced" so that the reply says so: FP_RESULTS_REDUCED).  An error in
-- fn or in the reducer fails the chunk like a task error of the item whose
-- index the status block holds.
------------------------------------------------------------------------

-- One task: fn(<lead arguments>, item), or for a starred job fn(<lead
-- arguments>, unpack(item)); idx names the item in the error for a starred
-- item that is not a table.  Its first result.  (The paths that are not
-- plain loops share it: timed or starred chunks, reduce mode.)
local function call_task(fn, it, idx, star, nlead, a1, a2, a3)
  local r
  if star then
    if type(it) ~= "table" then
      error(("item %d is a %s, not a table of arguments"):format(idx, type(it)), 0)
    end
    local n = rawget(it, "n") or #it
    if nlead == 0 then r = fn(unpack(it, 1, n))
    elseif nlead == 1 then r = fn(a1, unpack(it, 1, n))
    elseif nlead == 2 then r = fn(a1, a2, unpack(it, 1, n))
    else r = fn(a1, a2, a3, unpack(it, 1, n)) end
  elseif nlead == 0 then r = fn(it)
  elseif nlead == 1 then r = fn(a1, it)
  elseif nlead == 2 then r = fn(a1, a2, it)
  else r = fn(a1, a2, a3, it) end
  return r
end

local function run_reduce(cur, cancel, stamp, fn, items, first, last, off, job, out, opts,
                          nlead, a1, a2, a3)
  local reduce, timed, star = opts.reduce, opts.timed, opts.star
  local acc, r
  for i = first, last do
    cur[0] = i + off
    if timed then stamp() end
    if cancel[0] == job then return false end
    r = call_task(fn, rawget(items, i), i + off, star, nlead, a1, a2, a3)
    if i == first then acc = r else acc = reduce(acc, r) end
  end
  out[1] = acc
  return "reduced"
end

-- make_runner(cur, cancel, stamp, msgh, put): cur and cancel are light
-- userdata pointing at the worker's status block, stamp a C function that
-- records when an item begins (used only for timed chunks, when a
-- task_timeout is set).  The runner returns true when every item ran, false
-- when the job was cancelled; errors propagate (the C side catches them).
-- put(out, k) (a Lua C function) encodes out[1..k] not encoded yet, and
-- once it ran the chunk's results go through the codec, never packed; a
-- result put cannot encode fails the chunk once it ran (as when encoding
-- afterwards: the C side reports it).  The runner keeps a table result
-- (hold) when its task returns, except for the chunk's last (encoded
-- before any other task runs): while the chunk could still be packed (no
-- put yet) a flat array of scalars is copied instead, anything else is
-- put.  Numbers and strings never leave the JIT-compiled loop (put is a
-- lua_CFunction: LuaJIT stitches traces around its call).
-- opts: the job's worker options (forkpool.job's wopts): timed (stamp each
-- item's start), star (each item is an argument list), each (per-item
-- mode, above: msgh, the C message handler, builds the error tables),
-- reduce (the reducer of reduce mode, above).
function M.make_runner(cur_p, cancel_p, stamp_p, msgh, put)
  local cur = ffi.cast(cur_ptr_t, cur_p)
  local cancel = ffi.cast(cancel_ptr_t, cancel_p)
  local stamp = ffi.cast(stamp_fn_t, stamp_p)
  local rawget = rawget
  -- Keep out[j] = r, a table result; returns whether the chunk can still
  -- be packed.
  local function hold(out, j, r, packable)
    if packable then
      local c = flat_copy(r)
      if c then
        out[j] = c
        return true
      end
    end
    put(out, j)
    return false
  end
  return function(fn, items, first, last, off, job, out, opts, nlead, a1, a2, a3)
    if opts.reduce then
      return run_reduce(cur, cancel, stamp, fn, items, first, last, off, job, out, opts,
        nlead, a1, a2, a3)
    end
    if opts.each then
      return run_each(cur, cancel, stamp, msgh, fn, items, first, last, off, job, out, opts,
        nlead, a1, a2, a3)
    end
    local k = 1 - first
    local r
    local packable = true
    local timed, star = opts.timed, opts.star
    if timed or star then
      for i = first, last do
        cur[0] = i + off
        if timed then stamp() end
        if cancel[0] == job then return false end
        r = call_task(fn, rawget(items, i), i + off, star, nlead, a1, a2, a3)
        out[i + k] = r
        if type(r) == "table" and i ~= last then packable = hold(out, i + k, r, packable) end
      end
    elseif nlead == 0 then
      for i = first, last do
        cur[0] = i + off
        if cancel[0] == job then return false end
        r = fn(rawget(items, i))
        out[i + k] = r
        if type(r) == "table" and i ~= last then packable = hold(out, i + k, r, packable) end
      end
    elseif nlead == 1 then
      for i = first, last do
        cur[0] = i + off
        if cancel[0] == job then return false end
        r = fn(a1, rawget(items, i))
        out[i + k] = r
        if type(r) == "table" and i ~= last then packable = hold(out, i + k, r, packable) end
      end
    elseif nlead == 2 then
      for i = first, last do
        cur[0] = i + off
        if cancel[0] == job then return false end
        r = fn(a1, a2, rawget(items, i))
        out[i + k] = r
        if type(r) == "table" and i ~= last then packable = hold(out, i + k, r, packable) end
      end
    else
      for i = first, last do
        cur[0] = i + off
        if cancel[0] == job then return false end
        r = fn(a1, a2, a3, rawget(items, i))
        out[i + k] = r
        if type(r) == "table" and i ~= last then packable = hold(out, i + k, r, packable) end
      end
    end
    return true
  end
end

return M
