/*
 * test_threads_hooks.c - a host lock held by another thread at fork
 * (issue 13, item 2), and the C API's fork hooks.
 *
 * The host has a mutex (host_lock) that its `host_log` function takes; Lua
 * tasks call host_log.  A second host thread holds the lock about half the
 * time.  A worker forked while it is held starts with it locked for ever.
 *
 *   hooks_100_maps: with forkpool_set_fork_hooks taking host_lock before
 *     each fork and releasing it on both sides, 100 maps that each fork
 *     fresh workers all finish; prepare and parent ran once per fork, the
 *     child hook in every worker.
 *   no_hooks_timeout: without hooks, a worker forked while the lock is
 *     held hangs in host_log; task_timeout bounds it: the map fails with a
 *     timeout error instead of hanging.
 *   hooks_only_ours: the hooks do not run around the host's own forks.
 */
#include "host.h"
#include "forkpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

static pthread_mutex_t host_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int stop_holder;
static _Atomic long prepares, parents;
static int child_hook_ran; /* in a worker: the child hook ran there */

/* host_log(): what a task calls (it takes the host's lock). */
static int l_host_log(lua_State *L) {
  pthread_mutex_lock(&host_lock);
  pthread_mutex_unlock(&host_lock);
  lua_pushboolean(L, child_hook_ran);
  return 1;
}

static void *holder(void *arg) {
  (void)arg;
  unsigned seed = 1;
  while (!atomic_load(&stop_holder)) {
    pthread_mutex_lock(&host_lock);
    usleep(50 + rand_r(&seed) % 200);
    pthread_mutex_unlock(&host_lock);
    usleep(50 + rand_r(&seed) % 200);
  }
  return NULL;
}

static void h_prepare(void *ud) {
  FP_CHECK(ud == &host_lock);
  pthread_mutex_lock(&host_lock);
  atomic_fetch_add(&prepares, 1);
}
static void h_parent(void *ud) {
  atomic_fetch_add(&parents, 1);
  pthread_mutex_unlock((pthread_mutex_t *)ud);
}
static void h_child(void *ud) {
  /* The only thread here; the lock was taken by prepare in the parent's
   * forking thread, of which this one is the copy. */
  pthread_mutex_unlock((pthread_mutex_t *)ud);
  child_hook_ran = 1;
}

static lua_State *new_host_state(void) {
  lua_State *L = host_state();
  lua_pushcfunction(L, l_host_log);
  lua_setglobal(L, "host_log");
  return L;
}

FP_TEST(hooks_100_maps) {
  lua_State *L = new_host_state();
  forkpool_set_fork_hooks(h_prepare, h_parent, h_child, &host_lock);
  atomic_store(&stop_holder, 0);
  pthread_t t;
  FP_CHECK(pthread_create(&t, NULL, holder, NULL) == 0);
  char out[256];
  double t0 = host_now();
  int ok = host_run(L, "hooks",
    "local forkpool = require 'forkpool'\n"
    "local pool = forkpool.new{ n_jobs = 2 }\n"
    "local items = {}\n"
    "for i = 1, 20 do items[i] = i end\n"
    "for m = 1, 100 do\n"
    "  local r = pool:map(function(x) return host_log() and x end, items,\n"
    "                    { chunk_size = 2, task_timeout = 10 })\n"
    "  for i = 1, 20 do assert(r[i] == i, 'map ' .. m .. ': item ' .. i) end\n"
    "end\n"
    "pool:close()\n"
    "return 'done'\n", out, sizeof out);
  double dt = host_now() - t0;
  atomic_store(&stop_holder, 1);
  pthread_join(t, NULL);
  forkpool_set_fork_hooks(NULL, NULL, NULL, NULL);
  FP_CHECK(ok);
  FP_CHECK_STR(out, "done");
  fprintf(stderr, "  100 maps, %ld forks, %.2f s\n", (long)atomic_load(&prepares), dt);
  FP_CHECK(atomic_load(&prepares) >= 200);
  FP_CHECK_EQ_INT(atomic_load(&prepares), atomic_load(&parents));
  lua_close(L);
}

FP_TEST(no_hooks_timeout) {
  lua_State *L = new_host_state();
  /* Deterministic: the lock is held throughout the fork. */
  pthread_mutex_lock(&host_lock);
  char out[512];
  double t0 = host_now();
  int ok = host_run(L, "no hooks",
    "local forkpool = require 'forkpool'\n"
    "local pool = forkpool.new{ n_jobs = 1 }\n"
    "local ok, err = pcall(pool.map, pool, function(x) return host_log() end, { 1 },\n"
    "                      { task_timeout = 0.5 })\n"
    "pool:close()\n"
    "return tostring(ok) .. ' ' .. tostring(forkpool.is_error(err, 'timeout'))\n", out, sizeof out);
  double dt = host_now() - t0;
  pthread_mutex_unlock(&host_lock);
  FP_CHECK(ok);
  FP_CHECK_STR(out, "false true");
  fprintf(stderr, "  the hung task failed with a timeout after %.2f s\n", dt);
  FP_CHECK(dt < 5);
  lua_close(L);
}

static void count_prepare(void *ud) { (void)ud; atomic_fetch_add(&prepares, 1); }

FP_TEST(hooks_only_ours) {
  atomic_store(&prepares, 0);
  forkpool_set_fork_hooks(count_prepare, NULL, NULL, NULL);
  pid_t p = fork();
  if (p == 0) _exit(0);
  waitpid(p, NULL, 0);
  FP_CHECK_EQ_INT(atomic_load(&prepares), 0);
  lua_State *L = new_host_state();
  FP_CHECK(host_run(L, "one fork",
    "local pool = require('forkpool').new{ n_jobs = 1 }\n"
    "pool:map(function(x) return x end, { 1 })\n"
    "pool:close()\n", NULL, 0));
  FP_CHECK_EQ_INT(atomic_load(&prepares), 1);
  forkpool_set_fork_hooks(NULL, NULL, NULL, NULL);
  lua_close(L);
}

int main(void) {
  alarm(180);
  FP_RUN(hooks_100_maps);
  FP_RUN(no_hooks_timeout);
  FP_RUN(hooks_only_ours);
  return fp_test_summary();
}
