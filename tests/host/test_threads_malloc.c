/*
 * test_threads_malloc.c - maps while other host threads run (issue 13,
 * item 4): a render-loop thread calling malloc/free in a tight loop, and a
 * script thread whose own Lua state raises and catches errors in a tight
 * loop (every Lua error goes through the C unwinder, whose locks a fork
 * can copy held: see fp_proc.c, "the unwinder's locks at fork").  Meanwhile
 * the main thread makes fresh pools and maps, whose tasks allocate and
 * raise and catch errors of their own; every result is checked.
 *
 *   fresh_pool_maps: 1,000 fresh-pool maps, under ASan too (issue 13 asks
 *     for both; there a map costs ~45 ms, so ~45 s), no crash, no hang
 *     (the alarm).
 */
#include "host.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#define MAPS 1000

static _Atomic int stop;
static _Atomic long mallocs, lua_errors;

static void *render_loop(void *arg) {
  (void)arg;
  void *keep[64] = {0};
  unsigned seed = 7;
  long n = 0;
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    unsigned i = rand_r(&seed) % 64;
    free(keep[i]);
    keep[i] = malloc(16 + rand_r(&seed) % 8192);
    if (keep[i]) memset(keep[i], (int)i, 16);
    n++;
  }
  for (int i = 0; i < 64; i++) free(keep[i]);
  atomic_store(&mallocs, n);
  return NULL;
}

/* should_stop(): called between bursts of 100 errors; leaves the CPU a
 * moment (a script thread has frames to wait for too), so that the
 * 2-core CI machine still runs the maps. */
static int l_should_stop(lua_State *L) {
  usleep(100);
  lua_pushboolean(L, atomic_load_explicit(&stop, memory_order_relaxed));
  return 1;
}

static void *script_loop(void *arg) {
  (void)arg;
  lua_State *L = host_state();
  lua_pushcfunction(L, l_should_stop);
  lua_setglobal(L, "should_stop");
  char out[64];
  host_run(L, "script thread",
    "local n = 0\n"
    "repeat\n"
    "  for i = 1, 100 do\n"
    "    local ok = pcall(error, { i })\n"
    "    n = n + 1\n"
    "  end\n"
    "until should_stop()\n"
    "return n\n", out, sizeof out);
  atomic_store(&lua_errors, atol(out));
  lua_close(L);
  return NULL;
}

FP_TEST(fresh_pool_maps) {
  pthread_t r, s;
  FP_CHECK(pthread_create(&r, NULL, render_loop, NULL) == 0);
  FP_CHECK(pthread_create(&s, NULL, script_loop, NULL) == 0);
  lua_State *L = host_state();
  char code[1024], out[256];
  snprintf(code, sizeof code,
    "local forkpool = require 'forkpool'\n"
    "local items = { 1, 2, 3, 4 }\n"
    "local function task(x)\n"
    "  local t = {}\n"
    "  for i = 1, 100 do t[i] = ('%%d'):rep(i %% 7 + 1) end\n"
    "  local ok, e = pcall(error, { x })\n"
    "  return (not ok and e[1] == x) and x * 2 or -1\n"
    "end\n"
    "for m = 1, %d do\n"
    "  local pool = forkpool.new{ n_jobs = 1 }\n"
    "  local r = pool:map(task, items, { task_timeout = 20, worker_init_timeout = 20 })\n"
    "  pool:close()\n"
    "  for i = 1, 4 do\n"
    "    if r[i] ~= 2 * i then error(('map %%d: item %%d = %%s'):format(m, i, tostring(r[i]))) end\n"
    "  end\n"
    "end\n"
    "return 'done'\n", MAPS);
  double t0 = host_now();
  int ok = host_run(L, "main thread", code, out, sizeof out);
  double dt = host_now() - t0;
  atomic_store(&stop, 1);
  pthread_join(r, NULL);
  pthread_join(s, NULL);
  FP_CHECK(ok);
  FP_CHECK_STR(out, "done");
  fprintf(stderr, "  %d fresh-pool maps in %.2f s (%.1f ms each), beside %ld mallocs and %ld Lua errors\n",
          MAPS, dt, dt * 1000 / MAPS, (long)atomic_load(&mallocs), (long)atomic_load(&lua_errors));
  lua_close(L);
}

int main(void) {
  alarm(300);
  FP_RUN(fresh_pool_maps);
  return fp_test_summary();
}
