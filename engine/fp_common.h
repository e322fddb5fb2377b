/*
 * fp_common.h - things every engine file shares: error codes, the growable
 * byte buffer, small helpers.
 *
 * Engine functions return FP_OK (0) or a negative FP_E* code; only the Lua
 * binding (fp_lua.c) turns codes into Lua errors.  Everything shared between
 * files carries the fp_ / FP_ prefix; everything else is static.
 */
#ifndef FP_COMMON_H
#define FP_COMMON_H

#include <stddef.h>
#include <stdint.h>

/*
 * Symbol visibility.  forkpool.core exports luaopen_* and nothing else,
 * however it is built (LuaRocks' defaults, a host's own build system, with
 * or without -fvisibility=hidden): every engine header wraps its
 * declarations in FP_HIDDEN_BEGIN / FP_HIDDEN_END, after its #includes so
 * that system and Lua API declarations keep their own visibility (a hidden
 * *declaration* of lua_pushnil would make the link fail).  A definition
 * takes the visibility of its declaration, and -Wmissing-prototypes makes
 * sure every shared function has one.
 */
#define FP_HIDDEN_BEGIN _Pragma("GCC visibility push(hidden)")
#define FP_HIDDEN_END _Pragma("GCC visibility pop")
/* The module's entry points (luaopen_*). */
#define FP_EXPORT __attribute__((visibility("default")))

FP_HIDDEN_BEGIN

enum {
  FP_OK       = 0,
  FP_ENOMEM   = -1,  /* malloc / mmap failed */
  FP_ESYS     = -2,  /* a system call failed; errno says which */
  FP_EMARSHAL = -3,  /* a value cannot be encoded (codec error has the path) */
  FP_ECORRUPT = -4,  /* a record is malformed or truncated */
  FP_EFULL    = -5,  /* no room now: try again after the peer has consumed */
  FP_EEMPTY   = -6,  /* nothing to read now */
  FP_ETIMEOUT = -7,  /* a bounded wait ran out */
  FP_EINTR    = -9,  /* interrupted by a signal the caller must look at */
  FP_E2BIG    = -10  /* a record is larger than any channel can carry */
};

/* Static message for an FP_E* code ("out of memory", ...). */
const char *fp_strerror(int code);

/* Monotonic clock in nanoseconds (every engine file's one clock). */
uint64_t fp_now_ns(void);

/*
 * Growable heap byte buffer.  Owned by whoever holds the struct (a pool
 * userdata in the parent, the worker context in a worker), so a Lua error
 * raised while it is in use never leaks it.  len <= cap; p may be NULL when
 * cap == 0.
 */
typedef struct fp_buf {
  unsigned char *p;
  size_t len;
  size_t cap;
} fp_buf;

/* Make room for `extra` more bytes after len.  FP_OK or FP_ENOMEM. */
int fp_buf_reserve(fp_buf *b, size_t extra);
/* Append n bytes.  FP_OK or FP_ENOMEM. */
int fp_buf_append(fp_buf *b, const void *src, size_t n);
/* Release the memory; the struct is left empty and reusable. */
void fp_buf_free(fp_buf *b);

#define FP_ALIGN_UP(x, a) (((x) + ((a) - 1)) & ~((size_t)(a) - 1))

FP_HIDDEN_END

#endif
