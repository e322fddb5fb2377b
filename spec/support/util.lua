-- Test utilities: bounded waiting, sleeping, running Lua in a child
-- process with a deadline, process checks.
local ffi = require "ffi"
pcall(ffi.cdef, "struct fp_test_ts { long tv_sec; long tv_nsec; };")
pcall(ffi.cdef, "int nanosleep(const struct fp_test_ts *req, void *rem);")
pcall(ffi.cdef, "int kill(int pid, int sig);")
pcall(ffi.cdef, "int getpid(void);")
pcall(ffi.cdef, "int clock_gettime(int clk, void *ts);")

local M = {}

local ts_t = ffi.typeof("struct fp_test_ts")

function M.sleep(s)
  local ts = ts_t(math.floor(s), math.floor((s % 1) * 1e9))
  ffi.C.nanosleep(ts, nil)
end

function M.now()
  local f = io.open("/proc/uptime")
  local s = f:read("*n")
  f:close()
  return s
end

function M.monotonic()
  local ts = ts_t()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

-- wait_for(cond, timeout_s [, step_s]) -> true as soon as cond() is true,
-- false when the deadline passes.
function M.wait_for(cond, timeout, step)
  local deadline = M.monotonic() + (timeout or 5)
  step = step or 0.01
  while true do
    if cond() then return true end
    if M.monotonic() > deadline then return false end
    M.sleep(step)
  end
end

function M.pid_alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local s = f:read("*a")
  f:close()
  local state = s:match("%) (%S)")
  return state ~= "Z" and state ~= "X"
end

function M.getpid() return ffi.C.getpid() end
function M.kill(pid, sig) return ffi.C.kill(pid, sig) end

-- items(n) -> { 1, 2, ..., n }
function M.items(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

-- tmpfile() -> a fresh temporary path, with no file there yet (the caller
-- removes what it makes there).
function M.tmpfile()
  local p = os.tmpname()
  os.remove(p)
  return p
end

-- lua_script(code) -> path of a temporary Lua file that runs code with this
-- process's module paths (the caller removes it).
function M.lua_script(code)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write("package.path = ", ("%q"):format(package.path), "\n")
  f:write("package.cpath = ", ("%q"):format(package.cpath), "\n")
  f:write(code)
  f:close()
  return path
end

-- run_lua(code [, timeout]) -> ok, output, exit code: runs `code` in a fresh
-- luajit with the same module paths, killed after timeout seconds.
function M.run_lua(code, timeout)
  local path = M.lua_script(code)
  local p = io.popen(("timeout -s KILL %d luajit %s 2>&1; echo \"__rc=$?\""):format(timeout or 30, path))
  local out = p:read("*a")
  p:close()
  os.remove(path)
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  out = out:gsub("__rc=%d+%s*$", "")
  return rc == 0, out, rc
end

return M
