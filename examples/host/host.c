/*
 * examples/host/host.c - a C program that embeds LuaJIT and runs pool:map,
 * in the style of a game engine's or a data tool's terrain baker.
 *
 * The host registers a C module `host` (host.noise(x, y, octave): value
 * noise, the kind of procedural function a game tool has in C;
 * host.pid()), then runs the Lua script below: a keep_alive pool with
 * worker state, worker_init / worker_exit, and a forkpool.shared_array
 * that two maps share (the first bakes a height map into it row by row,
 * calling host.noise inside the workers; the second counts the cells
 * below sea level).  The script checks everything against a sequential
 * computation, closes the pool and returns; the host then checks that no
 * worker process is left and prints "host: ok".  Exit status 1 on any
 * mismatch or error.
 *
 * Built three ways by `make host` (into build/host/), see README.md here:
 *   host-dynamic    -lluajit-5.1; require "forkpool" finds lua/ and
 *                   build/forkpool/core.so through LUA_PATH / LUA_CPATH
 *   host-static-lj  libluajit-5.1.a linked in, with -Wl,-E (core.so is
 *                   dlopen()ed and takes the lua_* functions from us)
 *   host-preload    -DHOST_PRELOAD, build/libforkpool.a: forkpool_preload,
 *                   package.path and package.cpath emptied, no files needed
 *   host-asan       host-preload under AddressSanitizer
 *
 * Usage: host [WIDTH HEIGHT]   (default 256 x 96)
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef HOST_PRELOAD
#include "forkpool.h"
#endif

/* ---- the host's own C functions ---- */

/* A lattice point's pseudo-random value in [0, 1): an integer hash, so
 * the same point gives the same value in every process. */
static double lattice(int32_t x, int32_t y, int32_t octave) {
  uint32_t h = (uint32_t)x * 0x8da6b343u ^ (uint32_t)y * 0xd8163841u ^ (uint32_t)octave * 0xcb1ab31fu;
  h ^= h >> 15;
  h *= 0x2c1b3c6du;
  h ^= h >> 12;
  h *= 0x297a2d39u;
  h ^= h >> 15;
  return (double)(h >> 8) / 16777216.0;
}

static double smooth(double t) { return t * t * (3.0 - 2.0 * t); }

/* Value noise: the four surrounding lattice values, smoothly blended. */
static double value_noise(double x, double y, int32_t octave) {
  double fx = floor(x), fy = floor(y);
  int32_t ix = (int32_t)fx, iy = (int32_t)fy;
  double tx = smooth(x - fx), ty = smooth(y - fy);
  double a = lattice(ix, iy, octave), b = lattice(ix + 1, iy, octave);
  double c = lattice(ix, iy + 1, octave), d = lattice(ix + 1, iy + 1, octave);
  double top = a + (b - a) * tx, bottom = c + (d - c) * tx;
  return top + (bottom - top) * ty;
}

static int l_noise(lua_State *L) {
  double x = luaL_checknumber(L, 1), y = luaL_checknumber(L, 2);
  int32_t octave = (int32_t)luaL_optinteger(L, 3, 0);
  lua_pushnumber(L, value_noise(x, y, octave));
  return 1;
}

static int l_pid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}

static const luaL_Reg host_funcs[] = {
    {"noise", l_noise},
    {"pid", l_pid},
    {NULL, NULL},
};

/* ---- the script (embedded: host-preload needs no file at all) ---- */

