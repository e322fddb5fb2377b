-- bench/scale.lua: how far one parent scales (issue 14, "scale past this
-- machine"), two workloads of bench/run.lua:
--
--   parent   the parent's CPU time per item and per chunk on the map
--            family's main paths, fitted as cpu = items * a + chunks * b,
--            and from a and b the number of workers one parent keeps busy
--            for tasks of 1 µs .. 1 ms (docs/benchmarks.md, "How far one
--            parent scales")
--   oversub  the same map of ~50 µs CPU tasks with n_jobs = 2, 8, 32, 128
--            on this 2-core machine: throughput against n_jobs = 2, and
--            the memory of 128 LuaJIT workers
--
-- The parent's CPU time is getrusage(RUSAGE_SELF) user + system (what
-- os.clock() returns: this process only, the workers not counted), so it is
-- robust to other processes loading the machine; the wall time is shown
-- beside it for reference.
local ffi = require "ffi"
local util = require "bench_util"
local W = require "workloads"

local ok_tnew, table_new = pcall(require, "table.new")
if not ok_tnew then table_new = function() return {} end end

local now, median, gc = util.now, util.median, util.gc
local fmt_time, fmt_bytes, fmt_ratio = util.fmt_time, util.fmt_bytes, util.fmt_ratio
local protected, wrong, verdict = W.protected, W.wrong, W.verdict
local VERBOSE = (os.getenv("FPBENCH_VERBOSE") or "") ~= ""

-- This process's CPU seconds (user + system, RUSAGE_SELF: the workers are
-- not counted until reaped, and they are reaped only at close) and its
-- voluntary context switches (sleeps).
local function usage()
  local cpu, _, nvcsw = util.rusage(util.RUSAGE_SELF)
  return cpu, nvcsw
end

local M = {}

local function range(n)
  local t = table_new(n, 0)
  for i = 1, n do t[i] = i end
  return t
end

