/*
 * fp_proc.h - process control: forking workers safely, pidfds for death
 * detection, reaping, signal names, and the registry of forkpool's own file
 * descriptors (closed in every child so that no worker holds another's).
 * A pool's processes (spawning into a slot, setting the child up, killing
 * and reaping them all) are declared in fp_pool.h and defined in fp_proc.c
 * too.
 *
 * Deaths are detected through pidfds (poll()able, immune to hosts that
 * ignore or handle SIGCHLD), never through SIGCHLD.
 */
#ifndef FP_PROC_H
#define FP_PROC_H

#include "fp_common.h"
#include <signal.h>
#include <stdatomic.h>
#include <sys/types.h>

FP_HIDDEN_BEGIN

/*
 * The registry lock (recursive): guards this process's fd registry, the
 * lifeline, the live pools and their lanes' (un)mapping, the SIGINT guard
 * table and the fork hooks, which every thread of the host shares.  Every
 * fork in the process takes it (pthread_atfork), so a child sees those
 * structures whole; in the child it starts unlocked.  Hold it around
 * creating an fd and tracking it, so no fork between copies it untracked.
 */
void fp_proc_lock(void);
void fp_proc_unlock(void);

/* Remember / forget an fd that belongs to forkpool in this process. */
void fp_proc_track_fd(int fd);
void fp_proc_untrack_fd(int fd);
/* Untrack and close fd in one step (nothing if fd < 0). */
void fp_proc_close_fd(int fd);
/* In a fresh child: close every tracked fd except those in keep[]. */
void fp_proc_close_tracked_except(const int *keep, int nkeep);

/*
 * Fork.  All signals are blocked around fork() so no handler of the parent
 * runs in the child before its dispositions are reset.
 * Parent: returns FP_OK with *pid > 0 and *pidfd (O_CLOEXEC, tracked), or an
 *   error (FP_ESYS with errno: EAGAIN when RLIMIT_NPROC is reached) and no
 *   child exists.
 * In a process with several threads, the child first checks that the
 * unwinder's locks (libgcc's registered-frames mutex, the loader's lock
 * behind dl_iterate_phdr) are not held for ever by a thread fork did not
 * copy (LuaJIT raises every Lua error through that unwinder, and registers
 * its JIT code's frames with it): it tells the parent through a pipe, or
 * exits with FP_EXIT_FORK_LOCKED and the parent forks again (up to 8
 * times).  The fork hooks (forkpool_set_fork_hooks) run once around it all:
 * prepare before, parent after (fork failed or not), child in the child
 * that is kept, before this returns.
 * Child: returns FP_OK with *pid == 0, signals still blocked, the leader
 *   of a process group of its own, watching the parent's lifeline (see
 *   fp_proc_parent_gone): the caller finishes its setup and calls
 *   fp_proc_child_init.
 */
int fp_proc_fork(pid_t *pid, int *pidfd);

/* The exit code of a fresh worker whose parent died before the worker was
 * set up (fp_proc_child_init failed): nobody is left to read anything
 * else. */
#define FP_EXIT_ORPHANED 70
/* The exit code of a fresh child that found a lock of the C runtime's
 * unwinder held for ever (another host thread held it at the fork): the
 * parent forks again (fp_proc_fork), so no pool ever sees it. */
#define FP_EXIT_FORK_LOCKED 69

/* The signal that tells a worker its parent may be gone: PR_SET_PDEATHSIG
 * (re-sent whenever the thread that forked it, or the next one it was
 * reparented to, exits) and the lifeline's O_ASYNC (the parent's last write
 * end closed: exec or death).  Caught: the worker leaves only when
 * getppid() changed or the lifeline hung up, so a host thread's end is
 * harmless.  A real-time signal that forkpool reserves in workers; a task
 * that installs its own handler for it (or blocks it) keeps only the
 * checks at idle wake-ups (every second). */
#define FP_PARENT_SIG (SIGRTMAX - 3)

