-- forkpool.cli_signals: the signals of `forkpool map` (the parent process).
--
--   ignore_sigpipe()
--     write() to a closed pipe (`| head`) fails with EPIPE instead of
--     killing the process; the writer turns that into a quiet end.
--
--   with_sigint_guard(pool, fn, ...) -> fn's results
--     Runs fn (the whole run: every pool call, read and write) with
--     forkpool's SIGINT guard armed for the pool.  The guard's handler only
--     sets a flag and wakes the pool's poll, which raises an "interrupted"
--     error from the pool call that is waiting, or from the next one.
--     Armed for the whole run, not per call, for two reasons:
--       * a SIGINT between two pool calls (while a block is written, or
--         while the input is read) must neither kill the process in the
--         middle of a write nor be lost.  Each public call of a pool arms
--         the guard when it is not armed yet, and arming clears the flag,
--         so a SIGINT that came after the last poll of one call (imap's
--         iterator arms and disarms once per step) was forgotten by the
--         next call.  Nested inside this outer guard, the pool's calls
--         only point its wake-up at the pool: the flag stays set until a
--         poll takes it.
--       * the handler runs in C; no Lua runs in a signal handler.
--     The guard's handler is installed without SA_RESTART (so that a
--     blocked poll returns), so reads and writes of pipes and terminals
--     can fail with EINTR: forkpool.cli_input and forkpool.cli_output
--     retry them.

local ffi = require "ffi"
local call = require "forkpool.call"

pcall(ffi.cdef, [[
struct forkpool_cli_sigaction { void *handler; uint64_t mask[16]; int flags; void *restorer; };
int forkpool_cli_sigaction(int sig, const struct forkpool_cli_sigaction *sa,
                           struct forkpool_cli_sigaction *old) __asm__("sigaction");
]])
local C = ffi.C

local SIGPIPE = 13
local SIG_IGN = ffi.cast("void *", 1)

local M = {}

function M.ignore_sigpipe()
  local sa = ffi.new("struct forkpool_cli_sigaction")
  sa.handler = SIG_IGN
  C.forkpool_cli_sigaction(SIGPIPE, sa, nil)
end

function M.with_sigint_guard(pool, fn, ...)
  return call.guard_span(pool, fn, ...)
end

return M
