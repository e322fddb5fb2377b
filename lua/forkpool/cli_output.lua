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
-- Each write is one write() of a whole block (the file is unbuffered and
-- C stdio writes an unbuffered string in one call, looping only on a
-- partial write), so the output holds only whole blocks, hence whole
-- lines, whenever the parent is between writes.

local EPIPE = 32

local M = {}

local Out = {}
Out.__index = Out

function M.open(path, append)
  local f, bytes = io.stdout, 0
  if path then
    local err
    f, err = io.open(path, append and "ab" or "wb")
    if not f then return nil, err end
    bytes = f:seek("end") or 0
  end
  f:setvbuf("no")
  return setmetatable({ f = f, bytes = bytes, stdout = path == nil }, Out)
end

function Out:write(s)
  if s == "" then return true end
  local ok, err, code = self.f:write(s)
  if not ok then
    if code == EPIPE then return "closed" end
    return nil, err
  end
  self.bytes = self.bytes + #s
  return true
end

function Out:close()
  if self.stdout or self.closed then return true end
  self.closed = true
  local ok, err = self.f:close()
  if not ok then return nil, err end
  return true
end

local Log = {}
Log.__index = Log

function M.errors(path, append)
  local self = setmetatable({ count = 0, bytes = 0 }, Log)
  if path then
    local f, err = io.open(path, append and "ab" or "wb")
    if not f then return nil, err end
    f:setvbuf("no")
    self.f, self.bytes = f, f:seek("end") or 0
    self.cjson = require("cjson").new()
  end
  return self
end

function Log:report(e)
  self.count = self.count + 1
  if self.f then
    local s = self.cjson.encode({ file = e.file, line = e.line, kind = e.kind,
      message = tostring(e.message) }) .. "\n"
    local ok, err = self.f:write(s)
    if not ok then return nil, err end
    self.bytes = self.bytes + #s
  else
    io.stderr:write(("%s:%s: %s\n"):format(e.file, e.line, tostring(e.message)))
  end
  return true
end

function Log:close()
  if self.f then self.f:close(); self.f = nil end
end

return M