/* Child setup: SIGINT, SIGHUP and SIGQUIT ignored (the terminal's group
 * signals are the parent's to handle; parent death is detected by
 * PDEATHSIG and the lifeline), SIGTTIN and SIGTTOU ignored (a worker leads
 * its own background process group: reading the terminal fails with EIO
 * instead of stopping it), every other
 * caught signal back to its default, FP_PARENT_SIG caught and set as
 * PR_SET_PDEATHSIG, the lifeline watched with O_ASYNC, signal mask
 * cleared.  parent = the pid of the parent as seen before fork.  FP_OK, or
 * FP_ESYS (errno ESRCH) when the parent is already gone (PDEATHSIG was set
 * too late to fire, or the lifeline hung up already): the caller leaves with _exit(FP_EXIT_ORPHANED). */
int fp_proc_child_init(pid_t parent);

/* In a worker: on SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTERM, SIGHUP,
 * SIGQUIT, SIGALRM, SIGUSR1, SIGUSR2, SIGPIPE, SIGXCPU and SIGXFSZ (when
 * their disposition is the default one), store the signal number in *slot,
 * then die of that signal as before.  Runs on an alternate stack, so a
 * stack overflow is recorded too.  For hosts that reap our children
 * themselves, where the wait status is lost. */
void fp_proc_child_last_words(_Atomic int32_t *slot);

/* In a fresh worker (close_fds): close every fd >= 3 except those in keep[]
 * (sorted in place; negative entries are ignored). */
void fp_proc_close_fds_except(int *keep, int nkeep);

/* An fd's identity (st_dev, st_ino), to tell that an fd number still
 * refers to the file forkpool opened: a task may close every fd >= 3 and
 * open a file of its own that gets the same number. */
typedef struct fp_fd_id { uint64_t dev, ino; } fp_fd_id;
/* FP_OK, or FP_ESYS (the fd is closed; *id zeroed). */
int fp_fd_id_get(int fd, fp_fd_id *id);
/* 1 when fd is open and refers to the file id was taken from. */
int fp_fd_id_same(int fd, const fp_fd_id *id);

/* In a worker: 1 when the parent's lifeline reports that no process holds
 * its write end any more (the parent exec()ed another program or died),
 * checked without blocking.  0 when alive or unknown. */
int fp_proc_parent_gone(void);
/* In a worker: the lifeline's read end (-1: none), to keep when closing
 * descriptors. */
int fp_proc_lifeline_fd(void);
/* In a parent: close the lifeline (made again by the next fork) when it has
 * no live workers left, so no fd outlives the last pool. */
void fp_proc_lifeline_close(void);

/* Send sig to a worker; SIGKILL goes to its whole process group too (every
 * worker leads its own), so its background children die with it.  Only
 * for a child not yet reaped. */
void fp_proc_kill(pid_t pid, int sig);

/* Test hook: make the n-th next fork fail with EAGAIN (0: never). */
void fp_proc_fail_fork_after(int n);

/* Non-blocking reap.  FP_OK: the child is gone; *status is the wait status
 * when *known, else the status was lost (the host reaps children itself or
 * ignores SIGCHLD).  FP_EEMPTY: still running. */
int fp_proc_try_reap(pid_t pid, int *status, int *known);

/* Wait up to timeout_ms for the process behind pidfd to exit.  FP_OK when
 * it has, FP_ETIMEOUT, or FP_EINTR. */
int fp_proc_wait_exit(int pidfd, int timeout_ms);

/* "SIGSEGV" for 11, ... ("SIG42" for unnamed ones); static storage (per
 * thread for unnamed ones). */
const char *fp_proc_signame(int sig);

/* This process's pid, cached: the cache is cleared in the child of every
 * fork() of the process (a pthread_atfork handler, registered before the
 * first value is cached), the host's forks included.  A child made without
 * glibc's fork() (a raw clone system call) would see its parent's pid:
 * such a child must not use forkpool (README, "what a host must not do"). */
pid_t fp_proc_self(void);

FP_HIDDEN_END

#endif
