-- forkpool example: render the Mandelbrot set with pool:map, one task per
-- row, and write the picture as a binary PGM (greyscale) file.
--
-- Each task renders one row and returns it as a string of bytes (one byte
-- per pixel, built in an FFI buffer), so results travel as plain strings
-- and the parent only concatenates them, in order, into the file.  The
-- same rows are also rendered with a sequential loop, to print both times
-- and check that the pictures are identical.
--
-- Run (from the checkout, after `make`):
--   LUA_CPATH="build/?.so;;" LUA_PATH="lua/?.lua;lua/?/init.lua;;" \
--     luajit examples/mandelbrot.lua [--quick] [OUT.pgm]
-- OUT.pgm defaults to mandelbrot.pgm in the current directory.  The default
-- size is 1600x1200 (400 iterations); --quick (or FORKPOOL_EXAMPLE_QUICK=1)
-- renders 320x240.  View the result with any image viewer (e.g. `display`,
-- `eog`, GIMP) or convert it: `pnmtopng mandelbrot.pgm > m.png`.
-- The last line is "ok: wrote PATH (WxH PGM, N bytes)".
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

local quick = os.getenv("FORKPOOL_EXAMPLE_QUICK") == "1"
local out_path = "mandelbrot.pgm"
for _, a in ipairs(arg) do
  if a == "--quick" then
    quick = true
  elseif a:sub(1, 2) == "--" then
    io.stderr:write("usage: luajit examples/mandelbrot.lua [--quick] [OUT.pgm]\n")
    os.exit(2)
  else
    out_path = a
  end
end

local W, H, MAXIT = 1600, 1200, 400
if quick then W, H, MAXIT = 320, 240, 200 end

-- Render row y (0-based) of the picture: returns W bytes.  Points inside
-- the set are black; outside, brightness grows with the logarithm of the
-- escape time.
local inv_log_max = 1 / math.log(1 + MAXIT)
local function render_row(y)
  local row = ffi.new("uint8_t[?]", W)
  local ci = (y / H) * 2.4 - 1.2
  for x = 0, W - 1 do
    local cr = (x / W) * 3.2 - 2.2
    local zr, zi, it = 0.0, 0.0, 0
    while it < MAXIT and zr * zr + zi * zi <= 4.0 do
      zr, zi = zr * zr - zi * zi + cr, 2 * zr * zi + ci
      it = it + 1
    end
    if it < MAXIT then
      row[x] = math.floor(255 * math.log(1 + it) * inv_log_max + 0.5)
    end
  end
  return ffi.string(row, W)
end

local ys = {}
for y = 1, H do ys[y] = y - 1 end

local pool = forkpool.new{ keep_alive = true }
io.write(("Mandelbrot %dx%d, %d iterations max, %d workers\n"):format(W, H, MAXIT, pool.n_jobs))

local t0 = now()
local seq = {}
for i, y in ipairs(ys) do seq[i] = render_row(y) end
local t_seq = now() - t0

t0 = now()
local rows = pool:map(render_row, ys)
local t_par = now() - t0
pool:close()

for i = 1, H do
  if rows[i] ~= seq[i] then
    io.stderr:write(("mandelbrot: row %d differs between the loop and pool:map\n"):format(i - 1))
    os.exit(1)
  end
end
io.write(("sequential: %.3f s\n"):format(t_seq))
io.write(("pool:map:   %.3f s  (%d rows, one task each)  speedup %.2fx\n"):format(t_par, H, t_seq / t_par))

-- Binary PGM: "P5", width, height, maximum value, then W*H bytes, row by row.
local f = assert(io.open(out_path, "wb"))
f:write(("P5\n%d %d\n255\n"):format(W, H))
f:write(table.concat(rows))
local size = f:seek("end")
f:close()
io.write(("ok: wrote %s (%dx%d PGM, %d bytes)\n"):format(out_path, W, H, size))