static const char script[] =
    "local W, H = ...\n"
    "local forkpool = require 'forkpool'\n"
    /* A module, not a global table: functions that use it travel to
     * kept-alive workers by name (package.loaded.host in the worker). */
    "local host = require 'host'\n"
    "local ffi = require 'ffi'\n"
    "local noise = host.noise\n"
    "print(('host: forkpool from %s'):format(debug.getinfo(forkpool.new, 'S').source))\n"
    "\n"
    "-- fractal terrain: four octaves of the host's noise\n"
    "local function height(x, y)\n"
    "  local h, amp, freq = 0, 0.5, 1 / 32\n"
    "  for o = 1, 4 do\n"
    "    h = h + amp * noise(x * freq, y * freq, o)\n"
    "    amp, freq = amp * 0.5, freq * 2\n"
    "  end\n"
    "  return h\n"
    "end\n"
    "local SEA = 0.45\n"
    "\n"
    "local heights = forkpool.shared_array('float', W * H)\n"
    "local rows = {}\n"
    "for y = 0, H - 1 do rows[y + 1] = y end\n"
    "\n"
    "local pool = forkpool.new{ n_jobs = 2, keep_alive = true, use_worker_state = true }\n"
    "local opts = {\n"
    "  worker_init = function(state) state.pid, state.rows = host.pid(), 0 end,\n"
    "  worker_exit = function(state) return { pid = state.pid, rows = state.rows } end,\n"
    "}\n"
    "-- map 1: bake rows of the height map into the shared array\n"
    "local sums = pool:map(function(state, y)\n"
    "  local s = 0\n"
    "  for x = 0, W - 1 do\n"
    "    heights[y * W + x] = height(x, y)\n"
    "    s = s + heights[y * W + x]\n"
    "  end\n"
    "  state.rows = state.rows + 1\n"
    "  return s\n"
    "end, rows, opts)\n"
    "-- map 2, same workers and state: cells below sea level, per row\n"
    "local wet = pool:map(function(state, y)\n"
    "  local n = 0\n"
    "  for x = 0, W - 1 do\n"
    "    if heights[y * W + x] < SEA then n = n + 1 end\n"
    "  end\n"
    "  state.rows = state.rows + 1\n"
    "  return n\n"
    "end, rows, opts)\n"
    "pool:close()\n"
    "local exits = pool:get_exit_results()\n"
    "\n"
    "-- the same, sequentially, in this process\n"
    "local seq = ffi.new('float[?]', W * H)\n"
    "local total_wet, mean = 0, 0\n"
    "for y = 0, H - 1 do\n"
    "  local s, n = 0, 0\n"
    "  for x = 0, W - 1 do\n"
    "    seq[y * W + x] = height(x, y)\n"
    "    s = s + seq[y * W + x]\n"
    "    if seq[y * W + x] < SEA then n = n + 1 end\n"
    "    assert(heights[y * W + x] == seq[y * W + x], ('height %d,%d differs'):format(x, y))\n"
    "  end\n"
    "  assert(math.abs(sums[y + 1] - s) <= 1e-9 * W, ('row %d: sum %s, sequential %s'):format(y, sums[y + 1], s))\n"
    "  assert(wet[y + 1] == n, ('row %d: %s wet cells, sequential %d'):format(y, tostring(wet[y + 1]), n))\n"
    "  total_wet, mean = total_wet + n, mean + s\n"
    "end\n"
    "mean = mean / (W * H)\n"
    "local me, done = host.pid(), 0\n"
    "assert(#exits >= 1 and #exits <= 2, ('%d exit results'):format(#exits))\n"
    "for i, e in ipairs(exits) do\n"
    "  assert(e.pid ~= me, 'a worker_exit ran in the host process')\n"
    "  print(('host: worker %d (pid %d) baked and scanned %d rows'):format(i, e.pid, e.rows))\n"
    "  done = done + e.rows\n"
    "end\n"
    "assert(done == 2 * H, ('workers ran %d rows, expected %d'):format(done, 2 * H))\n"
    "print(('host: terrain %dx%d, mean height %.4f, %d cells below sea level (%.1f%%)'):format(\n"
    "  W, H, mean, total_wet, 100 * total_wet / (W * H)))\n"
    "print('host: results match the sequential computation')\n";

/* ---- running it ---- */

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

/* Worker processes still alive (our children), from /proc: a host must
 * have closed its pools before it goes on (pool:close(), or lua_close,
 * which collects them).  Returns -1 when the kernel does not say. */
static int count_children(void) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  int n = 0, pid;
  while (fscanf(f, "%d", &pid) == 1) {
    fprintf(stderr, "host: child process %d is still alive\n", pid);
    n++;
  }
  fclose(f);
  return n;
}

int main(int argc, char **argv) {
  int w = argc > 1 ? atoi(argv[1]) : 256, h = argc > 2 ? atoi(argv[2]) : 96;
  if (w <= 0 || h <= 0) {
    fprintf(stderr, "usage: %s [WIDTH HEIGHT]\n", argv[0]);
    return 2;
  }
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "host: cannot create a Lua state\n");
    return 1;
  }
  luaL_openlibs(L);
  luaL_register(L, "host", host_funcs); /* package.loaded.host and the global */
  lua_pop(L, 1);
#ifdef HOST_PRELOAD
  /* Everything from the library: no Lua path, no C path, no files. */
  lua_getglobal(L, "package");
  lua_pushliteral(L, "");
  lua_setfield(L, -2, "path");
  lua_pushliteral(L, "");
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1);
  forkpool_preload(L);
  printf("host: forkpool %s linked in, package.path and package.cpath empty\n", FORKPOOL_VERSION);
#endif
  int status = 0;
  lua_pushcfunction(L, traceback);
  if (luaL_loadbuffer(L, script, sizeof script - 1, "=host-script") != 0) {
    fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
    status = 1;
  } else {
    lua_pushinteger(L, w);
    lua_pushinteger(L, h);
    if (lua_pcall(L, 2, 0, -4) != 0) {
      fprintf(stderr, "host: error: %s\n", lua_tostring(L, -1));
      status = 1;
    }
  }
  lua_close(L);
  fflush(stdout);
  int left = count_children();
  if (left > 0) status = 1;
  if (status == 0) printf("host: ok\n");
  return status;
}
