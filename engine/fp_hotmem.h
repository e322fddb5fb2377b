/*
 * fp_hotmem.h - keeping the memory of big result arrays mapped between maps.
 *
 * A map that returns big arrays (1e6 doubles = 8 MiB each) makes the parent
 * allocate a fresh table array per result.  LuaJIT's allocator hands blocks
 * that big straight back to the kernel when they are freed, so the next map
 * gets fresh pages and pays a page fault for every 4 KiB it touches: about
 * 10 us per page on the VMs we measure on, 20 ms per 8 MiB array, more than
 * copying and converting the doubles costs.
 *
 * fp_hotmem wraps the Lua state's allocator (lua_setallocf) and, only for
 * blocks of at least FP_HOT_MIN bytes allocated while forkpool decodes
 * results (between fp_hot_begin and fp_hot_end), keeps them when Lua frees
 * them (up to FP_HOT_CAP bytes) and serves the next such allocation of a
 * fitting size from them, already mapped.  Every other allocation goes
 * straight to the state's own allocator, untouched: other Lua code sees the
 * allocator it had.
 *
 * The wrapper is installed once per Lua state, from a registry anchor whose
 * __gc (run by lua_close before the state's memory is freed) gives the kept
 * blocks back and puts the original allocator back, so LuaJIT's close path
 * (which destroys its own arena only when it finds its own allocator) is
 * unchanged.  All memory comes from the original allocator, and every block
 * goes back to it with the size it was allocated with.
 */
#ifndef FP_HOTMEM_H
#define FP_HOTMEM_H

#include "fp_common.h"

#include <lua.h>

FP_HIDDEN_BEGIN

/* Smallest block kept: below it LuaJIT's allocator reuses memory itself. */
#define FP_HOT_MIN ((size_t)256 << 10)
/* Most bytes kept while unused. */
#define FP_HOT_CAP ((size_t)128 << 20)

/* Install the wrapper on L's state (once; later calls do nothing).
 * FP_OK, or FP_ENOMEM. */
int fp_hot_install(lua_State *L);

/* Mark the start / end of a decode whose big allocations are kept.
 * Nests.  No effect before fp_hot_install. */
void fp_hot_begin(lua_State *L);
void fp_hot_end(lua_State *L);

/* Bytes kept now (unused blocks), for tests; 0 when not installed. */
size_t fp_hot_held(lua_State *L);

/* Give back every kept block (the next big result faults again). */
void fp_hot_flush(lua_State *L);

FP_HIDDEN_END

#endif
