/*
 * fp_codec.h - the value codec: Lua values <-> forkpool's wire format.
 *
 * The wire format itself (tags, layout, limits) is documented in
 * engine/fp_wire.h and docs/wire-format.md.  The codec walks Lua values
 * through the Lua C API; it never raises a Lua error on bad input (it returns
 * FP_EMARSHAL / FP_ECORRUPT with a message and a path), though the Lua API
 * calls it makes may raise "not enough memory" like any Lua allocation.
 * It holds no heap memory of its own across calls: output goes into an
 * fp_buf owned by the caller.
 *
 * Scope of identity: shared references and cycles are preserved within one
 * top-level value (one fp_encode_value call, or one element of
 * fp_encode_range).  Metatables are never sent.
 */
#ifndef FP_CODEC_H
#define FP_CODEC_H

#include "fp_common.h"
#include "fp_luajit.h"

FP_HIDDEN_BEGIN

/* Nesting limit for tables/functions, in both directions.  Deeper values
 * are refused with "too deep" (encoder) or FP_ECORRUPT (decoder), so neither
 * process can overflow its C stack. */
#define FP_CODEC_MAX_DEPTH 1000

/* Encoder flags. */
#define FP_ENC_FUNCTIONS 0x1u  /* Lua functions may be sent (bytecode + upvalues
                                  by value); otherwise "cannot send function"
                                  (the parent sets it; workers send none) */

/* Decoder flags. */
#define FP_DEC_FUNCTIONS 0x1u  /* FUNC records may be loaded (workers only: the
                                  parent never loads bytecode it receives) */

/* Error details filled in on FP_EMARSHAL / FP_ECORRUPT.  path is like
 * "result[3].handle" or "upvalue 'cfg'.items[2]"; msg like
 * "cannot send userdata". */
typedef struct fp_codec_err {
  char path[256];
  char msg[256];
} fp_codec_err;

/*
 * Options of one encode call.  Stack indexes are absolute (or 0 = absent).
 *  flags: FP_ENC_*.
 *  modmap_idx: a table mapping values (tables, functions, userdata) that are
 *     reachable from package.loaded to their name: "cjson" (the module
 *     itself) or "string\0format" (module name, NUL, field: module names may
 *     contain dots, as in "socket.http", so NUL separates).  Such values are
 *     sent as MODREF / MODFIELD by name and resolved with require in the
 *     receiver.  Consulted for every table, function and userdata before
 *     anything else; entries that are not strings are ignored.
 *  cdata_idx: a Lua function f(v) called for every cdata value: returns
 *     "i64" or "u64" for int64_t / uint64_t boxed integers (sent by value),
 *     "shptr:<ctype>" for a pointer into the shared arena (sent as its
 *     address and ctype: SHPTR), or any other string (the ctype's name) to
 *     refuse the value with "cannot send cdata<...>".  Absent: every cdata
 *     is refused.  It must not modify the value being encoded.  Only ever
 *     pushed, so a pseudo-index (lua_upvalueindex) names it too.
 * (The path prefix of errors is the encode call's root argument.)
 */
typedef struct fp_enc_opts {
  unsigned flags;
  int modmap_idx;
  int cdata_idx;
} fp_enc_opts;

/*
 * Options of one decode call.  Stack indexes are absolute (or 0 = absent).
 *  flags: FP_DEC_*.
 *  require_idx: function used to resolve MODREF / MODFIELD names (normally
 *     the global `require`); absent: such records are FP_ECORRUPT.
 *  cdata_new_idx: function returning a fresh cdata whose 8 payload bytes
 *     the decoder overwrites (through lua_topointer): f(kind) with kind
 *     "i64" / "u64" for a boxed integer; f("shptr", ctype, addr) with addr
 *     the 8 address bytes as a string, for a NULL pointer of that ctype
 *     (the helper raises for an address outside the shared arena).
 *     Absent: INT64/UINT64/SHPTR records are FP_ECORRUPT.
 */
typedef struct fp_dec_opts {
  unsigned flags;
  int require_idx;
  int cdata_new_idx;
} fp_dec_opts;

/* Append the encoding of the value at stack index idx to out.  On error,
 * out->len is restored to its value at entry and err is filled (path starts
 * with `root`: "result", "item", "upvalue 'f'").  Returns FP_OK,
 * FP_EMARSHAL or FP_ENOMEM. */
int fp_encode_value(lua_State *L, int idx, fp_buf *out, const fp_enc_opts *o,
                    const char *root, fp_codec_err *err);

/* Append the encodings of t[first], ..., t[first+n-1] (t at stack index tidx,
 * read with rawget; nil for holes) as n consecutive values.  Error paths are
 * "root[label_base + k]" for element k (0-based), e.g. root "result",
 * label_base 41 -> "result[41]" for the first one.  Same returns as
 * fp_encode_value; out->len is restored on error. */
int fp_encode_range(lua_State *L, int tidx, int64_t first, size_t n,
                    fp_buf *out, const fp_enc_opts *o, const char *root,
                    int64_t label_base, fp_codec_err *err);

/* Decode one value from p[*pos .. len) and push it; *pos advances past it.
 * FP_OK, or FP_ECORRUPT (err->msg says what is wrong; never reads outside
 * [p, p+len)), or FP_EMARSHAL (a module could not be required, or the
 * cdata_new_idx helper failed or refused an SHPTR address: err says
 * which).  On error nothing is pushed and *pos is unchanged. */
int fp_decode_value(lua_State *L, const unsigned char *p, size_t len,
                    size_t *pos, const fp_dec_opts *o, fp_codec_err *err);

/* Decode n consecutive values from p[*pos .. len) into t[first .. first+n-1]
 * (t at stack index tidx, rawset; nil values leave holes).  On error the
 * values already stored stay stored; returns as fp_decode_value. */
int fp_decode_range(lua_State *L, int tidx, int64_t first, size_t n,
                    const unsigned char *p, size_t len, size_t *pos,
                    const fp_dec_opts *o, fp_codec_err *err);

FP_HIDDEN_END

#endif
