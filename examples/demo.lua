-- forkpool demo: render a Mandelbrot set, one row per task, first with a
-- plain loop and then with pool:map on every CPU, and print both times and
-- the speedup.  Run with `make demo` (or ./dev.sh demo on a fresh machine).
local forkpool = require "forkpool"

local W, H, MAXIT = 1600, 1200, 400

-- one row of escape counts, summed (the "result" of a CPU-heavy task)
local function render_row(y)
  local ci = (y / H) * 2.4 - 1.2
  local sum = 0
  for x = 0, W - 1 do
    local cr = (x / W) * 3.2 - 2.2
    local zr, zi, it = 0.0, 0.0, 0
    while it < MAXIT and zr * zr + zi * zi <= 4.0 do
      zr, zi = zr * zr - zi * zi + cr, 2 * zr * zi + ci
      it = it + 1
    end
    sum = sum + it
  end
  return sum
end

local rows = {}
for y = 1, H do rows[y] = y - 1 end

local ffi = require "ffi"
ffi.cdef[[ struct fp_demo_ts { long s; long ns; };
           int clock_gettime(int, struct fp_demo_ts *); ]]
local ts = ffi.new("struct fp_demo_ts")
local function clock() ffi.C.clock_gettime(1, ts); return tonumber(ts.s) + tonumber(ts.ns) * 1e-9 end

local pool = forkpool.new{ keep_alive = true }
local n_jobs = pool.n_jobs

io.write(("forkpool demo: Mandelbrot %dx%d, %d iterations max, %d workers\n"):format(W, H, MAXIT, n_jobs))

local t0 = clock()
local seq = {}
for i, y in ipairs(rows) do seq[i] = render_row(y) end
local t_seq = clock() - t0

local t1 = clock()
local par = pool:map(render_row, rows)
local t_par = clock() - t1

for i = 1, H do assert(par[i] == seq[i], "row " .. i .. " differs") end
pool:close()

local total = 0
for i = 1, H do total = total + par[i] end
print(("sequential: %.3f s"):format(t_seq))
print(("parallel:   %.3f s  (pool:map over %d rows, %d workers)"):format(t_par, H, n_jobs))
print(("speedup:    %.2fx   (checksum %d, results identical)"):format(t_seq / t_par, total))
