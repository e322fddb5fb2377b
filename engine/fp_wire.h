/*
 * fp_wire.h - forkpool's value wire format: tags and fixed sizes.
 *
 * A value is one tag byte followed by its payload.  All integers are
 * little-endian (the only byte order forkpool runs on: both ends are the same
 * machine), unaligned.  See docs/wire-format.md for the full grammar.
 *
 *   NIL FALSE TRUE                      no payload
 *   INT32   i32                         a number that is an integer in int32
 *                                       range and not -0.0
 *   DOUBLE  8 bytes IEEE-754            every other number (NaN payload,
 *                                       +-inf and -0.0 exact)
 *   STR8    u8 len, bytes               strings < 256 bytes
 *   STR32   u32 len, bytes              longer strings (Lua strings < 2 GiB)
 *   TABLE   u32 narr, u32 nhash, narr values (t[1..narr], NIL for holes),
 *           nhash (key, value) pairs.   Gets the next reference id.
 *   REF     u32 id                      a table/function seen earlier in the
 *                                       same top-level value (ids from 0, in
 *                                       order of first appearance)
 *   FUNC    u32 bclen, bytecode (lua_dump, debug info kept), u8 nups,
 *           nups values (upvalues by value).  Gets the next reference id
 *           before its upvalues are read, so recursive functions work.
 *   MODREF  str (STR8/STR32 value)      package.loaded[name]
 *   MODFIELD str modname, str field     package.loaded[modname][field]
 *   INT64   8 bytes                     int64_t cdata
 *   UINT64  8 bytes                     uint64_t cdata
 *   LIGHTUD 8 bytes                     a light userdata's pointer value
 *   SHPTR   8 bytes, str ctype           a pointer into forkpool's shared
 *                                       arena (forkpool.shared_array): the
 *                                       same address in every process
 */
#ifndef FP_WIRE_H
#define FP_WIRE_H

enum fp_wire_tag {
  FP_T_NIL      = 0x00,
  FP_T_FALSE    = 0x01,
  FP_T_TRUE     = 0x02,
  FP_T_INT32    = 0x03,
  FP_T_DOUBLE   = 0x04,
  FP_T_STR8     = 0x05,
  FP_T_STR32    = 0x06,
  FP_T_TABLE    = 0x07,
  FP_T_REF      = 0x08,
  FP_T_FUNC     = 0x09,
  FP_T_MODREF   = 0x0A,
  FP_T_MODFIELD = 0x0B,
  FP_T_INT64    = 0x0C,
  FP_T_UINT64   = 0x0D,
  FP_T_LIGHTUD  = 0x0E,
  FP_T_SHPTR    = 0x0F,
  FP_T__COUNT   = 0x10
};

_Static_assert(FP_T__COUNT <= 0x100, "tags fit in one byte");

/* LuaJIT's lua_type() for cdata (not named in its public headers). */
#define FP_LUA_TCDATA 10

#endif
