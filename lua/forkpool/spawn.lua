-- forkpool.spawn: starting worker processes.  A slot without a process
-- gets one while some job has work (fill); the worker is born for the
-- oldest job with work, whose function and array items it then holds
-- through fork.  The worker record it makes is described in
-- forkpool.dispatch, which hands the new worker its chunks.

local errors = require "forkpool.errors"
local J = require "forkpool.job"
local D = require "forkpool.dispatch"
local run = require "forkpool.run"
local pack = require "forkpool.pack"
local cdata = require "forkpool.cdata"

local M = {}

-- A fork hook failed in the parent: a spawn error naming the option.
local function hook_error(name, w, e)
  return errors.new("spawn", { message = ("error in %s: %s"):format(name, tostring(e)),
    worker_id = w, hook = name })
end

-- Start a worker process in slot w for `job` (its function and, for array
-- sources, its items reach the child through fork).  Returns nil or a
-- spawn error object.  The ctx fields are what engine/fp_worker.c reads.
-- The pool's fork hooks run around the fork: before_fork(w) first (an
-- error: no fork, a spawn error), after_fork_parent(w, pid) after it
-- (pid nil when fork failed; called whenever before_fork ran, so that it
-- can release what before_fork took), after_fork_child(w) in the worker
-- before worker_init (engine/fp_worker.c: its error is reported like
-- worker_init's).
local function spawn(pool, w, job)
  local ctx = {
    wid = w, job = job.id, fn = job.fn, items = job.items,
    init = job.init, exit = job.exit, opts = job.wopts,
    shared = pool._shared, has_shared = pool._shared ~= nil,
    use_state = pool._use_state, pass_id = pool._pass_id,
    lifespan = pool._lifespan, cpus = pool._cpus and pool._cpus[w],
    idle_timeout = pool._keep_alive and pool._idle_timeout or nil,
    make_runner = run.make_runner,
    cdata_kind = cdata.kind, cdata_new = cdata.new,
    pack_results = pack.results, unpack = pack.unpack,
    after_fork_child = pool._after_fork_child,
  }
  if pool._before_fork then
    local ok, e = pcall(pool._before_fork, w)
    if not ok then return hook_error("before_fork", w, e) end
  end
  local pid, msg, errno = pool._core:spawn(w, ctx)
  local herr
  if pool._after_fork_parent then
    local ok, e = pcall(pool._after_fork_parent, w, pid)
    if not ok then herr = hook_error("after_fork_parent", w, e) end
  end
  if not pid then
    return errors.new("spawn", { message = msg, worker_id = w, errno = errno })
  end
  pool._workers[w] = {
    wid = w, pid = pid, born_job = job.id, chunks = {}, dispatched = 0, fns = {},
    init_timeout = job.init_timeout, answered = 0,
  }
  pool._vacant = pool._vacant - 1
  D.note(pool, w)
  return herr
end

-- Make sure every slot has a worker (spawning where empty) while some job
-- has work.  Workers are born for the oldest job with work.
function M.fill(pool)
  if pool._vacant == 0 then return end
  local birth
  local rq = pool._rq
  for i = rq.head, rq.tail do
    if J.has_work(rq[i]) then birth = rq[i]; break end
  end
  if not birth then return end
  for w = 1, pool._n do
    if pool._vacant == 0 then break end
    if not pool._workers[w].pid then
      local err = spawn(pool, w, birth)
      if err then
        J.fail(birth, err)
        return
      end
      -- give it work before forking the next one: the first result then
      -- waits for one fork, not n_jobs of them (a fork of a big parent
      -- costs milliseconds)
      if w < pool._n then D.dispatch(pool) end
    end
  end
end

return M
