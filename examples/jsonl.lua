-- forkpool example: transform JSON lines with lua-cjson in the workers.
--
-- Reads order records, one JSON object per line, and writes one summary
-- object per order, in input order: the order's total, its number of
-- items, a normalised country code and the most expensive SKU.  A line
-- that is not a JSON object is reported on stderr with its line number and
-- skipped; the run goes on.  The workers require cjson themselves.
--
-- Three ways, which must give byte-identical output:
--   (a) a plain loop over io.lines: the reference;
--   (b) pool:imap(summarize, io.lines(path)): one line per task, results
--       in input order.  Simple, but the parent still reads every line,
--       sends it to a worker and takes its result back, serially: about
--       1.5 µs a line, against 5-8 µs of cjson work per line, so the
--       speedup stays small (on a 2-core machine: 0.6x-1.4x, noisy);
--   (c) pool:imap over byte ranges of the file (about 1 MB each, cut on
--       line boundaries): each task reads its range itself and returns its
--       output lines as one string, with its line count and its bad lines;
--       the parent only writes blocks, in order, as they arrive.  This is
--       the version to copy for big files, and the one whose output goes
--       to OUT.

-- Run (from the checkout, after `make`):
--   LUA_CPATH="build/?.so;;" LUA_PATH="lua/?.lua;lua/?/init.lua;;" \
--     luajit examples/jsonl.lua [--quick] [-o OUT.jsonl] [IN.jsonl]
-- Output goes to OUT.jsonl, or to stdout without -o (or with -o -); the
-- report goes to stderr.  Without IN.jsonl it generates 100,000 orders
-- (5,000 with --quick or FORKPOOL_EXAMPLE_QUICK=1), with line 1000 broken
-- on purpose, in a temporary file that it removes afterwards.  (The check
-- holds the three outputs in memory.)  The last line on stderr is
-- "ok: N lines in, M lines out, K skipped, ...".
local forkpool = require "forkpool"
local ffi = require "ffi"
local buffer = require "string.buffer"

