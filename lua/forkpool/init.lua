-- forkpool: parallel map for LuaJIT on forked worker processes.
--
--   local forkpool = require "forkpool"
--   local pool = forkpool.new{ n_jobs = 4, keep_alive = true }
--   local squares = pool:map(function(x) return x * x end, items)
--   pool:close()
--
-- This file is the module's face: it refuses where forkpool cannot run and
-- gathers the public functions.  docs/architecture.md maps the rest: the
-- Pool (forkpool.pool) builds jobs (forkpool.job) whose chunks the event
-- loop (forkpool.events, forkpool.dispatch, forkpool.deaths) hands to the
-- engine (forkpool.core, engine/*.c), which forks the workers, moves
-- records through shared memory and encodes values.

-- Refuse clearly, before the C module is loaded, where forkpool cannot run
-- (under PUC Lua the module would fail with "undefined symbol: ...").
if type(jit) ~= "table" or type(jit.version_num) ~= "number" then
  error(("forkpool needs LuaJIT 2.1 (this is %s)"):format(tostring(_VERSION)), 0)
elseif jit.version_num < 20100 then
  error(("forkpool needs LuaJIT 2.1 (this is %s)"):format(tostring(jit.version)), 0)
elseif jit.os ~= "Linux" then
  error(("forkpool runs on Linux only (it needs fork, pidfd_open, futexes and "
    .. "shared anonymous memory; this is %s)"):format(tostring(jit.os)), 0)
end

local pool = require "forkpool.pool"
local errors = require "forkpool.errors"
local shared = require "forkpool.shared"

local M = {}
M._VERSION = "forkpool 0.1.0"
M.new = pool.new                    -- forkpool.new(options) -> pool
M.shared_array = shared.shared_array
M.is_error = errors.is_error        -- forkpool.is_error(value [, kind])
M.Pool = pool.Pool
return M
