-- baseline_pipes.lua: BASELINES for the benchmark suite, NOT forkpool.
--
-- Two hand-rolled process pools of the kind a LuaJIT user writes without
-- forkpool: worker processes forked through the FFI (fork, pipe, read,
-- write, poll, waitpid, _exit), talking over pipes, values encoded with
-- LuaJIT's string.buffer.  They exist only so that bench/run.lua can put
-- forkpool's numbers next to what users would otherwise have:
--
--   (a) mode = "item":  one item per message, a small window of messages in
--       flight per worker (default 8).  The common pool.
--   (b) mode = "chunk": a whole chunk of items per message and a whole chunk
--       of results per reply, two chunks in flight per worker.  The best a
--       careful user writes.
--
-- What travels, and why (the fair comparison with forkpool's warm
-- keep_alive pool, which ships items and results through its codec):
--   * The task function reaches the children through fork: the pool is
--     created for one function, after that function exists, so no function
--     shipping is needed (a user's pool would do the same).
--   * The items are shipped: the parent encodes them into each message and
--     the children decode them, exactly like forkpool's warm pool does for
--     maps after the first.  (Children also inherit the parent's items through
--     fork, but using them would only work for items that exist at fork time,
--     i.e. for one map: not a pool.)
--   * The children encode the results and the parent decodes them.
--   * Workers are forked once and reused by every map (a warm pool), like
--     forkpool's keep_alive pool; fork time is not in any warm measurement.
--
-- Written as a careful user would:
--   * framing: every message is a 16-byte header (payload length, tag =
--     item index or chunk start, item count, kind: ok / error / stop)
--     followed by the payload;
--     the payload is exactly one string.buffer encoded value;
--   * reads are buffered (string.buffer reserve/commit) and loop over
--     partial reads and EINTR; writes loop over partial writes and EINTR;
--   * the parent never blocks: its pipe ends are O_NONBLOCK and it poll()s
--     for readable results and writable task pipes, so a worker blocked on a
--     full result pipe can never deadlock against a parent blocked on a full
--     task pipe (possible with chunks bigger than the 64 KiB pipe buffer);
--   * children close every pipe end that is not theirs (otherwise a worker
--     would never see EOF when the parent closes its task pipe), leave with
--     _exit (never running the parent's atexit handlers or flushing its
--     stdio buffers twice), and every child is reaped with waitpid;
--   * SIGPIPE is ignored while a pool is open, so a dead worker shows up as
--     EPIPE / EOF (an error) instead of killing the parent;
--   * a Lua error in the task is caught in the child and raised in the
--     parent with the child's message.
--
-- Usage:
--   local bp = require "baseline_pipes"
--   local pool = bp.new{ fn = f, n_jobs = 2, mode = "item", window = 8 }
--   local results = pool:map(items [, chunk_size])   -- results.n = #items
--   pool:close()
local ffi = require "ffi"
local buffer = require "string.buffer"
local bit = require "bit"

local ok_tnew, table_new = pcall(require, "table.new")
if not ok_tnew then table_new = function() return {} end end

-- One declaration per pcall: a declaration made elsewhere in the process
-- (e.g. by another module) must not stop the ones after it.
for _, decl in ipairs{
  "int fork(void);",
  "int pipe(int fds[2]);",
  "long read(int fd, void *buf, size_t count);",
  "long write(int fd, const void *buf, size_t count);",
  "int close(int fd);",
  "int waitpid(int pid, int *status, int options);",
  "int kill(int pid, int sig);",
  "void _exit(int status);",
  "int fcntl(int fd, int cmd, ...);",
  "struct fpbench_pollfd { int fd; short events; short revents; };",
  "int poll(void *fds, unsigned long nfds, int timeout);",
  "void *signal(int sig, void *handler);",
  "char *strerror(int errnum);",
  "struct fpbench_hdr { uint32_t len; uint32_t tag; uint32_t count; uint32_t kind; };",
} do pcall(ffi.cdef, decl) end

local C = ffi.C
local EINTR, EAGAIN = 4, 11
local F_GETFL, F_SETFL, O_NONBLOCK = 3, 4, 2048
local POLLIN, POLLOUT, POLLERR, POLLHUP, POLLNVAL = 1, 4, 8, 16, 32
local SIGPIPE, SIGKILL = 13, 9
local SIG_IGN = ffi.cast("void *", 1)

local HDR = 16                       -- sizeof(struct fpbench_hdr)
local KIND_OK, KIND_ERR, KIND_STOP = 0, 1, 2
local hdr_ptr = ffi.typeof("struct fpbench_hdr *")
local READ_SIZE = 65536

local M = {}

local function syserr(what)
  local e = ffi.errno()
  return ("%s: %s (errno %d)"):format(what, ffi.string(C.strerror(e)), e)
end

------------------------------------------------------------------------
-- I/O helpers
------------------------------------------------------------------------

-- Blocking: read until buf holds at least `need` bytes.  false at EOF.
local function fill(fd, buf, need)
  while #buf < need do
    local want = need - #buf
    if want < READ_SIZE then want = READ_SIZE end
    local p, cap = buf:reserve(want)
    local r = tonumber(C.read(fd, p, cap))
    if r > 0 then
      buf:commit(r)
    elseif r == 0 then
      return false
    elseif ffi.errno() ~= EINTR then
      error(syserr("read"))
    end
  end
  return true
end

-- Blocking: write everything in buf (partial writes and EINTR).
local function write_all(fd, buf)
  while #buf > 0 do
    local p, len = buf:ref()
    local r = tonumber(C.write(fd, p, len))
    if r >= 0 then
      buf:skip(r)
    elseif ffi.errno() ~= EINTR then
      error(syserr("write"))
    end
  end
end

-- Non-blocking: write what the pipe takes now.
local function flush_some(fd, buf)
  while #buf > 0 do
    local p, len = buf:ref()
    local r = tonumber(C.write(fd, p, len))
    if r > 0 then
      buf:skip(r)
    elseif r < 0 then
      local e = ffi.errno()
      if e == EAGAIN then return end
      if e ~= EINTR then error(syserr("write to worker")) end
    end
  end
end

-- Non-blocking: read what is available.  Returns false at EOF.
local function drain(fd, buf)
  while true do
    local want = READ_SIZE
    if #buf >= HDR then
      -- a header is in: ask for the whole rest of that message at once
      local h = ffi.cast(hdr_ptr, (buf:ref()))
      local rest = HDR + h.len - #buf
      if rest > want then want = rest end
    end
    local p, cap = buf:reserve(want)
    local r = tonumber(C.read(fd, p, cap))
    if r > 0 then
      buf:commit(r)
      if r < cap then return true end -- the pipe is very likely empty now
    elseif r == 0 then
      return false
    else
      local e = ffi.errno()
      if e == EAGAIN then return true end
      if e ~= EINTR then error(syserr("read from worker")) end
    end
  end
end

-- Append one framed message to buf: header, then encode(value).  The header
-- is reserved first and its length patched after encoding (no extra copy).
local function put_frame(buf, tag, count, kind, value)
  local before = #buf
  buf:reserve(HDR)
  buf:commit(HDR)
  buf:encode(value)
  local p, total = buf:ref()
  local h = ffi.cast(hdr_ptr, p + before)
  h.len = total - before - HDR
  h.tag = tag
  h.count = count
  h.kind = kind
end

------------------------------------------------------------------------
-- The child
------------------------------------------------------------------------

-- Serve messages until the parent closes the task pipe.
local function child_loop(rfd, wfd, fn, mode)
  local inb = buffer.new(READ_SIZE)
  local out = buffer.new(READ_SIZE)
  local dec = buffer.new()
  while true do
    if not fill(rfd, inb, HDR) then return end -- EOF: the parent is done
    local h = ffi.cast(hdr_ptr, (inb:ref()))
    local len, tag, count, kind = h.len, h.tag, h.count, h.kind
    if kind == KIND_STOP then return end
    if not fill(rfd, inb, HDR + len) then error("truncated message from parent") end
    local p = inb:ref()
    dec:set(p + HDR, len)
    local value = dec:decode()
    if #dec ~= 0 then error("message with trailing bytes") end
    inb:skip(HDR + len)
    local ok, res
    if mode == "item" then
      ok, res = pcall(fn, value)
    else
      ok, res = pcall(function()
        local r = table_new(count, 0)
        for k = 1, count do r[k] = fn(value[k]) end
        return r
      end)
    end
    out:reset()
    if ok then
      put_frame(out, tag, count, KIND_OK, res)
    else
      put_frame(out, tag, count, KIND_ERR, tostring(res))
    end
    write_all(wfd, out)
  end
end

------------------------------------------------------------------------
-- The pool (parent side)
------------------------------------------------------------------------

local Pool = {}
Pool.__index = Pool

local sigpipe_depth, sigpipe_old = 0, nil

local function set_nonblock(fd)
  local fl = C.fcntl(fd, F_GETFL)
  if fl < 0 or C.fcntl(fd, F_SETFL, ffi.new("int", bit.bor(fl, O_NONBLOCK))) < 0 then
    error(syserr("fcntl"))
  end
end

-- bp.new{ fn =, n_jobs = 2, mode = "item" | "chunk", window = 8 (item mode),
--         inflight = 2 (chunk mode: chunks in flight per worker),
--         init = nil (a function each child runs once after fork) }
function M.new(opts)
  assert(type(opts.fn) == "function", "fn expected")
  local self = setmetatable({
    fn = opts.fn,
    n = opts.n_jobs or 2,
    mode = opts.mode or "item",
    window = opts.window or 8,
    inflight = opts.inflight or 2,
    init = opts.init,
    workers = {},
    closed = false,
  }, Pool)
  assert(self.mode == "item" or self.mode == "chunk", "mode must be 'item' or 'chunk'")
  if sigpipe_depth == 0 then sigpipe_old = C.signal(SIGPIPE, SIG_IGN) end
  sigpipe_depth = sigpipe_depth + 1
  io.stdout:flush(); io.stderr:flush() -- nothing buffered is copied into children
  local parent_fds = {}
  for w = 1, self.n do
    local tp, rp = ffi.new("int[2]"), ffi.new("int[2]")
    if C.pipe(tp) ~= 0 then error(syserr("pipe")) end
    if C.pipe(rp) ~= 0 then C.close(tp[0]); C.close(tp[1]); error(syserr("pipe")) end
    local pid = C.fork()
    if pid < 0 then
      C.close(tp[0]); C.close(tp[1]); C.close(rp[0]); C.close(rp[1])
      self:close()
      error(syserr("fork"))
    end
    if pid == 0 then
      -- child: keep only our task read end and result write end
      for _, fd in ipairs(parent_fds) do C.close(fd) end
      C.close(tp[1]); C.close(rp[0])
      local ok, err = true, nil
      if self.init then ok, err = pcall(self.init) end
      if ok then ok, err = pcall(child_loop, tp[0], rp[1], self.fn, self.mode) end
      if not ok then
        io.stderr:write("baseline worker ", w, ": ", tostring(err), "\n")
        io.stderr:flush()
        C._exit(1)
      end
      C._exit(0)
    end
    C.close(tp[0]); C.close(rp[1])
    set_nonblock(tp[1]); set_nonblock(rp[0])
    parent_fds[#parent_fds + 1] = tp[1]
    parent_fds[#parent_fds + 1] = rp[0]
    self.workers[w] = {
      pid = pid, wfd = tp[1], rfd = rp[0],
      out = buffer.new(READ_SIZE), inb = buffer.new(READ_SIZE), busy = 0,
    }
  end
  self.pfds = ffi.new("struct fpbench_pollfd[?]", 2 * self.n)
  self.dec = buffer.new()
  return self
end

-- pool:map(items [, chunk_size]) -> results (results.n = #items)
-- chunk_size is used in chunk mode (default: forkpool's default,
-- ceil(#items / (n_jobs * 64))).
function Pool:map(items, chunk_size)
  assert(not self.closed, "baseline pool is closed")
  assert(not self.broken, "baseline pool is broken by an earlier error; close it")
  local ok, res = pcall(self._map, self, items, chunk_size)
  if not ok then
    self.broken = true -- replies may still be in flight: close() kills
    error(res, 0)
  end
  return res
end

function Pool:_map(items, chunk_size)
  local n = #items
  local results = table_new(n, 1)
  results.n = n
  if n == 0 then return results end
  local item_mode = self.mode == "item"
  local unit = item_mode and 1 or (chunk_size or math.ceil(n / (self.n * 64)))
  local window = item_mode and self.window or self.inflight
  local workers, nw, pfds, dec = self.workers, self.n, self.pfds, self.dec
  local next_i, done = 1, 0

  local function feed(w)
    while w.busy < window and next_i <= n do
      local cnt = unit
      if next_i + cnt - 1 > n then cnt = n - next_i + 1 end
      if item_mode then
        put_frame(w.out, next_i, 1, KIND_OK, items[next_i])
      else
        local sub = table_new(cnt, 0)
        for k = 1, cnt do sub[k] = items[next_i + k - 1] end
        put_frame(w.out, next_i, cnt, KIND_OK, sub)
      end
      next_i = next_i + cnt
      w.busy = w.busy + 1
    end
    flush_some(w.wfd, w.out)
  end

  -- Take every complete message out of w.inb.
  local function take(w)
    local inb = w.inb
    while #inb >= HDR do
      local p = inb:ref()
      local h = ffi.cast(hdr_ptr, p)
      local len, tag, count, kind = h.len, h.tag, h.count, h.kind
      if #inb < HDR + len then return end
      dec:set(p + HDR, len)
      local v = dec:decode()
      inb:skip(HDR + len)
      if kind ~= KIND_OK then
        error("baseline worker task error: " .. tostring(v), 0)
      end
      if item_mode then
        results[tag] = v
      else
        for k = 1, count do results[tag + k - 1] = v[k] end
      end
      done = done + count
      w.busy = w.busy - 1
    end
  end

  while done < n do
    for i = 1, nw do feed(workers[i]) end
    for i = 1, nw do
      local w = workers[i]
      local a, b = pfds[2 * i - 2], pfds[2 * i - 1]
      a.fd, a.events, a.revents = w.rfd, POLLIN, 0
      b.fd, b.events, b.revents = w.wfd, (#w.out > 0) and POLLOUT or 0, 0
    end
    local r = C.poll(pfds, 2 * nw, -1)
    if r < 0 and ffi.errno() ~= EINTR then error(syserr("poll")) end
    if r > 0 then
      for i = 1, nw do
        local w = workers[i]
        local a, b = pfds[2 * i - 2], pfds[2 * i - 1]
        if bit.band(a.revents, POLLIN + POLLHUP + POLLERR) ~= 0 then
          local alive = drain(w.rfd, w.inb)
          take(w)
          if not alive then error(("baseline worker %d (pid %d) died"):format(i, w.pid), 0) end
        elseif bit.band(a.revents, POLLNVAL) ~= 0 then
          error("poll: invalid fd", 0)
        end
        if bit.band(b.revents, POLLOUT + POLLERR + POLLHUP) ~= 0 then
          flush_some(w.wfd, w.out)
        end
      end
    end
  end
  return results
end

-- Blocking write of everything in buf on a non-blocking fd.
local function write_wait(fd, buf)
  local pfd = ffi.new("struct fpbench_pollfd[1]")
  while true do
    local ok, err = pcall(flush_some, fd, buf)
    if not ok or #buf == 0 then return ok, err end
    pfd[0].fd, pfd[0].events, pfd[0].revents = fd, POLLOUT, 0
    C.poll(pfd, 1, 1000)
  end
end

-- Send each child a stop message and close its task pipe (it leaves with
-- _exit(0) on the message or on EOF), reap every child, close the result
-- pipes.  Raises if a child did not exit cleanly.  The explicit message
-- matters: a process forked by someone else while this pool was open holds
-- copies of our pipe ends, so EOF alone might never come.
function Pool:close()
  if self.closed then return end
  self.closed = true
  local bad
  for _, w in ipairs(self.workers) do
    if self.broken then
      C.kill(w.pid, SIGKILL) -- it may be blocked writing replies nobody reads
    else
      w.out:reset()
      put_frame(w.out, 0, 0, KIND_STOP, nil)
      write_wait(w.wfd, w.out) -- a dead child (EPIPE) is found by waitpid below
    end
    C.close(w.wfd)
  end
  local status = ffi.new("int[1]")
  for i, w in ipairs(self.workers) do
    while true do
      local r = C.waitpid(w.pid, status, 0)
      if r == w.pid then break end
      if r < 0 and ffi.errno() ~= EINTR then error(syserr("waitpid")) end
    end
    if status[0] ~= 0 and not self.broken then
      bad = bad or ("baseline worker %d (pid %d) exited with status 0x%x"):format(i, w.pid, status[0])
    end
    C.close(w.rfd)
  end
  sigpipe_depth = sigpipe_depth - 1
  if sigpipe_depth == 0 then C.signal(SIGPIPE, sigpipe_old) end
  if bad then error(bad, 0) end
end

function Pool:pids()
  local t = {}
  for i, w in ipairs(self.workers) do t[i] = w.pid end
  return t
end

return M
