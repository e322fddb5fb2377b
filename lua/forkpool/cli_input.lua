-- forkpool.cli_input: the input of `forkpool map`, cut into blocks.
--
--   blocks(files, opts) -> iterator returning block, nil at the end
--     files: names in order ("-" is stdin); opts.chunk_size: lines per
--     block (nil: blocks of about opts.block_bytes); opts.skip: global
--     lines to skip first (--resume).
--   A block: { file = name as given, line = line number in that file of
--   its first line, n = global line number of its first line (all inputs
--   in order, from 1), text = whole lines, each ending in "\n" except
--   perhaps the last line of a file, count = its number of lines }.
--
-- Invariants: a block never splits a line and never spans two files; a
-- line longer than a block is a block of its own; memory is bounded by
-- the block size plus the longest line.  Files are read with large reads
-- (file:read(n)), cut after the last newline of each read; the rest is
-- carried to the next.  A file is opened when its turn comes; one that
-- cannot be opened or read raises { input = "message" }.

local ffi = require "ffi"

local find, byte, sub, concat = string.find, string.byte, string.sub, table.concat

local M = {}

-- Blocks of about 64 KiB: a block's text, and the output lines made of it,
-- stay below LuaJIT's allocator's direct-mmap threshold (128 KiB), so the
-- strings of each block reuse heap memory instead of each being a fresh
-- mapping (page faults cost ~10 µs per 4 KiB page on our VMs).  Measured
-- on 200,000 records (36 MB): the parent's CPU time 0.20 s with 64 KiB
-- blocks, 1.17 s with 256 KiB.
M.BLOCK_BYTES = 64 * 1024

-- Lines in s (its "\n" count).
local function count_lines(s)
  local n, pos = 0, 1
  while true do
    local i = find(s, "\n", pos, true)
    if not i then return n end
    n, pos = n + 1, i + 1
  end
end
M.count_lines = count_lines

-- Position just after the k-th "\n" of s from pos, or nil and the number
-- of newlines found.
local function after_lines(s, pos, k)
  local found = 0
  while found < k do
    local i = find(s, "\n", pos, true)
    if not i then return nil, found end
    found, pos = found + 1, i + 1
  end
  return pos, found
end

local function input_error(fmt, ...)
  error({ input = fmt:format(...) }, 0)
end

-- Reads go through read(2) on the file's descriptor: a SIGINT (the pool's
-- guard is armed for the whole run, without SA_RESTART) can interrupt a
-- read of a pipe, and C stdio's fread would then report an error and Lua
-- drop the bytes it had read.  EINTR is retried here.
pcall(ffi.cdef, [[
long forkpool_cli_read(int fd, void *buf, size_t n) __asm__("read");
int forkpool_cli_open(const char *path, int flags, ...) __asm__("open");
int forkpool_cli_close(int fd) __asm__("close");
char *forkpool_cli_strerror(int e) __asm__("strerror");
void *forkpool_cli_memrchr(const void *s, int c, size_t n) __asm__("memrchr");
void *forkpool_cli_memmove(void *d, const void *s, size_t n) __asm__("memmove");
]])
local C = ffi.C
local EINTR = 4
local O_RDONLY, O_CLOEXEC = 0, 0x80000

local function strerror(e) return ffi.string(C.forkpool_cli_strerror(e)) end

-- read_full(fd, buf, n) -> bytes read into buf (< n only at the end of
-- the input), or nil and errno.
local function read_full(fd, buf, n)
  local got = 0
  while got < n do
    local r = tonumber(C.forkpool_cli_read(fd, buf + got, n - got))
    if r > 0 then
      got = got + r
    elseif r == 0 then
      break
    else
      local e = ffi.errno()
      if e ~= EINTR then return nil, e end
    end
  end
  return got
end

-- texts(fd, name, read_bytes) -> iterator of strings of whole lines (the
-- last piece of the file may lack its "\n"), about read_bytes each or one
-- long line.  The bytes after the last newline of a read stay in the
-- buffer for the next one (moved to its front); a line longer than the
-- buffer grows it (and it shrinks back after).  Each text is made by one
-- ffi.string: one copy of the input in the parent.
local function texts(fd, name, read_bytes)
  local cap = read_bytes
  local buf = ffi.new("uint8_t[?]", cap)
  local have = 0      -- bytes in buf: the start of an unfinished line
  local done = false
  return function()
    while not done do
      if have == cap then   -- one line fills the buffer: grow it
        local bigger = ffi.new("uint8_t[?]", cap * 2)
        ffi.copy(bigger, buf, have)
        buf, cap = bigger, cap * 2
      end
      local got, e = read_full(fd, buf + have, cap - have)
      if not got then input_error("%s: %s", name, strerror(e)) end
      local from = have
      have = have + got
      if got < cap - from then done = true end
      local nl = C.forkpool_cli_memrchr(buf + from, 10, have - from)
      local s
      if nl ~= nil then
        local cut = tonumber(ffi.cast("uint8_t *", nl) - buf) + 1
        s = ffi.string(buf, cut)
        have = have - cut
        if have > 0 then C.forkpool_cli_memmove(buf, buf + cut, have) end
      elseif done and have > 0 then
        s = ffi.string(buf, have)   -- the file's last line, without "\n"
        have = 0
      end
      if cap > read_bytes and have < read_bytes then
        local smaller = ffi.new("uint8_t[?]", read_bytes)
        ffi.copy(smaller, buf, have)
        buf, cap = smaller, read_bytes
      end
      if s then return s end
    end
    if have > 0 then
      local s = ffi.string(buf, have)
      have = 0
      return s
    end
    return nil
  end
