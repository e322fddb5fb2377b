/*
 * fp_proc.c - process control: fork with signals blocked, pidfds, reaping,
 * signal names, and the registry of forkpool's own file descriptors; then
 * (last section) a pool's worker processes: the registry of live pools,
 * spawning into a slot, the child's setup between fork and the worker
 * loop, and releasing a pool.  Errors are returned as FP_* codes: only the
 * binding (fp_lua.c) turns them into Lua values or errors.
 *
 * Invariant: every fd forkpool opens in a process (doorbell eventfds,
 * pidfds) is O_CLOEXEC and listed in the registry, so a freshly forked
 * worker can close all of them except its own: a worker must never hold
 * another worker's pidfd or another pool's doorbell.
 *
 * Process-global state of the engine, and why each piece is safe in a host
 * with threads, several Lua states (one per thread) each with its own
 * pools (issue 13).  Every mutable file-scope or function-scope static of
 * the engine files is listed here.
 *
 *   fp_proc.c, under the registry lock (recursive; taken by every fork in
 *   the process through pthread_atfork and re-initialised in the child, so
 *   no child inherits it held and every child sees these structures whole):
 *     reg_fds, reg_n, reg_cap   the fd registry
 *     life_r, life_w, life_owner  the lifeline (made by the first fork)
 *     live_pools                the live pools of every state; the lanes of a
 *                               registered pool are (un)mapped under the lock
 *                               too (fp_pool_slot_open), so a child may unmap
 *                               them; a pool is registered only once whole
 *     hooks                     the C fork hooks, copied as one set per fork
 *     guards[], guards_armed, sigint_old (fp_sigint.c)   the SIGINT guards, one entry per
 *                               armed Lua state (key: its registry's address);
 *                               the handler reads guards[] with atomics only
 *   fp_proc.c, otherwise:
 *     reg_once; find_fde_once, find_fde (fp_forkcheck.c)   pthread_once
 *     self_pid                  atomic (any thread may fill it: same value)
 *     fork_fail_countdown       atomic (test hook)
 *     parent_life, parent_life_id, parent_pid, last_words_slot, altstack
 *                               a worker's own: written in the fresh child
 *                               before any of its code runs, then read by it
 *                               and its signal handlers only
 *     fp_proc_signame's buffer  _Thread_local
 *   fp_shm.c:
 *     fp_page_size              atomic
 *     arena_* (base, size, owner, made, blocks, n, cap)   one arena per
 *                               process, shared by every state: arena_lock
 *                               guards init and the bookkeeping; base, size
 *                               and owner are written once under it, before
 *                               any state can allocate; a child of ours never
 *                               takes the lock (the owner check comes first),
 *                               and every fork takes it (pthread_atfork) so no
 *                               child finds it held
 *   fp_worker.c: w_stat, stamp_idx, stamp_job, stamp_ns   a worker's own
 *     (the worker process runs one Lua state on one thread)
 *   Test hooks (development builds; the specs drive them from one state):
 *     fault_wid, test_slot (fp_lua.c), fault_phase, fault_sig, fault_after
 *     (fp_worker.c): set by the parent, read by the worker after the fork;
 *     not meant for several states at once.
 *   fp_codec.c, fp_packed.c, fp_reply.c, fp_ring.c, fp_events.c,
 *   fp_common.c: no mutable static state (constant tables only).
 * Outside the engine: each Lua state loads its own copy of the Lua modules
 * (their upvalues, the SIGINT guard's nesting in call.lua, modmap) and of
 * the FFI declarations, so they are per state by construction.  Nothing had
 * to be refused: no second state gets an error for sharing something.
 */
#include "fp_proc.h"
#include "fp_pool.h"
#include "fp_shm.h"
#include "fp_forkcheck.h"
#include "fp_sigint.h"
#include "fp_worker.h"
/* The public declaration of forkpool_set_fork_hooks, hidden like the rest of
 * the engine unless the library's build exports it (FORKPOOL_EXPORT sets
 * its visibility explicitly, which wins over the pragma).  lua.h is
 * included first so that the Lua API keeps its own visibility. */
