-- forkpool.batch: apply_async calls batched into one job.
--
-- A call of a function without upvalues, whose arguments are plain values
-- (see M.args) and whose only options are its callbacks, joins the open
-- batch job of that function (one is opened when there is none).  The
-- batch's source is an iterator over a queue of such calls: its items are
-- the calls' argument lists, and its chunks grow and shrink with their
-- round-trip times as an imap's do (forkpool.chunking), from one
-- call per chunk when calls come one at a time to thousands when many are
-- outstanding.  Sending, polling and decoding are then paid per chunk, not
-- per call, and a call that only joins a batch whose workers are busy
-- touches no system call at all.
--
-- Every call keeps its own outcome: the workers run a batch's chunk item
-- by item with each error caught (forkpool.run's per-item mode; the reply
-- then tags each result as {value} or {e = error}), and:
--   * a task error fails that call only (a "task" error, index 1, as the
--     call alone would report it);
--   * a worker that dies while running a call (or a result that cannot be
--     sent: a chunk error) fails that call only, with the error it would
--     have alone; the calls that shared its chunk are queued again: those
--     after it never ran, and those before it ran but their results went
--     down with the worker, so they run a second time;
--   * what fails the whole job (an interrupt, close, terminate, a function
--     that cannot be sent, a spawn error) fails every call of it.
-- Calls with other options (task_timeout, max_retries, worker_init, ...),
-- closures with upvalues (their values at each call travel) and arguments
-- that are not plain stay one job each.
--
-- Books, on the batch job (besides forkpool.job's):
--   q_args, q_calls, q_head, q_tail: the calls not yet pulled into a chunk
--     (their argument lists and AsyncResults), oldest first;
--   pulled: the item index of the last call pulled (== job.next - 1);
--   calls[i]: the AsyncResult of item i, pulled and not yet answered;
--   job.exhausted is true exactly when the queue is empty (the pull that
--     empties it sets it, an append clears it), so the job finishes as soon
--     as its last call is answered, and a finished job takes no more calls.
--   pool._batches[fn], and pool._batches[job.pkey] when the job has one
--     (the name of fn's prototype: proto_key): the open batch job of fn
--     (dropped when it ends).  A function literal in a loop makes a new
--     closure at each turn; without upvalues they all run the same code,
--     so a call of another closure of the same prototype (in the same
--     environment) joins the batch too.

local J = require "forkpool.job"
local D = require "forkpool.dispatch"
local call = require "forkpool.call"
local deaths = require "forkpool.deaths"
local results = require "forkpool.results"

local getupvalue, rawget, next, type = debug.getupvalue, rawget, next, type
local ok_jutil, jutil = pcall(require, "jit.util")
local funcinfo = ok_jutil and jutil.funcinfo

local M = {}

-- The RESULTS index of a tagged chunk (FP_RESULTS_TAGGED, engine/fp_proto.h).
local TAGGED = -1

-- The options of a batch job: none of forkpool.job's.
local NO_OPTS = {}

-- v itself when it is a scalar, a copy when it is a table of scalars
-- without a metatable (one level), else nil.
local function plain_copy(v)
  local tv = type(v)
  if tv == "number" or tv == "string" or tv == "boolean" then return v end
  if tv ~= "table" or getmetatable(v) ~= nil then return nil end
  local c = {}
  for k, x in next, v do
    local tk, tx = type(k), type(x)
    if (tk ~= "number" and tk ~= "string" and tk ~= "boolean")
      or (tx ~= "number" and tx ~= "string" and tx ~= "boolean") then
      return nil
    end
    c[k] = x
  end
  return c
end

-- args(fn, args, opts) -> the argument list a call joins a batch with, or
-- nil when it may not.  fn: a Lua function without upvalues; args: nil, or
-- a table without a metatable whose keys are its positions (or "n") and
-- whose values are plain; no option but the callbacks.  The list is a copy
-- made now (tables of scalars too): sending it later cannot fail, so one
-- call can never sink the others of its chunk, and a caller that changes
-- its tables after the call does not change the call.
function M.args(fn, args, opts)
  if type(fn) ~= "function" or getupvalue(fn, 1) ~= nil then return nil end
  for k in next, opts do
    if k ~= "callback" and k ~= "error_callback" then return nil end
  end
  if args == nil then return {} end
  if type(args) ~= "table" or getmetatable(args) ~= nil then return nil end
  local c = {}
  for k, v in next, args do
    if type(k) ~= "number" and k ~= "n" then return nil end
    local x = plain_copy(v)
    if x == nil then return nil end
    c[k] = x
  end
  return c
end

-- The name of a Lua function's prototype ("proto: 0x..."), or nil.  A
-- prototype is kept alive by the batch's job.fn while the batch is open,
-- so its address names no other prototype meanwhile.
local function proto_key(fn)
  if not funcinfo then return nil end
  local p = funcinfo(fn).proto
  return p ~= nil and tostring(p) or nil
end

-- The open batch fn may join: its own, or that of another closure of its
-- prototype with the same environment.
local function find(pool, fn)
  local batches = pool._batches
  local job = batches[fn]
  if job then return job end
  local key = proto_key(fn)
  job = key and batches[key]
  if job and getfenv(job.fn) == getfenv(fn) then return job end
  return nil
end

-- The outcome of a call reached the parent: err (an error object) or value.
local function resolve(a, err, value)
  if a.arrived then return end
  a.arrived, a.berr, a.bvalue = true, err, value
  local q = a.pool._settle
  q[#q + 1] = a
end

-- A chunk's results (the batch sink's route).
local function route(job, start, count, chunk, index, w, rec)
  local calls = job.calls
  for k = 1, count do
    local i = start + k - 1
    local a = calls[i]
    calls[i] = nil
    if a then
      local v = chunk[k]
      if index ~= TAGGED then
        resolve(a, nil, v)
      elseif type(v) == "table" and rawget(v, "e") ~= nil then
        resolve(a, deaths.worker_error("task", w, rec, 1, rawget(v, "e")))
      else
        resolve(a, nil, type(v) == "table" and rawget(v, 1) or nil)
      end
    end
  end
end

-- A worker's error about item index of the job (a "result[57]..." path
-- or message; "result[57][1]..." when the results were tagged: value.tagged)
-- as the call alone would have it: about its item 1.
function M.as_own(value, index)
  if type(value) ~= "table" or not index then return value end
  local own = {}
  for k, v in next, value do own[k] = v end
  own.tagged = nil
  local at = ("result[%d]%s"):format(index, value.tagged and "[1]" or "")
  for _, f in ipairs{ "message", "path" } do
    if type(own[f]) == "string" and own[f]:sub(1, #at) == at then
      own[f] = "result[1]" .. own[f]:sub(#at + 1)
    end
  end
  return own
end

-- Part of a chunk (items from..from+count-1 of it, the first at index
-- start), to be sent again.
local function piece(ch, start, from, count)
  local its = {}
  for k = 1, count do its[k] = ch.items[from + k - 1] end
  return { job = ch.job, start = start, count = count, attempts = 0, no = ch.no, items = its }
end

-- Chunk ch of the job is lost (its worker died at item index, or replied
-- with a chunk error about it; w: that worker): the call at index fails
-- with make_err(), the others of the chunk are queued again.  An index
-- outside the chunk (unknown) charges the chunk's first call.
function M.lost(job, ch, index, w, make_err)
  if not index or index < ch.start or index >= ch.start + ch.count then index = ch.start end
  local a = job.calls[index]
  job.calls[index] = nil
  if a then resolve(a, make_err()) end
  job.done = job.done + 1
  job.pending = job.pending - 1
  job.active = job.active - 1
  local before = index - ch.start
  local after = ch.count - before - 1
  if after > 0 then D.requeue(job, piece(ch, index + 1, before + 2, after), w) end
  if before > 0 then D.requeue(job, piece(ch, ch.start, 1, before), w) end
  J.check_complete(job.pool, job)
end

-- The job ended (finished, or failed as a whole): it takes no more calls,
-- and when it failed every call still waiting gets its error.
local function on_finish(job)
  local pool = job.pool
  if pool then
    local batches = pool._batches
    if batches[job.fn] == job then batches[job.fn] = nil end
    if job.pkey and batches[job.pkey] == job then batches[job.pkey] = nil end
  end
  local err = job.err
  if not err then return end
  for i, a in pairs(job.calls) do
    job.calls[i] = nil
    resolve(a, err)
  end
  for h = job.q_head, job.q_tail do
    local a = job.q_calls[h]
    job.q_args[h], job.q_calls[h] = nil, nil
    if a then resolve(a, err) end
  end
  job.q_head = job.q_tail + 1
end

-- A new batch job for fn (not yet submitted).
local function open(pool, fn)
  local job
  local function pull()
    local h = job.q_head
    if h > job.q_tail then return nil end
    local args, a = job.q_args[h], job.q_calls[h]
    job.q_args[h], job.q_calls[h] = nil, nil
    job.q_head = h + 1
    if h == job.q_tail then job.exhausted = true end
    local i = job.pulled + 1
    job.pulled = i
    job.calls[i] = a
    return args
  end
  job = J.new(pool, "batch", fn, pull, nil, NO_OPTS, true, "apply_async", 1)
  job.wopts = J.wopts_for(pool._insights, true, true)
  job.batch = M
  job.q_args, job.q_calls, job.q_head, job.q_tail = {}, {}, 1, 0
  job.pulled, job.calls = 0, {}
  job.exhausted = true
  job.sink.route, job.sink.job = route, job
  job.on_finish = on_finish
  return job
end

-- Queue a call on the job.  The last write (q_tail) commits it: an error
-- raised midway (the host's SIGINT handler, on the unguarded path) leaves
-- the books true (a job not exhausted with an empty queue only finds it
-- empty at its next pull).
local function append(job, args, a)
  local t = job.q_tail + 1
  job.q_args[t], job.q_calls[t] = args, a
  job.exhausted = false
  job.q_tail = t
end

-- Must the call send now?  When the job is not in the run queue, or some
-- worker slot holds less than its fill of chunks (idle, empty, leaving),
-- yes: otherwise a worker is busy with every chunk dispatch could give,
-- and the call goes with the next chunk, sent by the next step of any
-- call that waits (get, wait, ready, join, ...), as a call beyond the
-- workers' fill always did.
local function must_send(pool, job)
  if not job.runnable then return true end
  local workers, inflight = pool._workers, J.INFLIGHT
  for w = 1, pool._n do
    local rec = workers[w]
    if not rec.pid or #rec.chunks < inflight or rec.bye or rec.killed or rec.stopping then
      return true
    end
  end
  return false
end

local function kick(pool, job)
  D.make_runnable(job)
  D.dispatch(pool)
end

-- apply_async(pool, fn, args, opts) for a call that may join a batch (the
-- pool checked; args: from M.args) -> its AsyncResult.
function M.apply_async(pool, fn, args, opts)
  local a = results.batched(pool, opts)
  local job = find(pool, fn)
  if job and not job.finished and not job.err then
    a.bjob = job
    append(job, args, a)
    if must_send(pool, job) then
      local ok, e = pcall(call.guarded, pool, kick, pool, job)
      if not ok then
        results.forget(a)
        error(e, 0)
      end
    end
    return a
  end
  job = open(pool, fn)
  a.bjob = job
  append(job, args, a)
  pool._batches[fn] = job
  job.pkey = proto_key(fn)
  if job.pkey then pool._batches[job.pkey] = job end
  return results.start(pool, job, NO_OPTS, a)
end

return M
