-- forkpool.cli_signals: the signals of `forkpool map` (the parent process).
--
--   SIGPIPE is ignored, so that a closed output (`| head`) makes write()
--   fail with EPIPE, which the writer turns into a quiet end of the run.
--
--   SIGINT must never kill the parent in the middle of a write (a reader
--   would see half a line).  While a pool call waits, forkpool's own guard
--   turns SIGINT into an "interrupted" error.  Between pool calls the
--   command installs a handler that does nothing, with SA_RESETHAND (the
--   kernel puts back the default action when it runs: that reset is the
--   record that SIGINT came, read with sigaction; no Lua ever runs in a
--   signal handler) and SA_RESTART (a write in progress completes).  The
--   pool's guard saves and restores this handler around each call, so
--   `interrupted()` is asked after each block is written.  A second Ctrl-C
--   after the first was seen outside a pool call kills the process, as
--   the default action does (only the block being written can be cut).
--
-- The handler is libc's getpid: async-signal-safe, leaves errno alone, and
-- ignores the signal number it is passed.  Private names are bound to the
-- libc symbols (as forkpool.progress does), so another module's
-- declaration of sigaction cannot clash with ours.

local ffi = require "ffi"

pcall(ffi.cdef, [[
struct forkpool_cli_sigaction { void *handler; uint64_t mask[16]; int flags; void *restorer; };
int forkpool_cli_sigaction(int sig, const struct forkpool_cli_sigaction *sa,
                           struct forkpool_cli_sigaction *old) __asm__("sigaction");
int forkpool_cli_getpid(void) __asm__("getpid");
]])
local C = ffi.C

local SIGINT, SIGPIPE = 2, 13
local SA_RESTART, SA_RESETHAND = 0x10000000, 0x80000000
local SIG_DFL, SIG_IGN = ffi.cast("void *", 0), ffi.cast("void *", 1)

local M = {}

local sa_t = ffi.typeof("struct forkpool_cli_sigaction")
local cur = sa_t()
local watching = false   -- our SIGINT handler was installed (SIGINT not ignored)

local function current(sig)
  C.forkpool_cli_sigaction(sig, nil, cur)
  return cur.handler
end

-- ignore_sigpipe(): write() to a closed pipe fails with EPIPE instead.
function M.ignore_sigpipe()
  local sa = sa_t()
  sa.handler = SIG_IGN
  C.forkpool_cli_sigaction(SIGPIPE, sa, nil)
end

-- watch_sigint(): install the recording handler, unless SIGINT is
-- ignored (a command started with `&` by a non-interactive shell: then
-- Ctrl-C is not ours to handle, and the pool's guard does not arm either).
function M.watch_sigint()
  if current(SIGINT) == SIG_IGN then watching = false; return end
  local sa = sa_t()
  sa.handler = ffi.cast("void *", C.forkpool_cli_getpid)
  sa.flags = bit.bor(SA_RESTART, SA_RESETHAND)
  C.forkpool_cli_sigaction(SIGINT, sa, nil)
  watching = true
end

-- interrupted() -> whether SIGINT arrived (outside a pool call) since
-- watch_sigint(): our handler ran and the kernel reset it to the default.
function M.interrupted()
  return watching and current(SIGINT) == SIG_DFL
end

-- restore(): the default SIGINT action again (before exiting).
function M.restore()
  if not watching then return end
  local sa = sa_t()
  sa.handler = SIG_DFL
  C.forkpool_cli_sigaction(SIGINT, sa, nil)
  watching = false
end

return M