end

-- open(name) -> fd (0 for "-")
local function open(name)
  if name == "-" then return 0 end
  local fd = C.forkpool_cli_open(name, O_RDONLY + O_CLOEXEC)
  if fd < 0 then input_error("%s: %s", name, strerror(ffi.errno())) end
  return fd
end

local function close(fd)
  if fd ~= 0 then C.forkpool_cli_close(fd) end
end

-- check_readable(files) -> nil, or a message naming the first input that
-- cannot be opened (checked before the run starts; stdin is not opened).
function M.check_readable(files)
  for _, name in ipairs(files) do
    if name ~= "-" then
      local f, err = io.open(name, "rb")
      if not f then return err end
      -- a directory opens; reading it fails
      local _, rerr = f:read(0)
      f:close()
      if rerr then return name .. ": " .. rerr end
    end
  end
  return nil
end

function M.blocks(files, opts)
  local per_block = opts.chunk_size
  local read_bytes = opts.block_bytes or M.BLOCK_BYTES
  local skip = opts.skip or 0
  local fi = 0            -- index in files of the current file
  local f, name           -- the current file
  local next_text         -- its texts iterator
  local line = 1          -- line number in the current file of the next line read
  local n = 1             -- global line number of the next line read

  -- take_text() -> s, file, line, n: the next text of whole lines (after
  -- the lines to skip), the file it comes from and the numbers of its
  -- first line, and its number of lines; nil when every input is read.
  local function take_text()
    while true do
      if not f then
        fi = fi + 1
        name = files[fi]
        if name == nil then return nil end
        f = open(name)
        next_text = texts(f, name, read_bytes)
        line = 1
      end
      local s = next_text()
      if s == nil then
        close(f)
        f = nil
      else
        if skip > 0 then
          local pos, found = after_lines(s, 1, skip)
          if not pos then found = found + (byte(s, #s) ~= 10 and 1 or 0) end
          skip, line, n = skip - found, line + found, n + found
          s = (pos and pos <= #s) and sub(s, pos) or nil
        end
        if s then
          local count = count_lines(s)
          if byte(s, #s) ~= 10 then count = count + 1 end
          local l0, n0 = line, n
          line, n = line + count, n + count
          return s, name, l0, n0, count
        end
      end
    end
  end

  if not per_block then
    return function()
      local s, file, l0, n0, count = take_text()
      if s == nil then return nil end
      return { file = file, line = l0, n = n0, text = s, count = count }
    end
  end

  -- --chunk-size: per_block lines a block, never spanning two files.
  -- pending: the text being cut; ppos where its uncut rest starts, pfile,
  -- pline, pn its file and the numbers of the line at ppos.
  local pending, ppos, pfile, pline, pn
  return function()
    if not pending or ppos > #pending then
      local s, file, l0, n0 = take_text()
      if s == nil then return nil end
      pending, ppos, pfile, pline, pn = s, 1, file, l0, n0
    end
    local b = { file = pfile, line = pline, n = pn }
    local pieces, got = {}, 0
    while true do
      local stop, found = after_lines(pending, ppos, per_block - got)
      if stop then
        pieces[#pieces + 1] = sub(pending, ppos, stop - 1)
        got, ppos = got + found, stop
      else
        local rest = sub(pending, ppos)
        pieces[#pieces + 1] = rest
        if byte(rest, #rest) ~= 10 then found = found + 1 end
        got, ppos = got + found, #pending + 1
      end
      pline, pn = pline + found, pn + found
      if got >= per_block then break end
      -- this text is used up: the block goes on with the next one, if it
      -- is from the same file
      local s, file, l0, n0 = take_text()
      if s == nil then pending = nil; break end
      pending, ppos, pfile, pline, pn = s, 1, file, l0, n0
      if file ~= b.file or l0 ~= b.line + got then break end
    end
    b.text, b.count = concat(pieces), got
    return b
  end
end

return M