#include <lua.h>
FP_HIDDEN_BEGIN
#include "../include/forkpool.h"
FP_HIDDEN_END

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

/* ---- the registry lock ----
 *
 * One lock for the process-wide state of this file that threads share: the
 * fd registry, the lifeline, the registry of live pools (and the lanes of
 * registered pools while they are mapped or unmapped: fp_pool_slot_open),
 * the SIGINT guard's table and the fork hooks.  Recursive, so that a caller
 * can create an fd and track it in one critical section
 * (fp_proc_lock + fp_proc_track_fd) and no fork in between copies it
 * untracked.  Never held while user code (a fork hook) runs, nor while
 * waiting for a process.
 *
 * Fork: a pthread_atfork handler takes the lock before every fork in the
 * process (forkpool's and the host's own), so a child always sees these
 * structures whole, and re-initialises it in the child (whose only thread
 * is not the owner the parent's thread was: unlocking would fail), so no
 * child ever finds it held by a thread that fork did not copy. */

static pthread_mutex_t reg_lock;
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;

static void reg_lock_init(void) {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
  pthread_mutex_init(&reg_lock, &a);
  pthread_mutexattr_destroy(&a);
}

static _Atomic pid_t self_pid; /* fp_proc_self's cache (section "fork") */

static void atfork_prepare(void) { pthread_mutex_lock(&reg_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&reg_lock); }
static void atfork_child(void) {
  reg_lock_init();
  /* Every fork of the process passes here, the host's own too: the pid
   * cache never outlives the process it was filled in. */
  atomic_store_explicit(&self_pid, 0, memory_order_relaxed);
}

