-- busted helper (see .busted): fails any spec file that leaves child
-- processes, file descriptors, shared mappings or /dev/shm entries behind.
-- FORKPOOL_CPATH overrides where forkpool.core is loaded from (make asan).
local cp = os.getenv("FORKPOOL_CPATH")
if cp and cp ~= "" then package.cpath = cp .. ";" .. package.cpath end
package.path = "spec/?.lua;" .. package.path

-- forkpool.core makes its shared arena (one mapping per process, for the
-- process's lifetime) when first loaded: load it before the first snapshot.
require "forkpool.core"

local busted = require "busted"
local leakcheck = require "support.leakcheck"

local before
busted.subscribe({ "file", "start" }, function()
  before = leakcheck.snapshot()
  return nil, true
end)
busted.subscribe({ "file", "end" }, function(file)
  local problem = leakcheck.settle(before, 5)
  if problem then
    error("leak check failed for " .. tostring(file and file.name) .. ": " .. problem, 0)
  end
  return nil, true
end)