-- Run each contender `runs` times, rounds interleaved (the first contender
-- of a round rotates), a full GC before each timed run; a contender =
-- { name =, reps =, run = function() -> result, verify = function(result) }
-- runs `reps` times per sample (so that a sample lasts long enough for the
-- CPU clock: tens of ms at least) and each result is checked outside the timing.  Returns
-- { [name] = { cpu =, wall =, sleeps = } } (medians of the per-sample sums).
local function measure_cpu(runs, contenders)
  local samples = {}
  for _, c in ipairs(contenders) do samples[c.name] = { cpu = {}, wall = {}, sleeps = {} } end
  local nc = #contenders
  for r = 1, runs do
    for k = 0, nc - 1 do
      local c = contenders[(r - 1 + k) % nc + 1]
      local cpu, wall, sleeps = 0, 0, 0
      for _ = 1, c.reps or 1 do
        gc()
        local c0, v0 = usage()
        local t0 = now()
        local res = c.run()
        local t1 = now()
        local c1, v1 = usage()
        cpu, wall, sleeps = cpu + (c1 - c0), wall + (t1 - t0), sleeps + (v1 - v0)
        if c.verify then c.verify(res) end
        res = nil -- luacheck: ignore
      end
      local s = samples[c.name]
      s.cpu[#s.cpu + 1], s.wall[#s.wall + 1], s.sleeps[#s.sleeps + 1] = cpu, wall, sleeps
    end
  end
  local med = {}
  for _, c in ipairs(contenders) do
    local s = samples[c.name]
    med[c.name] = { cpu = median(s.cpu), wall = median(s.wall), sleeps = median(s.sleeps) }
    if VERBOSE then
      local parts = {}
      for i, v in ipairs(s.cpu) do parts[i] = fmt_time(v) end
      io.stderr:write(("  %-14s parent cpu median %-10s (wall %s) runs: %s\n"):format(c.name,
        fmt_time(med[c.name].cpu), fmt_time(med[c.name].wall), table.concat(parts, " ")))
    end
  end
  return med
end

-- Least-squares fit of y = a + b * x over the points, each weighted by
-- 1 / y^2 (relative errors: the c = 1024 points, ~100 times smaller than
-- the c = 1 points, count as much, or a, the small per-item cost, would be
-- noise); returns a, b and the largest relative residual |fit - y| / y.
local function fit(points)
  local sw, sx, sy, sxx, sxy = 0, 0, 0, 0, 0
  for _, p in ipairs(points) do
    local w = 1 / (p.y * p.y)
    sw, sx, sy = sw + w, sx + w * p.x, sy + w * p.y
    sxx, sxy = sxx + w * p.x * p.x, sxy + w * p.x * p.y
  end
  local b = (sw * sxy - sx * sy) / (sw * sxx - sx * sx)
  local a = (sy - b * sx) / sw
  local worst = 0
  for _, p in ipairs(points) do
    worst = math.max(worst, math.abs(a + b * p.x - p.y) / p.y)
  end
  return a, b, worst
end

-- Default chunk size of a map of n items on w workers (forkpool.job:
-- ceil(n / (n_jobs * 64))): the size a map starts with.
local function default_chunk(n, w) return math.max(1, math.ceil(n / (w * 64))) end

-- The chunk size a map of n items of t seconds each settles at on w
-- workers (with w cores): forkpool.dispatch grows the default size to hold
-- MIN_CHUNK_TIME (2 ms) of work, at most 4096 items, and forkpool.job keeps
-- a grown chunk to 1 / (4 w) of the items not yet sent; taken here half way
-- through the map (n / 2 left: n / (8 w)).
local MIN_CHUNK_TIME, MAX_GROWN = 0.002, 4096
local function grown_chunk(n, w, t)
  local want = t > 0 and math.ceil(MIN_CHUNK_TIME / t) or math.huge
  return math.max(default_chunk(n, w), math.min(want, MAX_GROWN, math.floor(n / (8 * w))))
end

-- The most workers one parent keeps busy on tasks of t seconds: a worker
-- needs c * t to run a chunk of c items, the parent b + c * a to send it
-- and take its results (a per item, b per chunk), and the parent serves
-- the chunks one after another, so it keeps w workers busy while
-- w * (b + c * a) <= c * t.  chunk(w) gives c for w workers (the default
-- chunking starts smaller as workers are added; grown_chunk).  The worker's own costs
-- per chunk and per item are left out: they only lengthen a chunk, so the
-- figure is a lower bound in that respect.
local function workers_busy(a, b, t, chunk)
  local lo, hi = 0, 1
  local function ok(w) local c = chunk(w); return w * (b + c * a) <= c * t end
  while ok(hi) do
    lo, hi = hi, hi * 2
    if hi > 2^24 then return math.huge end
  end
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    if ok(mid) then lo = mid else hi = mid end
  end
  return lo
end
M.workers_busy, M.default_chunk, M.grown_chunk, M.fit = workers_busy, default_chunk, grown_chunk, fit

local function fmt_w(w)
  if w == math.huge then return "∞" end
  return tostring(w)
end

local function fmt_rate(per_s) -- items per second
  if per_s >= 1e6 then return ("%.2fM/s"):format(per_s / 1e6) end
  return ("%.0fk/s"):format(per_s / 1e3)
end

------------------------------------------------------------------------
-- parent: the parent's CPU per item and per chunk
------------------------------------------------------------------------

local CHUNKS = { 1, 8, 64, 1024 }
local TASKS = { 1e-6, 10e-6, 100e-6, 1e-3 }

M.parent = { id = "parent", title = "parent CPU per item / per chunk", run = function(ctx)
  local fp = ctx.forkpool
  local q = ctx.quick
  local N = q and 4000 or 100000         -- numbers per map
  local NR = q and 2000 or 30000         -- records per map
  local NA = q and 1000 or 10000         -- apply_async calls
  local NW = q and 1000 or 10000         -- items of the n_jobs sweep
  -- repetitions per sample at each chunk size, so a sample lasts tens of ms at least
  local REPS = q and { 1, 1, 1, 1 } or { 1, 3, 8, 16 }
  return protected(function(s)
    local sq = function(x) return x * x end
    local ident = function(r) return r end
    local items = range(N)
    local recs = W.small_records(NR)
    local pool = s.add(fp.new{ n_jobs = ctx.n_jobs, keep_alive = true })
    pool:map(sq, items) -- warm: workers forked, JIT warm
    pool:map(ident, recs)
    -- records reduced in the workers (map_reduce): the records as items
    -- (encoded for these kept-alive workers), and the records given once
    -- through fork as shared_objects with their indexes as items
    local function score(r) return r.score end
    local function add(x, y) return x + y end
    local want_sum = 0
    for i = 1, NR do want_sum = want_sum + recs[i].score end
    local spool = s.add(fp.new{ n_jobs = ctx.n_jobs, keep_alive = true, shared_objects = recs })
    local function score_at(shared, i) return shared[i].score end
    local indexes = range(NR)
    pool:map_reduce(score, recs, add)
    spool:map_reduce(score_at, indexes, add)

    local function check_sq(res, n, who)
      if res.n ~= nil and res.n ~= n then wrong("%s: results.n = %s, want %d", who, tostring(res.n), n) end
      for i = 1, n do
        if res[i] ~= i * i then wrong("%s: result[%d] = %s, want %d", who, i, tostring(res[i]), i * i) end
      end
    end
    local function check_recs(res, who) W.check_small_records(res, recs, who) end
    local function check_sum(r, who)
      if r ~= want_sum then wrong("%s: %s, want %s", who, tostring(r), tostring(want_sum)) end
    end
    local function counter(n)
      local i = 0
      return function() i = i + 1; if i <= n then return i end end
    end
    local function drain_imap(it)
      local out, k = table_new(N, 0), 0
      for v, idx in it do
        k = k + 1
        if idx ~= k then wrong("imap(iterator): result %d has index %s", k, tostring(idx)) end
        out[k] = v
      end
      out.n = k
      return out
    end

    local contenders = {}
    for k, cs in ipairs(CHUNKS) do
      contenders[#contenders + 1] = { name = "map" .. cs, reps = REPS[k],
        run = function() return pool:map(sq, items, { chunk_size = cs }) end,
        verify = function(r) check_sq(r, N, ("map chunk_size=%d"):format(cs)) end }
      contenders[#contenders + 1] = { name = "rec" .. cs, reps = REPS[k],
        run = function() return pool:map(ident, recs, { chunk_size = cs }) end,
        verify = function(r) check_recs(r, ("records chunk_size=%d"):format(cs)) end }
      contenders[#contenders + 1] = { name = "red" .. cs, reps = REPS[k],
        run = function() return pool:map_reduce(score, recs, add, { chunk_size = cs }) end,
        verify = function(r) check_sum(r, ("map_reduce(records) chunk_size=%d"):format(cs)) end }
      contenders[#contenders + 1] = { name = "sred" .. cs, reps = REPS[k],
        run = function() return spool:map_reduce(score_at, indexes, add, { chunk_size = cs }) end,
        verify = function(r) check_sum(r, ("map_reduce(shared records) chunk_size=%d"):format(cs)) end }
      contenders[#contenders + 1] = { name = "imap" .. cs, reps = REPS[k],
        run = function() return drain_imap(pool:imap(sq, counter(N), { chunk_size = cs })) end,
        verify = function(r) check_sq(r, N, ("imap(iterator) chunk_size=%d"):format(cs)) end }
    end
    contenders[#contenders + 1] = { name = "map_default", reps = REPS[#REPS],
      run = function() return pool:map(sq, items) end,
      verify = function(r) check_sq(r, N, "map (default chunks)") end }
    contenders[#contenders + 1] = { name = "rec_default", reps = REPS[3],
      run = function() return pool:map(ident, recs) end,
      verify = function(r) check_recs(r, "records (default chunks)") end }
    contenders[#contenders + 1] = { name = "imap_default", reps = REPS[#REPS],
      run = function() return drain_imap(pool:imap(sq, counter(N))) end,
      verify = function(r) check_sq(r, N, "imap(iterator) (adaptive chunks)") end }
    contenders[#contenders + 1] = { name = "async", reps = 1,
      run = function()
        local rs = table_new(NA, 0)
        for i = 1, NA do rs[i] = pool:apply_async(sq, { i }) end
        local out = table_new(NA, 0)
        for i = 1, NA do out[i] = rs[i]:get() end
        return out
      end,
      verify = function(r) check_sq(r, NA, "apply_async") end }
    local med = measure_cpu(ctx.runs, contenders)

    local rows = {}
    local contenders_reps = {}
    for _, c in ipairs(contenders) do contenders_reps[c.name] = c.reps or 1 end
    local function per_item(name, n) return med[name].cpu / (n * contenders_reps[name]) end

    -- one path: rows per chunk size, then the fit
    local function path(prefix, n, unit)
      local pts = {}
      local cells = {}
      for _, cs in ipairs(CHUNKS) do
        local y = per_item(prefix .. cs, n)
        pts[#pts + 1] = { x = 1 / cs, y = y }
        local m = med[prefix .. cs]
        local reps = contenders_reps[prefix .. cs]
        cells[#cells + 1] = ("c=%d: %s/%s, %s/chunk (wall %s/%s, sleeps %.2f/chunk)"):format(cs,
          fmt_time(y), unit, fmt_time(y * cs), fmt_time(m.wall / (n * reps)), unit,
          m.sleeps / (reps * math.ceil(n / cs)))
      end
      local a, b, worst = fit(pts)
      return a, b, worst, cells
    end

    local a_n, b_n, w_n, cells_n = path("map", N, "item")
    local a_r, b_r, w_r, cells_r = path("rec", NR, "record")
    local a_i, b_i, w_i, cells_i = path("imap", N, "item")
    local a_rr, b_rr, w_rr, cells_rr = path("red", NR, "record")
    local a_sr, b_sr, w_sr, cells_sr = path("sred", NR, "record")
    local function fit_cell(a, b, worst)
      return ("a = %s/item, b = %s/chunk (fit within %.0f%%)"):format(fmt_time(a), fmt_time(b), worst * 100)
    end
    local function feed(a, b, c) return 1 / (a + b / c) end
    local dc_n, dc_r = default_chunk(N, ctx.n_jobs), default_chunk(NR, ctx.n_jobs)
    -- what the default chunks grow to (x*x and returning a record: the
    -- workers' time per item is next to nothing)
    local gc_n, gc_r = grown_chunk(N, ctx.n_jobs, 0), grown_chunk(NR, ctx.n_jobs, 0)
    local t_async = med.async.cpu / NA

    rows[#rows + 1] = { title = q and ("parent CPU per item / per chunk (QUICK, %d items)"):format(N) or nil,
      forkpool = fit_cell(a_n, b_n, w_n), baseline = "map(x*x), chunk_size 1, 8, 64, 1024",
      base_value = ("%s items/map"):format(N),
      ratio = ("feeds %s at c=%d, %s at c=1024"):format(fmt_rate(feed(a_n, b_n, gc_n)), gc_n,
        fmt_rate(feed(a_n, b_n, 1024))),
      target = "report", result = "info",
      note = ("parent CPU = getrusage(RUSAGE_SELF) user+system of the parent (= os.clock(); the workers "
        .. "are not counted), median over the runs of each sample (a sample = 1-16 maps, so that it "
        .. "lasts tens of ms at least); warm keep_alive pool, n_jobs = %d. Per chunk size: CPU per item = a + b / c, "
        .. "so a (per item) and b (per chunk) come from a least-squares fit over c = 1, 8, 64, 1024; "
        .. "'fit within' = the largest relative residual. 'feeds' = items/s one parent can send and "
        .. "take back = 1 / (a + b / c). Every result checked. Per chunk size: %s"):format(ctx.n_jobs,
        table.concat(cells_n, "; ")) }
    -- a fitted path over the NR records, at its grown default chunk and at 1024
    local function records_row(a, b, worst, cells, baseline, what)
      return { forkpool = fit_cell(a, b, worst), baseline = baseline,
        base_value = ("%d records/map"):format(NR),
        ratio = ("feeds %s at c=%d, %s at c=1024"):format(fmt_rate(feed(a, b, gc_r)), gc_r,
          fmt_rate(feed(a, b, 1024))),
        target = "report", result = "info",
        note = ("%s. Per chunk size: %s"):format(what, table.concat(cells, "; ")) }
    end
    rows[#rows + 1] = records_row(a_r, b_r, w_r, cells_r, "map(records), chunk_size 1, 8, 64, 1024",
      "records {id=, name=, tags={3 strings}, score=}, fn returns its record (the codec both ways)")
    rows[#rows + 1] = records_row(a_rr, b_rr, w_rr, cells_rr, "map_reduce(records), chunk_size 1, 8, 64, 1024",
      "the same records as items, fn returns the record's score, summed in the workers "
        .. "(map_reduce: one value per chunk comes back; the items are still encoded for these "
        .. "kept-alive workers)")
    rows[#rows + 1] = records_row(a_sr, b_sr, w_sr, cells_sr,
      "map_reduce(shared records), chunk_size 1, 8, 64, 1024",
      "the records given once to the workers through fork (shared_objects of a keep_alive "
        .. "pool), the items their indexes; fn(shared, i) returns shared[i].score, summed in the "
        .. "workers")
    rows[#rows + 1] = { forkpool = fit_cell(a_i, b_i, w_i),
      baseline = "imap(x*x, iterator), chunk_size 1, 8, 64, 1024", base_value = ("%d items/imap"):format(N),
      ratio = ("feeds %s at c=1024"):format(fmt_rate(feed(a_i, b_i, 1024))),
      target = "report", result = "info",
      note = ("imap over a closure counting 1..n (length unknown), results consumed as they come "
        .. "(index checked). Per chunk size: %s"):format(table.concat(cells_i, "; ")) }
    rows[#rows + 1] = { forkpool = ("%s/item (default chunks)"):format(fmt_time(per_item("map_default", N))),
      baseline = ("map(x*x), default chunk size %d, grown to %d"):format(dc_n, gc_n),
      base_value = ("fit predicts %s/item at %d, %s at %d"):format(fmt_time(a_n + b_n / dc_n), dc_n,
        fmt_time(a_n + b_n / gc_n), gc_n),
      ratio = ("imap(iterator), adaptive chunks: %s/item; records, default chunk %d (grown to %d): %s/record")
        :format(fmt_time(per_item("imap_default", N)), dc_r, gc_r, fmt_time(per_item("rec_default", NR))),
      target = "report", result = "info",
      note = "maps over arrays with no chunk_size start at the default size, ceil(n / (64 n_jobs)), and "
        .. "grow it while the items prove fast (to 2 ms of work, at most 4096 items, at most 1 / (4 n_jobs) "
        .. "of the items not yet sent: 'grown to' is that bound half way through)." }
    rows[#rows + 1] = { forkpool = ("%s/call"):format(fmt_time(t_async)),
      baseline = ("apply_async(x*x, {i}) ×%d, then get() each"):format(NA),
      base_value = ("feeds %s calls"):format(fmt_rate(1 / t_async)),
      ratio = ("%d-item map at c=1: %s/item"):format(N, fmt_time(per_item("map1", N))),
      target = "report", result = "info",
      note = "apply_async: parent CPU of the submit loop and the get loop together, per call (the "
        .. "outstanding calls of one function share a job whose chunks grow: forkpool.batch)." }

    -- the parent's cost per chunk against the number of workers
    local sweep = {}
    local items_w = range(NW)
    for _, nj in ipairs({ 2, 8, 32, 128 }) do
      local p = fp.new{ n_jobs = nj, keep_alive = true }
      local ok, res = pcall(function()
        p:map(sq, items_w, { chunk_size = 1 })
        local m = measure_cpu(ctx.runs, { { name = "w", reps = 1,
          run = function() return p:map(sq, items_w, { chunk_size = 1 }) end,
          verify = function(r) check_sq(r, NW, ("map chunk_size=1, n_jobs=%d"):format(nj)) end } })
        return m.w
      end)
      p:close()
      if not ok then error(res, 0) end
      sweep[#sweep + 1] = { nj = nj, cpu = res.cpu / NW, wall = res.wall / NW }
    end
    local b2, b128 = sweep[1].cpu, sweep[#sweep].cpu
    local cells = {}
    for _, x in ipairs(sweep) do
      cells[#cells + 1] = ("%d: %s"):format(x.nj, fmt_time(x.cpu))
    end
    rows[#rows + 1] = { forkpool = table.concat(cells, ", "),
      baseline = ("parent CPU per chunk vs n_jobs (c=1, %d items)"):format(NW),
      base_value = ("wall/chunk at 128: %s"):format(fmt_time(sweep[#sweep].wall)),
      ratio = ("128/2 " .. fmt_ratio(sweep[#sweep].cpu / sweep[1].cpu)),
      target = "report", result = "info",
      note = "a fresh keep_alive pool per n_jobs (one untimed map first), map of x*x with chunk_size = 1: "
        .. "the parent's CPU per chunk as the number of workers grows (on 2 cores, oversubscribed)." }
    -- workers one parent keeps busy
    local NT = 1e6
    for _, t in ipairs(TASKS) do
      local function chunk_of(n) return function(w) return grown_chunk(n, w, t) end end
      local wn = workers_busy(a_n, b_n, t, chunk_of(NT))
      local wr = workers_busy(a_r, b_r, t, chunk_of(NT))
      local wa = workers_busy(0, t_async, t, function() return 1 end)
      -- the same with b as measured with 128 workers (the sweep above)
      local wn128 = workers_busy(a_n, b_n + (b128 - b2), t, chunk_of(NT))
      local wr128 = workers_busy(a_r, b_r + (b128 - b2), t, chunk_of(NT))
      -- records reduced in the workers: as items, and shared through fork
      local wrr = workers_busy(a_rr, b_rr, t, chunk_of(NT))
      local wsr = workers_busy(a_sr, b_sr, t, chunk_of(NT))
      local wsr128 = workers_busy(a_sr, b_sr + (b128 - b2), t, chunk_of(NT))
      local pass = math.min(wn, wr) >= 64
      local function lim(a) return a > 0 and fmt_w(math.floor(t / a)) or "∞" end
      -- and for a map of 1e5 items (smaller chunks for the same workers)
      local wn5 = workers_busy(a_n, b_n, t, chunk_of(1e5))
      local wr5 = workers_busy(a_r, b_r, t, chunk_of(1e5))
      rows[#rows + 1] = { forkpool = ("numbers %s, records %s (n = 1e5: %s, %s)"):format(fmt_w(wn), fmt_w(wr),
        fmt_w(wn5), fmt_w(wr5)),
        baseline = ("workers kept busy, tasks of %s"):format(fmt_time(t)),
        base_value = ("b of 128 workers: %s, %s; apply_async %s; records reduced in the workers: "
          .. "as items %s, shared %s (b of 128: %s)"):format(fmt_w(wn128), fmt_w(wr128), fmt_w(wa),
          fmt_w(wrr), fmt_w(wsr), fmt_w(wsr128)),
        ratio = ("limit t/a: %s, %s; reduced %s, shared %s"):format(lim(a_n), lim(a_r), lim(a_rr), lim(a_sr)),
        target = t >= 10e-6 and "≥ 64 (map)" or "report",
        result = t >= 10e-6 and verdict(pass) or "info",
        note = "workers one parent keeps busy = the largest w with w * (b + c * a) ≤ c * t: a worker "
          .. "runs a chunk of c items in c * t, the parent spends b + c * a on each chunk and serves "
          .. "chunks one after another; c = the chunk size a map of n items settles at on w workers: the "
          .. "default ceil(n / (64 w)) grown to hold 2 ms of work, at most 4096 items and n / (8 w) (the "
          .. "tail bound half way through), n = 1e6 items (in brackets n = 1e5; a, b from the fits above, "
          .. "measured at n_jobs = 2). As c grows the "
          .. "limit is t / a. apply_async: t / (its CPU per call). The workers' own costs are left "
          .. "out (they lengthen a chunk: more workers fit). 'b of 128 workers': the same with b "
          .. "raised by what the parent's CPU per chunk grew from n_jobs = 2 to 128 (the n_jobs row)." }
    end

    return rows
  end)
end }

------------------------------------------------------------------------
-- oversub: n_jobs = 2, 8, 32, 128 on this 2-core machine
------------------------------------------------------------------------

-- A task of `iters` Park-Miller steps (as the cpu workloads of workloads.lua).
local function make_task(iters)
  return function(x)
    local v = x
    for _ = 1, iters do v = (v * 16807) % 2147483647 end
    return v
  end
end

local function calibrate(seconds)
  local probe = 200000
  local f = make_task(probe)
  for i = 1, 5 do f(i) end
  local ts = {}
  for r = 1, 7 do
    local t0 = now()
    f(r + 1)
    ts[r] = now() - t0
  end
  return math.max(1, math.floor(seconds / (median(ts) / probe) + 0.5))
end

-- Sum of the workers' Rss and Pss (smaps_rollup) and the parent's.
local function pool_memory(pool)
  local rss, pss, n = 0, 0, 0
  for _, pid in pairs(pool:worker_pids()) do
    local sm = util.smaps_rollup(pid)
    if sm then rss, pss, n = rss + sm.Rss, pss + sm.Pss, n + 1 end
  end
  local me = util.smaps_rollup(util.getpid()) or {}
  return { rss = rss, pss = pss, n = n, parent_pss = me.Pss, parent_rss = me.Rss }
end

local OVER = { 2, 8, 32, 128 }

pcall(ffi.cdef, "int setpriority(int which, unsigned int who, int prio);")
-- worker_init of the 'nice' variant: the worker lowers its own priority,
-- so that the parent wins the CPU when workers outnumber the cores
local function nice_worker() ffi.C.setpriority(0, 0, 10) end

M.oversub = { id = "oversub", title = "oversubscribed: n_jobs 2..128 on 2 cores", run = function(ctx)
  local fp = ctx.forkpool
  local N = ctx.quick and 1000 or 20000
  local secs = 50e-6
  local jobs = ctx.quick and { 2, 8, 32 } or OVER
  return protected(function()
    local iters = calibrate(secs)
    local task = make_task(iters)
    local items = range(N)
    local expect = table_new(N, 0)
    local t0 = now()
    for i = 1, N do expect[i] = task(i) end -- also warms the JIT
    local t_seq = now() - t0
    local function check(res, who)
      for i = 1, N do
        if res[i] ~= expect[i] then
          wrong("%s: result[%d] = %s, want %s", who, i, tostring(res[i]), tostring(expect[i]))
        end
      end
    end
    local first, warm, wcpu, mem, shape = {}, {}, {}, {}, {}
    -- forkpool.dispatch's debug record: the warm map's chunks (count, largest)
    local dispatch = require "forkpool.dispatch"
    -- the runs: each n_jobs, and the largest again with niced workers
    local top = jobs[#jobs]
    local variants = {}
    for _, nj in ipairs(jobs) do variants[#variants + 1] = nj end
    variants[#variants + 1] = "nice"
    variants[#variants + 1] = "big"
    local big_cs = default_chunk(N, 2)
    for _, v in ipairs(variants) do first[v], warm[v], wcpu[v] = {}, {}, {} end
    for r = 1, ctx.runs do
      for k = 0, #variants - 1 do
        local v = variants[(r - 1 + k) % #variants + 1]
        local nj = (v == "nice" or v == "big") and top or v
        gc()
        local t_a = now()
        local pool = fp.new{ n_jobs = nj, keep_alive = true }
        local ok, err = pcall(function()
          -- forks nj workers, then the map
          local res = pool:map(task, items, v == "nice" and { worker_init = nice_worker } or nil)
          local opts = v == "big" and { chunk_size = big_cs } or nil
          local t_b = now()
          check(res, ("first map, n_jobs=%d"):format(nj))
          res = nil -- luacheck: ignore
          gc()
          local c0 = usage()
          local t_c = now()
          local log = r == 1 and { chunks = {} } or nil
          dispatch.debug = log
          res = pool:map(task, items, opts)     -- the warm pool
          dispatch.debug = nil
          local t_d = now()
          local c1 = usage()
          check(res, ("warm map, n_jobs=%d"):format(nj))
          first[v][#first[v] + 1] = t_b - t_a
          warm[v][#warm[v] + 1] = t_d - t_c
          wcpu[v][#wcpu[v] + 1] = c1 - c0
          if r == 1 then
            mem[v] = pool_memory(pool)
            local biggest = 0
            for _, ch in ipairs(log.chunks) do biggest = math.max(biggest, ch.count) end
            shape[v] = ("%d chunks, largest %d"):format(#log.chunks, biggest)
          end
        end)
        pool:close()
        if not ok then error(err, 0) end
      end
    end
    local rows = {}
    local base_first, base_warm = median(first[2]), median(warm[2])
    for i, nj in ipairs(jobs) do
      local tf, tw = median(first[nj]), median(warm[nj])
      local rel = base_warm / tw
      local m = mem[nj]
      rows[#rows + 1] = {
        title = i == 1 and (ctx.quick and ("oversubscribed: %d tasks of %s, n_jobs %s"):format(N,
          fmt_time(secs), table.concat(jobs, ", ")) or nil) or nil,
        forkpool = ("n_jobs=%d: warm %s (%.0f tasks/s), first %s; %s"):format(nj, fmt_time(tw), N / tw,
          fmt_time(tf), shape[nj] or "?"),
        baseline = nj == 2 and "n_jobs = 2" or "vs n_jobs = 2",
        base_value = ("parent CPU %s/task; workers PSS %s (%s each), RSS %s"):format(
          fmt_time(median(wcpu[nj]) / N), fmt_bytes(m.pss), fmt_bytes(m.pss / m.n), fmt_bytes(m.rss)),
        ratio = nj == 2 and ("seq/warm %s"):format(fmt_ratio(t_seq / tw))
          or ("warm %s, first %s"):format(fmt_ratio(rel), fmt_ratio(base_first / tf)),
        target = nj == 2 and "" or "warm ≥ 0.8×",
        result = nj == 2 and "info" or verdict(rel >= 0.8),
        note = i == 1 and ("%d tasks of ~%s CPU (%d Park-Miller steps, calibrated; sequential loop "
          .. "%s) mapped with the default chunks (starting at ceil(n / (64 n_jobs)), grown while the items "
          .. "prove fast; 'chunks, largest': the warm map of round 1) on a fresh keep_alive "
          .. "pool per n_jobs: 'first' = forkpool.new + the first map, which forks the workers; "
          .. "'warm' = a second map on the same pool. Ratios are throughput relative to n_jobs = 2 "
          .. "(higher is better; the target: the warm map at n_jobs = 8, 32, 128 keeps at least 0.8× "
          .. "the throughput of n_jobs = 2: oversubscription must not collapse it). Medians of %d "
          .. "round(s), the n_jobs order rotating per round. Parent CPU = getrusage of the parent "
          .. "during the warm map, per task. Memory: /proc/<pid>/smaps_rollup of every worker after "
          .. "the warm map of round 1, summed (Pss shares pages among the sharers; Rss counts them "
          .. "in each worker).")
          :format(N, fmt_time(secs), iters, fmt_time(t_seq), ctx.runs) or nil,
      }
    end
    do
      local tf, tw = median(first.nice), median(warm.nice)
      rows[#rows + 1] = {
        forkpool = ("n_jobs=%d, workers at nice 10: warm %s (%.0f tasks/s), first %s; %s"):format(top,
          fmt_time(tw), N / tw, fmt_time(tf), shape.nice or "?"),
        baseline = "vs n_jobs = 2",
        base_value = ("parent CPU %s/task"):format(fmt_time(median(wcpu.nice) / N)),
        ratio = ("warm %s, first %s"):format(fmt_ratio(base_warm / tw), fmt_ratio(base_first / tf)),
        target = "(experiment)", result = "info",
        note = "the same pool with worker_init = setpriority(PRIO_PROCESS, 0, 10) in each worker "
          .. "(the parent keeps nice 0): whether giving the parent the CPU first keeps oversubscribed "
          .. "throughput up; an experiment for the design, not something forkpool does." }
    end
    do
      local tw = median(warm.big)
      rows[#rows + 1] = {
        forkpool = ("n_jobs=%d, warm map with chunk_size = %d: %s (%.0f tasks/s)"):format(top, big_cs,
          fmt_time(tw), N / tw),
        baseline = "vs n_jobs = 2",
        base_value = ("parent CPU %s/task"):format(fmt_time(median(wcpu.big) / N)),
        ratio = ("warm %s"):format(fmt_ratio(base_warm / tw)),
        target = "(experiment)", result = "info",
        note = ("the warm map of n_jobs = %d with the chunk size n_jobs = 2 gets by default "
          .. "(ceil(n / 128) = %d items, ~%s of work a chunk; the default starts at ceil(n / (64 n_jobs)) = %d "
          .. "and grows): "
          .. "whether the small chunks of the default rule cost the throughput when the workers "
          .. "outnumber the cores; an experiment for the design, not something forkpool does.")
          :format(top, big_cs, fmt_time(big_cs * secs), default_chunk(N, top)) }
    end
    local m = mem[top]
    if VERBOSE and m then
      io.stderr:write(("  parent PSS %s, RSS %s\n"):format(fmt_bytes(m.parent_pss), fmt_bytes(m.parent_rss)))
    end
    return rows
  end)
end }

return M
