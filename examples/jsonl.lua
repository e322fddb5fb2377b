-- forkpool example: transform JSON lines with lua-cjson in the workers.
--
-- Reads order records, one JSON object per line, and writes one summary
-- object per order: the order's total, its number of items, a normalised
-- country code and the most expensive SKU.  pool:imap streams the lines
-- from io.lines (the file is never held in memory) and yields results in
-- input order as soon as they are ready, so the output lines come out in
-- the same order as the input lines.  A line that is not valid JSON is
-- reported on stderr with its line number and skipped; the run goes on.
-- The task itself is about 10 µs of decoding, arithmetic and encoding per
-- line: enough work per item for per-line tasks to pay off (compare
-- examples/wordcount.lua, where it is not).
--
-- Run (from the checkout, after `make`):
--   LUA_CPATH="build/?.so;;" LUA_PATH="lua/?.lua;lua/?/init.lua;;" \
--     luajit examples/jsonl.lua [--quick] [-o OUT.jsonl] [IN.jsonl]
-- Output goes to OUT.jsonl, or to stdout without -o (or with -o -); the
-- report goes to stderr.  Without IN.jsonl it generates 100,000 orders
-- (5,000 with --quick or FORKPOOL_EXAMPLE_QUICK=1), with one deliberately
-- broken line, in a temporary file that it removes afterwards.  It also
-- runs the same transform sequentially to print the speedup.  The last
-- line on stderr is "ok: N lines in, M lines out, ...".
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
local function summarize(line)
  local cjson = require "cjson"
  local ok, order = pcall(cjson.decode, line)
  if not ok or type(order) ~= "table" or order[1] ~= nil then
    return { error = ok and "not a JSON object" or tostring(order) }
  end
  local total, n_items, top_sku, top_price = 0, 0, nil, -1
  for _, it in ipairs(order.items or {}) do
    local qty, price = tonumber(it.qty) or 0, tonumber(it.price) or 0
    total = total + qty * price
    n_items = n_items + qty
    if price > top_price then top_sku, top_price = it.sku, price end
  end
  total = math.floor(total * 100 + 0.5) / 100
  return cjson.encode{
    id = order.id,
    user = order.user,
    country = type(order.country) == "string" and order.country:upper() or nil,
    total = total,
    n_items = n_items,
    top_sku = top_sku,
    big = total >= 500,
  }
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

  -- Parallel: results come back in input order; the result's index is the
  -- input line number.
  local pool = forkpool.new{}
  local n_in, n_out, bad, last_id = 0, 0, 0, nil
  local t0 = now()
  for res, lineno in pool:imap(summarize, io.lines(in_path)) do
    n_in = lineno
    if type(res) == "table" then
      bad = bad + 1
      io.stderr:write(("%s:%d: skipped: %s\n"):format(in_path, lineno, res.error))
    else
      out:write(res, "\n")
      n_out = n_out + 1
      -- the output keeps the input order (generated ids are the line numbers)
      local id = tonumber(res:match('"id":(%d+)'))
      if generated and id ~= lineno then
        error(("line %d: output out of order (id %s)"):format(lineno, tostring(id)), 0)
      end
      last_id = id
    end
  end
  local t_par = now() - t0
  local n_jobs = pool.n_jobs
  pool:close()
  if out ~= io.stdout then out:close() else out:flush() end

  -- The same transform in a plain loop, for the comparison (output
  -- discarded).
  t0 = now()
  local n_seq = 0
  for line in io.lines(in_path) do
    if type(summarize(line)) == "string" then n_seq = n_seq + 1 end
  end
  local t_seq = now() - t0
  if n_seq ~= n_out then
    error(("the loop produced %d lines, pool:imap %d"):format(n_seq, n_out), 0)
  end

  io.stderr:write(("sequential loop: %.3f s\n"):format(t_seq))
  io.stderr:write(("pool:imap:       %.3f s  (%d workers, %.0f lines/s)  speedup %.2fx\n"):format(
    t_par, n_jobs, n_in / t_par, t_seq / t_par))
  io.stderr:write(("ok: %d lines in, %d lines out, %d skipped, in input order (last id %s)\n"):format(
    n_in, n_out, bad, tostring(last_id)))
end)

if generated then os.remove(in_path) end
if not ok_run then
  io.stderr:write("jsonl: ", tostring(err), "\n")
  os.exit(1)
end
