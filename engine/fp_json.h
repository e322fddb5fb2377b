/*
 * fp_json.h - the JSON encoder of `forkpool map` (issue 12): a Lua value at
 * a stack index -> JSON text that is the same bytes in every process.
 *
 * The rules (sorted keys, number format, strings, errors) are written at the
 * top of fp_json.c.  Like the codec, the encoder never raises a Lua error
 * because of the data: it returns FP_EMARSHAL with err filled (kind, message
 * and the path of the offending value), or FP_ENOMEM; only the binding
 * (fp_lua.c, core.json_encode) turns that into Lua values.  It holds no
 * state between calls besides what the caller passes in (the output buffer
 * and the scratch space), so several Lua states on several threads can each
 * own their own.
 */
#ifndef FP_JSON_H
#define FP_JSON_H

#include "fp_common.h"
#include "fp_luajit.h"

FP_HIDDEN_BEGIN

/* Tables nested deeper than this are refused (lua-cjson's default limit;
 * it also stops cycles). */
#define FP_JSON_MAX_DEPTH 1000

/* Error kinds (err->kind points at one of these strings). */
#define FP_JSON_KIND_UTF8 "utf8"     /* a string or key is not valid UTF-8 */
#define FP_JSON_KIND_ENCODE "encode" /* anything else JSON cannot hold */

/* Filled in on FP_EMARSHAL.  path is like "$.tags[3]" or "$[\"a b\"].x"
 * (Lua's view of the value: array indexes are Lua's, from 1); msg says
 * what is wrong there ("NaN is not JSON", "invalid UTF-8 at byte 3 of the
 * string").  On FP_ENOMEM kind is "encode" and msg "out of memory". */
typedef struct fp_json_err {
  const char *kind;
  char msg[160];
  char path[256];
} fp_json_err;

/* Work space reused between calls (entries of the objects being written,
 * the text of number keys).  Zero-initialise; fp_json_scratch_free releases
 * it.  One per caller that may encode concurrently (per Lua state). */
struct fp_json_ent;
typedef struct fp_json_scratch {
  struct fp_json_ent *ents;
  size_t cap;
  fp_buf keys;
} fp_json_scratch;

/* Append the JSON text of the value at stack index idx to out.  Returns
 * FP_OK, FP_EMARSHAL (err filled) or FP_ENOMEM.  On error out->len is back
 * at its entry value.  The Lua stack is left at its entry height; the value
 * is read with raw access only (no metamethod runs, no Lua code at all), so
 * the call cannot change it. */
int fp_json_encode(lua_State *L, int idx, fp_buf *out, fp_json_scratch *s,
                   fp_json_err *err);

/* Write the JSON text of a finite number v into o (at least
 * FP_JSON_NUM_MAX bytes, NUL-terminated); returns its length.  The number
 * rule of fp_json.c, shared with the tests. */
#define FP_JSON_NUM_MAX 40
size_t fp_json_number(double v, char *o);

void fp_json_scratch_free(fp_json_scratch *s);

FP_HIDDEN_END

#endif
