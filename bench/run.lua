-- bench/run.lua: forkpool's benchmark suite.
--
--   make bench            every workload at full size, median of 5 runs
--   make bench QUICK=1    every workload once at a small size (smoke test)
--   luajit bench/run.lua [--quick] [--runs N] [--only id[,id...]] [--list]
--                        (with LUA_PATH / LUA_CPATH as the Makefile sets them)
--
-- Prints the machine, the command, then ONE table: workload | forkpool |
-- baseline | baseline value | ratio | target | result, with notes below it.
-- Baselines (the sequential loop, hand-rolled pipe pools in
-- bench/baseline_pipes.lua, string.buffer, memcpy) are measured in the same
-- run, interleaved with forkpool, so that the ratios hold on a noisy machine.
-- See docs/benchmarks.md.
--
-- Exit status: 0 when every workload ran and every result was right, MISSes
-- included (this is a report); 1 when a workload crashed or a result was
-- wrong (the table says ERROR and why); 2 for bad arguments.

-- find bench/ modules when run directly, not only through `make bench`
local script_dir = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = script_dir .. "/?.lua;" .. package.path

local util = require "bench_util"

local opts = { quick = false, runs = nil, only = nil, child = nil, out = nil, inline = false, sub_arg = nil }
do
  local i = 1
  while arg and arg[i] do
    local a = arg[i]
    if a == "--quick" then opts.quick = true
    elseif a == "--runs" then i = i + 1; opts.runs = tonumber(arg[i])
    elseif a:match("^%-%-runs=") then opts.runs = tonumber(a:match("=(.*)"))
    elseif a == "--only" then i = i + 1; opts.only = arg[i]
    elseif a:match("^%-%-only=") then opts.only = a:match("=(.*)")
    elseif a == "--list" then opts.list = true
    elseif a == "--inline" then opts.inline = true
    elseif a:match("^%-%-child=") then opts.child = a:match("=(.*)")
    elseif a:match("^%-%-out=") then opts.out = a:match("=(.*)")
    elseif a:match("^%-%-arg=") then opts.sub_arg = a:match("=(.*)")
    elseif a == "--help" or a == "-h" then
      print("usage: luajit bench/run.lua [--quick] [--runs N] [--only id[,id...]] [--list] [--inline]")
      print("  --quick    each workload once, at a small size (smoke test)")
      print("  --runs N   runs per measurement (default 5; 1 with --quick)")
      print("  --only ids run only these workloads (see --list)")
      print("  --inline   run every workload in this process (default: each in a fresh process)")
      print("  FPBENCH_VERBOSE=1 prints every sample on stderr")
      os.exit(0)
    else
      io.stderr:write("bench/run.lua: unknown argument ", a, "\n")
      os.exit(2)
    end
    i = i + 1
  end
  if opts.runs ~= nil and (opts.runs ~= math.floor(opts.runs) or opts.runs < 1) then
    io.stderr:write("bench/run.lua: --runs wants a positive integer\n")
    os.exit(2)
  end
end
local runs = opts.runs or (opts.quick and 1 or 5)

