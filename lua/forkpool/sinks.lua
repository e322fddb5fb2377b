-- forkpool.sinks: where a job's results go, one object per kind of call.
--
--   kind              calls                          results
--   "map"             map, starmap                   in input order, one table
--   "unordered"       map_unordered, ...             in completion order, one table
--   "imap"            imap, istarmap                 yielded in input order (lazy)
--   "imap_unordered"  imap_unordered, ...            yielded in completion order (lazy)
--   "apply"           apply, apply_async             one value
--   "batch"           apply_async calls batched      each to its own call
--                     (forkpool.batch)               (route(job, ...), job: set by it)
--   "reduce"          map_reduce                     one value per chunk, folded in input order
--                                                    between event-loop steps (sink:fold)
--
-- Every sink has the same small interface:
--   sink:target()        what the engine decodes a chunk's results into
--                        (pool:poll's jobs table): a table, written at the
--                        items' indexes, or true: each chunk's results
--                        arrive as a fresh array (indexes 1..count), handed
--                        to deliver.  Asked once, when the job is submitted
--                        (a map's big table is made then, while the first
--                        chunks run).
--   sink:deliver(start, count, chunk, index, w, rec)   a chunk's results
--                        arrived (index, w, rec: the reply's index field and
--                        the worker that sent it; only "batch" looks at them)
--   sink:take(job) -> ok, value, index  (lazy sinks) the next result
--                        ready (job.active drops by the items passed); the
--                        caller gets the only reference (a result it drops
--                        can be collected before the next call)
--   sink:result(job) -> the call's return value (the others)
-- sinks.lazy[kind]: results wait in the sink until taken, and count against
-- the job's max_tasks_active until then.

local core = require "forkpool.core"

local M = {}

M.lazy = { imap = true, imap_unordered = true }

-- The engine's per-chunk mode: see engine/fp_events.c (handle_record).
local PER_CHUNK = true

------------------------------------------------------------------------
-- map: decoded in place into the results table
------------------------------------------------------------------------

local Ordered = {}
Ordered.__index = Ordered

function Ordered:target()
  -- (a big results table's array reuses memory kept from freed results:
  -- core.hot_table, engine/fp_hotmem.h)
  if not self.t then self.t = self.total and core.hot_table(self.total, 1) or {} end
  return self.t
end

function Ordered.deliver() end

function Ordered:result(job)
  local r = self.t
  r.n = job.total or (job.next - 1)
  return r
end

------------------------------------------------------------------------
-- map_unordered: chunks appended as they come
------------------------------------------------------------------------

local Unordered = {}
Unordered.__index = Unordered

function Unordered.target() return PER_CHUNK end

function Unordered:deliver(_, count, chunk)
  local out, n = self.out, self.n
  for k = 1, count do out[n + k] = chunk[k] end
  self.n = n + count
end

function Unordered:result()
  self.out.n = self.n
  return self.out
end

------------------------------------------------------------------------
-- imap: chunks kept by start index, yielded in input order
------------------------------------------------------------------------

local Imap = { lazy = true }
Imap.__index = Imap

function Imap.target() return PER_CHUNK end

function Imap:deliver(start, count, chunk)
  self.ready[start] = chunk
  self.counts[start] = count
end

-- The chunk being read: cur (its results), cur_i (next item index),
-- cur_end (its last index), cur_base (start - 1).  Move on to the next
-- one next_chunk gives; false when none is in.
local function enter_next(self, next_chunk)
  local start, cnt, chunk = next_chunk(self)
  if not start then return false end
  self.cur, self.cur_i, self.cur_end, self.cur_base = chunk, start, start + cnt - 1, start - 1
  return true
end

local function take_from(self, next_chunk, job)
  while true do
    local i = self.cur_i
    if not i or i > self.cur_end then
      if not enter_next(self, next_chunk) then return false end
      i = self.cur_i
    end
    local cur, at = self.cur, i - self.cur_base
    local v = cur[at]
    cur[at] = nil
    self.cur_i = i + 1
    job.active = job.active - 1
    if v ~= nil then return true, v, i end
  end
end

local function next_in_order(self)
  local start = self.yield_next
  local cnt = self.counts[start]
  if cnt == nil then return nil end
  local chunk = self.ready[start]
  self.ready[start], self.counts[start] = nil, nil
  self.yield_next = start + cnt
  return start, cnt, chunk
end

-- The common case first, without a loop (a loop here would be an inner
-- loop in the trace of the caller's for loop, which LuaJIT does not
-- compile): the next result of the current chunk, not nil.
local function take_fast(self, job)
  local i = self.cur_i
  if i and i <= self.cur_end then
    local cur, at = self.cur, i - self.cur_base
    local v = cur[at]
    if v ~= nil then
      cur[at] = nil
      self.cur_i = i + 1
      job.active = job.active - 1
      return true, v, i
    end
  end
  return false
end

-- Past the fast path: the current chunk is done (the common case with
-- small chunks: once a chunk), or its next result is nil.  Moving on to
-- the next chunk needs no loop either; only skipping nil results or empty
-- chunks does (take_from).
local function take_next(self, next_chunk, job)
  local i = self.cur_i
  if not i or i > self.cur_end then
    if not enter_next(self, next_chunk) then return false end
    local ok, v, at = take_fast(self, job)
    if ok then return ok, v, at end
  end
  return take_from(self, next_chunk, job)
end

function Imap:take(job)
  local ok, v, i = take_fast(self, job)
  if ok then return ok, v, i end
  return take_next(self, next_in_order, job)
end

------------------------------------------------------------------------
-- imap_unordered: a queue of chunks in completion order
------------------------------------------------------------------------

local ImapUnordered = { lazy = true }
ImapUnordered.__index = ImapUnordered

ImapUnordered.target = Imap.target

-- a queue of (start, count, chunk) triples; the reader clears what it
-- took, so the length operator would be ambiguous: head and tail are kept
function ImapUnordered:deliver(start, count, chunk)
  local q, t = self.q, self.tail
  q[t], q[t + 1], q[t + 2] = start, count, chunk
  self.tail = t + 3
end

local function next_done(self)
  local q, p = self.q, self.head
  local start = q[p]
  if start == nil then return nil end
  local cnt, chunk = q[p + 1], q[p + 2]
  q[p], q[p + 1], q[p + 2] = nil, nil, nil
  self.head = p + 3
  return start, cnt, chunk
end

function ImapUnordered:take(job)
  local ok, v, i = take_fast(self, job)
  if ok then return ok, v, i end
  return take_next(self, next_done, job)
end

------------------------------------------------------------------------
-- apply: one result, decoded in place
------------------------------------------------------------------------

local Single = {}
Single.__index = Single

function Single:target() return self.t end
function Single.deliver() end
function Single:result() return self.t[1] end

------------------------------------------------------------------------
-- batch: one result per apply_async call, handed to forkpool.batch's route
------------------------------------------------------------------------

local Batch = {}
Batch.__index = Batch

function Batch.target() return PER_CHUNK end
function Batch:deliver(start, count, chunk, index, w, rec)
  self.route(self.job, start, count, chunk, index, w, rec)
end
function Batch.result() return nil end

------------------------------------------------------------------------
-- reduce: one folded value per chunk (the workers' reduce mode,
-- forkpool.run), folded again here in input order when the job ends
------------------------------------------------------------------------

local Reduce = {}
Reduce.__index = Reduce

Reduce.target = Imap.target

-- (the chunk's value alone was sent: chunk[1]; nil is a value too, so the
-- counts say which chunks are in)
function Reduce:deliver(start, count, chunk)
  self.vals[start], self.counts[start] = chunk[1], count
end

local function reduce_msgh(e) return { e = e, tb = debug.traceback("", 2):gsub("^\n", "") } end

-- Fold the chunks' values that are next in input order (sink:fold, called
-- between event-loop steps by forkpool.call, and once more by result):
-- the reducer is user code, so it never runs in the middle of event
-- handling, and a value is dropped as soon as it is folded (a reduction
-- over many chunks holds only those that came back early).  The reducer
-- needs to be associative, not commutative.  An error is raised as a
-- "task" error (phase "reduce", index: the first item of the chunk whose
-- value was being folded in).
function Reduce:fold()
  local vals, counts, reduce = self.vals, self.counts, self.reduce
  local st = self.next
  local cnt = counts[st]
  while cnt do
    local v = vals[st]
    vals[st], counts[st] = nil, nil
    if not self.have then
      self.acc, self.have = v, true
    else
      local ok, r = xpcall(reduce, reduce_msgh, self.acc, v)
      if not ok then
        local e = r.e
        self.next = st + cnt
        error(require("forkpool.errors").new("task", {
          message = "in the reducer: " .. (type(e) == "string" and e or tostring(e)),
          value = e, traceback = r.tb, index = st, phase = "reduce" }), 0)
      end
      self.acc = r
    end
    st = st + cnt
    cnt = counts[st]
  end
  self.next = st
end

function Reduce:result()
  self:fold()
  return self.acc
end

------------------------------------------------------------------------

-- new(kind, total, opts) -> a sink for a job of that kind (total: its
-- number of items when known; opts: the call's options, for "reduce": its
-- reducer and initial).
function M.new(kind, total, opts)
  if kind == "map" then
    return setmetatable({ total = total, t = nil }, Ordered)
  elseif kind == "unordered" then
    return setmetatable({ out = core.hot_table(total or 0, 1), n = 0 }, Unordered)
  elseif kind == "imap" then
    return setmetatable({ ready = {}, counts = {}, yield_next = 1 }, Imap)
  elseif kind == "imap_unordered" then
    return setmetatable({ q = {}, head = 1, tail = 1 }, ImapUnordered)
  elseif kind == "apply" then
    return setmetatable({ t = {} }, Single)
  elseif kind == "batch" then
    return setmetatable({ route = nil, job = nil }, Batch)
  elseif kind == "reduce" then
    return setmetatable({ vals = {}, counts = {}, next = 1, reduce = opts.reducer,
      acc = opts.initial, have = opts.initial ~= nil }, Reduce)
  end
  error("unknown sink kind " .. tostring(kind))
end

return M
