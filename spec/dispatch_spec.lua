-- Dispatch and worker-side behaviour (issue 10, "Reliability, round two"):
-- where work goes (never queued behind a busy worker while another is
-- idle), what a result is (its value when its task returned), pools made
-- by a process the host forked, which values travel by name, memory and
-- idle limits.  Anything that could hang runs in a child process with a
-- deadline; every wait inside is bounded.  No timing thresholds: the specs
-- look at which worker got what and the order of events.
local util = require "support.util"

-- Run `code` in a fresh luajit (killed after `timeout` s); it prints "OK"
-- when all went well.
local function child(code, timeout)
  local ok, out = util.run_lua(code, timeout or 60)
  assert(ok and out:find("OK", 1, true), "child failed:\n" .. out)
  return out
end

describe("dispatch", function()
  it("apply_async does not queue behind a blocked worker while another is idle", function()
    -- A blocks (bounded: 20 s) until B has run; with B queued behind A on
    -- A's worker, A gives up waiting and reports it
    child([[
      local forkpool = require "forkpool"
      local flag = forkpool.shared_array("int", 2)
      local pool = forkpool.new{ n_jobs = 2 }
      local ffi = require "ffi"
      pcall(ffi.cdef, "int usleep(unsigned int); int getpid(void);")
      local a = pool:apply_async(function()
        for _ = 1, 20000 do
          if flag[1] == 1 then return ffi.C.getpid() end
          ffi.C.usleep(1000)
        end
        return "A timed out waiting for B"
      end)
      local b = pool:apply_async(function() flag[1] = 1; return ffi.C.getpid() end)
      local pb = b:get(30)
      local pa = a:get(30)
      assert(type(pa) == "number", pa)
      assert(pa ~= pb, "A and B ran in the same worker")
      pool:close()
      print("OK")
    ]])
  end)

  it("a map's items go to idle workers first (each worker gets one chunk before any gets two)", function()
    -- two chunks of one item: each waits (bounded) for the other to start
    child([[
      local forkpool = require "forkpool"
      local seen = forkpool.shared_array("int", 3)
      local ffi = require "ffi"
      pcall(ffi.cdef, "int usleep(unsigned int);")
      for _, keep in ipairs{ false, true } do
        local pool = forkpool.new{ n_jobs = 2, keep_alive = keep }
        for round = 1, 3 do
          seen[1], seen[2] = 0, 0
          local r = pool:map(function(i)
            seen[i] = 1
            for _ = 1, 20000 do
              if seen[1] == 1 and seen[2] == 1 then return true end
              ffi.C.usleep(1000)
            end
            return false
          end, { 1, 2 }, { chunk_size = 1 })
          assert(r[1] == true and r[2] == true, "round " .. round .. ": the items ran one after the other")
        end
        pool:close()
      end
      print("OK")
    ]], 120)
  end)

  it("a second chunk goes to a busy worker only when no worker is idle", function()
    -- worker 1 blocks on A; a map of 4 one-item chunks then runs on worker 2
    -- alone, except what was prefetched while no worker was idle
    child([[
      local forkpool = require "forkpool"
      local flag = forkpool.shared_array("int", 2)
      local ffi = require "ffi"
      pcall(ffi.cdef, "int usleep(unsigned int); int getpid(void);")
      local pool = forkpool.new{ n_jobs = 2, keep_alive = true }
      pool:map(function(x) return x end, { 1, 2 })  -- both workers up
      local a = pool:apply_async(function()
        for _ = 1, 20000 do
          if flag[1] == 1 then return ffi.C.getpid() end
          ffi.C.usleep(1000)
        end
        return "A timed out"
      end)
      -- the map's first chunk goes to the idle worker; later ones may be
      -- prefetched on A's worker only once no worker is idle: the last item
      -- releases A, so the map can finish only if that holds
      local n = 6
      local r = pool:map(function(i)
        if i == n then flag[1] = 1 end
        return ffi.C.getpid()
      end, { 1, 2, 3, 4, 5, 6 }, { chunk_size = 1 })
      local pa = a:get(30)
      assert(type(pa) == "number", pa)
      assert(r[1] ~= pa, "the first chunk went to the busy worker")
      pool:close()
      print("OK")
    ]], 120)
  end)
end)
