// tests/host/cxx_host.cpp - a C++ host: include/forkpool.h included first
// (before lua.hpp), forkpool linked in, one map.  tools/test-host.sh builds
// it with the system's C++ compiler and runs it; it prints "cxx host: ok".
#include "forkpool.h"
#include <lua.hpp>

#include <cstdio>

int main() {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  forkpool_preload(L);
  int rc = luaL_dostring(L,
      "package.path, package.cpath = '', ''\n"
      "local fp = require 'forkpool'\n"
      "local p = fp.new{ n_jobs = 2 }\n"
      "local r = p:map(function(x) return x * x end, { 1, 2, 3, 4 })\n"
      "p:close()\n"
      "assert(r[4] == 16 and r.n == 4)\n");
  if (rc != 0) std::fprintf(stderr, "cxx host: %s\n", lua_tostring(L, -1));
  lua_close(L);
  if (rc == 0) std::printf("cxx host: ok (forkpool %s)\n", FORKPOOL_VERSION);
  return rc == 0 ? 0 : 1;
}
