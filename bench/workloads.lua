-- workloads.lua: the benchmark workloads of bench/run.lua.
--
-- Each workload is { id =, title =, run = function(ctx) -> rows }.  A row is
-- one criterion (one PASS/MISS) or one informational comparison:
--   { forkpool = "...", baseline = "...", base_value = "...", ratio = "...",
--     target = "...", result = "PASS" | "MISS" | "info" | "n/a", note = "..." }
-- A workload raises (and the driver reports ERROR, exit status 1) when any
-- result it got back is wrong.
--
-- ctx: { quick = bool, runs = n, n_jobs = 2, forkpool = module,
--        bp = baseline_pipes module, util = bench_util module }
local ffi = require "ffi"
local buffer = require "string.buffer"
local util = require "bench_util"

local ok_tnew, table_new = pcall(require, "table.new")
if not ok_tnew then table_new = function() return {} end end

pcall(ffi.cdef, "int memcmp(const void *a, const void *b, size_t n);")
pcall(ffi.cdef, "void *malloc(size_t n);")
pcall(ffi.cdef, "void free(void *p);")
local C = ffi.C

local now, median, gc = util.now, util.median, util.gc
local fmt_time, fmt_bytes, fmt_rate, fmt_ratio = util.fmt_time, util.fmt_bytes, util.fmt_rate, util.fmt_ratio
local MiB = 2^20
-- FPBENCH_VERBOSE=1: print every sample of every contender on stderr
local VERBOSE = (os.getenv("FPBENCH_VERBOSE") or "") ~= ""

local W = {}

------------------------------------------------------------------------
-- Helpers
------------------------------------------------------------------------

local function wrong(fmt, ...)
  error("WRONG RESULT: " .. fmt:format(...), 0)
end

