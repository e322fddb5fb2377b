#!/bin/sh
# Runs luarocks for LuaJIT, whatever LuaRocks' default Lua version is:
#   tools/luarocks-luajit.sh make forkpool-scm-1.rockspec [--tree DIR]
# Debian's LuaRocks defaults to the newest Lua installed (lua-busted brings
# lua5.2), and with --lua-version=5.1 alone it takes PUC Lua 5.1's
# interpreter and headers when they are installed.  This gives LuaRocks, for
# this one call, a Lua 5.1 "installation" made of symlinks to the `luajit`
# executable and LuaJIT's headers (build/luajit-prefix), and the real paths
# for anything that is installed (LUA, LUA_BINDIR).  The README's one-time
# `luarocks config` lines do the same for good.  The user's own LuaRocks
# configuration is still read.
set -eu
cd "$(dirname "$0")/.."
luajit=$(command -v "${LUAJIT:-luajit}") || { echo "luarocks-luajit.sh: no luajit on PATH" >&2; exit 1; }
incdir=${LUA_INCDIR:-$(pkg-config --variable=includedir luajit 2>/dev/null || echo /usr/include/luajit-2.1)}
[ -f "$incdir/luajit.h" ] || { echo "luarocks-luajit.sh: no luajit.h in $incdir (install libluajit-5.1-dev, or set LUA_INCDIR)" >&2; exit 1; }
prefix=$PWD/build/luajit-prefix
mkdir -p "$prefix/bin" "$prefix/include"
ln -sf "$luajit" "$prefix/bin/luajit"
ln -sfn "$incdir" "$prefix/include/luajit-2.1"
exec luarocks --lua-version=5.1 --lua-dir="$prefix" "$@" \
  LUA_INCDIR="$incdir" LUA_BINDIR="$(dirname "$luajit")" LUA="$luajit"
