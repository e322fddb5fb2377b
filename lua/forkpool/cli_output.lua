-- forkpool.cli_output: where `forkpool map` writes: the output (stdout or
-- -o FILE) and the reports of bad records (stderr or --error-log FILE).
--
--   out = output.open(path_or_nil, append)  -> Out, or nil and a message
--   out:write(s) -> true | "closed" (EPIPE: the reader went away)
--                   | nil, message (any other write error)
--   out.bytes      the output's length so far (for the resume journal)
--   out:close()  -> true, or nil and a message
--
--   log = output.errors(path_or_nil, append) -> Log, or nil and a message
--   log:report(e)  e = { file, line, kind, message }: "FILE:LINE: message"
--                  on stderr, or a JSON line {file, line, kind, message}
--   log.count, log.bytes (the error log's length)
--
--   say(s)         s on stderr
--
-- Each block is written by one call of Out:write: write(2) of the whole
-- block, looping only when the kernel took part of it (a pipe) or a signal
-- interrupted it (EINTR: the SIGINT guard has no SA_RESTART), so the
-- output holds only whole blocks, hence whole lines, whenever the parent
-- is between writes.

local ffi = require "ffi"

pcall(ffi.cdef, [[
long forkpool_cli_write(int fd, const void *buf, size_t n) __asm__("write");
int forkpool_cli_open(const char *path, int flags, ...) __asm__("open");
int forkpool_cli_close(int fd) __asm__("close");
char *forkpool_cli_strerror(int e) __asm__("strerror");
]])
local C = ffi.C
local EINTR, EPIPE = 4, 32
local O_WRONLY, O_CREAT, O_TRUNC, O_APPEND, O_CLOEXEC = 1, 0x40, 0x200, 0x400, 0x80000

local function strerror(e) return ffi.string(C.forkpool_cli_strerror(e)) end

local M = {}

local Out = {}
Out.__index = Out

function M.open(path, append)
  local fd, bytes = 1, 0
  if path then
    local flags = O_WRONLY + O_CREAT + O_CLOEXEC + (append and O_APPEND or O_TRUNC)
    fd = C.forkpool_cli_open(path, flags, ffi.cast("int", 438)) -- 0666, less the umask
    if fd < 0 then return nil, path .. ": " .. strerror(ffi.errno()) end
    local f = io.open(path, "rb")
    bytes = f and f:seek("end") or 0
    if f then f:close() end
  end
  return setmetatable({ fd = fd, bytes = bytes, stdout = path == nil }, Out)
end

function Out:write(s)
  local n = #s
  local done = 0
  while done < n do
    local r = tonumber(C.forkpool_cli_write(self.fd, ffi.cast("const char *", s) + done, n - done))
    if r >= 0 then
      done = done + r
    else
      local e = ffi.errno()
      if e == EPIPE then return "closed" end
      if e ~= EINTR then self.bytes = self.bytes + done; return nil, strerror(e) end
    end
  end
  self.bytes = self.bytes + n
  return true
end

function Out:close()
  if self.stdout or self.closed then return true end
  self.closed = true
  if C.forkpool_cli_close(self.fd) ~= 0 then return nil, strerror(ffi.errno()) end
  return true
end

-- say(s): s on stderr (EINTR retried; a closed stderr is ignored).
local stderr = setmetatable({ fd = 2, bytes = 0, stdout = true }, Out)
function M.say(s) stderr:write(s) end

local Log = {}
Log.__index = Log

function M.errors(path, append)
  local self = setmetatable({ count = 0, bytes = 0 }, Log)
  if path then
    local out, err = M.open(path, append)
    if not out then return nil, err end
    self.out, self.bytes = out, out.bytes
    self.cjson = require("cjson").new()
  end
  return self
end

function Log:report(e)
  self.count = self.count + 1
  if self.out then
    -- the keys in a fixed order (a Lua table's order varies between runs)
    local enc = self.cjson.encode
    local ok, err = self.out:write(('{"file":%s,"line":%s,"kind":%s,"message":%s}\n'):format(
      enc(tostring(e.file)), enc(e.line), enc(tostring(e.kind)), enc(tostring(e.message))))
    if ok ~= true then return nil, err or "the error log was closed" end
    self.bytes = self.out.bytes
  else
    -- stderr gone: nothing to report to, and no reason to stop the run
    M.say(("%s:%s: %s\n"):format(e.file, e.line, tostring(e.message)))
  end
  return true
end

function Log:close()
  if self.out then self.out:close() end
end

return M
