-- forkpool.insights: what the workers spent their time on, for pools made
-- with enable_insights = true (like mpire's insights).  Each worker keeps
-- its own counters in its shared status block (engine/fp_proto.h); this
-- module adds up those of the workers started since the pool last started
-- its workers, the live ones and those already gone.

local M = {}

local FIELDS = { "start_up", "init", "waiting", "working", "exit" }

local function zero() return { tasks = 0, start_up = 0, init = 0, waiting = 0, working = 0, exit = 0 } end

-- A pool's recorder (pool._ins): the sums of the workers already gone, which
-- the event loop reports to it.  Fields: done ([wid] = sums of the workers
-- gone from slot wid), slow (their slowest items), retired ([reason] =
-- { [wid] = workers retired from slot wid }).
local Recorder = {}
Recorder.__index = Recorder

function M.new(pool)
  return setmetatable({ pool = pool, done = {}, slow = {}, retired = {} }, Recorder)
end

-- A new generation of workers begins (no worker lives): start again.
function Recorder:generation()
  self.done, self.slow, self.retired = {}, {}, {}
end

-- Worker w was retired (reason: "memory", "idle").
function Recorder:retire(w, reason)
  local r = self.retired[reason] or {}
  r[w] = (r[w] or 0) + 1
  self.retired[reason] = r
end

-- Worker w's process is gone: keep its counters.
function Recorder:exit(w)
  local s = self.pool._core:worker_insights(w)
  local d = self.done[w] or zero()
  for _, f in ipairs(FIELDS) do d[f] = d[f] + s[f] end
  d.tasks = d.tasks + s.tasks
  self.done[w] = d
  for _, e in ipairs(s.slow) do
    e.worker_id = w
    self.slow[#self.slow + 1] = e
  end
end

local function round(x) return math.floor(x * 1e6 + 0.5) / 1e6 end

-- pool:get_insights() -> table (see README.md, "Insights")
function M.get(pool)
  local per = {}
  for _, f in ipairs(FIELDS) do per[f] = {} end
  per.tasks = {}
  local slow = {}
  local rec = pool._ins
  for _, e in ipairs(rec.slow) do slow[#slow + 1] = e end
  for w = 1, pool._n do
    local d = rec.done[w] or zero()
    local tasks, sums = d.tasks, {}
    for _, f in ipairs(FIELDS) do sums[f] = d[f] end
    if pool._workers[w].pid then
      local s = pool._core:worker_insights(w)
      tasks = tasks + s.tasks
      for _, f in ipairs(FIELDS) do sums[f] = sums[f] + s[f] end
      for _, e in ipairs(s.slow) do
        e.worker_id = w
        slow[#slow + 1] = e
      end
    end
    per.tasks[w] = tasks
    for _, f in ipairs(FIELDS) do per[f][w] = round(sums[f]) end
  end
  table.sort(slow, function(a, b) return a.duration > b.duration end)
  local top = {}
  for i = 1, math.min(5, #slow) do
    top[i] = { index = slow[i].index, duration = round(slow[i].duration), worker_id = slow[i].worker_id }
  end
  local function total(t)
    local s = 0
    for w = 1, pool._n do s = s + t[w] end
    return round(s)
  end
  local r = {
    n_completed_tasks = per.tasks, total_completed_tasks = total(per.tasks),
    start_up_time = per.start_up, init_time = per.init, waiting_time = per.waiting,
    working_time = per.working, exit_time = per.exit,
    total_start_up_time = total(per.start_up), total_init_time = total(per.init),
    total_waiting_time = total(per.waiting), total_working_time = total(per.working),
    total_exit_time = total(per.exit),
    top_5_max_task_durations = top,
  }
  -- workers replaced for exceeding worker_max_memory, per worker and in all
  local mem = rec.retired.memory or {}
  r.n_memory_replacements, r.total_memory_replacements = {}, 0
  for w = 1, pool._n do
    r.n_memory_replacements[w] = mem[w] or 0
    r.total_memory_replacements = r.total_memory_replacements + (mem[w] or 0)
  end
  return r
end

-- pool:print_insights([stream]): a readable summary.
function M.print(pool, stream)
  stream = stream or io.stdout
  local r = M.get(pool)
  local function pct(x, all) return all > 0 and (100 * x / all) or 0 end
  local all = r.total_start_up_time + r.total_init_time + r.total_waiting_time
    + r.total_working_time + r.total_exit_time
  local lines = { "WorkerPool insights", "-------------------",
    ("Total number of tasks completed: %d"):format(r.total_completed_tasks) }
  for _, k in ipairs({ { "start up", "start_up" }, { "worker_init", "init" },
      { "waiting", "waiting" }, { "working", "working" }, { "worker_exit", "exit" } }) do
    local t = r["total_" .. k[2] .. "_time"]
    lines[#lines + 1] = ("Total time spent %-13s %10.3fs (%5.1f%%)"):format(k[1] .. ":", t, pct(t, all))
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Per worker: tasks, start up, worker_init, waiting, working, worker_exit (seconds)"
  for w = 1, pool._n do
    lines[#lines + 1] = ("  worker %-3d %8d %9.3f %9.3f %9.3f %9.3f %9.3f"):format(w,
      r.n_completed_tasks[w], r.start_up_time[w], r.init_time[w], r.waiting_time[w],
      r.working_time[w], r.exit_time[w])
  end
  if r.total_memory_replacements > 0 then
    lines[#lines + 1] = ("Workers replaced for exceeding worker_max_memory: %d"):format(r.total_memory_replacements)
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Top 5 slowest tasks (timed per item):"
  for i, e in ipairs(r.top_5_max_task_durations) do
    lines[#lines + 1] = ("  %d. item %d: %.6fs (worker %d)"):format(i, e.index, e.duration, e.worker_id)
  end
  stream:write(table.concat(lines, "\n"), "\n")
end

return M
