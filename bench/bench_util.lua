-- bench_util.lua: clocks, statistics, /proc readers and table formatting
-- shared by bench/run.lua, bench/workloads.lua and bench/baseline_pipes.lua.
local ffi = require "ffi"

local M = {}

-- A NAMED struct: an anonymous struct in a cdef would be a distinct type at
-- every declaration.  Each declaration in its own pcall so that one already
-- made elsewhere in the process does not stop the others.
pcall(ffi.cdef, "struct fpbench_timespec { long tv_sec; long tv_nsec; };")
pcall(ffi.cdef, "int clock_gettime(int clk, void *ts);")
pcall(ffi.cdef, "int getpid(void);")
-- rest[4] is ru_minflt, rest[12] ru_nvcsw
pcall(ffi.cdef, [[
struct fpbench_rusage { long utime_s, utime_us, stime_s, stime_us; long rest[14]; };
int getrusage(int who, struct fpbench_rusage *ru);
]])

local CLOCK_MONOTONIC = 1
local ts = ffi.new("struct fpbench_timespec")
local C = ffi.C

-- Seconds since an arbitrary point, CLOCK_MONOTONIC.
function M.now()
  C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

function M.getpid() return C.getpid() end

function M.median(xs)
  local t = {}
  for i = 1, #xs do t[i] = xs[i] end
  table.sort(t)
  local n = #t
  if n == 0 then return nil end
  if n % 2 == 1 then return t[(n + 1) / 2] end
  return (t[n / 2] + t[n / 2 + 1]) / 2
end

function M.min(xs)
  local m = math.huge
  for i = 1, #xs do if xs[i] < m then m = xs[i] end end
  return m
end

function M.max(xs)
  local m = -math.huge
  for i = 1, #xs do if xs[i] > m then m = xs[i] end end
  return m
end

-- Full GC, twice (finalizers queued by the first run in the second).
function M.gc()
  collectgarbage()
  collectgarbage()
end

------------------------------------------------------------------------
-- /proc
------------------------------------------------------------------------

-- Fields of /proc/<pid>/smaps_rollup in bytes: { Pss = ..., Rss = ...,
-- Private_Dirty = ..., ... }; nil, message when it cannot be read.
function M.smaps_rollup(pid)
  local f, err = io.open(("/proc/%d/smaps_rollup"):format(pid), "r")
  if not f then return nil, err end
  local out = {}
  for line in f:lines() do
    local k, v = line:match("^([%w_]+):%s+(%d+) kB")
    if k then out[k] = tonumber(v) * 1024 end
  end
  f:close()
  if not out.Pss then return nil, "no Pss line in smaps_rollup" end
  return out
end

-- A field of /proc/self/status in bytes (e.g. "VmHWM", the peak resident
-- set size of this process, or "VmRSS"); nil when it cannot be read.
function M.proc_status_bytes(field)
  local f = io.open("/proc/self/status", "r")
  if not f then return nil end
  local v
  for line in f:lines() do
    local k, n = line:match("^([%w_]+):%s+(%d+) kB")
    if k == field then v = tonumber(n) * 1024; break end
  end
  f:close()
  return v
end

-- getrusage(who): CPU seconds (user + system), minor page faults and
-- voluntary context switches (sleeps).  who: M.RUSAGE_SELF (this process;
-- its workers are not counted until reaped) or M.RUSAGE_CHILDREN (its
-- waited-for descendants).
M.RUSAGE_SELF, M.RUSAGE_CHILDREN = 0, -1
local ru = ffi.new("struct fpbench_rusage")
function M.rusage(who)
  C.getrusage(who, ru)
  local cpu = tonumber(ru.utime_s) + tonumber(ru.utime_us) * 1e-6
    + tonumber(ru.stime_s) + tonumber(ru.stime_us) * 1e-6
  return cpu, tonumber(ru.rest[4]), tonumber(ru.rest[12])
end

-- Another live process's CPU seconds (user + system, in clock ticks of
-- 10 ms) and minor page faults, from /proc/<pid>/stat; nil when it is gone.
function M.proc_cpu(pid)
  local f = io.open(("/proc/%d/stat"):format(pid), "r")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  -- fields after the command (which may hold spaces), from field 3 on
  local rest = s:match("^%d+ %(.*%) (.*)$")
  if not rest then return nil end
  local fields = {}
  for x in rest:gmatch("%S+") do fields[#fields + 1] = x end
  -- field k of proc(5) is fields[k - 2]: minflt 10, utime 14, stime 15
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100, tonumber(fields[8])
end

function M.read_first_line(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("*l")
  f:close()
  return s
end

function M.cpu_model()
  local f = io.open("/proc/cpuinfo", "r")
  if not f then return "?" end
  for line in f:lines() do
    local m = line:match("^model name%s*:%s*(.-)%s*$")
    if m then f:close(); return m end
  end
  f:close()
  return "?"
end

------------------------------------------------------------------------
-- Formatting
------------------------------------------------------------------------

-- A duration in seconds, with a unit that keeps 3 significant digits.
local function sig3(v)
  local a = math.abs(v)
  if a >= 99.95 then return ("%.0f"):format(v) end
  if a >= 9.995 then return ("%.1f"):format(v) end
  return ("%.2f"):format(v)
end

local UNITS = { { 1e9, "ns" }, { 1e6, "µs" }, { 1e3, "ms" }, { 1, "s" } }
function M.fmt_time(s)
  if s == nil or s ~= s then return "-" end
  for i, u in ipairs(UNITS) do
    local v = s * u[1]
    if math.abs(v) < 999.5 or i == #UNITS then return sig3(v) .. " " .. u[2] end
  end
end

function M.fmt_bytes(b)
  if b == nil then return "-" end
  local a = math.abs(b)
  if a >= 2^30 then return ("%.2f GiB"):format(b / 2^30)
  elseif a >= 2^20 then return ("%.1f MiB"):format(b / 2^20)
  elseif a >= 2^10 then return ("%.0f KiB"):format(b / 2^10)
  else return ("%d B"):format(b) end
end

function M.fmt_rate(bytes_per_s)
  return ("%.2f GB/s"):format(bytes_per_s / 1e9)
end

function M.fmt_ratio(r)
  if r == nil or r ~= r then return "-" end
  if r >= 100 then return ("%.0f×"):format(r) end
  if r >= 10 then return ("%.1f×"):format(r) end
  return ("%.2f×"):format(r)
end

-- Display width of a UTF-8 string (continuation bytes take no column).
local function width(s)
  local _, cont = s:gsub("[\128-\191]", "")
  return #s - cont
end
M.width = width

local function pad(s, w)
  return s .. (" "):rep(w - width(s))
end

-- Print rows (arrays of strings) as a pipe table with a header row; a row
-- that is a plain string is printed as a separator-less full-width line.
function M.print_table(header, rows, out)
  out = out or io.stdout
  local ncol = #header
  local w = {}
  for c = 1, ncol do w[c] = width(header[c]) end
  for _, r in ipairs(rows) do
    if type(r) == "table" then
      for c = 1, ncol do w[c] = math.max(w[c], width(r[c] or "")) end
    end
  end
  local function line(r)
    local parts = {}
    for c = 1, ncol do parts[c] = pad(r[c] or "", w[c]) end
    out:write("| ", table.concat(parts, " | "), " |\n")
  end
  line(header)
  local dashes = {}
  for c = 1, ncol do dashes[c] = ("-"):rep(w[c]) end
  out:write("|-", table.concat(dashes, "-|-"), "-|\n")
  for _, r in ipairs(rows) do
    if type(r) == "table" then line(r) end
  end
end

return M
