-- forkpool.setup: the setup-function cache.  A worker runs a job's
-- function either because it was forked for that job (it has the function
-- through fork) or because the function was shipped to it (a SETUP record:
-- the function, its worker_exit and the job's worker options, encoded).
-- Each worker keeps the last MAX_FNS shipped functions (rec.fns: {bytes,
-- id}, most recently used last), so a function mapped again, or the same
-- apply_async function, is not shipped again.

local errors = require "forkpool.errors"
local J = require "forkpool.job"
local modmap = require "forkpool.modmap"

local getupvalue = debug.getupvalue

local M = {}

-- A worker keeps at most this many shipped functions.
local MAX_FNS = 4


-- The wire encoding of the job's function, worker_exit and worker options,
-- made once per job; equal bytes mean a worker already has exactly this
-- function with these upvalue values and options.
--
-- A function without upvalues encodes to its prototype only, so jobs with
-- the same such function, no worker_exit and the same worker options (one
-- table per combination: forkpool.job) share their bytes: apply_async in a
-- loop encodes its function once.  (With upvalues, their values at each
-- call are what travels: encoded again.)  Weak keys: a function collected
-- takes its bytes along.
local fn_bytes = setmetatable({}, { __mode = "k" })

local function setup_bytes(pool, job)
  if job.setup_bytes then return job.setup_bytes end
  local fn = job.fn
  -- (not a map_reduce's: its options, which carry the reducer, are a
  -- table of its own per call, and would pile up here as keys)
  local plain = job.exit == nil and type(fn) == "function" and getupvalue(fn, 1) == nil
    and not job.wopts.reduce
  if plain then
    local per = fn_bytes[fn]
    local b = per and per[job.wopts]
    if b then
      job.setup_bytes = b
      return b
    end
  end
  local v = { fn = fn, exit = job.exit, opts = job.wopts }
  local bytes, _, msg, path = pool._core:encode(v, modmap.get())
  if not bytes then bytes, _, msg, path = pool._core:encode(v, modmap.get(true)) end
  if not bytes then
    msg = msg:gsub("^%.", "")
    -- (a map_reduce's reducer travels in the options)
    local what = "the task function"
    if msg:find("^opts%.reduce") then what, msg = "the reducer", msg:gsub("^opts%.reduce%.?", "") end
    J.fail(job, errors.new("marshal", { message = "cannot send " .. what .. ": " .. msg
      .. "; pass such values through worker_init or shared_objects",
      path = path and (path:gsub("^%.", "")) }))
    return nil
  end
  job.setup_bytes = bytes
  if plain then
    local per = fn_bytes[fn]
    if not per then
      per = {}
      fn_bytes[fn] = per
    end
    per[job.wopts] = bytes
  end
  return bytes
end

-- The id under which worker w runs the job's function: the job itself for
-- a worker forked for it, else a function shipped now or earlier.  Returns
-- nil when it cannot be shipped now (lane full) or at all (job.err).
function M.worker(pool, w, job)
  local rec = pool._workers[w]
  if rec.born_job == job.id then return job.id end
  local bytes = setup_bytes(pool, job)
  if not bytes then return nil end
  local fns = rec.fns
  for i, e in ipairs(fns) do
    if e.bytes == bytes then
      if i ~= #fns then table.remove(fns, i); fns[#fns + 1] = e end
      return e.id
    end
  end
  -- forget the least recently used function no queued chunk still needs
  local drop_at
  if #fns >= MAX_FNS then
    for i, e in ipairs(fns) do
      local used = false
      for _, ch in ipairs(rec.chunks) do if ch.fn == e.id then used = true end end
      if not used then drop_at = i; break end
    end
  end
  local ok, _, msg = pool._core:send_setup(w, job.id, drop_at and fns[drop_at].id or 0, bytes)
  if ok == nil then
    J.fail(job, errors.new("marshal", { message = msg, worker_id = w }))
    return nil
  end
  if not ok then return nil end
  if drop_at then table.remove(fns, drop_at) end
  fns[#fns + 1] = { bytes = bytes, id = job.id }
  return job.id
end

return M
