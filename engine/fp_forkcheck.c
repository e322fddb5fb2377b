/*
 * fp_forkcheck.c - the unwinder's locks at fork (fp_forkcheck.h).
 *
 * Forking copies only the calling thread; a lock another thread held stays
 * held for ever in the child.  glibc takes care of malloc's and stdio's,
 * and the host's own are the fork hooks' business, but two more are
 * everybody's: libgcc's registered-frames mutex (taken by
 * _Unwind_Find_FDE, __register_frame, __deregister_frame) and the loader's
 * lock behind dl_iterate_phdr.  LuaJIT raises every Lua error, even one
 * caught by pcall, with _Unwind_RaiseException, and registers the frames of
 * the code it compiles with __register_frame: any other Lua state (or C++
 * code) running in another host thread takes them all the time.  A worker
 * forked at the wrong moment hung at its first Lua error (measured: one
 * worker in a few thousand forks, with three states mapping at once).
 *
 * Nothing lets us take those locks ourselves, so the child checks instead:
 * it looks up an address with _Unwind_Find_FDE (which takes both) under a
 * timer; if that returns, the locks were free and the child says so through
 * a pipe; if the timer fires, they never will be, and the child exits with
 * FP_EXIT_FORK_LOCKED for the parent to fork again.  Only when the process
 * has other threads (in a single-threaded one nothing can hold them).
 * _Unwind_Find_FDE is looked up once in the parent (dlsym takes the
 * loader's lock itself); a process without libgcc_s gets no check. */

#include "fp_forkcheck.h"
#include "fp_proc.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef const void *(*find_fde_fn)(void *pc, void *bases);
static find_fde_fn find_fde;
static pthread_once_t find_fde_once = PTHREAD_ONCE_INIT;

static void find_fde_lookup(void) {
  void *f = dlsym(RTLD_DEFAULT, "_Unwind_Find_FDE");
  memcpy(&find_fde, &f, sizeof f); /* POSIX: function pointers fit a void * */
}

/* The number of threads of this process (-1: unknown). */
static int process_threads(void) {
  char buf[2048];
  int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  const char *t = strstr(buf, "\nThreads:");
  return t ? atoi(t + 9) : -1;
}

/* How long the child's check may take before the locks count as held for
 * ever (it takes microseconds when they are free). */
#define FP_PROBE_US 100000

static void probe_timeout(int sig) {
  (void)sig;
  _exit(FP_EXIT_FORK_LOCKED);
}

void fp_forkcheck_child(int fd) {
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = probe_timeout;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGALRM, &sa, &old);
  struct itimerval it, none;
  memset(&it, 0, sizeof it);
  memset(&none, 0, sizeof none);
  it.it_value.tv_usec = FP_PROBE_US;
  setitimer(ITIMER_REAL, &it, NULL);
  sigset_t alrm;
  sigemptyset(&alrm);
  sigaddset(&alrm, SIGALRM);
  sigprocmask(SIG_UNBLOCK, &alrm, NULL);
  void *bases[3];
  void (*self)(int) = fp_forkcheck_child;
  void *pc;
  memcpy(&pc, &self, sizeof pc);
  find_fde((char *)pc + 1, bases);
  sigprocmask(SIG_BLOCK, &alrm, NULL);
  setitimer(ITIMER_REAL, &none, NULL);
  /* A SIGALRM that came after the check must not stay pending. */
  struct timespec zero = {0, 0};
  while (sigtimedwait(&alrm, NULL, &zero) == SIGALRM) {}
  sigaction(SIGALRM, &old, NULL);
  char ok = 1;
  ssize_t w = write(fd, &ok, 1);
  (void)w;
  close(fd);
}

int fp_forkcheck_result(int fd, pid_t p) {
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  char c = 0;
  int r;
  do r = poll(&pfd, 1, 10 * FP_PROBE_US / 1000);
  while (r < 0 && errno == EINTR);
  if (r == 1 && read(fd, &c, 1) == 1) return 1;
  if (r != 1) return 1;
  siginfo_t si;
  memset(&si, 0, sizeof si);
  if (waitid(P_PID, (id_t)p, &si, WEXITED | WNOWAIT) != 0 || si.si_pid != p ||
      si.si_code != CLD_EXITED || si.si_status != FP_EXIT_FORK_LOCKED)
    return 1;
  waitpid(p, NULL, 0);
  return 0;
}

int fp_forkcheck_wanted(void) {
  pthread_once(&find_fde_once, find_fde_lookup);
  return find_fde && process_threads() != 1;
}
