/*
 * fp_sigint.c - the parent's SIGINT guard (fp_sigint.h): while a Lua state
 * waits on its pools, Ctrl-C only wakes that wait, which raises
 * "interrupted" (forkpool.call arms it around every public call that may
 * block; fp_events.c takes the flag).
 */
#include "fp_sigint.h"
#include "fp_proc.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* ---- SIGINT guard ----
 *
 * One SIGINT disposition per process, but several Lua states (one per
 * host thread) may each wait on their pools with the guard armed.  So
 * guards[] holds one entry per armed state (key: its registry's address,
 * fp_lua.c): the handler wakes every armed state's wake fd and marks each
 * one seen; the handler is installed when the first state arms and the
 * host's previous action restored when the last disarms.  Entries are
 * changed under the registry lock; the handler and fp_sigint_take read
 * them with atomics only (a stale read costs one spurious wake-up).  More
 * than FP_SIGINT_GUARDS states at once: the extra ones run unguarded
 * (arm returns 0, as when the host ignores SIGINT). */

#define FP_SIGINT_GUARDS 64

static struct {
  _Atomic uintptr_t key;   /* 0: free */
  _Atomic int fd;          /* -1: none */
  _Atomic int seen;
} guards[FP_SIGINT_GUARDS];
static int guards_armed;   /* entries in use (registry lock) */
static struct sigaction sigint_old;

static void sigint_handler(int sig) {
  (void)sig;
  int e = errno;
  for (int i = 0; i < FP_SIGINT_GUARDS; i++) {
    if (!atomic_load(&guards[i].key)) continue;
    atomic_store(&guards[i].seen, 1);
    int fd = atomic_load(&guards[i].fd);
    if (fd >= 0) {
      uint64_t one = 1;
      ssize_t n = write(fd, &one, sizeof one);
      (void)n;
    }
  }
  errno = e;
}

static int guard_find(uintptr_t key) {
  for (int i = 0; i < FP_SIGINT_GUARDS; i++)
    if (atomic_load(&guards[i].key) == key) return i;
  return -1;
}

void fp_sigint_forget_all(void) {
  for (int i = 0; i < FP_SIGINT_GUARDS; i++) {
    atomic_store(&guards[i].key, 0);
    atomic_store(&guards[i].fd, -1);
    atomic_store(&guards[i].seen, 0);
  }
  guards_armed = 0;
}

int fp_sigint_arm(uintptr_t key, int wake_fd) {
  int ok = 0;
  fp_proc_lock();
  int i = guard_find(key);
  if (i >= 0) {
    atomic_store(&guards[i].fd, wake_fd);
    ok = 1;
  } else if ((i = guard_find(0)) >= 0) {
    if (guards_armed > 0) {
      ok = 1;
    } else {
      /* One system call (they cost ~1 us each here, and a call arms and
       * disarms once): install, then look at what was there.  An ignored
       * SIGINT stays ignored: put it back (a SIGINT in between finds no
       * guard armed and is dropped, as SIG_IGN would have). */
      struct sigaction sa;
      memset(&sa, 0, sizeof sa);
      sa.sa_handler = sigint_handler;
      sigemptyset(&sa.sa_mask);
      sa.sa_flags = 0; /* no SA_RESTART: let the blocked poll() return */
      ok = sigaction(SIGINT, &sa, &sigint_old) == 0;
      if (ok && !(sigint_old.sa_flags & SA_SIGINFO) && sigint_old.sa_handler == SIG_IGN) {
        sigaction(SIGINT, &sigint_old, NULL);
        ok = 0;
      }
    }
    if (ok) {
      atomic_store(&guards[i].seen, 0);
      atomic_store(&guards[i].fd, wake_fd);
      atomic_store(&guards[i].key, key);
      guards_armed++;
    }
  }
  fp_proc_unlock();
  return ok;
}

void fp_sigint_disarm(uintptr_t key) {
  fp_proc_lock();
  int i = guard_find(key);
  if (i >= 0) {
    atomic_store(&guards[i].key, 0);
    atomic_store(&guards[i].fd, -1);
    atomic_store(&guards[i].seen, 0);
    if (--guards_armed == 0) sigaction(SIGINT, &sigint_old, NULL);
  }
  fp_proc_unlock();
}

int fp_sigint_take(uintptr_t key) {
  int i = guard_find(key);
  return i >= 0 && atomic_exchange(&guards[i].seen, 0);
}
