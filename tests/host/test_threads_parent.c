/*
 * test_threads_parent.c - parent-death detection follows the process, not
 * the thread (issue 13, item 1).
 *
 *   thread_exit: a keep_alive pool made and used on a short-lived thread
 *     (one worker busy in a task when the thread ends); the main thread
 *     maps again: same worker pids, worker state kept, the busy task
 *     finished, worker_exit results back at close.
 *   parent_killed: a host process (forked from here) makes a pool on a
 *     short-lived thread, leaves one worker busy in a sleeping loop and is
 *     SIGKILLed: every worker is gone within 2 s (/proc).
 *   parent_exec: the same, but the host exec()s another program: every
 *     worker is gone within 2 s.
 * The times measured are printed.
 */
#include "host.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

/* The pool, its task functions and a busy task, made on a thread. */
static const char *MAKE_POOL =
  "local forkpool = require 'forkpool'\n"
  "local ffi = require 'ffi'\n"
  "pcall(ffi.cdef, 'int getpid(void); int poll(void *, unsigned long, int);')\n"
  "pool = forkpool.new{ n_jobs = 2, keep_alive = true, use_worker_state = true }\n"
  "count = function(state, x)\n"
  "  state.n = (state.n or 0) + 1\n"
  "  local t = os.clock() + 0.002 while os.clock() < t do end\n"
  "  return ffi.C.getpid()\n"
  "end\n"
  "exit_fn = function(state) return state.n end\n"
  "pool:map(count, {1, 2, 3, 4, 5, 6, 7, 8}, { chunk_size = 1, worker_exit = exit_fn })\n"
  "pids1 = pool:worker_pids()\n"
  "return pids1[1] .. ' ' .. pids1[2]\n";

/* A task that sleeps in a loop (a busy worker), started without waiting. */
static const char *START_BUSY =
  "busy = pool:apply_async(function(state, rounds)\n"
  "  local ffi = require 'ffi'\n"
  "  state.n = (state.n or 0) + 1\n"
  "  for i = 1, rounds do ffi.C.poll(nil, 0, 100) end\n"
  "  return 'slept'\n"
  "end, { ROUNDS })\n"
  "return true\n";

static lua_State *TL;
static int thread_ok;
static char thread_out[256];

static void *short_lived(void *arg) {
  const char *busy = arg;
  thread_ok = host_run(TL, "short-lived thread", MAKE_POOL, thread_out, sizeof thread_out);
  if (thread_ok && busy) thread_ok = host_run(TL, "short-lived thread", busy, NULL, 0);
  return NULL;
}

static char *busy_code(int rounds) {
  static char buf[1024];
  const char *at = strstr(START_BUSY, "ROUNDS");
  snprintf(buf, sizeof buf, "%.*s%d%s", (int)(at - START_BUSY), START_BUSY, rounds, at + 6);
  return buf;
}

