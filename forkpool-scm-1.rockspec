-- The one list of forkpool's sources: the Makefile reads build.modules from
-- this file, so the rock and the development build cannot drift apart.
package = "forkpool"
version = "scm-1"
source = {
   url = "git+file:///dev/null", -- installed from a checkout with `luarocks make`
}
description = {
   summary = "Parallel map for LuaJIT: forked workers, shared-memory transport",
   detailed = [[
forkpool runs a Lua function over the items of a table on forked LuaJIT
worker processes and brings the results back through shared memory, with
mpire's worker model: keep_alive, worker state, worker_init/worker_exit,
lifespans, shared objects passed copy-on-write, and clear errors.
]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.1, < 5.2",
}
build = {
   type = "builtin",
   modules = {
      ["forkpool"] = "lua/forkpool/init.lua",
      ["forkpool.errors"] = "lua/forkpool/errors.lua",
      ["forkpool.worker"] = "lua/forkpool/worker.lua",
      ["forkpool.scheduler"] = "lua/forkpool/scheduler.lua",
      ["forkpool.progress"] = "lua/forkpool/progress.lua",
      ["forkpool.insights"] = "lua/forkpool/insights.lua",
      ["forkpool.core"] = {
         sources = {
            "engine/fp_common.c",
            "engine/fp_shm.c",
            "engine/fp_ring.c",
            "engine/fp_proc.c",
            "engine/fp_codec.c",
            "engine/fp_worker.c",
            "engine/fp_lua.c",
         },
         defines = { "_GNU_SOURCE" },
         incdirs = { "engine" },
      },
   },
}
