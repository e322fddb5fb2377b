-- forkpool example: word counts over a large text file, and the lesson of
-- task granularity.
--
-- It counts words (runs of ASCII letters, lower-cased) several ways and
-- prints each time and its speedup over the plain loop:
--   (a)  a plain sequential loop over io.lines;
--   (a2) the same loop over a few big byte ranges of the file, in one
--        process (reading big blocks is itself a little faster);
--   (b)  the naive parallel version, pool:imap(count_line, io.lines(path)):
--        one task per line, with far too little work per task.  The parent
--        reads and encodes every line and decodes and merges every per-line
--        result, serially, and that costs more than counting the line: this
--        is SLOWER than the loop;
--   (c)  tasks that do real work: the file is cut into a few byte ranges
--        (on line boundaries) and each task reads and counts its range;
--        (c1) each task returns its range's counts, the parent merges them;
--        (c2) each worker adds its ranges into its worker_state (set up by
--        worker_init) and hands its totals back once, from worker_exit; the
--        parent merges pool:get_exit_results();
--   (d)  one task per line again, but reduced in the workers:
--        pool:map_reduce(count_line, io.lines(path), merge).  The parent
--        reads the file in blocks (the workers cut the lines) and only
--        merges one table per chunk: the per-line function of (b), without
--        its per-line cost in the parent.
-- All approaches must give identical counts (the script exits non-zero if
-- not).

-- Run (from the checkout, after `make`):
--   LUA_CPATH="build/?.so;;" LUA_PATH="lua/?.lua;lua/?/init.lua;;" \
--     luajit examples/wordcount.lua [--quick] [--mb N] [FILE]
-- Without FILE it generates a deterministic text file of N MB (default 50;
-- 2 with --quick or FORKPOOL_EXAMPLE_QUICK=1) in a temporary file and
-- removes it afterwards.  The last line is "ok: ..." when all counts agree.
local forkpool = require "forkpool"
local ffi = require "ffi"

