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
 */
#include "fp_proc.h"
#include "fp_pool.h"
#include "fp_shm.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

/* ---- fd registry ---- */

static int *reg_fds;
static int reg_n, reg_cap;

void fp_proc_track_fd(int fd) {
  if (reg_n == reg_cap) {
    int ncap = reg_cap ? reg_cap * 2 : 16;
    int *np = realloc(reg_fds, (size_t)ncap * sizeof *np);
    if (!np) return; /* only hygiene in children is lost, not correctness here */
    reg_fds = np;
    reg_cap = ncap;
  }
  reg_fds[reg_n++] = fd;
}

void fp_proc_untrack_fd(int fd) {
  for (int i = 0; i < reg_n; i++) {
    if (reg_fds[i] == fd) {
      reg_fds[i] = reg_fds[--reg_n];
      return;
    }
  }
}

void fp_proc_close_tracked_except(const int *keep, int nkeep) {
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
 * the last write end and every worker's read end reports POLLHUP. */

static int life_r = -1, life_w = -1;
static pid_t life_owner;
static int parent_life = -1;       /* in a worker: the read end it watches */
static fp_fd_id parent_life_id;

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
  if (life_w < 0 || life_owner != getpid()) return;
  close(life_r);
  close(life_w);
  life_r = life_w = -1;
}

/* ---- fork ---- */

static pid_t self_pid;

pid_t fp_proc_self(void) {
  if (!self_pid) self_pid = getpid();
  return self_pid;
}

static int fork_fail_countdown; /* test hook: fail the n-th next fork */

void fp_proc_fail_fork_after(int n) { fork_fail_countdown = n; }

int fp_proc_fork(pid_t *pid, int *pidfd) {
  if (fork_fail_countdown > 0 && --fork_fail_countdown == 0) {
    errno = EAGAIN;
    return FP_ESYS;
  }
  lifeline_make();
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, &old);
  pid_t p = fork();
  if (p < 0) {
    int e = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    errno = e;
    return FP_ESYS;
  }
  if (p == 0) {
    self_pid = getpid();
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
    *pid = 0;
    *pidfd = -1;
    return FP_OK; /* signals stay blocked until fp_proc_child_init */
  }
  sigprocmask(SIG_SETMASK, &old, NULL);
  setpgid(p, p); /* as the child does: whichever runs first, no window */
  /* The child cannot have been reaped yet unless the host reaps every child
   * (waitpid(-1) in a SIGCHLD handler): then pidfd_open fails and the spawn
   * is reported as failed rather than watching a recycled pid. */
  int fd = (int)syscall(SYS_pidfd_open, p, 0);
  if (fd < 0) {
    int e = errno;
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);
    errno = e;
    return FP_ESYS;
  }
  /* pidfds are created O_CLOEXEC by the kernel. */
  fp_proc_track_fd(fd);
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
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  /* PDEATHSIG is cleared by fork and fires when the forking thread dies, so
   * set it here and then check that the parent did not die before it took
   * effect. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) {
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

/* ---- SIGINT guard ---- */

static volatile sig_atomic_t sigint_seen;
static int sigint_wake_fd = -1;
static int sigint_armed;
static struct sigaction sigint_old;

static void sigint_handler(int sig) {
  (void)sig;
  int e = errno;
  sigint_seen = 1;
  if (sigint_wake_fd >= 0) {
    uint64_t one = 1;
    ssize_t n = write(sigint_wake_fd, &one, sizeof one);
    (void)n;
  }
  errno = e;
}

int fp_proc_sigint_arm(int wake_fd) {
  if (sigint_armed) {
    sigint_wake_fd = wake_fd;
    return 1;
  }
  struct sigaction cur;
  if (sigaction(SIGINT, NULL, &cur) != 0 || cur.sa_handler == SIG_IGN) return 0;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = sigint_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0; /* no SA_RESTART: let the blocked poll() return */
  sigint_seen = 0;
  sigint_wake_fd = wake_fd;
  if (sigaction(SIGINT, &sa, &sigint_old) != 0) return 0;
  sigint_armed = 1;
  return 1;
}

void fp_proc_sigint_disarm(void) {
  if (!sigint_armed) return;
  sigaction(SIGINT, &sigint_old, NULL);
  sigint_armed = 0;
  sigint_wake_fd = -1;
}

int fp_proc_sigint_take(void) {
  if (!sigint_seen) return 0;
  sigint_seen = 0;
  return 1;
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
  static char buf[16];
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

static fp_pool *live_pools;

void fp_pools_add(fp_pool *p) {
  p->next_live = live_pools;
  live_pools = p;
}

void fp_pools_remove(fp_pool *p) {
  for (fp_pool **pp = &live_pools; *pp; pp = &(*pp)->next_live) {
    if (*pp == p) {
      *pp = p->next_live;
      p->next_live = NULL;
      break;
    }
  }
  if (!live_pools) fp_proc_lifeline_close();
}

void fp_slot_forget(fp_slot *s) {
  if (s->pidfd >= 0) {
    fp_proc_untrack_fd(s->pidfd);
    close(s->pidfd);
  }
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
  fp_slot_unmap(s, 1);
  uint64_t region = (uint64_t)p->big_cap * 2 * (uint64_t)w;
  int rc = fp_lane_create_at(&s->tasks, p->ring_cap, p->big_cap, p->bigfd, region);
  if (rc == FP_OK)
    rc = fp_lane_create_at(&s->results, p->ring_cap, p->big_cap, p->bigfd, region + p->big_cap);
  if (rc != FP_OK) {
    int e = errno;
    fp_slot_unmap(s, 0);
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
    fp_slot_unmap(s, 0);
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
 * pools are not this process's. */
static void pools_forget(fp_pool *keep) {
  for (fp_pool *q = live_pools; q; q = q->next_live) {
    if (q == keep) continue;
    if (q->slots)
      for (int i = 0; i < q->n; i++) fp_slot_unmap(&q->slots[i], 0);
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
  if (p->doorbell >= 0) {
    fp_proc_untrack_fd(p->doorbell);
    close(p->doorbell);
    p->doorbell = -1;
  }
  if (p->bigfd >= 0) {
    fp_proc_untrack_fd(p->bigfd);
    close(p->bigfd);
    p->bigfd = -1;
  }
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