local workloads = require "workloads"
-- workloads kept in files of their own, after those of workloads.lua
workloads[#workloads + 1] = require("cli").workload
do
  local scale = require "scale"
  workloads[#workloads + 1] = scale.parent
  workloads[#workloads + 1] = scale.oversub
end
if opts.list then
  for _, w in ipairs(workloads) do
    if w.id and not w.helper then print(("%-10s %s"):format(w.id, w.title)) end
  end
  os.exit(0)
end
local selected = {}
if opts.only then
  for id in opts.only:gmatch("[^,]+") do selected[id] = true end
end

local forkpool = require "forkpool"
local bp = require "baseline_pipes"
local buffer = require "string.buffer"

local function shell_quote(s)
  if s:match("^[%w%._/:=,+-]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Run workload `id` in a fresh process (same interpreter, same LUA_PATH /
-- LUA_CPATH): no workload inherits another's heap, allocator state, JIT
-- traces or page-fault history, and a hard crash is reported as ERROR for
-- that workload only.  `sub_arg` (a string) reaches the child as ctx.arg,
-- `child_runs` overrides the number of runs.  Returns true, rows (whatever
-- the workload returned) or false, message.
local lo = -1
while arg[lo - 1] do lo = lo - 1 end
local interp_argv = {}
for i = lo, -1 do interp_argv[#interp_argv + 1] = shell_quote(arg[i]) end

local function run_child(id, sub_arg, child_runs)
  local out = os.tmpname()
  local argv = { table.concat(interp_argv, " "), shell_quote(arg[0]), "--child=" .. shell_quote(id),
    "--out=" .. shell_quote(out), "--runs", tostring(child_runs or runs) }
  if opts.quick then argv[#argv + 1] = "--quick" end
  if sub_arg then argv[#argv + 1] = shell_quote("--arg=" .. sub_arg) end
  io.stdout:flush(); io.stderr:flush()
  local status = os.execute(table.concat(argv, " "))
  local f = io.open(out, "rb")
  local data = f and f:read("*a")
  if f then f:close() end
  os.remove(out)
  local ok, msg = pcall(buffer.decode, data or "")
  if data and data ~= "" and ok and type(msg) == "table" then
    if msg.rows then return true, msg.rows end
    return false, msg.error
  end
  return false, ("the workload's process died (os.execute status %s) without a result"):format(tostring(status))
end

local ctx = {
  quick = opts.quick, runs = runs, n_jobs = 2,
  forkpool = forkpool, bp = bp, util = util,
  arg = opts.sub_arg,
  -- for workloads that need several processes of their own (helper
  -- workloads, `helper = true`): run one in a fresh process
  spawn = run_child,
}

-- Run one workload here; returns true, rows or false, message.
local function run_here(w)
  return xpcall(w.run, workloads.traceback, ctx)
end

------------------------------------------------------------------------
-- Child mode: one workload in this (fresh) process, rows to a file
------------------------------------------------------------------------

if opts.child then
  local w
  for _, x in ipairs(workloads) do if x.id == opts.child then w = x end end
  local ok, res
  if not w then ok, res = false, "no workload " .. opts.child
  else ok, res = run_here(w) end
  local f = assert(io.open(assert(opts.out, "--out= expected"), "wb"))
  f:write(buffer.encode(ok and { rows = res } or { error = tostring(res) }))
  f:close()
  io.stdout:flush()
  os.exit(ok and 0 or 1)
end

------------------------------------------------------------------------
-- Header: machine and command
------------------------------------------------------------------------

local cmd = {}
for _, k in ipairs{ "LUA_PATH", "LUA_CPATH" } do
  local v = os.getenv(k)
  if v then cmd[#cmd + 1] = k .. "=" .. shell_quote(v) end
end
for i = lo, #arg do cmd[#cmd + 1] = shell_quote(arg[i]) end


local function sh(cmdline)
  local p = io.popen(cmdline .. " 2>/dev/null")
  if not p then return nil end
  local out = p:read("*a")
  p:close()
  return out
end
local fp_path = package.searchpath and package.searchpath("forkpool", package.path) or "?"
local core_path = package.searchpath and package.searchpath("forkpool.core", package.cpath) or "?"

print("forkpool benchmarks" .. (opts.quick and " (QUICK: each workload once, small sizes; a smoke test, "
  .. "not a measurement)" or ""))
local kernel = (sh("uname -srm") or "?"):gsub("%s+$", "")
local nproc = tonumber((sh("nproc") or ""):match("%d+"))
local _, n_online = require("forkpool.cpus").online()
print(("machine:  nproc %s (%d CPUs online), %s, %s"):format(tostring(nproc or "?"), n_online,
  util.cpu_model(), kernel))
print(("luajit:   %s (%s, %s)"):format(jit.version, jit.arch, jit.status() and "JIT on" or "JIT off"))
local rev = (sh("git rev-parse --short HEAD") or ""):match("%S+")
local dirty = rev and (sh("git status --porcelain -- engine lua") or "") ~= ""
print(("forkpool: %s, %s%s"):format(fp_path or "?", core_path or "?",
  rev and (" (git " .. rev .. (dirty and ", with uncommitted changes in engine/ or lua/" or "") .. ")") or ""))
print(("command:  %s%s"):format(os.getenv("MAKELEVEL") and ("make bench" .. (opts.quick and " QUICK=1" or "")
  .. "  →  ") or "", table.concat(cmd, " ")))
print(("runs:     %s; n_jobs = 2; times are medians over the runs, baselines interleaved with forkpool;")
  :format(runs == 1 and "1 run" or (runs .. " runs")))
print(opts.inline and "          every workload in this process (--inline)"
  or "          every workload in a fresh process")
print()
io.stdout:flush()

------------------------------------------------------------------------
-- Run
------------------------------------------------------------------------

local rows, notes = {}, {}

local counts = { PASS = 0, MISS = 0, ERROR = 0, info = 0, ["n/a"] = 0 }
local t_start = util.now()

local function add_note(text)
  if not text or text == "" then return "" end
  for i, t in ipairs(notes) do
    if t == text then return "[" .. i .. "]" end
  end
  notes[#notes + 1] = text
  return "[" .. #notes .. "]"
end

for _, w in ipairs(workloads) do
  if not w.helper and (not opts.only or selected[w.id]) then
    io.stderr:write(("bench: %-10s ... "):format(w.id))
    io.stderr:flush()
    local t0 = util.now()
    local ok, res
    if opts.inline then
      ok, res = run_here(w)
    else
      ok, res = run_child(w.id)
    end
    io.stderr:write(("%.1f s%s\n"):format(util.now() - t0, ok and "" or " ERROR"))
    if ok then
      for k, r in ipairs(res) do
        local result = r.result or "info"
        counts[result] = (counts[result] or 0) + 1
        rows[#rows + 1] = {
          (k == 1 and (r.title or w.title)) or r.title or "",
          r.forkpool or "", r.baseline or "", r.base_value or "", r.ratio or "",
          r.target or "", result, add_note(r.note),
        }
      end
    else
      counts.ERROR = counts.ERROR + 1
      local msg = tostring(res)
      rows[#rows + 1] = { w.title, "ERROR", "", "", "", "", "ERROR",
        add_note("ERROR in " .. w.id .. ": " .. msg) }
      -- whatever the workload left behind goes away before the next one
      util.gc()
    end
  end
end

util.print_table(
  { "workload", "forkpool", "baseline", "baseline value", "ratio", "target", "result", "note" },
  rows)
print()
print("notes:")
print("  Medians of " .. runs .. " run(s); ratios are computed from medians measured in the same run.")
print("  Baselines (a)/(b): hand-rolled fork + pipes + string.buffer pools (bench/baseline_pipes.lua), "
  .. "2 workers, warm;")
print("  (a) one item per message, 8 in flight per worker; (b) one chunk of items per message, "
  .. "2 chunks in flight per worker.")
for i, t in ipairs(notes) do
  print(("  [%d] %s"):format(i, (t:gsub("\n", "\n      "))))
end
print()
print(("summary: %d PASS, %d MISS, %d ERROR, %d info, %d n/a; %.1f s")
  :format(counts.PASS, counts.MISS, counts.ERROR, counts.info, counts["n/a"], util.now() - t_start))
io.stdout:flush()
os.exit(counts.ERROR > 0 and 1 or 0)