/* 1 while pid exists and is not a zombie. */
static int alive(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  const char *rp = strrchr(buf, ')');
  return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

FP_TEST(thread_exit) {
  TL = host_state();
  pthread_t t;
  FP_CHECK(pthread_create(&t, NULL, short_lived, busy_code(5)) == 0);
  pthread_join(t, NULL);
  FP_CHECK(thread_ok);
  int p1 = 0, p2 = 0;
  FP_CHECK(sscanf(thread_out, "%d %d", &p1, &p2) == 2);
  /* The thread that forked the workers is gone: give a death signal time
   * to arrive and act. */
  usleep(300 * 1000);
  FP_CHECK(alive(p1) && alive(p2));
  char out[256];
  int ok = host_run(TL, "main thread",
    "local got = busy:get()\n"
    "local r = pool:map(count, {1, 2, 3, 4, 5, 6, 7, 8}, { chunk_size = 1, worker_exit = exit_fn })\n"
    "local p = pool:worker_pids()\n"
    "if p[1] ~= pids1[1] or p[2] ~= pids1[2] then\n"
    "  error(('new workers: %s %s, were %s %s'):format(tostring(p[1]), tostring(p[2]), pids1[1], pids1[2]))\n"
    "end\n"
    "pool:close()\n"
    "local sum = 0\n"
    "for _, v in ipairs(pool:get_exit_results()) do sum = sum + v end\n"
    "return got .. ' ' .. #pool:get_exit_results() .. ' ' .. sum\n", out, sizeof out);
  FP_CHECK(ok);
  /* 17 tasks in all (8 + the busy one + 8), counted in worker state. */
  FP_CHECK_STR(out, "slept 2 17");
  lua_close(TL);
}

/* Fork a host that makes a pool on a short-lived thread, starts a task
 * that sleeps for ever on one worker, writes "pid1 pid2\n" to fd and then
 * either waits to be killed or, once a byte arrives on go (so the test has
 * seen the workers alive first: they leave within milliseconds of the
 * exec), exec()s sleep. */
static pid_t start_host(int fd, int do_exec, int go) {
  pid_t h = fork();
  if (h != 0) return h;
  TL = host_state();
  pthread_t t;
  if (pthread_create(&t, NULL, short_lived, busy_code(1000000)) != 0) _exit(2);
  pthread_join(t, NULL);
  if (!thread_ok) _exit(3);
  usleep(300 * 1000); /* the busy task runs; the thread's end was seen */
  dprintf(fd, "%s\n", thread_out);
  if (do_exec) {
    char c;
    if (read(go, &c, 1) != 1) _exit(5);
    execl("/bin/sleep", "sleep", "30", (char *)NULL);
    _exit(4);
  }
  for (;;) pause();
}

/* Run a host, end it (SIGKILL or its own exec), and time its workers'
 * exit.  Returns the seconds until the last one was gone (-1: never). */
static double host_workers_gone(int do_exec) {
  int fds[2], go[2];
  if (pipe(fds) != 0) return -1;
  if (pipe(go) != 0) return -1;
  pid_t h = start_host(fds[1], do_exec, go[0]);
  close(fds[1]);
  close(go[0]);
  char line[128] = {0};
  struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
  int p1 = 0, p2 = 0;
  if (poll(&pfd, 1, 20000) == 1 && read(fds[0], line, sizeof line - 1) > 0)
    sscanf(line, "%d %d", &p1, &p2);
  close(fds[0]);
  double gone = -1;
  if (p1 > 0 && p2 > 0 && alive(p1) && alive(p2)) {
    double t0 = host_now();
    if (!do_exec) {
      kill(h, SIGKILL);
      waitpid(h, NULL, 0);
    } else {
      ssize_t n = write(go[1], "x", 1); /* the host execs now */
      (void)n;
    }
    while (host_now() - t0 < 5) {
      if (!alive(p1) && !alive(p2)) {
        gone = host_now() - t0;
        break;
      }
      usleep(5 * 1000);
    }
  } else {
    fprintf(stderr, "  the host reported no live workers (\"%s\")\n", line);
  }
  close(go[1]);
  if (p1 > 0 && alive(p1)) kill(p1, SIGKILL);
  if (p2 > 0 && alive(p2)) kill(p2, SIGKILL);
  kill(h, SIGKILL);
  waitpid(h, NULL, 0);
  return gone;
}

FP_TEST(parent_killed) {
  double s = host_workers_gone(0);
  fprintf(stderr, "  workers gone %.3f s after the host was SIGKILLed\n", s);
  FP_CHECK(s >= 0 && s < 2.0);
}

FP_TEST(parent_exec) {
  double s = host_workers_gone(1);
  fprintf(stderr, "  workers gone %.3f s after the host exec()ed\n", s);
  FP_CHECK(s >= 0 && s < 2.0);
}

int main(void) {
  alarm(120);
  FP_RUN(thread_exit);
  FP_RUN(parent_killed);
  FP_RUN(parent_exec);
  return fp_test_summary();
}
