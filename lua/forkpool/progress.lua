-- forkpool.progress: a tqdm-style progress bar, drawn by the parent process
-- while a map runs (workers never touch it).
--
--   local progress = require "forkpool.progress"
--   local bar = progress.new{ total = #items, desc = "squares" }
--   ...  bar:update(done)                      -- from the wait loop
--   ...  wait(math.min(timeout, bar:next_wakeup()))
--   bar:close()
--
-- On a terminal the bar is redrawn in place ("\r" ... "\27[K"):
--   squares:  45%|█████████▍           | 450/1000 [00:02<00:03, 180.52it/s]
--   squares: 450it [00:02, 180.52it/s]            (total unknown)
-- Anywhere else one plain line is written per draw, every min_interval
-- seconds (5 by default) and always once at close:
--   squares: 450/1000 (45%) 00:02 elapsed, 00:03 left, 180.5 it/s
--   squares: 450 done, 00:02 elapsed, 180.5 it/s  (total unknown)
--
-- Invariants:
--   * The rate is the average over the whole run: done / (now - start),
--     start being the time new() was called.  Results of a parallel map
--     arrive in chunk-sized bursts, which a smoothed rate would follow
--     up and down; the whole-run average does not.
--   * Nothing is buffered between draws: every draw is one stream:write of
--     the whole line followed by stream:flush, so a fork never copies a
--     half-written bar into a child.
--   * update() does not allocate unless it draws.  It reads the clock only
--     every `stride` calls; the stride doubles (up to MAX_STRIDE) while the
--     calls come much faster than the redraw interval and drops to 1 when
--     they slow down.  next_wakeup() and set_total() make the next update()
--     read the clock, so a caller that blocks between bursts (and asks
--     next_wakeup() how long it may block) never sees a late redraw.
--   * Using a closed bar is an error: update() and set_total() on it raise;
--     close() is idempotent; next_wakeup() returns math.huge.

local ffi = require "ffi"

local floor, max, min, huge = math.floor, math.max, math.min, math.huge
local byte, rep, sub, format = string.byte, string.rep, string.sub, string.format
local type, tonumber, error = type, tonumber, error

local M = {}

------------------------------------------------------------------------
-- Clock and terminal detection (FFI)
------------------------------------------------------------------------

-- Private names bound to the libc symbols, so that another module's
-- declaration of clock_gettime or fileno (with other parameter types)
-- neither clashes with ours nor changes what we may pass.
pcall(ffi.cdef, [[
int forkpool_progress_clock_gettime(int clk, void *ts) __asm__("clock_gettime");
int forkpool_progress_fileno(void *fp) __asm__("fileno");
int forkpool_progress_isatty(int fd) __asm__("isatty");
]])
local C = ffi.C
local CLOCK_MONOTONIC = 1

-- struct timespec read as 32-bit words: indexing a long field would box an
-- int64 cdata (an allocation) in the interpreter; uint32 words are plain
-- numbers.  Word positions depend on sizeof(long) and byte order.
local ts_words = ffi.new("uint32_t[4]")
local SEC_LO, SEC_HI, NSEC
if ffi.sizeof("long") == 8 then
  if ffi.abi("le") then SEC_LO, SEC_HI, NSEC = 0, 1, 2 else SEC_LO, SEC_HI, NSEC = 1, 0, 3 end
else
  SEC_LO, SEC_HI, NSEC = 0, nil, 1
end

local function monotonic()
  C.forkpool_progress_clock_gettime(CLOCK_MONOTONIC, ts_words)
  local s = ts_words[SEC_LO]
  if SEC_HI then s = s + ts_words[SEC_HI] * 4294967296 end
  return s + ts_words[NSEC] * 1e-9
end

-- is_tty(stream) -> boolean: isatty(fileno(stream)) for an open io file;
-- false for anything else or when any step fails.  A Lua io file converts
-- to its FILE * when passed to a pointer parameter.
local function is_tty(stream)
  if io.type(stream) ~= "file" then return false end
  local ok, r = pcall(function()
    local fd = C.forkpool_progress_fileno(stream)
    return fd >= 0 and C.forkpool_progress_isatty(fd) == 1
  end)
  return ok and r == true
end

------------------------------------------------------------------------
-- Option checking
------------------------------------------------------------------------

-- The option schemas and their checker live in forkpool.options.
local options = require "forkpool.options"

local got = options.got

-- check_options(t, fname [, level]) -> t: validates a progress_bar_options
-- table given to the function named fname.  level is as for error(),
-- counted from the caller of check_options (default 1: the error points at
-- the line that called check_options).  nil is accepted (no options).
function M.check_options(t, fname, level)
  level = (level or 1) + 1
  if t == nil then return t end
  if type(t) ~= "table" then
    error(format("bad option 'progress_bar_options' to '%s' (table expected, got %s)",
      fname, got(t, "table")), level)
  end
  options.check(t, options.PROGRESS, fname, level, "progress_bar_options.")
  return t
end

------------------------------------------------------------------------
-- Formatting
------------------------------------------------------------------------

-- Block characters for eighths of a cell, tqdm's look.
local PARTIAL = { "▏", "▎", "▍", "▌", "▋", "▊", "▉" }
local FULL = "█"

-- Display width of a UTF-8 string: one column per code point (wide CJK
-- characters are counted as one; descriptions are expected to be short).
local function columns(s)
  local n = 0
  for i = 1, #s do
    local b = byte(s, i)
    if b < 0x80 or b >= 0xC0 then n = n + 1 end
  end
  return n
end

-- The longest prefix of s of at most cols code points.
local function cut(s, cols)
  local n = 0
  for i = 1, #s do
    local b = byte(s, i)
    if b < 0x80 or b >= 0xC0 then
      n = n + 1
      if n > cols then return sub(s, 1, i - 1) end
    end
  end
  return s
end

-- mm:ss, or h:mm:ss from an hour on.
local function clock_text(s)
  s = floor(s)
  local h, m = floor(s / 3600), floor(s % 3600 / 60)
  if h > 0 then return format("%d:%02d:%02d", h, m, s % 60) end
  return format("%02d:%02d", m, s % 60)
end

local function count_text(n)
  if n == floor(n) and n > -2^53 and n < 2^53 then return format("%d", n) end
  return format("%g", n)
end

local function bar_text(frac, cells)
  local eighths = floor(frac * cells * 8)
  local full = floor(eighths / 8)
  local part = eighths % 8
  if part == 0 then return rep(FULL, full) .. rep(" ", cells - full) end
  return rep(FULL, full) .. PARTIAL[part] .. rep(" ", cells - full - 1)
end

-- The numbers every line shows.
local function measure(self, t)
  local n, total = self._done, self._total
  local elapsed = max(t - self._start, 0)
  local rate = (elapsed > 0 and n > 0) and n / elapsed or 0
  local remaining -- nil: unknown
  if total and rate > 0 then remaining = max(total - n, 0) / rate end
  return n, total, elapsed, rate, remaining
end

local function tty_line(self, t)
  local n, total, elapsed, rate, remaining = measure(self, t)
  local rate_s
  if rate >= 1 then rate_s = format("%.2fit/s", rate)
  elseif rate > 0 then rate_s = format("%.2fs/it", 1 / rate)
  else rate_s = "?it/s" end
  local limit = self._width - 1 -- the last column is never written (no auto-wrap)
  local line
  if not total then
    line = format("%s%sit [%s, %s]", self._prefix, count_text(n), clock_text(elapsed), rate_s)
  else
    local frac = total > 0 and min(max(n / total, 0), 1) or 1
    local pct = format("%3d%%", floor(frac * 100))
    local right = format("%s/%s [%s<%s, %s]", count_text(n), count_text(total),
      clock_text(elapsed), remaining and clock_text(remaining) or "?", rate_s)
    local left = self._prefix .. pct
    local cells = limit - columns(left) - columns(right) - 3 -- "|", "| "
    if cells >= 1 then
      line = left .. "|" .. bar_text(frac, cells) .. "| " .. right
    else
      line = left .. " " .. right
    end
  end
  if columns(line) > limit then line = cut(line, limit) end
  return "\r" .. line .. "\27[K"
end

local function plain_line(self, t)
  local n, total, elapsed, rate, remaining = measure(self, t)
  local rate_s
  if rate >= 1 then rate_s = format("%.1f it/s", rate)
  elseif rate > 0 then rate_s = format("%.1f s/it", 1 / rate)
  else rate_s = "? it/s" end
  if not total then
    return format("%s%s done, %s elapsed, %s\n", self._prefix, count_text(n),
      clock_text(elapsed), rate_s)
  end
  local frac = total > 0 and min(max(n / total, 0), 1) or 1
  return format("%s%s/%s (%d%%) %s elapsed, %s left, %s\n", self._prefix, count_text(n),
    count_text(total), floor(frac * 100), clock_text(elapsed),
    remaining and clock_text(remaining) or "?", rate_s)
end

------------------------------------------------------------------------
-- The bar
------------------------------------------------------------------------

-- The stride (calls between clock reads) doubles, up to MAX_STRIDE, while
-- the calls between two reads take under GROW of the redraw interval, and
-- drops back to 1 when they took more than SHRINK of it; at a steady call
-- rate the clock is thus read at least every SHRINK of the interval, and
-- a redraw is never later than that.
local MAX_STRIDE = 64
local GROW, SHRINK = 1 / 64, 1 / 16

local Bar = {}
Bar.__index = Bar

local function closed_error(fname)
  error(format("attempt to use a closed progress bar (in '%s')", fname), 3)
end

local function draw(self, t, final)
  local s
  if self._tty then
    s = tty_line(self, t)
    if final then s = s .. "\n" end
  else
    s = plain_line(self, t)
    -- The final line repeats nothing: a draw by update() at the same
    -- moment and count already said it.
    if final and s == self._last then return end
    self._last = s
  end
  if not final then
    self._due = t + self._interval
    self._read_t = t
  end
  local stream = self._stream
  stream:write(s)
  stream:flush()
end

-- new(opts) -> bar.  opts (all optional): total, desc, stream, min_interval,
-- tty, now, width; see the file header.  On a terminal the
-- initial 0% bar is drawn at once, as tqdm does; elsewhere nothing is
-- written before the first min_interval has passed.
function M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error(format("bad argument #1 to 'progress.new' (table expected, got %s)",
      got(opts, "table")), 2)
  end
  options.check(opts, options.PROGRESS_NEW, "progress.new", 2)
  local stream = opts.stream or io.stderr
  local tty = opts.tty
  if tty == nil then tty = is_tty(stream) end
  local width = opts.width
  if not width then
    width = tonumber(os.getenv("COLUMNS"))
    if not (width and width >= 1 and width == floor(width)) then width = 80 end
  end
  local now = opts.now or monotonic
  local interval = opts.min_interval or (tty and 0.1 or 5)
  local desc = opts.desc
  local t = now()
  local self = setmetatable({
    _total = opts.total,
    _prefix = (desc and desc ~= "") and desc .. ": " or "",
    _stream = stream,
    _tty = tty,
    _interval = interval,
    _now = now,
    _width = width,
    _start = t,
    _done = 0,
    _due = t + interval,  -- time of the next redraw
    _read_t = t,       -- time of the last clock read by update()
    _stride = 1,       -- update() calls between clock reads
    _countdown = 0,    -- calls left before the next clock read
    _closed = false,
    _last = nil,       -- the last plain line written (not a terminal)
  }, Bar)
  if tty then draw(self, t, false) end
  return self
end

-- bar:update(done): done is the absolute number of items completed.
-- Redraws when min_interval has passed since the last draw.
function Bar:update(done)
  if type(done) ~= "number" then
    error(format("bad argument #1 to 'update' (number expected, got %s)", type(done)), 2)
  end
  self._done = done
  local c = self._countdown
  if c > 1 then
    self._countdown = c - 1
    return
  end
  -- close() leaves _countdown at 0 and _due at -huge, so a closed bar
  -- always reaches the check in the drawing branch below.
  local t = self._now()
  if t < self._due then
    local s, interval = self._stride, self._interval
    local dt = t - self._read_t
    if dt < interval * GROW then
      if s < MAX_STRIDE then s = s + s end
    elseif dt > interval * SHRINK then
      s = 1
    end
    self._read_t = t
    self._stride = s
    self._countdown = s
    return
  end
  if self._closed then closed_error("update") end
  draw(self, t, false)
  self._countdown = self._stride
end

-- bar:set_total(n): the total became known (or changed); shown from the
-- next draw on.  n = nil goes back to an unknown total.
function Bar:set_total(n)
  if self._closed then closed_error("set_total") end
  if n ~= nil and not (type(n) == "number" and n >= 0 and n < huge) then
    error(format("bad argument #1 to 'set_total' (non-negative number expected, got %s)",
      got(n, "number")), 2)
  end
  self._total = n
  self._countdown = 0
end

-- bar:next_wakeup() -> seconds (>= 0) until the bar wants its next redraw;
-- math.huge once closed.  Makes the next update() read the clock.
function Bar:next_wakeup()
  if self._closed then return huge end
  local t = self._now()
  self._read_t = t
  self._countdown = 0
  return max(self._due - t, 0)
end

-- bar:close(): the final draw (on a terminal, ending the line with "\n").
-- Idempotent.
function Bar:close()
  if self._closed then return end
  self._closed = true
  self._countdown = 0
  self._due = -huge
  draw(self, self._now(), true)
end

return M
