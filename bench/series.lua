-- bench/series.lua: the `records` workload of bench/run.lua as a series of
-- maps on one pool, each map's cost shown apart, so that one-time costs
-- (a worker's first garbage collection over the heap it inherited, the
-- heaps growing to their working size) can be told from the steady state.
--
--   luajit bench/series.lua [--pool fp|b|both] [--maps M] [--records N]
--                           (LUA_PATH / LUA_CPATH as `make bench` sets them)
--
-- Per map: wall time; the parent's CPU (getrusage) and minor page faults;
-- the workers' CPU and minor page faults (/proc/<pid>/stat, 10 ms ticks).
-- Then two medians per record: maps 2-6, what `make bench`'s median of 5
-- runs after one warm-up map sees, and the last five maps (steady state),
-- beside string.buffer's encode + decode of each record twice, measured in
-- the same process afterwards (the bench's "2 x sb").
-- --pool both (the default) runs fp then b, each in a fresh process, as
-- bench/run.lua runs every workload in its own.  See docs/benchmarks.md,
-- "2026-11-28, fifth session".

local script_dir = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = script_dir .. "/?.lua;" .. package.path

local util = require "bench_util"
local W = require "workloads"
local buffer = require "string.buffer"

local opts = { pool = "both", maps = 12, records = 100000 }
do
  local i = 1
  while arg[i] do
    local k, v = arg[i]:match("^%-%-(%a+)=?(.*)$")
    if not k or opts[k] == nil then
      io.stderr:write("usage: luajit bench/series.lua [--pool fp|b|both] [--maps M] [--records N]\n")
      os.exit(2)
    end
    if v == "" then i = i + 1; v = arg[i] end
    opts[k] = (k == "pool") and v or tonumber(v)
    i = i + 1
  end
  if not (opts.pool == "fp" or opts.pool == "b" or opts.pool == "both")
    or not opts.maps or opts.maps < 6 or not opts.records or opts.records < 1 then
    io.stderr:write("series.lua: --pool is fp, b or both; --maps at least 6; --records at least 1\n")
    os.exit(2)
  end
end

if opts.pool == "both" then
  local lj = arg[-1] or "luajit"
  for _, p in ipairs{ "fp", "b" } do
    local cmd = ("%s %s --pool %s --maps %d --records %d"):format(lj, arg[0], p, opts.maps, opts.records)
    io.stdout:flush()
    local ok = os.execute(cmd)
    if ok ~= 0 and ok ~= true then os.exit(1) end
  end
  os.exit(0)
end

local N = opts.records
local recs = W.small_records(N)
local fn = function(r) return r end
local function check(res, who) W.check_small_records(res, recs, who or opts.pool) end

-- The pool is made after the records, as in the bench: its workers inherit
-- them through fork.  map() -> results; pids() -> the workers' pids.
local map, pids, close
if opts.pool == "fp" then
  local pool = require("forkpool").new{ n_jobs = 2, keep_alive = true }
  map = function() return pool:map(fn, recs) end
  pids = function() return pool:worker_pids() end
  close = function() pool:close() end
else
  local pb = require("baseline_pipes").new{ fn = fn, n_jobs = 2, mode = "chunk" }
  map = function() return pb:map(recs) end
  pids = function()
    local t = {}
    for i, w in ipairs(pb.workers) do t[i] = w.pid end
    return t
  end
  close = function() pb:close() end
end

local function workers_usage()
  local cpu, flt = 0, 0
  for _, pid in pairs(pids()) do
    local c, f = util.proc_cpu(pid)
    if c then cpu, flt = cpu + c, flt + f end
  end
  return cpu, flt
end

print(("%s: %d records, %d maps on one pool (n_jobs = 2)"):format(
  opts.pool == "fp" and "forkpool (keep_alive)" or "pipes (b) chunk/msg", N, opts.maps))
print(" map        wall    per record   parent CPU  parent faults   workers CPU  workers faults")
local walls = {}
for k = 1, opts.maps do
  util.gc()
  local pc0, pf0 = util.rusage(util.RUSAGE_SELF)
  local wc0, wf0 = workers_usage()
  local t0 = util.now()
  local res = map()
  local t1 = util.now()
  local pc1, pf1 = util.rusage(util.RUSAGE_SELF)
  local wc1, wf1 = workers_usage()
  check(res)
  walls[k] = t1 - t0
  print(("%4d %11s %13s %12s %14d %13s %15d"):format(k, util.fmt_time(t1 - t0), util.fmt_time((t1 - t0) / N),
    util.fmt_time(pc1 - pc0), pf1 - pf0, ("%.0f ms"):format((wc1 - wc0) * 1e3), wf1 - wf0))
end
close()

local sbuf, sb = buffer.new(), {}
for k = 1, 5 do
  util.gc()
  local t0 = util.now()
  local out = W.sb_round_trip(recs, sbuf)
  sb[k] = util.now() - t0
  check(out, "string.buffer")
end

local function med(a, b)
  local t = {}
  for k = a, b do t[#t + 1] = walls[k] end
  return util.median(t) / N
end
print(("maps 2-6 (make bench's runs): median %s/record; last five (maps %d-%d): median %s/record; "
  .. "string.buffer enc+dec x2: %s/record"):format(util.fmt_time(med(2, 6)), opts.maps - 4, opts.maps,
  util.fmt_time(med(opts.maps - 4, opts.maps)), util.fmt_time(2 * util.median(sb) / N)))
