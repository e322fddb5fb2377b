-- forkpool example: an image filter over shared memory.
--
-- The source image, an intermediate image and the destination live in
-- forkpool.shared_array buffers: memory that the parent and every worker
-- see at the same address, without copies.  Each task filters one band of
-- rows and writes straight into its output image, so nothing but the
-- band's bounds travels to the worker and nothing but a small checksum
-- comes back.  The filters are those of a classic edge detector: a 5x5
-- Gaussian blur (src -> tmp), then a Sobel gradient magnitude (tmp ->
-- dst), each one pool:map over the bands; the Sobel of a band reads rows
-- of its neighbours' bands, so the end of the first map is the barrier
-- between the two.  The same filters run sequentially into ordinary FFI
-- buffers must give the same bytes.  Both versions run 3 times (a tool
-- filtering several frames): the first parallel pass also pays for the
-- workers touching the shared pages for the first time.

-- Run (from the checkout, after `make`):
--   LUA_CPATH="build/?.so;;" LUA_PATH="lua/?.lua;lua/?/init.lua;;" \
--     luajit examples/image_filter.lua [--quick] [OUT.pgm]
-- Default image 4096x3072; --quick (or FORKPOOL_EXAMPLE_QUICK=1) 512x384.
-- With OUT.pgm the filtered image is also written there as a binary PGM.
-- The last line is "ok: ..." when the parallel result matches.
local forkpool = require "forkpool"
local ffi = require "ffi"