static void reg_setup(void) {
  reg_lock_init();
  /* Failing (ENOMEM) leaves forks made by other threads unguarded; ours
   * still hold the lock across fork() themselves. */
  (void)pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

void fp_proc_lock(void) {
  pthread_once(&reg_once, reg_setup);
  pthread_mutex_lock(&reg_lock);
}

void fp_proc_unlock(void) { pthread_mutex_unlock(&reg_lock); }

/* ---- fd registry (under the registry lock) ---- */

static int *reg_fds;
static int reg_n, reg_cap;

void fp_proc_track_fd(int fd) {
  fp_proc_lock();
  if (reg_n == reg_cap) {
    int ncap = reg_cap ? reg_cap * 2 : 16;
    int *np = realloc(reg_fds, (size_t)ncap * sizeof *np);
    if (!np) { /* only hygiene in children is lost, not correctness here */
      fp_proc_unlock();
      return;
    }
    reg_fds = np;
    reg_cap = ncap;
  }
  reg_fds[reg_n++] = fd;
  fp_proc_unlock();
}

void fp_proc_untrack_fd(int fd) {
  fp_proc_lock();
  for (int i = 0; i < reg_n; i++) {
    if (reg_fds[i] == fd) {
      reg_fds[i] = reg_fds[--reg_n];
      break;
    }
  }
  fp_proc_unlock();
}

void fp_proc_close_fd(int fd) {
  if (fd < 0) return;
  fp_proc_lock();
  fp_proc_untrack_fd(fd);
  close(fd);
  fp_proc_unlock();
}

void fp_proc_close_tracked_except(const int *keep, int nkeep) {
  fp_proc_lock();
  int w = 0;
  for (int i = 0; i < reg_n; i++) {
    int fd = reg_fds[i], kept = 0;
    for (int k = 0; k < nkeep; k++)
      if (keep[k] == fd) kept = 1;
    if (kept)
      reg_fds[w++] = fd;
    else
      close(fd);
  }
  reg_n = w;
  fp_proc_unlock();
}

static int cmp_int(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

void fp_proc_close_fds_except(int *keep, int nkeep) {
  qsort(keep, (size_t)nkeep, sizeof *keep, cmp_int);
  long max = sysconf(_SC_OPEN_MAX);
  if (max < 0 || max > 1 << 20) max = 1 << 20;
  int lo = 3;
  for (int i = 0; i <= nkeep; i++) {
    int hi = i < nkeep ? keep[i] - 1 : INT32_MAX; /* close [lo, hi] */
    if (i < nkeep && keep[i] < lo) {
      if (keep[i] + 1 > lo) lo = keep[i] + 1;
      continue;
    }
    if (hi >= lo && syscall(SYS_close_range, (unsigned)lo, (unsigned)hi, 0) != 0) {
      /* Before Linux 5.9: one by one, up to the fd limit. */
      for (long fd = lo; fd <= hi && fd < max; fd++) close((int)fd);
    }
    if (i < nkeep) lo = keep[i] + 1;
  }
}

/* ---- fd identity ---- */

int fp_fd_id_get(int fd, fp_fd_id *id) {
  struct stat st;
  id->dev = 0;
  id->ino = 0;
  if (fd < 0 || fstat(fd, &st) != 0) return FP_ESYS;
  id->dev = (uint64_t)st.st_dev;
  id->ino = (uint64_t)st.st_ino;
  return FP_OK;
}

int fp_fd_id_same(int fd, const fp_fd_id *id) {
  fp_fd_id now;
  if (fp_fd_id_get(fd, &now) != FP_OK) return 0;
  return now.dev == id->dev && now.ino == id->ino;
}

/* ---- the lifeline: a pipe whose write end only the parent holds ----
 *
 * PR_SET_PDEATHSIG does not fire when the parent exec()s another program,
 * and getppid() does not change then.  The write end is O_CLOEXEC and
 * never leaves the parent (children close it at once), so an exec closes
 * the last write end and every worker's read end reports POLLHUP.  Each
 * worker reopens its read end through /proc (its own open file
 * description, so F_SETOWN can name it) with O_ASYNC: the kernel then
 * sends it FP_PARENT_SIG the moment the last write end closes, so a busy
 * worker learns of an exec at once, not only at its next idle wake-up.
 * life_r, life_w, life_owner: under the registry lock. */

static int life_r = -1, life_w = -1;
static pid_t life_owner;
static int parent_life = -1;       /* in a worker: the read end it watches */
static fp_fd_id parent_life_id;
static pid_t parent_pid;           /* in a worker: its parent, as forked */

static void lifeline_make(void) {
  if (life_w >= 0 && life_owner == getpid()) return;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return; /* only exec detection is lost */
  life_r = fds[0];
  life_w = fds[1];
  life_owner = getpid();
}

int fp_proc_parent_gone(void) {
  if (parent_life < 0) return 0;
  struct pollfd p = {.fd = parent_life, .events = POLLIN};
  if (poll(&p, 1, 0) != 1 || !(p.revents & POLLHUP)) return 0;
  /* A task may have closed our fd and opened something else there. */
  return fp_fd_id_same(parent_life, &parent_life_id);
}

int fp_proc_lifeline_fd(void) { return parent_life; }

void fp_proc_lifeline_close(void) {
  fp_proc_lock();
  if (life_w >= 0 && life_owner == getpid()) {
    close(life_r);
    close(life_w);
    life_r = life_w = -1;
  }
  fp_proc_unlock();
}

/* ---- parent death, as seen by a worker ----
 *
 * PR_SET_PDEATHSIG fires when the *thread* that forked the worker exits,
 * not the process: the kernel then reparents the worker to another thread
 * of the same process and sends the signal again each time.  So the signal
 * is a catchable one, FP_PARENT_SIG, whose handler leaves only when the
 * parent process is really gone: reparented out of it (getppid() differs
 * from the pid recorded at fork; getppid() names the process, not the
 * thread) or its lifeline reports POLLHUP (exec, or death).  Otherwise
 * (a thread of the host ended) it returns and the worker runs on.  The
 * lifeline's O_ASYNC sends the same signal.  Everything the handler calls
 * is async-signal-safe (getppid, poll, fstat, _exit). */

static void parent_sig_handler(int sig) {
  (void)sig;
  int e = errno;
  if (getppid() != parent_pid || fp_proc_parent_gone()) _exit(FP_EXIT_PARENT_GONE);
  errno = e;
}

/* In a fresh worker: reopen the lifeline's read end as a description of
 * our own and ask for FP_PARENT_SIG when its last writer goes.  Without
 * /proc the shared description stays, watched at idle wake-ups only. */
static void lifeline_watch(void) {
  if (parent_life < 0) return;
  char path[40];
  snprintf(path, sizeof path, "/proc/self/fd/%d", parent_life);
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return;
  if (fcntl(fd, F_SETOWN, getpid()) != 0 || fcntl(fd, F_SETSIG, FP_PARENT_SIG) != 0 ||
      fcntl(fd, F_SETFL, O_ASYNC | O_NONBLOCK) != 0 ||
      dup3(fd, parent_life, O_CLOEXEC) < 0) {
    close(fd);
    return;
  }
  close(fd);
  fp_fd_id_get(parent_life, &parent_life_id);
}

/* ---- fork hooks (forkpool.h) ----
 * Set by any thread at any time; read as one consistent set, under the
 * registry lock, by each fork (which calls its copy). */

typedef struct fork_hooks {
  void (*prepare)(void *), (*parent)(void *), (*child)(void *);
  void *ud;
} fork_hooks;
static fork_hooks hooks;

void forkpool_set_fork_hooks(void (*prepare)(void *), void (*parent)(void *),
                             void (*child)(void *), void *ud) {
  fp_proc_lock();
  hooks.prepare = prepare;
  hooks.parent = parent;
  hooks.child = child;
  hooks.ud = ud;
  fp_proc_unlock();
}

/* ---- fork ---- */

/* self_pid: written by the first caller, cleared by the atfork child
 * handler in every child of a fork() (so it is registered first: the
 * pthread_once below), set again at once in forkpool's own children;
 * atomic because several threads may fill it at once (with the same
 * value).  getpid() is a real system call (about 1 us on this project's
 * VMs), and every method of a pool checks its owner: the cache saves
 * several per call. */
pid_t fp_proc_self(void) {
  pid_t p = atomic_load_explicit(&self_pid, memory_order_relaxed);
  if (!p) {
    pthread_once(&reg_once, reg_setup);
    p = getpid();
    atomic_store_explicit(&self_pid, p, memory_order_relaxed);
  }
  return p;
}

static _Atomic int fork_fail_countdown; /* test hook: fail the n-th next fork */

void fp_proc_fail_fork_after(int n) { atomic_store(&fork_fail_countdown, n); }


int fp_proc_fork(pid_t *pid, int *pidfd) {
  if (atomic_load(&fork_fail_countdown) > 0 && atomic_fetch_sub(&fork_fail_countdown, 1) == 1) {
    errno = EAGAIN;
    return FP_ESYS;
  }
  fp_proc_lock();
  fork_hooks h = hooks;
  fp_proc_unlock();
  /* The host's prepare hook takes its own locks: before ours, and without
   * ours held, so the two never nest the other way round. */
  if (h.prepare) h.prepare(h.ud);
  /* Held across fork() (the atfork handler takes it once more): the
   * lifeline made here is the one the child sees, and no other thread's
   * fd is half-registered in the child. */
  fp_proc_lock();
  lifeline_make();
  int probe = fp_forkcheck_wanted();
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, &old);
  pid_t p;
  int sync[2];
  for (int attempt = 1;; attempt++) {
    if (probe && pipe2(sync, O_CLOEXEC) != 0) probe = 0;
    p = fork();
    if (p == 0) {
      if (probe) {
        close(sync[0]);
        fp_forkcheck_child(sync[1]);
      }
      break;
    }
    if (probe) {
      close(sync[1]);
      int fine = p < 0 || fp_forkcheck_result(sync[0], p);
      close(sync[0]);
      if (!fine && attempt < FP_FORKCHECK_ATTEMPTS) continue;
      if (!fine) { /* reaped already: as if fork had failed */
        p = -1;
        errno = EAGAIN;
      }
    }
    break;
  }
  if (p < 0) {
    int e = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    fp_proc_unlock();
    if (h.parent) h.parent(h.ud);
    errno = e;
    return FP_ESYS;
  }
  if (p == 0) {
    /* The atfork handler re-initialised the lock: it is not held here. */
    atomic_store(&self_pid, getpid());
    /* Its own process group: killing the worker's group (fp_proc_kill)
     * takes the task's background children along.  The terminal's
     * group signals no longer reach workers; they ignore them anyway. */
    setpgid(0, 0);
    /* Watch our parent's lifeline, never hold a write end of it, and drop
     * the grandparent's (a pool made inside a worker makes its own). */
    if (parent_life >= 0) close(parent_life);
    parent_life = life_r;
    fp_fd_id_get(parent_life, &parent_life_id);
    if (life_w >= 0) close(life_w);
    life_r = life_w = -1;
    /* The parent's SIGINT guards are not ours (fp_proc_child_init resets
     * the handler). */
    fp_sigint_forget_all();
    if (h.child) h.child(h.ud);
    *pid = 0;
    *pidfd = -1;
    return FP_OK; /* signals stay blocked until fp_proc_child_init */
  }
  sigprocmask(SIG_SETMASK, &old, NULL);
  setpgid(p, p); /* as the child does: whichever runs first, no window */
  /* The child cannot have been reaped yet unless the host reaps every child
   * (waitpid(-1) in a SIGCHLD handler): then pidfd_open fails and the spawn
   * is reported as failed rather than watching a recycled pid.  Opened and
   * tracked under the lock: no other thread's fork copies it untracked. */
  int fd = (int)syscall(SYS_pidfd_open, p, 0);
  int e = errno;
  /* pidfds are created O_CLOEXEC by the kernel. */
  if (fd >= 0) fp_proc_track_fd(fd);
  fp_proc_unlock();
  if (h.parent) h.parent(h.ud);
  if (fd < 0) {
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);
    errno = e;
    return FP_ESYS;
  }
  *pid = p;
  *pidfd = fd;
  return FP_OK;
}

