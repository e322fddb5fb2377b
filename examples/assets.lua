-- forkpool example: a batch over many files, in the style of an asset
-- pipeline, where one bad input must not stop the batch.
--
-- It generates a directory of fake assets in a temporary directory:
-- greyscale textures (binary PGM) and triangle meshes (Wavefront OBJ),
-- plus one deliberately broken texture (its pixel data is truncated).
-- Each file is processed in a worker:
--   textures: checksum (FNV-1a), mean brightness, a 2x downscaled copy
--             written as out/NAME_half.pgm;
--   meshes:   parse, bounding box and surface area, written as a compact
--             binary mesh out/NAME.bin (float32 positions, uint32 indices).
-- Each file is one pool:apply_async call, so a failure fails only that
-- call: r:get() raises a forkpool error object, which the parent tells
-- apart with forkpool.is_error(err, "task") and reports as that file's
-- error.  max_retries = 1 runs a file again on a fresh worker if the worker
-- process dies on it (a crashing C decoder, the OOM killer), and
-- task_timeout kills a worker stuck on one file.  The parent reports one
-- line per file, checks the outputs and removes the temporary directory.
--
-- Run (from the checkout, after `make`):
--   LUA_CPATH="build/?.so;;" LUA_PATH="lua/?.lua;lua/?/init.lua;;" \
--     luajit examples/assets.lua [--quick]
-- Default 160 assets; --quick (or FORKPOOL_EXAMPLE_QUICK=1) 24.  The last
-- line is "ok: N files processed, 1 failed as expected, ...".
local forkpool = require "forkpool"
local ffi = require "ffi"
local bit = require "bit"