ffi.cdef [[
  struct fp_ex_timespec { long tv_sec; long tv_nsec; };
  int clock_gettime(int clk, struct fp_ex_timespec *ts);
  int memcmp(const void *a, const void *b, size_t n);
]]
local ts = ffi.new("struct fp_ex_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local quick = os.getenv("FORKPOOL_EXAMPLE_QUICK") == "1"
local out_path
for _, a in ipairs(arg) do
  if a == "--quick" then
    quick = true
  elseif a:sub(1, 2) == "--" then
    io.stderr:write("usage: luajit examples/image_filter.lua [--quick] [OUT.pgm]\n")
    os.exit(2)
  else
    out_path = a
  end
end

local W, H = 4096, 3072
if quick then W, H = 512, 384 end
local N = W * H

-- A synthetic 8-bit greyscale picture: soft rings, a diagonal gradient and
-- a few hard-edged rectangles, written by the parent into shared memory.
local src = forkpool.shared_array("uint8_t", N)
do
  local cx, cy = W * 0.4, H * 0.55
  for y = 0, H - 1 do
    for x = 0, W - 1 do
      local dx, dy = x - cx, y - cy
      local r = math.sqrt(dx * dx + dy * dy)
      local v = 96 + 64 * math.sin(r * 0.05) + 48 * (x + y) / (W + H)
      if (x * 7 % W) < W / 5 and (y * 5 % H) < H / 6 then v = 240 end
      src[y * W + x] = math.floor(v)
    end
  end
end

-- The two filters of a classic edge-detection pipeline.  Each one filters
-- rows y0..y1-1 of `from` into `to` (both W*H bytes, row-major) and
-- returns the sum of the bytes it wrote (a cheap checksum).

-- 5x5 Gaussian blur, binomial kernel (1 4 6 4 1) x (1 4 6 4 1) / 256, in
-- integers (so every process computes exactly the same bytes); pixels
-- within 2 of the border are copied.
local K = { 1, 4, 6, 4, 1 }
local function blur_rows(from, to, y0, y1)
  local sum = 0
  for y = y0, y1 - 1 do
    local row = y * W
    if y < 2 or y > H - 3 then
      for x = 0, W - 1 do to[row + x] = from[row + x]; sum = sum + from[row + x] end
    else
      for x = 0, W - 1 do
        local v
        if x < 2 or x > W - 3 then
          v = from[row + x]
        else
          local acc = 0
          for j = -2, 2 do
            local r, kj = row + j * W + x, K[j + 3]
            acc = acc + kj * (from[r - 2] + 4 * from[r - 1] + 6 * from[r] + 4 * from[r + 1] + from[r + 2])
          end
          v = math.floor((acc + 128) / 256)
        end
        to[row + x] = v
        sum = sum + v
      end
    end
  end
  return sum
end

-- Sobel edge detector: gradient magnitude of the 3x3 neighbourhood,
-- clamped to 255; border pixels are 0.
local function sobel_rows(from, to, y0, y1)
  local sum = 0
  for y = y0, y1 - 1 do
    local row = y * W
    if y == 0 or y == H - 1 then
      for x = 0, W - 1 do to[row + x] = 0 end
    else
      to[row] = 0
      to[row + W - 1] = 0
      local up, down = row - W, row + W
      for x = 1, W - 2 do
        local a, b, c = from[up + x - 1], from[up + x], from[up + x + 1]
        local d, f = from[row + x - 1], from[row + x + 1]
        local g, h, i = from[down + x - 1], from[down + x], from[down + x + 1]
        local gx = (c + 2 * f + i) - (a + 2 * d + g)
        local gy = (g + 2 * h + i) - (a + 2 * b + c)
        local m = math.floor(math.sqrt(gx * gx + gy * gy))
        if m > 255 then m = 255 end
        to[row + x] = m
        sum = sum + m
      end
    end
  end
  return sum
end

-- Each version runs PASSES times, as a tool filtering several frames into
-- the same buffers would: the first pass also pays for compiling the
-- filter and, in the workers, for touching the shared pages the first time
-- (each process maps pages into its own page tables on first touch: a page
-- fault per 4 KiB page, slow on virtual machines).
local PASSES = quick and 1 or 3

-- Sequential reference, into ordinary (private) FFI memory.
local ref_tmp, ref = ffi.new("uint8_t[?]", N), ffi.new("uint8_t[?]", N)
local t_seq, ref_sum = {}, nil
for p = 1, PASSES do
  local t0 = now()
  blur_rows(src, ref_tmp, 0, H)
  ref_sum = sobel_rows(ref_tmp, ref, 0, H)
  t_seq[p] = now() - t0
end

-- Parallel: the intermediate and the destination are shared too.  Each
-- task filters one band of rows; 8 bands per worker balance the load
-- without making tasks small.  The Sobel of a band reads blurred rows of
-- its neighbours, so the blur must be complete first: the end of the first
-- map is the barrier between the two passes.
local tmp = forkpool.shared_array("uint8_t", N)
local dst = forkpool.shared_array("uint8_t", N)
local pool = forkpool.new{ keep_alive = true }
local n_jobs = pool.n_jobs
local n_bands = 8 * n_jobs
local bands = {}
for k = 1, n_bands do
  bands[k] = { math.floor(H * (k - 1) / n_bands), math.floor(H * k / n_bands) }
end
-- start the workers (a fork costs a few ms): the times below are the filter
pool:map(function(x) return x end, { 1, 2 })
local t_par, sums = {}, nil
for p = 1, PASSES do
  local t0 = now()
  -- src, tmp and dst are upvalues: pointers into shared memory travel by
  -- address, the pixels never move
  pool:map(function(band) return blur_rows(src, tmp, band[1], band[2]) end, bands)
  sums = pool:map(function(band) return sobel_rows(tmp, dst, band[1], band[2]) end, bands)
  t_par[p] = now() - t0
end
pool:close()

local par_sum = 0
for k = 1, n_bands do par_sum = par_sum + sums[k] end
if par_sum ~= ref_sum or ffi.C.memcmp(dst, ref, N) ~= 0 then
  io.stderr:write("image_filter: the parallel result differs from the sequential one\n")
  os.exit(1)
end

local function fmt(t)
  local parts = {}
  for p = 1, #t do parts[p] = ("%.3f"):format(t[p]) end
  return table.concat(parts, " ") .. " s"
end
local best_seq, best_par = math.min(unpack(t_seq)), math.min(unpack(t_par))
io.write(("5x5 Gaussian blur + Sobel, %dx%d (%.1f Mpixels), %d workers, %d bands, %d passes\n"):format(
  W, H, N / 1e6, n_jobs, n_bands, PASSES))
io.write(("sequential:   %s\n"):format(fmt(t_seq)))
io.write(("2 x pool:map: %s\n"):format(fmt(t_par)))
io.write(("speedup: first pass %.2fx, best pass %.2fx\n"):format(t_seq[1] / t_par[1], best_seq / best_par))

if out_path then
  local f = assert(io.open(out_path, "wb"))
  f:write(("P5\n%d %d\n255\n"):format(W, H), ffi.string(dst, N))
  f:close()
  io.write("wrote ", out_path, "\n")
end
io.write(("ok: %dx%d blur + Sobel, parallel result identical (checksum %d)\n"):format(W, H, ref_sum))
