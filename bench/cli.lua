-- cli.lua: the `forkpool map` workload of bench/run.lua (issue 12).
--
-- A file of JSON lines (1,000,000 order records of ~210 bytes; 20,000 with
-- --quick) is written once, deterministically, into a temporary directory,
-- with a transform script (decode is done by the runner; fn computes two
-- fields, the order's total and a category, and returns the record) and the
-- baseline: a sequential luajit script doing io.lines + cjson.decode + the
-- same fn + cjson.encode + write, with strict lua-cjson settings (decoding
-- as forkpool.jsonl decodes; writing NaN and sparse arrays refused, 14
-- digits, lua-cjson 2.1.0's most).  Timed, interleaved, as whole commands (each a fresh luajit):
--
--   bin/forkpool map -j 2 transform.lua input.jsonl -o out.jsonl   (target)
--   bin/forkpool map -j 1 ...                                      (reference)
--   luajit baseline.lua transform.lua input.jsonl out.jsonl
--
-- Every output is checked against the baseline's of the same round: the
-- same number of lines, and every line decoding to the same value.  The
-- bytes differ by design (docs/benchmarks.md): the baseline's lua-cjson
-- writes an object's keys in the table's hash order (LuaJIT seeds it per
-- process) and numbers with 14 digits, forkpool map writes keys sorted and
-- numbers exactly.  (This workload's numbers have at most 14 significant
-- digits, so both give the same doubles back.)  The note counts the lines
-- that are byte-identical anyway.
--
-- FPBENCH_FORKPOOL="command" replaces bin/forkpool (e.g. an installed
-- `forkpool`); it is run through the shell, followed by the arguments.
local W = require "workloads"
local util = require "bench_util"

local now, median = util.now, util.median
local fmt_time, fmt_bytes, fmt_ratio = util.fmt_time, util.fmt_bytes, util.fmt_ratio
local measure, protected, wrong, verdict = W.measure, W.protected, W.wrong, W.verdict

local TARGET = 1.6

-- CPU seconds (user + system) of this process's waited-for descendants: a
-- command's workers count once the command has waited for them
local function children_cpu() return (util.rusage(util.RUSAGE_CHILDREN)) end

local M = {}

local function shell_quote(s)
  if s:match("^[%w%._/:=,+-]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- The checkout's root: this file is <root>/bench/cli.lua.
local function checkout_root()
  local src = debug.getinfo(1, "S").source
  local dir = src:match("^@(.*)/[^/]*$") or "."
  return dir .. "/.."
end

local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, text)
  local f = assert(io.open(path, "wb"))
  assert(f:write(text))
  assert(f:close())
end

------------------------------------------------------------------------
-- The input: order records, the same bytes on every run
------------------------------------------------------------------------

local WORDS = { "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
  "juliet", "kilo", "lima" }
local TAGS = { "new", "vip", "promo", "mobile", "web", "gift", "retry", "eu", "us", "bulk" }

-- Writes n records to path, one JSON object per line, e.g.
-- {"id":2,"user":"user12039","ts":1700000014,"tags":["mobile","gift"],
--  "items":[{"sku":"SKU-7810","qty":2,"price":175.43}],"currency":"EUR",
--  "note":"lima hotel alpha"}
-- with 1-3 items (a Park-Miller generator with a fixed seed).  Returns the
-- file's size in bytes.
function M.write_input(path, n)
  local buffer = require "string.buffer"
  local f = assert(io.open(path, "wb"))
  local sb = buffer.new()
  local seed = 12345
  local function rnd(k) seed = (seed * 16807) % 2147483647; return seed % k end
  local size = 0
  for i = 1, n do
    sb:putf('{"id":%d,"user":"user%05d","ts":%d,"tags":["%s","%s"],"items":[', i, rnd(50000),
      1700000000 + i * 7 + rnd(7), TAGS[rnd(#TAGS) + 1], TAGS[rnd(#TAGS) + 1])
    for k = 1, rnd(3) + 1 do
      sb:putf('%s{"sku":"SKU-%04d","qty":%d,"price":%d.%02d}', k > 1 and "," or "", rnd(10000),
        rnd(5) + 1, rnd(200), rnd(100))
    end
    sb:putf('],"currency":"%s","note":"%s %s %s"}\n', rnd(4) == 0 and "USD" or "EUR",
      WORDS[rnd(#WORDS) + 1], WORDS[rnd(#WORDS) + 1], WORDS[rnd(#WORDS) + 1])
    if #sb >= 65536 then size = size + #sb; assert(f:write(sb:get())) end
  end
  size = size + #sb
  assert(f:write(sb:get()))
  assert(f:close())
  return size
end

-- The transform: two computed fields, the record returned.
M.TRANSFORM = [[
-- bench/cli.lua's transform: an order's total (the items' qty * price, in
-- cents, rounded) and a category by total; the record is returned.
return function(r)
  local cents = 0
  for _, it in ipairs(r.items) do
    cents = cents + it.qty * math.floor(it.price * 100 + 0.5)
  end
  r.total = cents / 100
  r.category = cents >= 50000 and "large" or cents >= 10000 and "medium" or "small"
  return r
end
]]

-- The baseline: what a user writes without forkpool, with lua-cjson set up
-- strictly (the settings forkpool.jsonl used before it had its own writer).
M.BASELINE = [[
-- bench/cli.lua's baseline: luajit baseline.lua SCRIPT.lua IN OUT
local cjson = require("cjson").new()
cjson.encode_number_precision(14)
cjson.encode_invalid_numbers(false)
cjson.decode_invalid_numbers(false)
cjson.encode_sparse_array(false, 2, 10)
local decode, encode = cjson.decode, cjson.encode
local fn = dofile(arg[1])
local out = assert(io.open(arg[3], "wb"))
for line in io.lines(arg[2]) do
  local r = fn(decode(line))
  if r ~= nil then out:write(encode(r), "\n") end
end
assert(out:close())
]]

------------------------------------------------------------------------
-- Checking an output against the baseline's
------------------------------------------------------------------------

local function same_value(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do
    if not same_value(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- Compares the files line by line; raises (WRONG RESULT) at the first
-- difference.  Returns the number of lines and how many were byte-identical.
function M.compare(path, ref_path, who)
  local cjson = require("cjson").new()
  local decode = cjson.decode
  local f = assert(io.open(path, "rb"))
  local g = assert(io.open(ref_path, "rb"))
  local n, same = 0, 0
  while true do
    local a, b = f:read("*l"), g:read("*l")
    if a == nil or b == nil then
      f:close(); g:close()
      if a ~= nil or b ~= nil then
        wrong("%s: %d lines where the baseline has %s", who, a and n + 1 or n, b and "more" or "fewer")
      end
      break
    end
    n = n + 1
    if a == b then
      same = same + 1
    else
      local oka, va = pcall(decode, a)
      local okb, vb = pcall(decode, b)
      if not (oka and okb and same_value(va, vb)) then
        f:close(); g:close()
        wrong("%s: line %d differs from the baseline's:\n  %s\n  %s", who, n, a:sub(1, 200), b:sub(1, 200))
      end
    end
  end
  -- every line ended in "\n" (no truncated last line)
  local h = assert(io.open(path, "rb"))
  local tail = h:seek("end", -1) and h:read(1)
  h:close()
  if n > 0 and tail ~= "\n" then wrong("%s: the last line does not end in a newline", who) end
  return n, same
end

------------------------------------------------------------------------
-- The workload
------------------------------------------------------------------------

-- Runs a command line through the shell, stderr to errpath; raises (WRONG
-- RESULT) when it fails.  Returns the CPU seconds it used (all its
-- processes).
local function run_cmd(cmdline, errpath, who)
  local cpu0 = children_cpu()
  local ok, how, code = os.execute(cmdline .. " 2>" .. shell_quote(errpath))
  local cpu = children_cpu() - cpu0
  -- LuaJIT's os.execute: (true|nil, "exit"|"signal", code) with 5.2 compat,
  -- else the raw status
  local good = ok == true or ok == 0
  if not good then
    wrong("%s failed (%s %s): %s\n  stderr: %s", who, tostring(how), tostring(code), cmdline,
      read_all(errpath):sub(1, 1000))
  end
  return cpu
end

M.workload = { id = "cli", title = "forkpool map: 1e6 JSON lines", run = function(ctx)
  local N = ctx.quick and 20000 or 1000000
  -- a round runs three whole commands of ~5-10 s each at full size, and two
  -- checks of a 240 MB output: at most 3 rounds
  local rounds = math.min(ctx.runs, 3)
  local root = checkout_root()
  local fp_cmd = os.getenv("FPBENCH_FORKPOOL")
  if not fp_cmd or fp_cmd == "" then
    local bin = root .. "/bin/forkpool"
    local probe = io.open(bin, "r")
    if not probe then
      return { { title = ctx.quick and ("forkpool map: %d JSON lines"):format(N) or nil,
        forkpool = "-", result = "n/a", note = "no " .. bin .. " (the command is not in this checkout)" } }
    end
    probe:close()
    fp_cmd = shell_quote(bin)
  end
  local luajit = "luajit"
  do -- the interpreter running the bench
    local lo = -1
    while arg and arg[lo - 1] do lo = lo - 1 end
    if arg and arg[lo] then luajit = shell_quote(arg[lo]) end
  end
  return protected(function(s)
    local p = assert(io.popen("mktemp -d 2>/dev/null"))
    local dir = (p:read("*a") or ""):match("^(%S+)")
    p:close()
    if not dir then error("mktemp -d failed") end
    local paths = {}
    local function path(name) local x = dir .. "/" .. name; paths[#paths + 1] = x; return x end
    s.add({ close = function()
      for _, x in ipairs(paths) do os.remove(x) end
      os.remove(dir)
    end })
    local input, script, baseline = path("input.jsonl"), path("transform.lua"), path("baseline.lua")
    local out = { seq = path("out_seq.jsonl"), fp2 = path("out_fp2.jsonl"), fp1 = path("out_fp1.jsonl") }
    local errpath = path("stderr.txt")
    local t0 = now()
    local size = M.write_input(input, N)
    local t_gen = now() - t0
    write_file(script, M.TRANSFORM)
    write_file(baseline, M.BASELINE)
    local q = shell_quote
    local cmds = {
      seq = ("%s %s %s %s %s"):format(luajit, q(baseline), q(script), q(input), q(out.seq)),
      fp2 = ("%s map -j 2 %s %s -o %s"):format(fp_cmd, q(script), q(input), q(out.fp2)),
      fp1 = ("%s map -j 1 %s %s -o %s"):format(fp_cmd, q(script), q(input), q(out.fp1)),
    }
    local who = { seq = "baseline", fp2 = "forkpool map -j 2", fp1 = "forkpool map -j 1" }
    local out_size, identical = nil, { fp2 = 0, fp1 = 0 }
    local t_check = 0
    local cpu = { seq = {}, fp2 = {}, fp1 = {} }
    -- a contender's check compares its output with the baseline's of the
    -- same round; the baseline runs first in each round (its output is the
    -- reference), the two forkpool runs alternate after it
    local function contender(name)
      return { name = name, run = function()
        os.remove(out[name])
        local xs = cpu[name]
        xs[#xs + 1] = run_cmd(cmds[name], errpath, who[name])
      end, verify = function()
        if name == "seq" then
          local n = 0
          for _ in io.lines(out.seq) do n = n + 1 end
          if n ~= N then wrong("baseline: %d lines out of %d records", n, N) end
          local f = assert(io.open(out.seq, "rb"))
          out_size = f:seek("end")
          f:close()
          return
        end
        local tc = now()
        local _, same = M.compare(out[name], out.seq, who[name])
        t_check = t_check + (now() - tc)
        identical[name] = math.max(identical[name], same)
        os.remove(out[name])
      end }
    end
    -- measure() rotates the order each round; keep the baseline first so
    -- its output is there for the others' checks
    local med = {}
    local samples = { seq = {}, fp2 = {}, fp1 = {} }
    for r = 1, rounds do
      local order = r % 2 == 1 and { "seq", "fp2", "fp1" } or { "seq", "fp1", "fp2" }
      for _, name in ipairs(order) do
        local c = contender(name)
        local m = measure(1, { c })
        local xs = samples[name]
        xs[#xs + 1] = m[name]
      end
    end
    for k, xs in pairs(samples) do med[k] = median(xs) end
    local t_seq, t_fp2, t_fp1 = med.seq, med.fp2, med.fp1
    local per = function(t) return ("%s (%s/line)"):format(fmt_time(t), fmt_time(t / N)) end
    local speedup = t_seq / t_fp2
    local c_seq, c_fp2, c_fp1 = median(cpu.seq), median(cpu.fp2), median(cpu.fp1)
    local function ident_note(name)
      if identical[name] == N then return "every line byte-identical to the baseline's" end
      return ("%d of %d lines byte-identical to the baseline's, the others the same JSON value "
        .. "(forkpool map sorts keys, the baseline's lua-cjson writes them in hash order)")
        :format(identical[name], N)
    end
    local note = ("input: %d order records, one JSON object per line (%s, %.0f bytes/line; output %s), "
      .. "written once (%s) to a temporary directory and deleted afterwards. Transform: "
      .. "fn(r) computes r.total (sum of qty * price) and r.category, returns r. Baseline: "
      .. "`for line in io.lines(IN) do out:write(cjson.encode(fn(cjson.decode(line))), \"\\n\") end` "
      .. "in a fresh luajit, lua-cjson with strict settings (14 digits; forkpool map writes keys "
      .. "sorted and numbers exactly). Each timed figure "
      .. "is a whole command's wall time (luajit start to exit, output written to a file), median "
      .. "of %d round(s), the baseline first in each round. Check: %s.")
      :format(N, fmt_bytes(size), size / N, fmt_bytes(out_size or 0), fmt_time(t_gen), rounds,
        ident_note("fp2"))
    local title = ctx.quick and ("forkpool map: %d JSON lines"):format(N) or nil
    return {
      { title = title, forkpool = "-j 2: " .. per(t_fp2), baseline = "sequential luajit + lua-cjson",
        base_value = per(t_seq), ratio = "speedup " .. fmt_ratio(speedup),
        target = ctx.quick and "(QUICK: none)" or ("speedup ≥ %.1f×"):format(TARGET),
        result = ctx.quick and "info" or verdict(speedup >= TARGET), note = note },
      { forkpool = "-j 1: " .. per(t_fp1), baseline = "sequential luajit + lua-cjson",
        base_value = per(t_seq), ratio = "speedup " .. fmt_ratio(t_seq / t_fp1),
        target = "(for reference)", result = "info",
        note = ("forkpool map -j 1: one worker, the parent reading and writing; its cost over the "
          .. "sequential loop is the runner's overhead. Check: %s. The checks (outside the timing) "
          .. "took %s in all."):format(ident_note("fp1"), fmt_time(t_check)) },
      { forkpool = ("CPU -j 2: %s, -j 1: %s"):format(fmt_time(c_fp2), fmt_time(c_fp1)),
        baseline = "CPU of the sequential loop", base_value = fmt_time(c_seq),
        ratio = "fp/seq " .. fmt_ratio(c_fp2 / c_seq), target = "(for reference)", result = "info",
        note = ("CPU = user + system seconds of the command and every process it waited for "
          .. "(getrusage RUSAGE_CHILDREN around it), medians. Unlike wall time it does not depend "
          .. "on what else the machine runs: on %d idle cores, a speedup of %.1f× needs -j 2's CPU "
          .. "to stay within %.2f× the loop's, spread evenly over the cores.")
          :format(ctx.n_jobs, TARGET, ctx.n_jobs / TARGET) },
    }
  end)
end }

return M