int fp_proc_child_init(pid_t parent) {
  struct sigaction sa;
  for (int s = 1; s < NSIG; s++) {
    if (s == SIGKILL || s == SIGSTOP) continue;
    if (sigaction(s, NULL, &sa) != 0) continue; /* reserved RT signals */
    if (s == SIGINT || s == SIGHUP || s == SIGQUIT || s == SIGTTIN || s == SIGTTOU) {
      memset(&sa, 0, sizeof sa);
      sa.sa_handler = SIG_IGN;
      sigaction(s, &sa, NULL);
    } else if (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN) {
      /* A handler of the parent's would run parent code in the worker. */
      memset(&sa, 0, sizeof sa);
      sa.sa_handler = SIG_DFL;
      sigaction(s, &sa, NULL);
    }
  }
  /* SIGCHLD ignored by the host would auto-reap the worker's own children. */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_DFL;
  sigaction(SIGCHLD, &sa, NULL);
  /* Parent death: FP_PARENT_SIG, caught (see parent_sig_handler).
   * SA_RESTART: a host thread's end must not make a task's read() fail. */
  parent_pid = parent;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = parent_sig_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(FP_PARENT_SIG, &sa, NULL);
  lifeline_watch();
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  /* PDEATHSIG is cleared by fork: set it here, then check that the parent
   * did not die (or exec) before it took effect. */
  prctl(PR_SET_PDEATHSIG, FP_PARENT_SIG);
  if (getppid() != parent || fp_proc_parent_gone()) {
    errno = ESRCH;
    return FP_ESYS;
  }
  return FP_OK;
}