ffi.cdef [[
  struct fp_ex_timespec { long tv_sec; long tv_nsec; };
  int clock_gettime(int clk, struct fp_ex_timespec *ts);
  char *mkdtemp(char *template);
  int mkdir(const char *path, unsigned int mode);
]]
local ts = ffi.new("struct fp_ex_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local quick = os.getenv("FORKPOOL_EXAMPLE_QUICK") == "1"
for _, a in ipairs(arg) do
  if a == "--quick" then
    quick = true
  else
    io.stderr:write("usage: luajit examples/assets.lua [--quick]\n")
    os.exit(2)
  end
end
local N_ASSETS = quick and 24 or 160

------------------------------------------------------------------------
-- File helpers
------------------------------------------------------------------------
local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then error(err, 0) end
  local data = f:read("*a")
  f:close()
  return data
end

local function write_file(path, ...)
  local f = assert(io.open(path, "wb"))
  f:write(...)
  f:close()
end

local function make_temp_dir()
  local template = ffi.new("char[?]", 64, "/tmp/forkpool-assets-XXXXXX")
  local p = ffi.C.mkdtemp(template)
  if p == nil then error("mkdtemp failed (errno " .. ffi.errno() .. ")") end
  return ffi.string(p)
end

local function mkdir(path)
  if ffi.C.mkdir(path, tonumber("755", 8)) ~= 0 then
    error(("mkdir %s failed (errno %d)"):format(path, ffi.errno()))
  end
end

local function list_dir(dir)
  local names = {}
  local p = assert(io.popen("ls -1 '" .. dir .. "'"))
  for name in p:lines() do names[#names + 1] = name end
  p:close()
  return names
end

------------------------------------------------------------------------
-- The per-file work (runs in the workers)
------------------------------------------------------------------------

-- FNV-1a, 32 bits, over n bytes at p
local function fnv1a(p, n)
  local h = 2166136261
  for i = 0, n - 1 do
    h = bit.bxor(h, p[i])
    -- h * 16777619 mod 2^32, as (h << 24) + h * 403: exact in doubles
    h = bit.tobit(bit.lshift(h, 24) + h * 403)
  end
  return bit.tohex(h)
end

local function process_texture(path, out_dir, name)
  local data = read_file(path)
  local w, h, maxval, header = data:match("^P5%s+(%d+)%s+(%d+)%s+(%d+)%s()")
  if not w then error(name .. ": not a binary PGM file", 0) end
  w, h, maxval = tonumber(w), tonumber(h), tonumber(maxval)
  if maxval ~= 255 then error(name .. ": only 8-bit PGM is supported", 0) end
  local got = #data - header + 1
  if got < w * h then
    error(("%s: truncated pixel data (%dx%d needs %d bytes, the file has %d)"):format(
      name, w, h, w * h, got), 0)
  end
  local px = ffi.cast("const uint8_t *", data) + (header - 1)
  local sum = 0
  for i = 0, w * h - 1 do sum = sum + px[i] end
  -- 2x box downscale
  local hw, hh = math.floor(w / 2), math.floor(h / 2)
  local half = ffi.new("uint8_t[?]", hw * hh)
  for y = 0, hh - 1 do
    local r0, r1 = 2 * y * w, (2 * y + 1) * w
    for x = 0, hw - 1 do
      local s = px[r0 + 2 * x] + px[r0 + 2 * x + 1] + px[r1 + 2 * x] + px[r1 + 2 * x + 1]
      half[y * hw + x] = bit.rshift(s + 2, 2)
    end
  end
  local out = out_dir .. "/" .. name:gsub("%.pgm$", "") .. "_half.pgm"
  local out_header = ("P5\n%d %d\n255\n"):format(hw, hh)
  write_file(out, out_header, ffi.string(half, hw * hh))
  return {
    out = out,
    bytes = #out_header + hw * hh,
    info = ("%dx%d -> %dx%d, mean %.1f, fnv1a %s"):format(w, h, hw, hh, sum / (w * h), fnv1a(px, w * h)),
  }
end

local function process_mesh(path, out_dir, name)
  local verts, faces = {}, {}
  local lineno = 0
  for line in io.lines(path) do
    lineno = lineno + 1
    local tag = line:match("^(%a+)%s")
    if tag == "v" then
      local x, y, z = line:match("^v%s+(%S+)%s+(%S+)%s+(%S+)")
      x, y, z = tonumber(x), tonumber(y), tonumber(z)
      if not z then error(("%s:%d: bad vertex"):format(name, lineno), 0) end
      verts[#verts + 1] = { x, y, z }
    elseif tag == "f" then
      local a, b, c = line:match("^f%s+(%d+)%S*%s+(%d+)%S*%s+(%d+)")
      if not c then error(("%s:%d: bad face"):format(name, lineno), 0) end
      faces[#faces + 1] = { tonumber(a), tonumber(b), tonumber(c) }
    end
  end
  local nv, nf = #verts, #faces
  local lo, hi = { math.huge, math.huge, math.huge }, { -math.huge, -math.huge, -math.huge }
  local buf = ffi.new("float[?]", 3 * nv)
  for i, v in ipairs(verts) do
    for k = 1, 3 do
      lo[k], hi[k] = math.min(lo[k], v[k]), math.max(hi[k], v[k])
      buf[3 * (i - 1) + k - 1] = v[k]
    end
  end
  local idx = ffi.new("uint32_t[?]", 3 * nf)
  local area = 0
  for i, f in ipairs(faces) do
    local a, b, c = verts[f[1]], verts[f[2]], verts[f[3]]
    if not (a and b and c) then error(("%s: face %d refers to a missing vertex"):format(name, i), 0) end
    local ux, uy, uz = b[1] - a[1], b[2] - a[2], b[3] - a[3]
    local vx, vy, vz = c[1] - a[1], c[2] - a[2], c[3] - a[3]
    local cx, cy, cz = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
    area = area + 0.5 * math.sqrt(cx * cx + cy * cy + cz * cz)
    for k = 1, 3 do idx[3 * (i - 1) + k - 1] = f[k] - 1 end
  end
  local header = ffi.new("uint32_t[2]", nv, nf)
  local out = out_dir .. "/" .. name:gsub("%.obj$", "") .. ".bin"
  write_file(out, ffi.string(header, 8), ffi.string(buf, 12 * nv), ffi.string(idx, 12 * nf))
  return {
    out = out,
    bytes = 8 + 12 * nv + 12 * nf,
    info = ("%d vertices, %d triangles, area %.2f, bbox (%.2f %.2f %.2f)-(%.2f %.2f %.2f)"):format(
      nv, nf, area, lo[1], lo[2], lo[3], hi[1], hi[2], hi[3]),
  }
end

-- The task: one file.  Errors are raised, as any library's would be; the
-- parent gets them as forkpool error objects.
local function process_asset(in_dir, out_dir, name)
  local path = in_dir .. "/" .. name
  local r
  if name:match("%.pgm$") then
    r = process_texture(path, out_dir, name)
  elseif name:match("%.obj$") then
    r = process_mesh(path, out_dir, name)
  else
    error(name .. ": unknown asset type", 0)
  end
  r.name = name
  return r
end

------------------------------------------------------------------------
-- Generate the input assets
------------------------------------------------------------------------
local function generate(in_dir, n)
  local seed = 777
  local function rand(k) -- Park-Miller generator, 1..k
    seed = seed * 16807 % 2147483647
    return seed % k + 1
  end
  local sizes = { 64, 128, 256, 512 }
  for i = 1, n do
    if i % 2 == 1 then
      -- a texture: a gradient with a noise pattern
      local w, h = sizes[rand(4)], sizes[rand(4)]
      local px = ffi.new("uint8_t[?]", w * h)
      local a, b = rand(7), rand(5)
      for y = 0, h - 1 do
        for x = 0, w - 1 do
          px[y * w + x] = (x * a + y * b + bit.band(bit.bxor(x, y), 31)) % 256
        end
      end
      write_file(("%s/tex_%03d.pgm"):format(in_dir, i), ("P5\n%d %d\n255\n"):format(w, h), ffi.string(px, w * h))
    else
      -- a mesh: a displaced grid of (g+1)^2 vertices and 2 g^2 triangles
      local g = 10 * rand(6)
      local lines = { "# generated mesh " .. i, "o mesh_" .. i }
      for y = 0, g do
        for x = 0, g do
          lines[#lines + 1] = ("v %.4f %.4f %.4f"):format(x / g, y / g, 0.1 * math.sin(x * 0.7 + i) * math.cos(y * 0.3))
        end
      end
      for y = 0, g - 1 do
        for x = 0, g - 1 do
          local v = y * (g + 1) + x + 1
          lines[#lines + 1] = ("f %d %d %d"):format(v, v + 1, v + g + 2)
          lines[#lines + 1] = ("f %d %d %d"):format(v, v + g + 2, v + g + 1)
        end
      end
      write_file(("%s/mesh_%03d.obj"):format(in_dir, i), table.concat(lines, "\n"), "\n")
    end
  end
  -- the bad one: says 256x256 but holds a quarter of the pixels
  write_file(in_dir .. "/tex_broken.pgm", "P5\n256 256\n255\n", ("\128"):rep(256 * 64))
end

------------------------------------------------------------------------
-- Run the batch
------------------------------------------------------------------------
local root = make_temp_dir()
local in_dir, out_dir = root .. "/in", root .. "/out"
mkdir(in_dir)
mkdir(out_dir)

local ok_run, err = pcall(function()
  generate(in_dir, N_ASSETS)
  local names = list_dir(in_dir)
  table.sort(names)
  io.write(("%d assets in %s\n"):format(#names, in_dir))

  local pool = forkpool.new{ keep_alive = true }
  local t0 = now()
  -- One call per file, all submitted at once; the workers take them as
  -- they become free.
  local calls = {}
  for i, name in ipairs(names) do
    calls[i] = pool:apply_async(process_asset, { in_dir, out_dir, name }, {
      max_retries = 1,     -- a worker that dies on a file: run it again once
      task_timeout = 60,   -- a file that hangs: kill that worker, fail the file
    })
  end
  -- Collect in submission order; a failed call raises its error here.
  local done, failed, out_bytes = 0, {}, 0
  for i, call in ipairs(calls) do
    local ok, res = pcall(call.get, call)
    if ok then
      done = done + 1
      out_bytes = out_bytes + res.bytes
      io.write(("  ok    %-16s %s\n"):format(res.name, res.info))
      -- check the output file is there and complete
      local f = assert(io.open(res.out, "rb"))
      local size = f:seek("end")
      f:close()
      if size ~= res.bytes then
        error(("%s: output has %d bytes, expected %d"):format(res.out, size, res.bytes), 0)
      end
    elseif forkpool.is_error(res, "task") then
      -- the task raised: res.message is its message (res.traceback, the
      -- worker's traceback; res.worker_id, which worker)
      failed[#failed + 1] = names[i]
      io.write(("  ERROR %-16s %s\n"):format(names[i], res.message))
    elseif forkpool.is_error(res, "worker_died") or forkpool.is_error(res, "timeout") then
      failed[#failed + 1] = names[i]
      io.write(("  ERROR %-16s %s\n"):format(names[i], tostring(res)))
    else
      error(res, 0) -- anything else is a bug in this script: stop
    end
  end
  local elapsed = now() - t0
  local n_jobs = pool.n_jobs
  pool:close()

  local outputs = list_dir(out_dir)
  io.write(("%d files processed, %d failed, %d output files (%.1f MB) in %.3f s with %d workers\n"):format(
    done, #failed, #outputs, out_bytes / 1e6, elapsed, n_jobs))
  if #failed ~= 1 or failed[1] ~= "tex_broken.pgm" then
    error("expected exactly one failure, tex_broken.pgm; got: " .. table.concat(failed, ", "), 0)
  end
  if #outputs ~= done or done ~= #names - 1 then
    error(("expected %d outputs, found %d"):format(#names - 1, #outputs), 0)
  end
  io.write(("ok: %d files processed, 1 failed as expected (tex_broken.pgm), outputs checked\n"):format(done))
end)

-- Clean up: remove what is in the two directories, then the directories.
for _, dir in ipairs{ in_dir, out_dir } do
  for _, name in ipairs(list_dir(dir)) do os.remove(dir .. "/" .. name) end
  os.remove(dir)
end
local removed, rm_err = os.remove(root)
if not removed then io.stderr:write("assets: could not remove ", root, ": ", tostring(rm_err), "\n") end

if not ok_run then
  io.stderr:write("assets: ", tostring(err), "\n")
  os.exit(1)
end
