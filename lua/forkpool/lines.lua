-- forkpool.lines: the lines of a file, read in blocks.  A job whose source
-- is the iterator of io.lines(path), io.lines() or file:lines() (LuaJIT's
-- own, without formats) reads the file itself through the same C stream
-- and sends each chunk as one block of text (engine: FP_CHUNK_LINES); the
-- workers cut the lines.  The parent then makes one string per block
-- instead of one per line, and an imap over a file costs it little more
-- than the results.
--
--   reader(iter) -> a reader, or nil when iter is not such an iterator
--   r:next_block(max) -> text, n: the next n (1 .. max) lines, text being
--     them with their "\n" (the last line of the file may lack it); or
--     nil, items, n: n lines as strings (see NUL below); or nil at the end
--     of the file.  Raises the read error ("<path>: <strerror>"-like, as
--     io.lines does) when the stream fails.
--
-- Same lines as the iterator gives:
--  * lines are cut at "\n", which is dropped; "\r" stays; the last line
--    of a file counts when it is not empty, with or without its "\n".
--  * At the end of the file the iterator is called once (it returns nil):
--    io.lines(path) closes its file then, as in a plain loop.
--  * NUL bytes: LuaJIT's iterator reads a line with fgets and keeps the
--    bytes before its first NUL, and then goes on reading into the same
--    line: "ab\0cd\nef\n" is the one line "abef".  A block holding a NUL
--    is cut that way here, in Lua, and sent as items (exact for lines
--    shorter than the iterator's buffer, several KiB).
--  * The stream is read with fread, retried after EINTR (a SIGINT guard
--    without SA_RESTART can interrupt a read of a pipe).
--
-- Invariant of a reader: buf[lo .. hi) holds the bytes read from the
-- stream and not yet handed out; eof: the stream has no more.

local ffi = require "ffi"
local core = require "forkpool.core"

pcall(ffi.cdef, [[
typedef struct FILE FILE;
size_t fread(void *ptr, size_t size, size_t n, FILE *stream);
int ferror(FILE *stream);
void clearerr(FILE *stream);
void *memchr(const void *s, int c, size_t n);
void *memmove(void *d, const void *s, size_t n);
char *strerror(int e);
]])
local C = ffi.C
local EINTR = 4
local FIRST_BYTES = 64 * 1024

local M = {}

local file_t = ffi.typeof("FILE *")
local u8p_t = ffi.typeof("const uint8_t *")

-- The C function of LuaJIT's lines iterators (one for io.lines and
-- file:lines; io.stdin:lines() makes one without reading anything).
local lines_cf = core.cfunction(io.stdin:lines())

-- The file of a LuaJIT lines iterator without formats, or nil.
local function file_of(iter)
  if type(iter) ~= "function" or lines_cf == nil or core.cfunction(iter) ~= lines_cf then return nil end
  local _, f = debug.getupvalue(iter, 1)
  if io.type(f) ~= "file" then return nil end -- a closed file: the iterator raises itself
  if debug.getupvalue(iter, 2) ~= nil then return nil end -- formats ("*n", a count...)
  return f
end
M.file_of = file_of

local R = {}
R.__index = R

function M.reader(iter)
  local f = file_of(iter)
  if not f then return nil end
  return setmetatable({ iter = iter, file = f, buf = ffi.new("uint8_t[?]", FIRST_BYTES),
    cap = FIRST_BYTES, lo = 0, hi = 0, eof = false, ended = false }, R)
end

-- The C stream of the file (the FFI converts an io file to its FILE *,
-- NULL once closed); raises as the iterator would when the file was closed
-- meanwhile.
local function stream(r)
  local fp = ffi.cast(file_t, r.file)
  if fp == nil then error("attempt to use a closed file", 0) end
  return fp
end

-- Read more bytes after buf[hi] (moving buf[lo .. hi) to the front first,
-- growing buf when it is full); sets eof at the end of the stream.
local function fill(r)
  if r.lo > 0 then
    C.memmove(r.buf, r.buf + r.lo, r.hi - r.lo)
    r.hi, r.lo = r.hi - r.lo, 0
  end
  if r.hi == r.cap then
    local bigger = ffi.new("uint8_t[?]", r.cap * 2)
    ffi.copy(bigger, r.buf, r.hi)
    r.buf, r.cap = bigger, r.cap * 2
  end
  local fp = stream(r)
  while true do
    local got = tonumber(C.fread(r.buf + r.hi, 1, r.cap - r.hi, fp))
    r.hi = r.hi + got
    if got > 0 then return end
    if C.ferror(fp) == 0 then r.eof = true; return end
    local e = ffi.errno()
    if e ~= EINTR then error(ffi.string(C.strerror(e)), 0) end
    C.clearerr(fp)
  end
end

-- The stream is done: let the iterator see its end too (io.lines(path)
-- closes its file when it does).
local function finish(r)
  if r.ended then return end
  r.ended = true
  pcall(r.iter)
end

-- Offset of the first "\n" in buf[from .. hi), or nil.
local function newline(r, from)
  local p = C.memchr(r.buf + from, 10, r.hi - from)
  if p == nil then return nil end
  return ffi.cast(u8p_t, p) - r.buf
end

-- LuaJIT's reading of lines holding NUL bytes (see the top): up to max
-- lines from buf[lo ..), reading on as needed.
local function nul_lines(r, max)
  local items, n = {}, 0
  while n < max do
    local parts, any = {}, false
    while true do
      local nl = newline(r, r.lo)
      if not nl and not r.eof then
        fill(r)
      else
        local stop = nl or r.hi
        if stop == r.lo and not nl then break end -- end of the stream
        local z = C.memchr(r.buf + r.lo, 0, stop - r.lo)
        local keep = z ~= nil and (ffi.cast(u8p_t, z) - r.buf) or stop
        if keep > r.lo then parts[#parts + 1] = ffi.string(r.buf + r.lo, keep - r.lo); any = true end
        r.lo = nl and nl + 1 or stop
        if z == nil then any = true; break end -- a line without NUL ends it
      end
    end
    if not any then break end
    n = n + 1
    items[n] = table.concat(parts)
  end
  if n < max then finish(r) end
  if n == 0 then return nil end
  return nil, items, n
end

function R:next_block(max)
  if self.ended then return nil end
  local n, p = 0, self.lo
  while n < max do
    local nl = newline(self, p)
    if nl then
      n, p = n + 1, nl + 1
    elseif self.eof then
      if p < self.hi then n, p = n + 1, self.hi end
      break
    else
      local lo = self.lo
      fill(self)
      p = p - lo -- buf moved down by lo
    end
  end
  if n == 0 then
    finish(self)
    return nil
  end
  local lo = self.lo
  if C.memchr(self.buf + lo, 0, p - lo) ~= nil then return nul_lines(self, max) end
  self.lo = p
  if n < max then finish(self) end
  return ffi.string(self.buf + lo, p - lo), n
end

return M
