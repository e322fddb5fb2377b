-- forkpool.cli_resume: the journal of `forkpool map --resume -o FILE`.
--
-- A sidecar file, FILE.forkpool-resume, says how far the run got: the
-- global number of input lines whose output is complete in FILE, FILE's
-- length at that point, the bad records counted so far and the error
-- log's length (--errors skip), and which command wrote it.  It is
-- rewritten after each block's output is written (write a temporary file,
-- rename it over the sidecar: a reader sees the old or the new journal,
-- never half of one), so that FILE always holds at least what the journal
-- says.  A run killed at any point is continued by the same command with
-- --resume: FILE (and the error log) are cut back to the journal's
-- lengths, the lines already done are skipped, and the output is
-- appended.  The sidecar is removed when a run ends normally.
--
-- The write() calls leave the data in the kernel; no fsync: the journal
-- survives a killed process, not a power cut.

local ffi = require "ffi"

pcall(ffi.cdef, [[
int forkpool_cli_truncate(const char *path, int64_t length) __asm__("truncate");
]])

local M = {}

M.SUFFIX = ".forkpool-resume"
local MAGIC = "forkpool-resume 1"

-- The journal's fields.
local FIELDS = { "lines", "bytes", "errors", "error_log_bytes" }

-- identity(cmd) -> a one-line string naming what decides the output (the
-- script, the inputs and the options that change records), so that a
-- journal is only continued by the command that wrote it.
function M.identity(cmd)
  local parts = { "script=" .. cmd.script }
  for _, f in ipairs(cmd.files) do parts[#parts + 1] = "file=" .. f end
  if cmd.raw then parts[#parts + 1] = "raw" end
  if cmd.flat then parts[#parts + 1] = "flat" end
  if cmd.shard then parts[#parts + 1] = ("shard=%d/%d"):format(cmd.shard.k, cmd.shard.n) end
  local keys = {}
  for k in pairs(cmd.set) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = "set=" .. k .. "=" .. cmd.set[k] end
  return (("%q"):format(table.concat(parts, "\0")):gsub("\\\n", "\\n"))
end

-- read(output, identity) -> journal table, or nil when there is none;
-- raises { usage = message } for a journal that cannot be used.
function M.read(output, identity)
  local path = output .. M.SUFFIX
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  local j = {}
  local magic = s:match("^([^\n]*)\n")
  if magic ~= MAGIC then
    error({ usage = path .. ": not a forkpool resume journal (remove it to start afresh)" }, 0)
  end
  for _, k in ipairs(FIELDS) do
    local v = tonumber(s:match("\n" .. k .. " (%d+)\n"))
    if not v then error({ usage = path .. ": damaged (no " .. k .. "; remove it to start afresh)" }, 0) end
    j[k] = v
  end
  local id = s:match("\ncommand ([^\n]*)\n")
  if id ~= identity then
    error({ usage = path .. ": written by a different command (other script, inputs, --raw, --flat, "
      .. "--shard or --set); remove it to start afresh" }, 0)
  end
  return j
end

-- cut(path, length): truncate path to length bytes (the journal's).
-- Raises { usage = message } when the file is shorter than that, or
-- missing: it does not hold what the journal says.
function M.cut(path, length)
  local f = io.open(path, "rb")
  local size = f and f:seek("end")
  if f then f:close() end
  if not size or size < length then
    error({ usage = ("%s: %s, but its resume journal says %d bytes were written (remove %s%s "
      .. "to start afresh)"):format(path, size and ("only " .. size .. " bytes") or "missing", length,
      path, M.SUFFIX) }, 0)
  end
  if ffi.C.forkpool_cli_truncate(path, length) ~= 0 then
    error({ usage = ("%s: cannot truncate to %d bytes"):format(path, length) }, 0)
  end
end

-- write(output, identity, journal): replace the sidecar atomically.
-- Returns true, or nil and a message.
function M.write(output, identity, j)
  local path = output .. M.SUFFIX
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then return nil, err end
  local ok, werr = f:write(("%s\nlines %d\nbytes %d\nerrors %d\nerror_log_bytes %d\ncommand %s\n")
    :format(MAGIC, j.lines, j.bytes, j.errors, j.error_log_bytes, identity))
  local cok, cerr = f:close()
  if not ok or not cok then os.remove(tmp); return nil, werr or cerr end
  local rok, rerr = os.rename(tmp, path)
  if not rok then return nil, rerr end
  return true
end

-- remove(output): the run ended normally.
function M.remove(output)
  os.remove(output .. M.SUFFIX)
end

return M