ffi.cdef [[
  struct fp_ex_timespec { long tv_sec; long tv_nsec; };
  int clock_gettime(int clk, struct fp_ex_timespec *ts);
]]
local ts = ffi.new("struct fp_ex_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

------------------------------------------------------------------------
-- Arguments
------------------------------------------------------------------------
local quick = os.getenv("FORKPOOL_EXAMPLE_QUICK") == "1"
local mb, path
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--quick" then
      quick = true
    elseif a == "--mb" then
      i = i + 1
      mb = tonumber(arg[i]) or error("--mb expects a number")
    elseif a:sub(1, 2) == "--" then
      io.stderr:write("usage: luajit examples/wordcount.lua [--quick] [--mb N] [FILE]\n")
      os.exit(2)
    else
      path = a
    end
    i = i + 1
  end
end
mb = mb or (quick and 2 or 50)
if path then
  local f, err = io.open(path, "rb")
  if not f then
    io.stderr:write("wordcount: ", err, "\n")
    os.exit(2)
  end
  f:close()
end

------------------------------------------------------------------------
-- A deterministic text to count, when no file is given: words from a
-- made-up vocabulary with a Zipf-like frequency, some capitalised, some
-- followed by punctuation, 4-11 words per line.
------------------------------------------------------------------------
local function generate(file, bytes)
  local seed = 12345
  local function rand(n) -- Park-Miller generator (exact in doubles), 1..n
    seed = seed * 16807 % 2147483647
    return seed % n + 1
  end
  local syll = { "ka", "lo", "mi", "ne", "ra", "to", "su", "vi", "an", "el",
                 "or", "um", "ist", "ber", "gon", "dra", "qu", "zen", "ph", "y" }
  local vocab = {}
  for v = 1, 6000 do
    local w = {}
    for s = 1, 1 + rand(3) do w[s] = syll[rand(#syll)] end
    vocab[v] = table.concat(w)
  end
  local punct = { ",", ",", ".", ";", "!", "?", " -" }
  local out = assert(io.open(file, "wb"))
  local written, buf, nb = 0, {}, 0
  while written < bytes do
    local line, n = {}, 3 + rand(8)
    for k = 1, n do
      -- u^3 concentrates picks on the first words (a Zipf-like skew)
      local u = (rand(1000000) - 1) / 1000000
      local w = vocab[math.floor(u * u * u * #vocab) + 1]
      if k == 1 or rand(10) == 1 then w = w:sub(1, 1):upper() .. w:sub(2) end
      if rand(8) == 1 then w = w .. punct[rand(#punct)] end
      line[k] = w
    end
    local s = table.concat(line, " ")
    nb = nb + 1
    buf[nb] = s
    written = written + #s + 1
    if nb == 4096 then
      out:write(table.concat(buf, "\n", 1, nb), "\n")
      nb = 0
    end
  end
  if nb > 0 then out:write(table.concat(buf, "\n", 1, nb), "\n") end
  out:close()
end

------------------------------------------------------------------------
-- Counting
------------------------------------------------------------------------

-- The per-item work: count the words of one string into t.
local function count_into(t, s)
  for w in s:lower():gmatch("%a+") do
    t[w] = (t[w] or 0) + 1
  end
  return t
end

local function merge_into(total, t)
  for w, n in pairs(t) do total[w] = (total[w] or 0) + n end
end

-- Cut the file into n byte ranges that start and end on line boundaries.
local function byte_ranges(file, n)
  local f = assert(io.open(file, "rb"))
  local size = f:seek("end")
  local ranges, start = {}, 0
  for k = 1, n do
    local stop = size
    if k < n then
      stop = math.max(start, math.floor(size * k / n))
      f:seek("set", stop)
      local rest = f:read("*l")          -- move to the end of this line
      stop = rest and f:seek("cur") or size
    end
    if stop > start then ranges[#ranges + 1] = { start, stop - start } end
    start = stop
  end
  f:close()
  return ranges
end

-- The task of (c): read one byte range of the file and count its words.
local function count_range(file, range, t)
  local f = assert(io.open(file, "rb"))
  f:seek("set", range[1])
  local data = f:read(range[2])
  f:close()
  return count_into(t or {}, data)
end

------------------------------------------------------------------------
-- Run all approaches
------------------------------------------------------------------------
local generated = false
if not path then
  path = os.tmpname()
  generated = true
end

local ok_run, err = pcall(function()
  if generated then
    local t0 = now()
    generate(path, mb * 1e6)
    io.write(("generated %s (%d MB) in %.2f s\n"):format(path, mb, now() - t0))
  end
  local n_lines = 0
  for _ in io.lines(path) do n_lines = n_lines + 1 end
  local f = assert(io.open(path, "rb"))
  local size = f:seek("end")
  f:close()

  local pool = forkpool.new{ keep_alive = true }
  local n_jobs = pool.n_jobs
  io.write(("file: %s, %.1f MB, %d lines; %d workers\n"):format(path, size / 1e6, n_lines, n_jobs))
  -- warm the workers up (a fork costs a few ms), so the times below are
  -- about the maps, not about starting processes
  pool:map(function(x) return x end, { 1, 2, 3, 4 })

  local results, times = {}, {}

  -- (a) sequential
  local t0 = now()
  local seq = {}
  for line in io.lines(path) do count_into(seq, line) end
  times.a = now() - t0
  results.a = seq

  -- (a2) sequential over byte ranges
  t0 = now()
  local seqr = {}
  for _, r in ipairs(byte_ranges(path, 4 * n_jobs)) do count_range(path, r, seqr) end
  times.a2 = now() - t0
  results.a2 = seqr

  -- (b) naive: one task per line, trivial work per task
  t0 = now()
  local naive = {}
  for counts in pool:imap(function(line) return count_into({}, line) end, io.lines(path)) do
    merge_into(naive, counts)
  end
  times.b = now() - t0
  results.b = naive

  -- (c1) byte ranges: a few big tasks, the parent merges their counts
  t0 = now()
  local ranges = byte_ranges(path, 4 * n_jobs)
  local by_range = {}
  for _, counts in ipairs(pool:map(function(r) return count_range(path, r) end, ranges)) do
    merge_into(by_range, counts)
  end
  times.c1 = now() - t0
  results.c1 = by_range

  -- (d) one task per line, reduced in the workers: the counts of a chunk's
  -- lines are merged there, one table per chunk comes back
  t0 = now()
  results.d = pool:map_reduce(function(line) return count_into({}, line) end, io.lines(path),
    function(total, counts)
      merge_into(total, counts)
      return total
    end)
  times.d = now() - t0
  pool:close()

  -- (c2) byte ranges with a per-worker reduce: each worker accumulates
  -- into its worker_state and returns its totals once, from worker_exit.
  -- Without keep_alive the workers stop when the map returns, so their
  -- exit results are there right after it.
  t0 = now()
  local rpool = forkpool.new{ use_worker_state = true }
  rpool:map(function(state, r) count_range(path, r, state.counts) end,
    byte_ranges(path, 4 * rpool.n_jobs), {
      worker_init = function(state) state.counts = {} end,
      worker_exit = function(state) return state.counts end,
    })
  local per_worker = {}
  for _, counts in ipairs(rpool:get_exit_results()) do merge_into(per_worker, counts) end
  rpool:close()
  times.c2 = now() - t0
  results.c2 = per_worker

  -- Report and verify
  local names = {
    a = "(a) sequential loop over io.lines",
    a2 = "(a2) sequential loop over byte ranges",
    b = "(b) naive pool:imap, one task per line",
    c1 = "(c1) pool:map over byte ranges, merge per range",
    c2 = "(c2) byte ranges + per-worker reduce (worker_exit)",
    d = "(d) pool:map_reduce over io.lines, one task per line",
  }
  for _, k in ipairs{ "a", "a2", "b", "c1", "c2", "d" } do
    io.write(("%-52s %7.3f s  speedup %5.2fx\n"):format(names[k], times[k], times.a / times[k]))
  end

  local distinct, total = 0, 0
  for _, n in pairs(seq) do distinct = distinct + 1; total = total + n end
  for _, k in ipairs{ "a2", "b", "c1", "c2", "d" } do
    local r, m = results[k], 0
    for w, n in pairs(r) do
      m = m + 1
      if seq[w] ~= n then
        error(("%s: %q counted %d times, the loop counted %s"):format(names[k], w, n, tostring(seq[w])), 0)
      end
    end
    if m ~= distinct then
      error(("%s: %d distinct words, the loop found %d"):format(names[k], m, distinct), 0)
    end
  end

  -- the ten most frequent words
  local top = {}
  for w, n in pairs(seq) do top[#top + 1] = { w, n } end
  table.sort(top, function(x, y) return x[2] > y[2] or (x[2] == y[2] and x[1] < y[1]) end)
  local show = {}
  for i = 1, math.min(10, #top) do show[i] = top[i][1] .. "=" .. top[i][2] end
  io.write("top words: ", table.concat(show, " "), "\n")

  io.write(("ok: %d words, %d distinct, all approaches agree; fastest parallel speedup %.2fx\n"):format(
    total, distinct, times.a / math.min(times.c1, times.c2)))
end)

if generated then os.remove(path) end
if not ok_run then
  io.stderr:write("wordcount: ", tostring(err), "\n")
  os.exit(1)
end
