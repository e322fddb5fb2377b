/*
 * fp_sigint.h - the parent's SIGINT guard, one per Lua state.  Its table is
 * changed under the registry lock (fp_proc.h); fp_sigint.c's header says how
 * several states share the one SIGINT disposition.
 */
#ifndef FP_SIGINT_H
#define FP_SIGINT_H

#include "fp_common.h"
#include <stdint.h>

FP_HIDDEN_BEGIN

/* SIGINT guard for the parent while it waits for workers, one per Lua state
 * (key: any address unique to the state; several states may be armed at
 * once, each from its own thread): the handler only sets the state's flag
 * and writes 1 to its wake_fd (an eventfd), so a sleeping poll() wakes.
 * arm (again: points the state's guard at another wake_fd) returns 1 when
 * armed, 0 when the host ignores SIGINT (then Ctrl-C is not ours to catch)
 * or too many states are armed at once.  The last disarm restores the
 * host's previous action. */
int fp_sigint_arm(uintptr_t key, int wake_fd);
void fp_sigint_disarm(uintptr_t key);
/* 1 if SIGINT arrived since the state's arm (clears its flag). */
int fp_sigint_take(uintptr_t key);

/* In a fresh child of fp_proc_fork: no guard of the parent's is ours. */
void fp_sigint_forget_all(void);

FP_HIDDEN_END

#endif
