/*
 * test_threads_states.c - several Lua states in one process, one per
 * thread (issue 13, item 3), each with its own pools, all at once.
 *
 *   concurrent_maps: 3 threads, each its own lua_State, 50 rounds each
 *     (25 under ASan) of a fresh pool's map, into a shared_array (the
 *     shared arena is one per process) or of strings, then a map on a
 *     kept-alive pool used across rounds; results checked.  Every map arms and disarms the SIGINT
 *     guard: afterwards the host's own SIGINT handler is in place again.
 *   sigint_each_state: 3 states each inside a long map when the process
 *     gets SIGINT: every one of the maps raises "interrupted" (each state
 *     has its own guard); then the host's handler is back.
 */
#include "host.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <unistd.h>

#define NSTATES 3
#ifdef FP_HOST_SAN
#define ROUNDS 25
#else
#define ROUNDS 50
#endif

typedef struct job {
  int id;
  int ok;
  char out[512];
} job;

/* One round: a fresh pool, one map (into a shared_array on odd rounds, of
 * strings on even ones), then a map on the state's kept-alive pool. */
static const char *ROUND_CODE =
  "local forkpool = require 'forkpool'\n"
  "local id, rounds = ...\n"
  "local keep = forkpool.new{ n_jobs = 2, keep_alive = true }\n"
  "local n = 64\n"
  "local items = {}\n"
  "for i = 1, n do items[i] = i end\n"
  "for r = 1, rounds do\n"
  "  local pool = forkpool.new{ n_jobs = 2 }\n"
  "  if r % 2 == 1 then\n"
  "    local a = forkpool.shared_array('double', n)\n"
  "    pool:map(function(i) a[i - 1] = i * id + r end, items, { chunk_size = 8 })\n"
  "    for i = 1, n do\n"
  "      if a[i - 1] ~= i * id + r then\n"
  "        error(('state %d round %d: a[%d] = %s'):format(id, r, i - 1, tostring(a[i - 1])))\n"
  "      end\n"
  "    end\n"
  "  else\n"
  "    local s = pool:map(function(x) return ('%d:%d'):format(id, x) end, items)\n"
  "    for i = 1, n do assert(s[i] == id .. ':' .. i, 'strings') end\n"
  "  end\n"
  "  pool:close()\n"
  "  local k = keep:map(function(x) return x + id end, { r, r + 1 })\n"
  "  assert(k[1] == r + id and k[2] == r + 1 + id, 'keep_alive pool')\n"
  "end\n"
  "keep:close()\n"
  "return 'ok ' .. id\n";

static void *run_rounds(void *arg) {
  job *j = arg;
  lua_State *L = host_state();
  char code[2048];
  /* The chunk's `...`: id and rounds, through a wrapper. */
  snprintf(code, sizeof code, "return (function(...)\n%s\nend)(%d, %d)", ROUND_CODE, j->id, ROUNDS);
  j->ok = host_run(L, "state", code, j->out, sizeof j->out);
  lua_close(L);
  return NULL;
}

static volatile sig_atomic_t host_sigints;
static void host_handler(int sig) { (void)sig; host_sigints++; }

static int host_handler_installed(void) {
  struct sigaction sa;
  sigaction(SIGINT, NULL, &sa);
  return sa.sa_handler == host_handler;
}

FP_TEST(concurrent_maps) {
  job jobs[NSTATES];
  pthread_t t[NSTATES];
  double t0 = host_now();
  for (int i = 0; i < NSTATES; i++) {
    memset(&jobs[i], 0, sizeof jobs[i]);
    jobs[i].id = i + 1;
    FP_CHECK(pthread_create(&t[i], NULL, run_rounds, &jobs[i]) == 0);
  }
  for (int i = 0; i < NSTATES; i++) {
    pthread_join(t[i], NULL);
    char want[32];
    snprintf(want, sizeof want, "ok %d", i + 1);
    FP_CHECK(jobs[i].ok);
    FP_CHECK_STR(jobs[i].out, want);
  }
  fprintf(stderr, "  %d states x %d rounds (2 maps each) in %.2f s\n", NSTATES, ROUNDS,
          host_now() - t0);
  FP_CHECK(host_handler_installed());
}

/* forked(): the state's worker is forked (its map is about to wait). */
static _Atomic int *forked_count;
static int l_forked(lua_State *L) {
  (void)L;
  atomic_fetch_add(forked_count, 1);
  return 0;
}

static void *run_long_map(void *arg) {
  job *j = arg;
  lua_State *L = host_state();
  lua_pushcfunction(L, l_forked);
  lua_setglobal(L, "forked");
  j->ok = host_run(L, "state",
    "local forkpool = require 'forkpool'\n"
    "local ffi = require 'ffi'\n"
    "pcall(ffi.cdef, 'int poll(void *, unsigned long, int);')\n"
    "local pool = forkpool.new{ n_jobs = 1, after_fork_parent = forked }\n"
    "local ok, err = pcall(pool.map, pool, function(x)\n"
    "  for i = 1, 100 do ffi.C.poll(nil, 0, 100) end\n"
    "  return x\n"
    "end, { 1, 2 })\n"
    "pool:close()\n"
    "return tostring(ok) .. ' ' .. tostring(forkpool.is_error(err, 'interrupted'))\n",
    j->out, sizeof j->out);
  lua_close(L);
  return NULL;
}

FP_TEST(sigint_each_state) {
  _Atomic int started = 0;
  forked_count = &started;
  job jobs[NSTATES];
  pthread_t t[NSTATES];
  for (int i = 0; i < NSTATES; i++) {
    memset(&jobs[i], 0, sizeof jobs[i]);
    jobs[i].id = i + 1;
    FP_CHECK(pthread_create(&t[i], NULL, run_long_map, &jobs[i]) == 0);
  }
  /* Every state's map has forked its worker (the guard is armed before
   * that): let them all reach their wait. */
  while (atomic_load(&started) < NSTATES) usleep(1000);
  usleep(300 * 1000);
  double t0 = host_now();
  kill(getpid(), SIGINT);
  for (int i = 0; i < NSTATES; i++) {
    pthread_join(t[i], NULL);
    FP_CHECK(jobs[i].ok);
    FP_CHECK_STR(jobs[i].out, "false true");
  }
  fprintf(stderr, "  %d maps interrupted by one SIGINT within %.2f s\n", NSTATES, host_now() - t0);
  FP_CHECK(host_handler_installed());
  FP_CHECK_EQ_INT(host_sigints, 0); /* forkpool's guards took it */
}

int main(void) {
  alarm(240);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = host_handler;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  FP_RUN(concurrent_maps);
  FP_RUN(sigint_each_state);
  return fp_test_summary();
}
