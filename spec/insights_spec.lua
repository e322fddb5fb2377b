-- Insights: where the workers' time went, and the slowest tasks.
local forkpool = require "forkpool"

local items = require("support.util").items

local function spin(s)
  local t = os.clock() + s
  while os.clock() < t do end
end

describe("insights", function()
  it("count exactly the tasks run, per worker and in total, across maps since the start", function()
    local pool = forkpool.new{ n_jobs = 2, keep_alive = true, enable_insights = true,
      pass_worker_id = true }
    local r1 = pool:map(function(wid, _x) return wid end, items(100))
    local r2 = pool:map(function(wid, _x) return wid end, items(50))
    local per = { 0, 0 }
    for i = 1, 100 do per[r1[i]] = per[r1[i]] + 1 end
    for i = 1, 50 do per[r2[i]] = per[r2[i]] + 1 end
    local ins = pool:get_insights()
    assert.are.equal(150, ins.total_completed_tasks)
    assert.are.same(per, ins.n_completed_tasks)
    pool:close()
  end)

  it("report time in worker_init, working and waiting, and the five slowest tasks", function()
    local pool = forkpool.new{ n_jobs = 2, enable_insights = true }
    pool:map(function(x)
      spin(x == 17 and 0.3 or x == 33 and 0.12 or 0.001)
      return x
    end, items(60), { worker_init = function() spin(0.02) end, chunk_size = 2 })
    local ins = pool:get_insights()
    assert.are.equal(60, ins.total_completed_tasks)
    assert.is_true(ins.total_init_time >= 0.02)
    assert.is_true(ins.total_working_time >= 0.42)
    assert.is_true(ins.total_waiting_time >= 0)
    assert.is_true(ins.total_start_up_time > 0)
    local top = ins.top_5_max_task_durations
    assert.are.equal(5, #top)
    assert.are.equal(17, top[1].index)
    assert.are.equal(33, top[2].index)
    assert.is_true(top[1].duration >= 0.3)
    for i = 2, 5 do assert.is_true(top[i].duration <= top[i - 1].duration) end
    -- a readable summary
    local path = os.tmpname()
    local f = io.open(path, "w")
    pool:print_insights(f)
    f:close()
    f = io.open(path)
    local out = f:read("*a")
    f:close()
    os.remove(path)
    assert.matches("Total number of tasks completed: 60", out)
    assert.matches("item 17", out)
    pool:close()
  end)

  it("start again when the workers are started again; need enable_insights", function()
    local pool = forkpool.new{ n_jobs = 2, enable_insights = true }
    pool:map(function(x) return x end, items(10))
    pool:map(function(x) return x end, items(4))
    assert.are.equal(4, pool:get_insights().total_completed_tasks)
    pool:close()
    local plain = forkpool.new{ n_jobs = 1 }
    assert.has_error(function() plain:get_insights() end,
      "forkpool: get_insights needs a pool made with enable_insights = true")
    plain:close()
  end)
end)