ffi.cdef [[
  struct fp_ex_timespec { long tv_sec; long tv_nsec; };
  int clock_gettime(int clk, struct fp_ex_timespec *ts);
]]
local ts = ffi.new("struct fp_ex_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local function usage()
  io.stderr:write("usage: luajit examples/jsonl.lua [--quick] [-o OUT.jsonl] [IN.jsonl]\n")
  os.exit(2)
end

local quick = os.getenv("FORKPOOL_EXAMPLE_QUICK") == "1"
local in_path, out_path
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--quick" then
      quick = true
    elseif a == "-o" then
      i = i + 1
      out_path = arg[i] or usage()
    elseif a:sub(1, 1) == "-" then
      usage()
    else
      in_path = a
    end
    i = i + 1
  end
end

------------------------------------------------------------------------
-- The transform, run in the workers (and once sequentially, to compare).
-- It requires cjson itself: in a worker the module is already loaded (the
-- workers are forked from this process), so require just returns it.
------------------------------------------------------------------------
-- One JSON value: null for nil, else cjson's encoding.
local function json_value(encode, v)
  if v == nil then return "null" end
  return encode(v)
end

-- The transform of one decoded order (errors on records of the wrong
-- shape are caught by summarize below).
local function transform(cjson, order)
  local total, n_items, top_sku, top_price = 0, 0, nil, -1
  for _, it in ipairs(order.items or {}) do
    local qty, price = tonumber(it.qty) or 0, tonumber(it.price) or 0
    total = total + qty * price
    n_items = n_items + qty
    if price > top_price then top_sku, top_price = it.sku, price end
  end
  total = math.floor(total * 100 + 0.5) / 100
  local country = type(order.country) == "string" and order.country:upper() or nil
  -- A template rather than cjson.encode{...}: the keys always come in this
  -- order (a table's are in hash order, which can differ from one run or
  -- process to the next), and it is faster.
  local enc = cjson.encode
  return ('{"id":%s,"user":%s,"country":%s,"total":%s,"n_items":%s,"top_sku":%s,"big":%s}'):format(
    json_value(enc, order.id), json_value(enc, order.user), json_value(enc, country),
    enc(total), enc(n_items), json_value(enc, top_sku), tostring(total >= 500))
end

-- The task of (b): one line -> its output line, or { error = message }.
local function summarize(line)
  local cjson = require "cjson"
  local ok, order = pcall(cjson.decode, line)
  if not ok then return { error = tostring(order) } end
  if type(order) ~= "table" or order[1] ~= nil then return { error = "not a JSON object" } end
  local res
  ok, res = pcall(transform, cjson, order)
  if not ok then return { error = tostring(res) } end
  return res
end

-- The task of (c): transform the lines in one byte range of the file.
-- Returns the output lines as one string, the number of input lines, and
-- the bad lines as { line number within the range, message } pairs.
local function transform_range(path, range)
  local f = assert(io.open(path, "rb"))
  f:seek("set", range[1])
  local data = f:read(range[2]) or ""
  f:close()
  local out, errors, n, pos = buffer.new(), {}, 0, 1
  while pos <= #data do
    local nl = data:find("\n", pos, true) or #data + 1
    n = n + 1
    local res = summarize(data:sub(pos, nl - 1))
    if type(res) == "table" then
      errors[#errors + 1] = { n, res.error }
    else
      out:put(res, "\n")
    end
    pos = nl + 1
  end
  return { out = out:tostring(), n_lines = n, errors = errors }
end

local function file_size(path)
  local f = assert(io.open(path, "rb"))
  local size = f:seek("end")
  f:close()
  return size
end

-- Cut the file into n byte ranges that end on line boundaries:
-- { offset, length } pairs.
local function byte_ranges(path, n)
  local f = assert(io.open(path, "rb"))
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

------------------------------------------------------------------------
-- Generated input: N orders, line 1000 (if N >= 1000) broken on purpose.
------------------------------------------------------------------------
local function generate(path, n)
  local cjson = require "cjson"
  local seed = 4242
  local function rand(k) -- Park-Miller generator, 1..k
    seed = seed * 16807 % 2147483647
    return seed % k + 1
  end
  local countries = { "de", "fr", "us", "jp", "br", "in", "ng", "se" }
  local f = assert(io.open(path, "wb"))
  for id = 1, n do
    if id == 1000 then
      f:write('{"id": 1000, "user": "user1000", "items": [{"sku": "X-1", "qty": 2,\n')
    else
      local items = {}
      for k = 1, rand(6) do
        items[k] = { sku = ("SKU-%04d"):format(rand(5000)), qty = rand(4),
                     price = rand(20000) / 100 }
      end
      f:write(cjson.encode{
        id = id, user = "user" .. rand(20000), country = countries[rand(#countries)],
        ts = ("2024-%02d-%02dT%02d:%02d:00Z"):format(rand(12), rand(28), rand(24) - 1, rand(60) - 1),
        items = items, note = rand(4) == 1 and "gift wrap, please" or nil,
      }, "\n")
    end
  end
  f:close()
end

local generated = false
if in_path then
  local f, err = io.open(in_path, "rb")
  if not f then
    io.stderr:write("jsonl: ", err, "\n")
    os.exit(2)
  end
  f:close()
else
  in_path = os.tmpname()
  generated = true
end

local ok_run, err = pcall(function()
  if generated then
    local n = quick and 5000 or 100000
    local t0 = now()
    generate(in_path, n)
    io.stderr:write(("generated %d orders in %s (%.2f s)\n"):format(n, in_path, now() - t0))
  end
  local out = io.stdout
  if out_path and out_path ~= "-" then out = assert(io.open(out_path, "wb")) end

  -- Start the workers first, while this process is small: a worker forked
  -- later inherits whatever the parent's heap holds by then, and its first
  -- garbage collections touch (and so copy) those pages.
  local pool = forkpool.new{ keep_alive = true }
  local n_jobs = pool.n_jobs
  pool:map(function(x) return x end, { 1, 2 })

  -- (a) the plain loop: the reference output
  local t0 = now()
  local ref, n_lines, n_bad = buffer.new(), 0, 0
  for line in io.lines(in_path) do
    n_lines = n_lines + 1
    local res = summarize(line)
    if type(res) == "table" then n_bad = n_bad + 1 else ref:put(res, "\n") end
  end
  local t_seq = now() - t0
  ref = ref:tostring()

  -- (b) one line per task.  Results come in input order; the index is the
  -- line number.  chunk_size: lines travel to a worker 256 at a time
  -- (about 1 ms of work); without it, chunks of an iterator start at one
  -- item and grow while they come back fast.
  t0 = now()
  local by_line = buffer.new()
  for res in pool:imap(summarize, io.lines(in_path), { chunk_size = 256 }) do
    if type(res) == "string" then by_line:put(res, "\n") end
  end
  local t_lines = now() - t0
  if by_line:tostring() ~= ref then error("(b) per-line output differs from the loop's", 0) end

  -- (c) byte ranges of about 1 MB, at least 8 per worker; the output is
  -- written as the blocks arrive, in order.  Line numbers of bad lines:
  -- the lines of the blocks before, plus the line within the block.
  t0 = now()
  local size = file_size(in_path)
  local ranges = byte_ranges(in_path, math.max(8 * n_jobs, math.ceil(size / 1e6)))
  local by_block, lines_before, n_out, n_skipped = buffer.new(), 0, 0, 0
  for block in pool:imap(function(r) return transform_range(in_path, r) end, ranges) do
    out:write(block.out)
    by_block:put(block.out)
    for _, e in ipairs(block.errors) do
      n_skipped = n_skipped + 1
      io.stderr:write(("%s:%d: skipped: %s\n"):format(in_path, lines_before + e[1], e[2]))
    end
    lines_before = lines_before + block.n_lines
    n_out = n_out + block.n_lines - #block.errors
  end
  local t_blocks = now() - t0
  pool:close()
  if out ~= io.stdout then out:close() else out:flush() end
  if by_block:tostring() ~= ref then error("(c) block output differs from the loop's", 0) end
  if lines_before ~= n_lines or n_skipped ~= n_bad then
    error(("(c) counted %d lines and %d bad ones, the loop %d and %d"):format(
      lines_before, n_skipped, n_lines, n_bad), 0)
  end

  local rep = io.stderr
  rep:write(("%d lines (%.1f MB), %d workers\n"):format(n_lines, size / 1e6, n_jobs))
  rep:write(("(a) sequential loop:                  %.3f s\n"):format(t_seq))
  rep:write(("(b) pool:imap, one line per task:     %.3f s  speedup %.2fx\n"):format(t_lines, t_seq / t_lines))
  rep:write(("(c) pool:imap over %3d byte ranges:   %.3f s  speedup %.2fx\n"):format(
    #ranges, t_blocks, t_seq / t_blocks))
  rep:write(("ok: %d lines in, %d lines out, %d skipped, in input order, all three outputs identical\n"):format(
    n_lines, n_out, n_skipped))
end)

if generated then os.remove(in_path) end
if not ok_run then
  io.stderr:write("jsonl: ", tostring(err), "\n")
  os.exit(1)
end
