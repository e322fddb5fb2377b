-- Prints the C sources of forkpool.core listed in a rockspec, one line,
-- space-separated: the Makefile's only source list comes from here.
local path = assert(arg[1], "usage: rockspec-sources.lua FILE.rockspec")
local env = {}
local chunk = assert(loadfile(path))
setfenv(chunk, env)
chunk()
local core = assert(env.build and env.build.modules and env.build.modules["forkpool.core"],
  "no build.modules['forkpool.core'] in " .. path)
io.write(table.concat(core.sources, " "), "\n")
