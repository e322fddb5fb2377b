/*
 * fp_forkcheck.h - in a process with threads, a child of fork() can start
 * with libgcc's unwinder lock or the loader's lock held for ever (another
 * thread held it at the fork), and LuaJIT needs both for every Lua error.
 * The child checks them under a timer; fp_proc_fork forks again when the
 * check failed.  fp_forkcheck.c says why and how.
 */
#ifndef FP_FORKCHECK_H
#define FP_FORKCHECK_H

#include "fp_common.h"
#include <sys/types.h>

FP_HIDDEN_BEGIN

/* Forks to try before giving up (the spawn then fails with EAGAIN). */
#define FP_FORKCHECK_ATTEMPTS 8

/* In the parent, before fork(): 1 when the check is needed and possible
 * (the process has other threads and libgcc's _Unwind_Find_FDE is there). */
int fp_forkcheck_wanted(void);

/* In the child, all signals blocked: the check, then one byte to fd (the
 * write end of a pipe); exits with FP_EXIT_FORK_LOCKED when the locks are
 * held. */
void fp_forkcheck_child(int fd);

/* In the parent: the child's word on its check (fd: the read end).  1:
 * fine (or no word in time: the child then reports for itself, as any
 * worker exit); 0: it exited with FP_EXIT_FORK_LOCKED and was reaped: fork
 * again. */
int fp_forkcheck_result(int fd, pid_t p);

FP_HIDDEN_END

#endif