/* ---- last words of a dying worker ---- */

static _Atomic int32_t *last_words_slot;

static void last_words_handler(int sig) {
  /* Async-signal-safe: one atomic store, then die of the same signal. */
  if (last_words_slot) atomic_store(last_words_slot, sig);
  signal(sig, SIG_DFL);
  raise(sig);
}

void fp_proc_child_last_words(_Atomic int32_t *slot) {
  static const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTERM,
                             SIGHUP, SIGQUIT, SIGALRM, SIGUSR1, SIGUSR2,
                             SIGPIPE, SIGXCPU, SIGXFSZ};
  static char altstack[64 * 1024];
  stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
  sigaltstack(&ss, NULL);
  last_words_slot = slot;
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
    struct sigaction sa;
    if (sigaction(sigs[i], NULL, &sa) != 0 || sa.sa_handler != SIG_DFL) continue;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = last_words_handler;
    sa.sa_flags = SA_ONSTACK | SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(sigs[i], &sa, NULL);
  }
}

/* ---- killing ---- */

void fp_proc_kill(pid_t pid, int sig) {
  kill(pid, sig);
  /* The worker's descendants in its group go too.  Only while pid is ours
   * and unreaped (live or a zombie), so the group id cannot be recycled. */
  if (sig == SIGKILL) kill(-pid, SIGKILL);
}

