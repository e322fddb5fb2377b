-- forkpool from a checkout: `luarocks make` (or `make install`, which runs it
-- for LuaJIT whatever LuaRocks' default Lua is).  The same build as
-- forkpool-0.1.0-1.rockspec (spec/rockspec_spec.lua checks that they agree):
-- the C sources are listed once, in the Makefile.
rockspec_format = "3.0"
package = "forkpool"
version = "scm-1"
source = {
   url = "git+https://github.com/forkpool/forkpool.git",
   branch = "main",
   dir = "forkpool",
}
description = {
   summary = "Parallel map for LuaJIT: forked workers, shared-memory transport",
   detailed = [[
forkpool runs a Lua function over the items of a table on forked LuaJIT
worker processes and brings the results back through shared memory, with
mpire's worker model: keep_alive, worker state, worker_init/worker_exit,
lifespans, shared objects passed copy-on-write, and clear errors.  The
`forkpool map SCRIPT.lua [FILE ...]` command runs a Lua function over JSON
lines on every core.
]],
   homepage = "https://github.com/forkpool/forkpool",
   issues_url = "https://github.com/forkpool/forkpool/issues",
   license = "MIT",
   labels = { "parallel", "multiprocessing", "luajit", "fork" },
}
supported_platforms = { "linux" }
dependencies = {
   "lua == 5.1",
   "luajit >= 2.1.0-beta3",
}
build = {
   type = "make",
   build_target = "rock-build",
   install_target = "rock-install",
   build_variables = {
      ROCK_CFLAGS = "$(CFLAGS)",
      LIBFLAG = "$(LIBFLAG)",
      LUA_INCDIR = "$(LUA_INCDIR)",
   },
   install_variables = {
      INST_LIBDIR = "$(LIBDIR)",
      INST_LUADIR = "$(LUADIR)",
      INST_BINDIR = "$(BINDIR)",
   },
   -- the command line, `forkpool map SCRIPT.lua [FILE ...]`: LuaRocks puts
   -- a wrapper in the tree's bin/ that runs it with the tree's paths
   install = {
      bin = { forkpool = "bin/forkpool" },
   },
}