-- Run the contenders `runs` times each, interleaved (round r starts with a
-- different contender, so slow drift of the machine hits all of them), a
-- full GC before each timed run.  contender = { name =, run = function() ->
-- result, verify = function(result) (raises when wrong) }.  Verification is
-- outside the timed region.  Returns { [name] = median seconds }, and the
-- samples.
local function measure(runs, contenders)
  local samples = {}
  for _, c in ipairs(contenders) do samples[c.name] = {} end
  local nc = #contenders
  for r = 1, runs do
    for k = 0, nc - 1 do
      local c = contenders[(r - 1 + k) % nc + 1]
      gc()
      local t0 = now()
      local res = c.run()
      local dt = now() - t0
      if c.verify then c.verify(res) end
      res = nil -- luacheck: ignore
      local s = samples[c.name]
      s[#s + 1] = dt
    end
  end
  local med = {}
  for _, c in ipairs(contenders) do
    local s = samples[c.name]
    med[c.name] = median(s)
    if VERBOSE then
      local parts = {}
      for i, v in ipairs(s) do parts[i] = fmt_time(v) end
      io.stderr:write(("  %-8s median %-10s runs: %s\n"):format(c.name, fmt_time(med[c.name]),
        table.concat(parts, " ")))
    end
  end
  return med, samples
end

-- Cleanup list: every pool a workload opens is closed even when it fails.
local function scope()
  local list = {}
  local s = {}
  function s.add(obj) list[#list + 1] = obj; return obj end
  function s.close()
    local first_err
    for i = #list, 1, -1 do
      local ok, err = pcall(list[i].close, list[i])
      if not ok and not first_err then first_err = err end
      list[i] = nil
    end
    if first_err then error(first_err, 0) end
  end
  return s
end

-- Error handler: wrong results as they are, anything else with the
-- traceback of where it was raised.
local function traceback(e)
  if type(e) == "string" and (e:match("^WRONG RESULT") or e:match("\nstack traceback:")) then return e end
  return debug.traceback(tostring(e), 2)
end
W.traceback = traceback

local function protected(body)
  local s = scope()
  local ok, res = xpcall(body, traceback, s)
  local ok2, err2 = pcall(s.close)
  if not ok then error(res, 0) end
  if not ok2 then error(err2, 0) end
  return res
end

local function verdict(pass) return pass and "PASS" or "MISS" end

-- for workloads kept in files of their own (bench/cli.lua)
W.measure, W.protected, W.wrong, W.verdict = measure, protected, wrong, verdict

-- The small record of the `records` workload (also bench/scale.lua's
-- `parent` and bench/series.lua): n of them, and the check that res holds
-- the same values (a copy; raises WRONG RESULT naming who and the record).
function W.small_records(n)
  local recs = table_new(n, 0)
  for i = 1, n do
    recs[i] = { id = i, name = "user" .. i, tags = { "alpha", "beta", "t" .. (i % 10) }, score = i * 0.5 }
  end
  return recs
end

function W.check_small_records(res, recs, who)
  for i = 1, #recs do
    local r, e = res[i], recs[i]
    if type(r) ~= "table" or r.id ~= e.id or r.name ~= e.name or r.score ~= e.score
      or type(r.tags) ~= "table" or #r.tags ~= 3 or r.tags[1] ~= "alpha" or r.tags[2] ~= "beta"
      or r.tags[3] ~= e.tags[3] then
      wrong("%s: record %d differs", who, i)
    end
  end
end

-- string.buffer's round trip of each value of an array in one process
-- (the records and doubles rows' baseline): a fresh array of the decoded
-- copies.
function W.sb_round_trip(values, sbuf)
  local n = #values
  local out = table_new(n, 0)
  for i = 1, n do
    sbuf:reset()
    sbuf:encode(values[i])
    out[i] = sbuf:decode()
  end
  return out
end

local function range(n)
  local t = table_new(n, 0)
  for i = 1, n do t[i] = i end
  return t
end

------------------------------------------------------------------------
-- 1. Per-item overhead: map(x -> x*x) over 1..1e6
------------------------------------------------------------------------

W[#W + 1] = { id = "square", title = "map(x*x) over 1e6 items", run = function(ctx)
  local N = ctx.quick and 10000 or 1000000
  local NA = ctx.quick and 1000 or 100000 -- baseline (a) is measured on fewer items
  local fp, bp = ctx.forkpool, ctx.bp
  local title = ctx.quick and ("map(x*x) over %d items"):format(N) or nil
  return protected(function(s)
    local fn = function(x) return x * x end
    local items, items_a = range(N), range(NA)
    local pool = s.add(fp.new{ n_jobs = ctx.n_jobs, keep_alive = true })
    pool:map(fn, items) -- warm: workers started, JIT warm, heaps grown
    local pa = s.add(bp.new{ fn = fn, n_jobs = ctx.n_jobs, mode = "item", window = 8 })
    local pb = s.add(bp.new{ fn = fn, n_jobs = ctx.n_jobs, mode = "chunk" })
    pa:map(items_a); pb:map(items)

    local function check_squares(res, n, who)
      if res.n ~= nil and res.n ~= n then wrong("%s: results.n = %s, want %d", who, tostring(res.n), n) end
      for i = 1, n do
        if res[i] ~= i * i then wrong("%s: result[%d] = %s, want %d", who, i, tostring(res[i]), i * i) end
      end
    end
    local med = measure(ctx.runs, {
      { name = "seq", run = function()
          local out = {}
          for i = 1, N do out[i] = fn(items[i]) end
          return out
        end, verify = function(r) check_squares(r, N, "sequential") end },
      { name = "fp", run = function() return pool:map(fn, items) end,
        verify = function(r) check_squares(r, N, "forkpool") end },
      { name = "a", run = function() return pa:map(items_a) end,
        verify = function(r) check_squares(r, NA, "baseline (a)") end },
      { name = "b", run = function() return pb:map(items) end,
        verify = function(r) check_squares(r, N, "baseline (b)") end },
    })
    local t_fp, t_seq, t_b = med.fp, med.seq, med.b
    local t_a = med.a * N / NA -- scaled to N items
    local per = function(t) return ("%s (%s/item)"):format(fmt_time(t), fmt_time(t / N)) end
    return {
      { title = title, forkpool = per(t_fp), baseline = "sequential loop", base_value = per(t_seq),
        ratio = "fp/seq " .. fmt_ratio(t_fp / t_seq), target = "fp/seq ≤ 4×",
        result = verdict(t_fp / t_seq <= 4),
        note = "sequential: `local out = {} for i = 1, n do out[i] = f(items[i]) end` in the parent." },
      { baseline = "pipes (a) 1 item/msg", base_value = per(t_a),
        ratio = "(a)/fp " .. fmt_ratio(t_a / t_fp), target = "(a)/fp ≥ 50×",
        result = verdict(t_a / t_fp >= 50),
        note = ("baseline (a) measured on %d items (median %s) and scaled ×%g to %d items; "
          .. "window of 8 items in flight per worker."):format(NA, fmt_time(med.a), N / NA, N) },
      { baseline = "pipes (b) chunk/msg", base_value = per(t_b),
        ratio = "(b)/fp " .. fmt_ratio(t_b / t_fp), target = "(b)/fp > 1×",
        result = verdict(t_b / t_fp > 1),
        note = ("baseline (b) uses forkpool's default chunk size (ceil(n/(n_jobs*64)) = %d items), "
          .. "2 chunks in flight per worker."):format(math.ceil(N / (ctx.n_jobs * 64))) },
    }
  end)
end }

------------------------------------------------------------------------
-- 1b. Per-item overhead of the rest of the map family (issue 5: each stays
-- within map's target, ≤ 4 × its sequential loop)
------------------------------------------------------------------------

W[#W + 1] = { id = "family", title = "map family: x*x over 1e6 items", run = function(ctx)
  local N = ctx.quick and 10000 or 1000000
  local fp = ctx.forkpool
  return protected(function(s)
    local fn = function(x) return x * x end
    local items = range(N)
    local pool = s.add(fp.new{ n_jobs = ctx.n_jobs, keep_alive = true })
    pool:map(fn, items) -- warm: workers started before the star items exist
    local star = table_new(N, 0)
    for i = 1, N do star[i] = { i } end
    -- order-independent exact checksums (a plain sum of squares passes 2^53)
    local M1, M2 = 1000003, 999983
    local function drain(it)
      local a, b, count = 0, 0, 0
      for v in it do a = a + v % M1; b = b + v % M2; count = count + 1 end
      return { a = a, b = b, count = count }
    end
    local want = { a = 0, b = 0 }
    for i = 1, N do want.a = want.a + (i * i) % M1; want.b = want.b + (i * i) % M2 end
    local function check_sum(r, who)
      if r.count ~= N or r.a ~= want.a or r.b ~= want.b then
        wrong("%s: %d results, checksums %d/%d, want %d results, %d/%d", who, r.count, r.a, r.b, N, want.a, want.b)
      end
    end
    local function check_set(r, who)
      if r.n ~= N then wrong("%s: results.n = %s, want %d", who, tostring(r.n), N) end
      local a, b = 0, 0
      for i = 1, N do a = a + r[i] % M1; b = b + r[i] % M2 end
      check_sum({ a = a, b = b, count = N }, who)
    end
    local function check_ordered(r, who)
      for i = 1, N do if r[i] ~= i * i then wrong("%s: result[%d] = %s", who, i, tostring(r[i])) end end
    end
    local function counter()
      local i = 0
      return function() i = i + 1; if i <= N then return i end end
    end
    local contenders = {
      { name = "seq", run = function()
          local out = {}
          for i = 1, N do out[i] = fn(items[i]) end
          return out
        end, verify = function(r) check_ordered(r, "sequential") end },
      { name = "seqstar", run = function()
          local out = {}
          for i = 1, N do out[i] = fn(unpack(star[i])) end
          return out
        end, verify = function(r) check_ordered(r, "sequential starmap") end },
      { name = "map_unordered", run = function() return pool:map_unordered(fn, items) end,
        verify = function(r) check_set(r, "map_unordered") end },
      { name = "imap", run = function() return drain(pool:imap(fn, items)) end,
        verify = function(r) check_sum(r, "imap") end },
      { name = "imap_unordered", run = function() return drain(pool:imap_unordered(fn, items)) end,
        verify = function(r) check_sum(r, "imap_unordered") end },
      { name = "imap_iter", run = function() return drain(pool:imap(fn, counter())) end,
        verify = function(r) check_sum(r, "imap over an iterator") end },
      { name = "starmap", run = function() return pool:starmap(fn, star) end,
        verify = function(r) check_ordered(r, "starmap") end },
    }
    local med = measure(ctx.runs, contenders)
    local per = function(t) return ("%s (%s/item)"):format(fmt_time(t), fmt_time(t / N)) end
    local rows = {}
    -- limit: issue 5's ≤ 4 × for the family; issue 14 asks ≤ 3 × of the
    -- imap over an iterator
    local function row(name, label, base, base_label, limit)
      limit = limit or 4
      local r = med[name] / med[base]
      rows[#rows + 1] = {
        title = #rows == 0 and (ctx.quick and ("map family: x*x over %d items"):format(N) or nil) or nil,
        forkpool = label .. " " .. per(med[name]), baseline = base_label, base_value = per(med[base]),
        ratio = "fp/seq " .. fmt_ratio(r), target = ("fp/seq ≤ %d×"):format(limit), result = verdict(r <= limit),
      }
    end
    row("map_unordered", "map_unordered", "seq", "sequential loop")
    row("imap", "imap", "seq", "sequential loop")
    row("imap_unordered", "imap_unordered", "seq", "sequential loop")
    row("imap_iter", "imap(iterator)", "seq", "sequential loop", 3)
    row("starmap", "starmap", "seqstar", "sequential f(unpack(item))")
    rows[1].note = "warm keep_alive pool, default options; the imaps' results are summed as they come; "
      .. "imap(iterator) pulls 1..n from a closure (length unknown: adaptive chunks); starmap's items "
      .. "are {i} (each a table through the codec), its baseline `out[i] = f(unpack(items[i]))`."
    return rows
  end)
end }

------------------------------------------------------------------------
-- 2, 3. CPU-bound tasks: speedup over the sequential loop
------------------------------------------------------------------------

-- A task of `iters` Park-Miller steps (exact in doubles: s * 16807 < 2^46).
local function make_task(iters)
  return function(x)
    local s = x
    for _ = 1, iters do s = (s * 16807) % 2147483647 end
    return s
  end
end

-- Iterations for a task of `seconds`, calibrated on this machine now.
local function calibrate(seconds)
  local probe = 200000
  local f = make_task(probe)
  for i = 1, 5 do f(i) end -- JIT warm
  local ts = {}
  for r = 1, 7 do
    local t0 = now()
    f(r + 1)
    ts[r] = now() - t0
  end
  return math.max(1, math.floor(seconds / (median(ts) / probe) + 0.5))
end

local function cpu_workload(id, n_full, n_quick, secs, want)
  return { id = id, title = ("%d CPU tasks of %s"):format(n_full, fmt_time(secs)), run = function(ctx)
    local N = ctx.quick and n_quick or n_full
    local fp, bp = ctx.forkpool, ctx.bp
    return protected(function(s)
      local iters = calibrate(secs)
      local task = make_task(iters)
      local items = range(N)
      local expect = table_new(N, 0)
      for i = 1, N do expect[i] = task(i) end -- also warms the JIT
      local pool = s.add(fp.new{ n_jobs = ctx.n_jobs, keep_alive = true })
      pool:map(task, items)
      local pb = s.add(bp.new{ fn = task, n_jobs = ctx.n_jobs, mode = "chunk" })
      pb:map(items)
      local function check(res, who)
        for i = 1, N do
          if res[i] ~= expect[i] then
            wrong("%s: result[%d] = %s, want %s", who, i, tostring(res[i]), tostring(expect[i]))
          end
        end
      end
      local med = measure(ctx.runs, {
        { name = "seq", run = function()
            local out = {}
            for i = 1, N do out[i] = task(items[i]) end
            return out
          end, verify = function(r) check(r, "sequential") end },
        { name = "fp", run = function() return pool:map(task, items) end,
          verify = function(r) check(r, "forkpool") end },
        { name = "b", run = function() return pb:map(items) end,
          verify = function(r) check(r, "baseline (b)") end },
      })
      local sp = med.seq / med.fp
      return {
        { title = ctx.quick and ("%d CPU tasks of %s"):format(N, fmt_time(secs)) or nil,
          forkpool = fmt_time(med.fp), baseline = "sequential loop",
          base_value = ("%s (%s/task)"):format(fmt_time(med.seq), fmt_time(med.seq / N)),
          ratio = "speedup " .. fmt_ratio(sp), target = ("speedup ≥ %g×"):format(want),
          result = verdict(sp >= want),
          note = ("task = %d Park-Miller steps, calibrated at start to %s; the measured per-task time "
            .. "is in the baseline column; limit with %d workers is %d×; default chunk size (%d items).")
            :format(iters, fmt_time(secs), ctx.n_jobs, ctx.n_jobs, math.ceil(N / (ctx.n_jobs * 64))) },
        { baseline = "pipes (b) chunk/msg", base_value = fmt_time(med.b),
          ratio = "speedup " .. fmt_ratio(med.seq / med.b), target = "(for reference)", result = "info" },
      }
    end)
  end }
end

W[#W + 1] = cpu_workload("cpu500us", 2000, 200, 0.5e-3, 1.9)
W[#W + 1] = cpu_workload("cpu50us", 20000, 2000, 50e-6, 1.8)

-- Uneven task times: 1 task in 50 is 100x longer than the others, about 1 s
-- of work in all.  The wall time against the ideal (sequential time /
-- n_jobs) shows the tail: a long task queued behind another long one on a
-- busy worker while the other worker sits idle.
W[#W + 1] = { id = "uneven", title = "uneven map: 1 task in 50 is 100x longer, ~1 s of work",
  run = function(ctx)
  local N = ctx.quick and 250 or 1000
  local total = ctx.quick and 0.3 or 1.0
  local fp = ctx.forkpool
  return protected(function(s)
    -- a short task: total / (N * (49/50 + 100/50)) seconds
    local short = calibrate(total / (N * (0.98 + 2)))
    local items = table_new(N, 0)
    for i = 1, N do items[i] = (i % 50 == 25) and short * 100 or short end
    local function task(iters)
      local x = 1
      for _ = 1, iters do x = (x * 16807) % 2147483647 end
      return x
    end
    local expect = table_new(N, 0)
    for i = 1, N do expect[i] = task(items[i]) end -- also warms the JIT
    local pool = s.add(fp.new{ n_jobs = ctx.n_jobs, keep_alive = true })
    pool:map(task, items)
    local function check(res, who)
      for i = 1, N do
        if res[i] ~= expect[i] then
          wrong("%s: result[%d] = %s, want %s", who, i, tostring(res[i]), tostring(expect[i]))
        end
      end
    end
    local med = measure(ctx.runs, {
      { name = "seq", run = function()
          local out = {}
          for i = 1, N do out[i] = task(items[i]) end
          return out
        end, verify = function(r) check(r, "sequential") end },
      { name = "fp", run = function() return pool:map(task, items) end,
        verify = function(r) check(r, "forkpool") end },
    })
    local ideal = med.seq / ctx.n_jobs
    local r = med.fp / ideal
    return {
      { title = ctx.quick and ("uneven map: %d tasks, ~%s of work"):format(N, fmt_time(total)) or nil,
        forkpool = fmt_time(med.fp), baseline = ("total work / %d workers"):format(ctx.n_jobs),
        base_value = ("%s (sequential %s)"):format(fmt_time(ideal), fmt_time(med.seq)),
        ratio = fmt_ratio(r), target = "≤ 1.1×", result = verdict(r <= 1.1),
        note = ("%d tasks, every 50th of %d steps, the others %d; default chunk size (%d items).")
          :format(N, short * 100, short, math.ceil(N / (ctx.n_jobs * 64))) },
    }
  end)
end }

------------------------------------------------------------------------
-- 4. Big results: 16 tasks each returning a 16 MiB string
------------------------------------------------------------------------

W[#W + 1] = { id = "strings", title = "16 tasks → 16 MiB string each", run = function(ctx)
  local NT = ctx.quick and 4 or 16
  local SZ = ctx.quick and MiB or 16 * MiB
  local fp, bp = ctx.forkpool, ctx.bp
  return protected(function(s)
    -- The strings are made in the workers (the parent never holds one with
    -- the same contents, so decoding in the parent really allocates and
    -- copies), once per worker, cached in a worker global: the timed maps
    -- measure moving them, not making them.
    local function piece(i) return ("%08x"):format(i) .. "fpbench." end -- 16 bytes
    local function make(i)
      local cache = rawget(_G, "FPBENCH_STRINGS")
      if not cache then cache = {}; rawset(_G, "FPBENCH_STRINGS", cache) end
      local str = cache[i]
      if not str then
        str = string.rep(("%08x"):format(i) .. "fpbench.", SZ / 16)
        cache[i] = str
      end
      return str
    end
    local function init() for i = 1, NT do make(i) end end
    local items = range(NT)
    local pool = s.add(fp.new{ n_jobs = ctx.n_jobs, keep_alive = true })
    pool:map(make, items, { worker_init = init, chunk_size = 1 })
    local pb = s.add(bp.new{ fn = make, n_jobs = ctx.n_jobs, mode = "chunk", init = init })
    pb:map(items, 1)

    local total = NT * SZ
    local src = ffi.gc(ffi.cast("uint8_t *", C.malloc(total)), C.free)
    local dst = ffi.gc(ffi.cast("uint8_t *", C.malloc(total)), C.free)
    if src == nil or dst == nil then error("malloc failed") end
    ffi.fill(src, total, 0x5a)
    ffi.copy(dst, src, total) -- warm: every page of both buffers touched

    local function check(res, who)
      if res.n ~= NT then wrong("%s: results.n = %s", who, tostring(res.n)) end
      for i = 1, NT do
        local str = res[i]
        if type(str) ~= "string" or #str ~= SZ then
          wrong("%s: result[%d] is a %s of length %s", who, i, type(str), tostring(type(str) == "string" and #str))
        end
        -- the first 16 bytes are piece(i) and the whole string has period 16
        local p = ffi.cast("const uint8_t *", str)
        if C.memcmp(p, piece(i), 16) ~= 0 or C.memcmp(p, p + 16, SZ - 16) ~= 0 then
          wrong("%s: result[%d] has wrong contents", who, i)
        end
      end
    end
    local med = measure(ctx.runs, {
      { name = "fp", run = function() return pool:map(make, items, { chunk_size = 1 }) end,
        verify = function(r) check(r, "forkpool") end },
      { name = "memcpy", run = function() ffi.copy(dst, src, total) end },
      { name = "b", run = function() return pb:map(items, 1) end,
        verify = function(r) check(r, "baseline (b)") end },
    })
    src, dst = nil, nil -- luacheck: ignore
    local r_fp, r_mc, r_b = total / med.fp, total / med.memcpy, total / med.b
    return {
      { title = ctx.quick and ("%d tasks → %s string each"):format(NT, fmt_bytes(SZ)) or nil,
        forkpool = ("%s (%s)"):format(fmt_rate(r_fp), fmt_time(med.fp)),
        baseline = ("memcpy (ffi.copy %s)"):format(fmt_bytes(total)), base_value = fmt_rate(r_mc),
        ratio = "fp/memcpy " .. fmt_ratio(r_fp / r_mc), target = "fp ≥ 2 GB/s", result = verdict(r_fp >= 2e9),
        note = ("GB = 1e9 bytes; %d × %s = %s moved per map, end to end (map call to results table); "
          .. "the strings are cached in the workers (made by worker_init), so the map measures "
          .. "moving them; memcpy = ffi.copy between two warm malloc'd buffers of the same total size, "
          .. "median of the same rounds."):format(NT, fmt_bytes(SZ), fmt_bytes(total)) },
      { baseline = "pipes (b) chunk/msg", base_value = fmt_rate(r_b),
        ratio = "fp/(b) " .. fmt_ratio(r_fp / r_b), target = "(for reference)", result = "info" },
    }
  end)
end }

------------------------------------------------------------------------
-- 5. Big tables: 8 tasks each returning an array of 1e6 doubles
------------------------------------------------------------------------

W[#W + 1] = { id = "doubles", title = "8 tasks → array of 1e6 doubles", run = function(ctx)
  local NT = 8
  local LEN = ctx.quick and 10000 or 1000000
  local fp, bp = ctx.forkpool, ctx.bp
  return protected(function(s)
    local function build(i)
      local t = table_new(LEN, 0)
      for k = 1, LEN do t[k] = i + k / 7 end
      return t
    end
    -- cached in the workers, made by worker_init: the maps measure moving them
    local function get(i)
      local cache = rawget(_G, "FPBENCH_ARRAYS")
      if not cache then cache = {}; rawset(_G, "FPBENCH_ARRAYS", cache) end
      local t = cache[i]
      if not t then t = build(i); cache[i] = t end
      return t
    end
    local function init() for i = 1, NT do get(i) end end
    local arrays = {}
    for i = 1, NT do arrays[i] = build(i) end
    local items = range(NT)
    local pool = s.add(fp.new{ n_jobs = ctx.n_jobs, keep_alive = true })
    pool:map(get, items, { worker_init = init, chunk_size = 1 })
    local pb = s.add(bp.new{ fn = get, n_jobs = ctx.n_jobs, mode = "chunk", init = init })
    pb:map(items, 1)
    local sbuf = buffer.new()
    local function check(res, who)
      for i = 1, NT do
        local t, e = res[i], arrays[i]
        if type(t) ~= "table" or #t ~= LEN then wrong("%s: result[%d] is not an array of %d", who, i, LEN) end
        for k = 1, LEN do
          if t[k] ~= e[k] then wrong("%s: result[%d][%d] = %s, want %s", who, i, k, tostring(t[k]), tostring(e[k])) end
        end
      end
    end
    local med = measure(ctx.runs, {
      { name = "fp", run = function() return pool:map(get, items, { chunk_size = 1 }) end,
        verify = function(r) check(r, "forkpool") end },
      { name = "sb", run = function() return W.sb_round_trip(arrays, sbuf) end,
        verify = function(r) check(r, "string.buffer") end },
      { name = "b", run = function() return pb:map(items, 1) end,
        verify = function(r) check(r, "baseline (b)") end },
    })
    return {
      { title = ctx.quick and ("8 tasks → array of %d doubles"):format(LEN) or nil,
        forkpool = fmt_time(med.fp), baseline = "string.buffer enc+dec", base_value = fmt_time(med.sb),
        ratio = "sb/fp " .. fmt_ratio(med.sb / med.fp), target = "fp ≤ string.buffer",
        result = verdict(med.fp <= med.sb),
        note = "forkpool: the whole map, end to end, on 2 workers (arrays cached in the workers); "
          .. "string.buffer: encode then decode of the same 8 arrays in one process, one reused buffer." },
      { baseline = "pipes (b) chunk/msg", base_value = fmt_time(med.b),
        ratio = "(b)/fp " .. fmt_ratio(med.b / med.fp), target = "(for reference)", result = "info" },
    }
  end)
end }

------------------------------------------------------------------------
-- 6. Small records through the codec
------------------------------------------------------------------------

W[#W + 1] = { id = "records", title = "small record through the codec", run = function(ctx)
  local N = ctx.quick and 2000 or 100000
  local fp, bp = ctx.forkpool, ctx.bp
  return protected(function(s)
    local recs = W.small_records(N)
    local fn = function(r) return r end
    local pool = s.add(fp.new{ n_jobs = ctx.n_jobs, keep_alive = true })
    pool:map(fn, recs)
    local pb = s.add(bp.new{ fn = fn, n_jobs = ctx.n_jobs, mode = "chunk" })
    pb:map(recs)
    local sbuf = buffer.new()
    local function check(res, who) W.check_small_records(res, recs, who) end
    local med = measure(ctx.runs, {
      { name = "fp", run = function() return pool:map(fn, recs) end,
        verify = function(r) check(r, "forkpool") end },
      { name = "sb", run = function() return W.sb_round_trip(recs, sbuf) end,
        verify = function(r) check(r, "string.buffer") end },
      { name = "b", run = function() return pb:map(recs) end,
        verify = function(r) check(r, "baseline (b)") end },
    })
    local fp_rec, sb_rec2, b_rec = med.fp / N, 2 * med.sb / N, med.b / N
    return {
      { title = ctx.quick and ("small record through the codec (%d)"):format(N) or nil,
        forkpool = fmt_time(fp_rec) .. "/record", baseline = "string.buffer enc+dec ×2",
        base_value = fmt_time(sb_rec2) .. "/record",
        ratio = "(2×sb)/fp " .. fmt_ratio(sb_rec2 / fp_rec), target = "fp ≤ 2 × sb enc+dec",
        result = verdict(fp_rec <= sb_rec2),
        note = ("record = {id=, name=, tags={3 strings}, score=}; forkpool: map of %d records on a "
          .. "warm pool, fn returns its record (each record is encoded and decoded twice: item out, "
          .. "result back), map time / %d; string.buffer: encode+decode of each record in one "
          .. "process, time per record ×2 (both directions)."):format(N, N) },
      { baseline = "pipes (b) chunk/msg", base_value = fmt_time(b_rec) .. "/record",
        ratio = "(b)/fp " .. fmt_ratio(b_rec / fp_rec), target = "(for reference)", result = "info" },
    }
  end)
end }

------------------------------------------------------------------------
-- 7. Round trip: single-item maps on a warm pool
------------------------------------------------------------------------

W[#W + 1] = { id = "roundtrip", title = "single-item map (round trip)", run = function(ctx)
  local K = ctx.quick and 50 or 1000
  local fp, bp = ctx.forkpool, ctx.bp
  return protected(function(s)
    local fn = function(x) return x + 1 end
    local pool = s.add(fp.new{ n_jobs = ctx.n_jobs, keep_alive = true })
    pool:map(fn, { 0 }) -- forks the workers before any baseline pipe exists
    local pa = s.add(bp.new{ fn = fn, n_jobs = ctx.n_jobs, mode = "item", window = 8 })
    for j = 1, 20 do pool:map(fn, { j }); pa:map({ j }) end -- warm
    local function series(map1)
      local t = table_new(K, 0)
      for j = 1, K do
        local items = { j }
        local t0 = now()
        local res = map1(items)
        t[j] = now() - t0
        if res[1] ~= j + 1 then wrong("round trip %d: got %s", j, tostring(res[1])) end
      end
      return t
    end
    local fp_meds, a_meds, all_fp = {}, {}, {}
    for r = 1, ctx.runs do
      gc()
      local a = series(function(it) return pool:map(fn, it) end)
      fp_meds[r] = median(a)
      for _, v in ipairs(a) do all_fp[#all_fp + 1] = v end
      gc()
      a_meds[r] = median(series(function(it) return pa:map(it) end))
    end
    local m_fp, m_a = median(fp_meds), median(a_meds)
    table.sort(all_fp)
    local p99 = all_fp[math.max(1, math.floor(#all_fp * 0.99))]
    return {
      { title = nil, forkpool = ("%s (p99 %s)"):format(fmt_time(m_fp), fmt_time(p99)),
        baseline = "pipes (a) 1-item map", base_value = fmt_time(m_a),
        ratio = "fp/(a) " .. fmt_ratio(m_fp / m_a), target = "fp ≤ 20 µs", result = verdict(m_fp <= 20e-6),
        note = ("%d single-item maps per run, each timed alone; median per run, then the median of "
          .. "the %d runs (p99 over all forkpool samples). Baseline: the same on baseline pool (a).")
          :format(K, ctx.runs) },
    }
  end)
end }

------------------------------------------------------------------------
-- 8. apply: one call at a time on a warm pool
------------------------------------------------------------------------

-- p-th percentile (0 < p ≤ 1) of the samples, nearest rank.
local function percentile(xs, p)
  local t = {}
  for i = 1, #xs do t[i] = xs[i] end
  table.sort(t)
  return t[math.max(1, math.ceil(#t * p))]
end

W[#W + 1] = { id = "apply", title = "apply round trip (warm pool)", run = function(ctx)
  local K = ctx.quick and 200 or 2000
  local fp, bp = ctx.forkpool, ctx.bp
  return protected(function(s)
    local fn = function(x) return x + 1 end
    local pool = s.add(fp.new{ n_jobs = ctx.n_jobs, keep_alive = true })
    -- the first apply forks the workers, before any baseline pipe exists
    if pool:apply(fn, { 0 }) ~= 1 then wrong("apply(fn, {0}) ~= 1") end
    local pa = s.add(bp.new{ fn = fn, n_jobs = ctx.n_jobs, mode = "item", window = 8 })
    for j = 1, 100 do pool:apply(fn, { j }); pa:map({ j }) end -- warm
    local function series(call1)
      local t = table_new(K, 0)
      for j = 1, K do
        local t0 = now()
        local res = call1(j)
        t[j] = now() - t0
        if res ~= j + 1 then wrong("call %d: got %s, want %d", j, tostring(res), j + 1) end
      end
      return t
    end
    local fp_call = function(j) return pool:apply(fn, { j }) end
    local a_call = function(j) return pa:map({ j })[1] end
    local fp_meds, a_meds, all_fp = {}, {}, {}
    for r = 1, ctx.runs do
      -- alternate which contender goes first
      for k = 0, 1 do
        gc()
        if (r + k) % 2 == 0 then
          local a = series(fp_call)
          fp_meds[#fp_meds + 1] = median(a)
          for _, v in ipairs(a) do all_fp[#all_fp + 1] = v end
        else
          a_meds[#a_meds + 1] = median(series(a_call))
        end
      end
    end
    local m_fp, m_a = median(fp_meds), median(a_meds)
    local p99 = percentile(all_fp, 0.99)
    if VERBOSE then
      local meds = {}
      for i, v in ipairs(fp_meds) do meds[i] = fmt_time(v) end
      io.stderr:write(("  apply: run medians %s; p50 %s p90 %s p99 %s max %s over %d calls\n"):format(
        table.concat(meds, " "),
        fmt_time(percentile(all_fp, 0.5)), fmt_time(percentile(all_fp, 0.9)), fmt_time(p99),
        fmt_time(util.max(all_fp)), #all_fp))
    end
    return {
      { forkpool = ("%s (p99 %s)"):format(fmt_time(m_fp), fmt_time(p99)),
        baseline = "pipes (a) 1-item map", base_value = fmt_time(m_a),
        ratio = "fp/(a) " .. fmt_ratio(m_fp / m_a), target = "median ≤ 20 µs", result = verdict(m_fp <= 20e-6),
        note = ("%d calls of pool:apply(fn, {x}) per run on a warm keep_alive pool (n_jobs = %d), "
          .. "each timed alone; median per run, then the median of the %d runs; p99 over all %d "
          .. "forkpool samples. Baseline: a one-item map on baseline pool (a), same count, runs "
          .. "alternating with forkpool's."):format(K, ctx.n_jobs, ctx.runs, #all_fp) },
    }
  end)
end }

------------------------------------------------------------------------
-- 9. apply_async: 10,000 calls outstanding, then get() each
------------------------------------------------------------------------

W[#W + 1] = { id = "async", title = "apply_async, 10000 outstanding", run = function(ctx)
  local N = ctx.quick and 2000 or 10000
  local fp = ctx.forkpool
  return protected(function(s)
    local fn = function(x) return x + 1 end
    local items = range(N)
    local pool = s.add(fp.new{ n_jobs = ctx.n_jobs, keep_alive = true })
    pool:map(fn, items) -- warm: workers started, JIT warm
    do
      local rs = {}
      for i = 1, 100 do rs[i] = pool:apply_async(fn, { i }) end
      for i = 1, 100 do if rs[i]:get() ~= i + 1 then wrong("warm-up apply_async %d", i) end end
    end
    local function check(res, who)
      for i = 1, N do
        if res[i] ~= i + 1 then wrong("%s: result %d = %s, want %d", who, i, tostring(res[i]), i + 1) end
      end
    end
    -- the submit loop is timed in tenths, to show whether a submission
    -- costs more with more calls outstanding
    local TENTH = N / 10
    local submit, get, first, last = {}, {}, {}, {}
    local med = measure(ctx.runs, {
      { name = "async", run = function()
          local rs = table_new(N, 0)
          local out = table_new(N, 0)
          local t0 = now()
          local tb = t0
          for i = 1, N do
            rs[i] = pool:apply_async(fn, { i })
            if i % TENTH == 0 then
              local t = now()
              if i == TENTH then first[#first + 1] = t - tb end
              if i == N then last[#last + 1] = t - tb end
              tb = t
            end
          end
          local t1 = now()
          for i = 1, N do out[i] = rs[i]:get() end
          local t2 = now()
          submit[#submit + 1], get[#get + 1] = t1 - t0, t2 - t1
          return out
        end, verify = function(r) check(r, "apply_async") end },
      { name = "map", run = function() return pool:map(fn, items) end,
        verify = function(r) check(r, "map") end },
    })
    local t, tm = med.async, med.map
    local per = function(x) return fmt_time(x / N) end
    return {
      { title = ctx.quick and ("apply_async, %d outstanding"):format(N) or nil,
        forkpool = ("%s (%s/call, %.0f calls/s)"):format(fmt_time(t), per(t), N / t),
        baseline = ("one pool:map of the same %d calls"):format(N),
        base_value = ("%s (%s/item)"):format(fmt_time(tm), per(tm)),
        ratio = "async/map " .. fmt_ratio(t / tm), target = "report", result = "info",
        note = ("timed: %d calls of pool:apply_async(fn, {i}) (all outstanding: no get() before the "
          .. "last submission), then r:get() on each in order; results checked afterwards. Baseline: "
          .. "pool:map(fn, {1..%d}) on the same warm keep_alive pool (n_jobs = %d, default chunk "
          .. "size), rounds interleaved with apply_async."):format(N, N, ctx.n_jobs) },
      { forkpool = ("submit %s + get %s"):format(fmt_time(median(submit)), fmt_time(median(get))),
        baseline = "(split of the apply_async time)",
        base_value = ("submit %s/call (first %d), %s/call (last %d)"):format(
          fmt_time(median(first) / TENTH), TENTH, fmt_time(median(last) / TENTH), TENTH),
        ratio = "", target = "(for reference)", result = "info",
        note = ("submit = the loop of %d apply_async calls, get = the loop of get() calls (medians "
          .. "over the runs); the per-call submit cost of the first and the last tenth of the "
          .. "submissions shows whether a submission gets dearer with more calls outstanding.")
          :format(N) },
    }
  end)
end }

------------------------------------------------------------------------
-- 10. imap over a 1e7-line file (lazy, constant memory) vs map over the
--     same lines held in a table, each in a process of its own
------------------------------------------------------------------------

local function line_len(s) return #s end

-- ctx.arg of the helpers: "n,sum,path"
local function imap_arg(ctx)
  local n, sum, path = (ctx.arg or ""):match("^(%d+),(%d+),(.+)$")
  if not n then error("imap helper: bad --arg " .. tostring(ctx.arg)) end
  return tonumber(n), tonumber(sum), path
end

local function warm_pool(s, ctx)
  local pool = s.add(ctx.forkpool.new{ n_jobs = ctx.n_jobs, keep_alive = true })
  local r = pool:map(line_len, { "warm", "up!" })
  if r[1] ~= 4 or r[2] ~= 3 then wrong("warm-up map") end
  return pool
end

W[#W + 1] = { id = "imap_lazy", helper = true, title = "(imap helper: the imap)", run = function(ctx)
  local N, sum, path = imap_arg(ctx)
  return protected(function(s)
    local pool = warm_pool(s, ctx)
    gc()
    local before = util.proc_status_bytes("VmHWM")
    local total, n, bad = 0, 0, nil
    local t0 = now()
    for r, idx in pool:imap(line_len, io.lines(path)) do
      n = n + 1
      if idx ~= n and not bad then bad = ("result %d has index %s"):format(n, tostring(idx)) end
      total = total + r
    end
    local dt = now() - t0
    local peak = util.proc_status_bytes("VmHWM")
    if bad then wrong("imap: %s", bad) end
    if n ~= N or total ~= sum then wrong("imap: %d results summing to %d, want %d summing to %d", n, total, N, sum) end
    return { time = dt, before = before, peak = peak }
  end)
end }

W[#W + 1] = { id = "imap_table", helper = true, title = "(imap helper: the table)", run = function(ctx)
  local N, sum, path = imap_arg(ctx)
  return protected(function(s)
    local pool = warm_pool(s, ctx)
    gc()
    local before = util.proc_status_bytes("VmHWM")
    local t0 = now()
    local lines, n = {}, 0
    for l in io.lines(path) do n = n + 1; lines[n] = l end
    local t_read = now() - t0
    gc()
    t0 = now()
    local res = pool:map(line_len, lines)
    local t_map = now() - t0
    local peak = util.proc_status_bytes("VmHWM")
    if n ~= N or res.n ~= N then wrong("map: %s results of %d lines, want %d", tostring(res.n), n, N) end
    local total = 0
    for i = 1, N do
      local r = res[i]
      if r ~= #lines[i] then wrong("map: result %d = %s, want %d", i, tostring(r), #lines[i]) end
      total = total + r
    end
    if total ~= sum then wrong("map: results sum to %d, want %d", total, sum) end
    return { time = t_map, read = t_read, before = before, peak = peak }
  end)
end }

W[#W + 1] = { id = "imap", title = "imap over a 1e7-line file", run = function(ctx)
  local N = ctx.quick and 200000 or 10000000
  -- one round = one process for the imap and one for the table (about 50 s
  -- together at full size on 2 cores), so at most 3 rounds
  local rounds = math.min(ctx.runs, 3)
  return protected(function(s)
    local path = os.tmpname()
    s.add({ close = function() os.remove(path) end })
    -- "line 1\n" .. "line N\n"; sum = total length of the lines without "\n"
    local f = assert(io.open(path, "wb"))
    local sb = buffer.new()
    local sum, digits, next_pow = 0, 1, 10
    for i = 1, N do
      if i == next_pow then digits = digits + 1; next_pow = next_pow * 10 end
      sum = sum + 5 + digits
      sb:put("line ", i, "\n")
      if #sb >= 65536 then assert(f:write(sb:get())) end
    end
    assert(f:write(sb:get()))
    assert(f:close())
    local fsize = sum + N
    local a = ("%d,%d,%s"):format(N, sum, path)
    local lazy, tab = {}, {}
    for r = 1, rounds do
      for k = 0, 1 do
        local which = (r + k) % 2 == 0 and "imap_lazy" or "imap_table"
        local ok, res = ctx.spawn(which, a, 1)
        if not ok then error(res, 0) end
        local into = which == "imap_lazy" and lazy or tab
        into[#into + 1] = res
        if VERBOSE then
          io.stderr:write(("  %-10s %s%s, VmHWM %s (before %s)\n"):format(which, fmt_time(res.time),
            res.read and (" (read " .. fmt_time(res.read) .. ")") or "", fmt_bytes(res.peak), fmt_bytes(res.before)))
        end
      end
    end
    local function med_of(list, key)
      local xs = {}
      for i, x in ipairs(list) do xs[i] = x[key] end
      return median(xs)
    end
    local function max_of(list, key)
      local xs = {}
      for i, x in ipairs(list) do xs[i] = x[key] end
      return util.max(xs)
    end
    local t_imap, t_map, t_read = med_of(lazy, "time"), med_of(tab, "time"), med_of(tab, "read")
    local pk_imap, pk_tab = max_of(lazy, "peak"), max_of(tab, "peak")
    local b_imap, b_tab = max_of(lazy, "before"), max_of(tab, "before")
    local per = function(x) return ("%s (%s/line)"):format(fmt_time(x), fmt_time(x / N)) end
    local ratio = t_imap / t_map
    return {
      { title = ctx.quick and ("imap over a %d-line file"):format(N) or nil,
        forkpool = per(t_imap), baseline = "map over the lines in a table", base_value = per(t_map),
        ratio = "imap/map " .. fmt_ratio(ratio), target = "imap/map ≤ 1.5×", result = verdict(ratio <= 1.5),
        note = ("file: %d lines \"line <i>\\n\" (%s), written once to a temporary file and deleted "
          .. "afterwards; fn = function(s) return #s end. imap: `for r in pool:imap(fn, io.lines(path))` "
          .. "(default options: chunks of an iterator of unknown length grow adaptively), results "
          .. "summed and their order checked. Table: the lines read into a table with io.lines "
          .. "(timed separately, row below), then pool:map(fn, lines) timed alone (default chunk "
          .. "size), every result checked. Both on a warm keep_alive pool (n_jobs = %d), each in a "
          .. "fresh process of its own; %d round(s), the two alternating; times are medians.")
          :format(N, fmt_bytes(fsize), ctx.n_jobs, rounds) },
      { forkpool = ("peak RSS %s (%s before)"):format(fmt_bytes(pk_imap), fmt_bytes(b_imap)),
        baseline = "table variant: peak RSS",
        base_value = ("%s (%s before)"):format(fmt_bytes(pk_tab), fmt_bytes(b_tab)),
        ratio = "table/imap " .. fmt_ratio(pk_tab / pk_imap), target = "report", result = "info",
        note = "peak RSS = VmHWM of /proc/self/status of the process running the pool (the parent; "
          .. "workers not included), after the timed run; \"before\" = VmHWM after the warm-up, "
          .. "before the file is read; the largest over the rounds. Constant memory means the imap's "
          .. "peak stays small and does not depend on the file's size (compare QUICK's 2e5 lines), "
          .. "while the table variant's grows with the file (the lines, then the results)." },
      { baseline = "table variant: reading the lines", base_value = fmt_time(t_read),
        ratio = "imap/(read+map) " .. fmt_ratio(t_imap / (t_read + t_map)), target = "(for reference)",
        result = "info",
        note = "`local lines, n = {}, 0 for l in io.lines(path) do n = n + 1; lines[n] = l end`, "
          .. "timed in the table variant's process; not part of its map time." },
    }
  end)
end }

------------------------------------------------------------------------
-- 11. First map on a fresh pool whose parent holds 100 MiB of Lua data
------------------------------------------------------------------------

W[#W + 1] = { id = "fresh", title = "fresh pool, parent holds 100 MiB", run = function(ctx)
  local MB = ctx.quick and 10 or 100
  local fp, bp = ctx.forkpool, ctx.bp
  -- ~MB MiB of small tables and strings, as a program's data would be
  gc()
  local base = collectgarbage("count")
  local data, i = {}, 0
  while collectgarbage("count") - base < MB * 1024 do
    for _ = 1, 1000 do
      i = i + 1
      data[i] = { id = i, name = "record number " .. i, value = i * 0.5, flags = { i % 2 == 0, i % 3 == 0 } }
    end
  end
  gc()
  local held = (collectgarbage("count") - base) * 1024
  local rss = (util.smaps_rollup(util.getpid()) or {}).Rss
  local fn = function(x) return x * 2 end
  local function check(res, who)
    if res.n ~= 2 or res[1] ~= 2 or res[2] ~= 4 then wrong("%s: fresh-pool map returned wrong results", who) end
  end
  local med = measure(ctx.runs, {
    { name = "fp", run = function()
        local pool = fp.new{ n_jobs = ctx.n_jobs, keep_alive = true }
        local ok, res = pcall(pool.map, pool, fn, { 1, 2 })
        -- the close is outside the timing below only in the sense that it is
        -- cheap; keep_alive makes the map return at its last result
        return { pool = pool, ok = ok, res = res }
      end, verify = function(r)
        r.pool:close()
        if not r.ok then error(r.res, 0) end
        check(r.res, "forkpool (keep_alive)")
      end },
    { name = "fp_join", run = function()
        local pool = fp.new{ n_jobs = ctx.n_jobs }
        local res = pool:map(fn, { 1, 2 })
        pool:close()
        return res
      end, verify = function(r) check(r, "forkpool (default)") end },
    { name = "b", run = function()
        local pb = bp.new{ fn = fn, n_jobs = ctx.n_jobs, mode = "chunk" }
        local ok, res = pcall(pb.map, pb, { 1, 2 }, 1)
        return { pool = pb, ok = ok, res = res }
      end, verify = function(r)
        r.pool:close()
        if not r.ok then error(r.res, 0) end
        check(r.res, "baseline (b)")
      end },
  })
  local keep = data[#data] -- keep the data alive through the measurement
  data = nil -- luacheck: ignore
  assert(keep)
  gc()
  return {
    { title = ctx.quick and ("fresh pool, parent holds %d MiB"):format(MB) or nil,
      forkpool = fmt_time(med.fp), baseline = "pipes (b) fork+map", base_value = fmt_time(med.b),
      ratio = "fp/(b) " .. fmt_ratio(med.fp / med.b), target = "fp ≤ 15 ms", result = verdict(med.fp <= 15e-3),
      note = ("parent Lua heap grown by %s (%d small tables with strings) before the pool, parent RSS "
        .. "%s; timed: forkpool.new{n_jobs=%d, keep_alive=true} + map of 2 items until it returns "
        .. "its results (close not timed); baseline (b): bp.new (fork) + map of 2 items (close not timed).")
        :format(fmt_bytes(held), i, fmt_bytes(rss), ctx.n_jobs) },
    { forkpool = fmt_time(med.fp_join), baseline = "(forkpool without keep_alive)", base_value = "",
      ratio = "", target = "(for reference)", result = "info",
      note = "forkpool.new{n_jobs=2} (keep_alive=false) + map of 2 items + close: the map "
        .. "also waits for the workers to exit." },
  }
end }

------------------------------------------------------------------------
-- 12. Memory: workers reading a big dataset (PSS)
------------------------------------------------------------------------

-- Start a keep_alive pool whose workers run `init` (reading the data, then
-- a full GC, as a long-running worker would) and read every worker's Pss
-- once each of them has finished, while they are alive.  Which worker runs
-- which item is the scheduler's business (one worker may take every item
-- while the other is still reading), so the workers report "done" and their
-- sum in a small shared mapping of our own, by worker id, and the parent
-- waits for all of them.
-- Extra per worker = its Pss + (parent's Pss now - parent's Pss before the
-- pool) / n_jobs: the parent's change is caused by the workers sharing (or
-- un-sharing) its pages, and the extras add up to the growth of the total.
pcall(ffi.cdef, "void *mmap(void *addr, size_t len, int prot, int flags, int fd, long off);")
pcall(ffi.cdef, "int munmap(void *addr, size_t len);")
pcall(ffi.cdef, "int usleep(unsigned int usec);")
pcall(ffi.cdef, "struct fpbench_done { double sum; int32_t pid; int32_t done; };")

local function pss_probe(ctx, read, expect)
  local fp = ctx.forkpool
  local n = ctx.n_jobs
  local size = ffi.sizeof("struct fpbench_done") * n
  local mem = C.mmap(nil, size, 3, 0x21, -1, 0) -- PROT_READ|WRITE, MAP_SHARED|ANONYMOUS
  if mem == ffi.cast("void *", -1) then error("mmap failed") end
  local slots = ffi.cast("struct fpbench_done *", mem)
  local function init(wid)
    local sum = read()
    collectgarbage()
    local slot = slots[wid - 1]
    slot.sum = sum
    slot.pid = util.getpid()
    slot.done = 1
  end
  gc()
  local self_pid = util.getpid()
  local before = assert(util.smaps_rollup(self_pid)).Pss
  local pool = fp.new{ n_jobs = n, keep_alive = true, pass_worker_id = true }
  local ok, err = pcall(function()
    pool:map(function() return true end, range(n), { worker_init = init, chunk_size = 1 })
    local deadline = now() + 300
    while true do
      local all = true
      for w = 0, n - 1 do if slots[w].done ~= 1 then all = false end end
      if all then break end
      if now() > deadline then error("workers did not all finish reading the dataset within 300 s") end
      C.usleep(10000)
    end
    local pids = pool:worker_pids()
    for w = 1, n do
      local slot = slots[w - 1]
      if slot.sum ~= expect then wrong("worker %d sum %s, want %s", w, tostring(slot.sum), tostring(expect)) end
      if slot.pid ~= pids[w] then
        error(("worker %d: pid %d reported, pool says %s"):format(w, slot.pid, tostring(pids[w])))
      end
    end
    local after = assert(util.smaps_rollup(self_pid)).Pss
    local out = {}
    for w = 1, n do
      local sm = assert(util.smaps_rollup(pids[w]))
      out[w] = { pss = sm.Pss, extra = sm.Pss + (after - before) / n }
    end
    return out
  end)
  pool:close()
  C.munmap(mem, size)
  if not ok then error(err, 0) end
  return err
end

local function mean_extra(per)
  local sum = 0
  for _, x in ipairs(per) do sum = sum + x.extra end
  return sum / #per
end

local function signed_bytes(b)
  return (b < 0 and "-" or "+") .. fmt_bytes(math.abs(b))
end

-- forkpool cell: each worker's extra; ratio cell: the mean over the
-- workers minus the control's, as a share of the dataset.
local function pss_cells(per, dataset, control)
  local parts = {}
  for w, x in ipairs(per) do parts[#parts + 1] = ("w%d %s"):format(w, signed_bytes(x.extra)) end
  local over = mean_extra(per) - control
  local pct = 100 * over / dataset
  if math.abs(pct) < 0.5 then pct = 0 end
  return table.concat(parts, ", "),
    ("%s over control = %.0f%% of dataset"):format(signed_bytes(over), pct)
end

W[#W + 1] = { id = "pss", title = "memory: workers reading a dataset", run = function(ctx)
  local MB = ctx.quick and 20 or 500
  local bytes = MB * MiB
  local rows = {}
  local title = ("extra PSS per worker, %d MiB dataset"):format(MB)

  -- control: workers that read nothing
  local ctl = pss_probe(ctx, function() return 0 end, 0)
  local control = mean_extra(ctl)
  local ctl_cell = {}
  for w, x in ipairs(ctl) do ctl_cell[#ctl_cell + 1] = ("w%d %s"):format(w, signed_bytes(x.extra)) end
  rows[#rows + 1] = { title = title, forkpool = table.concat(ctl_cell, ", "),
    baseline = "control: workers read nothing", base_value = "", ratio = "", target = "report", result = "info",
    note = ("extra PSS of a worker = its Pss + (parent's Pss after - parent's Pss before the pool) / "
      .. "n_jobs, from /proc/<pid>/smaps_rollup, read while the workers are alive, once each has "
      .. "finished its worker_init: read the whole dataset (a sum, checked), then collectgarbage() "
      .. "(as a long-running worker would). ratio = mean extra minus the control's, "
      .. "over the dataset size. One measurement per row (not a median).") }

  -- (a1) Lua tables: big arrays of numbers (1 MiB each)
  do
    local per_tab = 131072
    local ntab = math.floor(bytes / (per_tab * 8))
    gc()
    local base = collectgarbage("count")
    local data = table_new(ntab, 0)
    local sum = 0
    for t = 1, ntab do
      local a = table_new(per_tab, 0)
      for k = 1, per_tab do a[k] = k % 1000 end
      data[t] = a
    end
    for t = 1, ntab do local a = data[t]; for k = 1, per_tab do sum = sum + a[k] end end
    local held = (collectgarbage("count") - base) * 1024
    local function read()
      local s = 0
      for t = 1, #data do local a = data[t]; for k = 1, #a do s = s + a[k] end end
      return s
    end
    local per = pss_probe(ctx, read, sum)
    local cell, ratio = pss_cells(per, held, control)
    rows[#rows + 1] = { forkpool = cell, baseline = ("Lua: %d arrays of %d numbers"):format(ntab, per_tab),
      base_value = fmt_bytes(held), ratio = ratio, target = "report", result = "info",
      note = "big arrays of numbers: the GC marks only each table's header, the number arrays "
        .. "themselves are never written, so most pages stay shared." }
    data = nil -- luacheck: ignore
    gc()
  end

  -- (a2) Lua tables: many small tables
  do
    gc()
    local base = collectgarbage("count")
    local data = {}
    local n = 0
    while collectgarbage("count") - base < MB * 1024 do
      for _ = 1, 10000 do
        n = n + 1
        data[n] = { n % 7, n % 11, n % 13, 1 }
      end
    end
    local held = (collectgarbage("count") - base) * 1024
    local sum = 0
    for k = 1, n do local r = data[k]; sum = sum + r[1] + r[2] + r[3] + r[4] end
    local function read()
      local s = 0
      for k = 1, #data do local r = data[k]; s = s + r[1] + r[2] + r[3] + r[4] end
      return s
    end
    local per = pss_probe(ctx, read, sum)
    local cell, ratio = pss_cells(per, held, control)
    rows[#rows + 1] = { forkpool = cell, baseline = ("Lua: %d small tables {4 numbers}"):format(n),
      base_value = fmt_bytes(held), ratio = ratio, target = "report", result = "info",
      note = "many small tables: the worker's GC writes a mark into every table, so every page "
        .. "holding one is copied (copy-on-write) into the worker." }
    data = nil -- luacheck: ignore
    gc()
  end

  -- (b) forkpool.shared_array
  local fp = ctx.forkpool
  if type(fp.shared_array) ~= "function" then
    rows[#rows + 1] = { forkpool = "n/a (forkpool.shared_array missing)",
      baseline = "forkpool.shared_array(\"double\", n)", base_value = fmt_bytes(bytes), ratio = "",
      target = "report", result = "n/a" }
  else
    local n = bytes / 8
    local arr = fp.shared_array("double", n)
    for k = 0, n - 1 do arr[k] = k % 1000 end
    local sum = 0
    for k = 0, n - 1 do sum = sum + arr[k] end
    local function read()
      local s = 0
      for k = 0, n - 1 do s = s + arr[k] end
      return s
    end
    local per = pss_probe(ctx, read, sum)
    local cell, ratio = pss_cells(per, bytes, control)
    rows[#rows + 1] = { forkpool = cell, baseline = ("forkpool.shared_array(\"double\", %d)"):format(n),
      base_value = fmt_bytes(bytes), ratio = ratio, target = "report", result = "info",
      note = "shared array: shared memory outside the Lua heap, never traversed by the GC; "
        .. "workers read the parent's pages." }
    arr = nil -- luacheck: ignore
    gc()
  end
  return rows
end }

return W