/* ---- reaping ---- */

int fp_proc_try_reap(pid_t pid, int *status, int *known) {
  /* A zombie still holds its pid (and group id): take its group along
   * before reaping it (the task's background children). */
  siginfo_t si;
  memset(&si, 0, sizeof si);
  if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == pid)
    kill(-pid, SIGKILL);
  for (;;) {
    int st = 0;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      *status = st;
      *known = 1;
      return FP_OK;
    }
    if (r == 0) return FP_EEMPTY;
    if (errno == EINTR) continue;
    /* ECHILD: somebody else reaped it (SIGCHLD ignored or a host handler). */
    *status = 0;
    *known = 0;
    return FP_OK;
  }
}

int fp_proc_wait_exit(int pidfd, int timeout_ms) {
  struct pollfd p = {.fd = pidfd, .events = POLLIN};
  int r = poll(&p, 1, timeout_ms);
  if (r > 0) return FP_OK;
  if (r == 0) return FP_ETIMEOUT;
  return errno == EINTR ? FP_EINTR : FP_ESYS;
}

/* ---- misc ---- */

const char *fp_proc_signame(int sig) {
  static const struct { int n; const char *s; } names[] = {
    {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"},
    {SIGILL, "SIGILL"},   {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"},
    {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},   {SIGKILL, "SIGKILL"},
    {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
    {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"},
    {SIGCHLD, "SIGCHLD"}, {SIGCONT, "SIGCONT"}, {SIGSTOP, "SIGSTOP"},
    {SIGTSTP, "SIGTSTP"}, {SIGTTIN, "SIGTTIN"}, {SIGTTOU, "SIGTTOU"},
    {SIGURG, "SIGURG"},   {SIGXCPU, "SIGXCPU"}, {SIGXFSZ, "SIGXFSZ"},
    {SIGVTALRM, "SIGVTALRM"}, {SIGPROF, "SIGPROF"}, {SIGSYS, "SIGSYS"},
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (names[i].n == sig) return names[i].s;
  static _Thread_local char buf[16]; /* several threads may ask at once */
  buf[0] = 'S'; buf[1] = 'I'; buf[2] = 'G';
  int n = sig, k = 3;
  char tmp[8];
  int t = 0;
  do { tmp[t++] = (char)('0' + n % 10); n /= 10; } while (n && t < 7);
  while (t) buf[k++] = tmp[--t];
  buf[k] = 0;
  return buf;
}

/* ---- a pool's worker processes (fp_pool.h) ---- */

/* The live pools of this process, of every Lua state in it (under the
 * registry lock). */
static fp_pool *live_pools;

void fp_pools_add(fp_pool *p) {
  fp_proc_lock();
  p->next_live = live_pools;
  live_pools = p;
  fp_proc_unlock();
}

void fp_pools_remove(fp_pool *p) {
  fp_proc_lock();
  for (fp_pool **pp = &live_pools; *pp; pp = &(*pp)->next_live) {
    if (*pp == p) {
      *pp = p->next_live;
      p->next_live = NULL;
      break;
    }
  }
  if (!live_pools) fp_proc_lifeline_close();
  fp_proc_unlock();
}

void fp_slot_forget(fp_slot *s) {
  fp_proc_close_fd(s->pidfd);
  s->pidfd = -1;
  s->pid = 0;
  s->dead = 0;
  s->corrupt = 0;
  fp_sentq_clear(&s->sent);
}

void fp_slot_unmap(fp_slot *s, int discard) {
  if (discard) {
    fp_lane_discard_big(&s->tasks);
    fp_lane_discard_big(&s->results);
  }
  fp_lane_destroy(&s->tasks);
  fp_lane_destroy(&s->results);
}

int fp_pool_slot_open(fp_pool *p, int w) {
  fp_slot *s = &p->slots[w];
  /* Under the lock: a fork by another thread sees the lanes of a
   * registered pool either mapped or not, never half (pools_forget). */
  fp_proc_lock();
  fp_slot_unmap(s, 1);
  uint64_t region = (uint64_t)p->big_cap * 2 * (uint64_t)w;
  int rc = fp_lane_create_at(&s->tasks, p->ring_cap, p->big_cap, p->bigfd, region);
  if (rc == FP_OK)
    rc = fp_lane_create_at(&s->results, p->ring_cap, p->big_cap, p->bigfd, region + p->big_cap);
  int e = errno;
  if (rc != FP_OK) fp_slot_unmap(s, 0);
  fp_proc_unlock();
  if (rc != FP_OK) {
    errno = e;
    return rc;
  }
  memset(&p->stats[w], 0, sizeof p->stats[w]);
  atomic_store(&p->stats[w].exit_code, -1);
  atomic_store(&p->stats[w].start_ns, fp_now_ns());
  return FP_OK;
}

int fp_pool_fork(fp_pool *p, int w, const cpu_set_t *pin, pid_t *pid) {
  fp_slot *s = &p->slots[w];
  int pidfd;
  /* Buffered output would otherwise be copied into the child and printed
   * twice. */
  fflush(NULL);
  int rc = fp_proc_fork(pid, &pidfd);
  if (rc != FP_OK) {
    int e = errno;
    fp_proc_lock();
    fp_slot_unmap(s, 0);
    fp_proc_unlock();
    errno = e;
    return rc;
  }
  if (*pid == 0) return FP_OK; /* the child: fp_pool_child_setup next */
  /* Pin from this side too, so the worker is pinned by the time spawn
   * returns, whatever the scheduler ran first (the child's own call alone
   * left a window in which worker_pids() showed an unpinned worker). */
  if (pin) sched_setaffinity(*pid, sizeof *pin, pin);
  s->pid = *pid;
  s->pidfd = pidfd;
  s->dead = 0;
  return FP_OK;
}

/* In a fresh worker of pool keep: unmap every other pool's shared memory
 * (their fds are closed with the fd registry) and forget the registry: the
 * pools are not this process's.  Pools of keep's Lua state were driven by
 * the thread that forked us, so they are whole: everything goes.  Pools of
 * other Lua states (other host threads) may have been in the middle of
 * growing a big-area window (fp_ring.c maps those without the registry
 * lock): of theirs only what is mapped and unmapped under the lock goes
 * (control page, stats, the lanes' rings); their windows stay mapped,
 * unused (the files behind them are closed here). */
static void pools_forget(fp_pool *keep) {
  for (fp_pool *q = live_pools; q; q = q->next_live) {
    if (q == keep) continue;
    int same_state = q->vm == keep->vm;
    if (q->slots)
      for (int i = 0; i < q->n; i++) {
        if (same_state) {
          fp_slot_unmap(&q->slots[i], 0);
        } else {
          fp_lane_unmap_ring(&q->slots[i].tasks);
          fp_lane_unmap_ring(&q->slots[i].results);
        }
      }
    fp_shm_unmap(q->ctl, sizeof(fp_ctl));
    q->ctl = NULL;
    fp_shm_unmap(q->stats, q->stats_len);
    q->stats = NULL;
    q->owner = 0;
    q->closed = 1;
  }
  live_pools = NULL;
}

int fp_pool_child_setup(fp_pool *p, int w, pid_t parent, const cpu_set_t *pin) {
  /* Drop other workers' lanes; of forkpool's fds keep only our pool's
   * doorbell and big-area file. */
  for (int i = 0; i < p->n; i++)
    if (i != w) fp_slot_unmap(&p->slots[i], 0);
  pools_forget(p);
  int keep[2] = {p->doorbell, p->bigfd};
  fp_proc_close_tracked_except(keep, 2);
  if (p->close_fds) {
    /* The option: nothing inherited from the host but 0-2, the listed
     * fds and the engine's own (keep_fds has room for those 3). */
    int k = p->nkeep_fds;
    p->keep_fds[k++] = p->doorbell;
    p->keep_fds[k++] = p->bigfd;
    p->keep_fds[k++] = fp_proc_lifeline_fd();
    fp_proc_close_fds_except(p->keep_fds, k);
  }
  int rc = fp_proc_child_init(parent);
  if (rc != FP_OK) return rc;
  fp_proc_child_last_words(&p->stats[w].fatal_signal);
  /* Failing to pin only costs speed (the parent pins us as well). */
  if (pin) sched_setaffinity(0, sizeof *pin, pin);
  p->owner = 0; /* this copy of the pool is not ours to drive */
  return FP_OK;
}

void fp_pool_release(fp_pool *p) {
  if (p->slots) {
    for (int i = 0; i < p->n; i++) {
      fp_slot *s = &p->slots[i];
      if (s->pid > 0) {
        fp_proc_kill(s->pid, SIGKILL);
        /* SIGKILL cannot be caught: the wait is short; bounded anyway. */
        if (s->pidfd >= 0) fp_proc_wait_exit(s->pidfd, 5000);
        int st, known;
        fp_proc_try_reap(s->pid, &st, &known);
      }
      fp_slot_forget(s);
      fp_slot_unmap(s, 1);
      fp_sentq_free(&s->sent);
    }
    free(p->slots);
    p->slots = NULL;
  }
  free(p->pfds);
  p->pfds = NULL;
  free(p->pfd_slot);
  p->pfd_slot = NULL;
  fp_proc_close_fd(p->doorbell);
  p->doorbell = -1;
  fp_proc_close_fd(p->bigfd);
  p->bigfd = -1;
  fp_shm_unmap(p->ctl, sizeof(fp_ctl));
  p->ctl = NULL;
  fp_shm_unmap(p->stats, p->stats_len);
  p->stats = NULL;
  fp_buf_free(&p->enc);
  fp_buf_free(&p->dec);
  fp_buf_free(&p->dec_scratch);
  free(p->keep_fds);
  p->keep_fds = NULL;
  p->nkeep_fds = 0;
  p->closed = 1;
}
