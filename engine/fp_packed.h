/*
 * fp_packed.h - packed result bodies a worker sent: checked (raw doubles)
 * or decoded in C (string.buffer) before the parent lets Lua see them.
 *
 * Packed bodies (FP_CHUNK_PACKED; made by lua/forkpool/pack.lua) used to
 * be decoded by Lua straight from shared memory: raw doubles through the
 * FFI, and LuaJIT's string.buffer, whose decoder can crash (SIGSEGV, when
 * JIT-compiled) on malformed input.  Now:
 *   - raw doubles (f64, f64a): fp_packed_copy copies the body out of shared
 *     memory once (the worker may change the bytes at any time: checking
 *     them in place and reading them later would read something
 *     unchecked), then checks the private copy; only that copy reaches Lua;
 *   - string.buffer bodies (sbuf): fp_packed_decode_sbuf decodes them in C,
 *     in one pass over the worker's bytes, each structural byte read once;
 *     string.buffer never sees them.  fp_packed_check runs the same parser
 *     without a Lua state, checking only (tests and the fuzzer hold it
 *     against LuaJIT's decoder).
 *
 * Accepted bodies (an 8-byte tag, then):
 *   "fp.f64\0\0"  exactly count doubles;
 *   "fp.f64a\0"  count, then count times (m, m doubles): m a whole number;
 *   "fp.sbuf\0"  one string.buffer encoding of the subset pack.lua's
 *                pack_results emits: a table whose keys are whole numbers
 *                1..count (array part from index 1, hash part for the rest,
 *                no key twice: string.buffer itself refuses a duplicate
 *                key) and whose values are nil (array part only),
 *                false, true, numbers, strings, or flat arrays of those but
 *                nil (keys 1..m, each once).  Nothing else: no index 0, no
 *                metatable or string dictionaries, no cdata or light
 *                userdata, no nesting deeper, nothing after the value.
 *                Every count in it is bounded by the bytes left, so a
 *                decode that passed cannot allocate more than the body's
 *                size says.
 * NaNs in the doubles of f64 / f64a copies are made LuaJIT's canonical NaN
 * (a NaN with other bits could pass for a tagged value).
 */
#ifndef FP_PACKED_H
#define FP_PACKED_H

#include "fp_common.h"
#include "fp_luajit.h"

FP_HIDDEN_BEGIN

#define FP_PACKED_TAG_LEN 8

/* Copy the len bytes at src (worker-writable memory) into out (out->len is
 * set to len) and check the copy as the body of a RESULTS record of count
 * results (scratch: working memory for fp_packed_check).  FP_OK,
 * FP_ECORRUPT (*why says what is wrong: a static string) or FP_ENOMEM. */
int fp_packed_copy(fp_buf *out, const unsigned char *src, size_t len, uint32_t count,
                   fp_buf *scratch, const char **why);

/* Check a private body in place (fp_packed_copy's second half).  Same
 * results; f64 NaNs are canonicalised in p.  An sbuf body goes through
 * fp_packed_decode_sbuf's parser with no Lua state, its key sets in
 * scratch (at most about 11 bytes per body byte, and only for tables with
 * a hash part). */
int fp_packed_check(unsigned char *p, size_t len, uint32_t count, fp_buf *scratch,
                    const char **why);

/* Decode a "fp.sbuf" body of count results straight from memory the worker
 * may still write (each structural byte is read once; no copy, no
 * string.buffer): t[at + i - 1] = result i, t at stack index tidx (rawset;
 * nils leave holes).  Accepts exactly what fp_packed_check accepts (one
 * parser).  FP_OK, FP_ECORRUPT (*why; some results may have been stored)
 * or FP_ENOMEM; the stack is as it was.  Like any Lua allocation, those
 * made here (strings, flat arrays, the key sets' userdata) may raise "not
 * enough memory". */
int fp_packed_decode_sbuf(lua_State *L, int tidx, int64_t at, uint32_t count,
                          const unsigned char *p, size_t len, const char **why);

FP_HIDDEN_END

#endif
