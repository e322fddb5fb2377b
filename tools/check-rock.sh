#!/bin/sh
# Packaging checks, offline, nothing installed outside scratch directories:
#   1. `luarocks lint` passes for both rockspecs;
#   2. `make rock` builds build/forkpool-0.1.0-1.src.rock from the checkout;
#   3. the README's one-time `luarocks config` lines (system scope, run here
#      against a scratch copy of /etc/luarocks through LUAROCKS_SYSCONFDIR,
#      and user scope with `--local` in a scratch HOME) make LuaRocks build
#      for LuaJIT, whatever its default Lua version was;
#   4. the src rock installs with `luarocks install ./forkpool-0.1.0-1.src.rock`
#      into a scratch tree, and by name from a local rocks server (a
#      directory indexed with `luarocks-admin make_manifest`);
#   5. `make install` (tools/luarocks-luajit.sh) installs from the checkout
#      without any configuration;
#   6. each installed module maps, exports only luaopen_*, has no test hooks,
#      the tree's bin/forkpool command runs `forkpool map`, and the builds
#      left nothing in the checkout outside build/.
# Prints one line per check and ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
PASSED=0 FAILED=0
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
LOG=build/test-logs/rock
mkdir -p "$LOG"
VERSION=0.1.0
ROCK=build/forkpool-$VERSION-1.src.rock

. tools/check-lib.sh  # check NAME COMMAND...

# Map with the forkpool installed in tree $1 (and only there: no in-tree
# paths), check the exports of its core.so.
works_from_tree() {
  tree=$1
  so=$tree/lib/lua/5.1/forkpool/core.so
  [ -f "$so" ] || { echo "no $so"; return 1; }
  LUA_PATH="$tree/share/lua/5.1/?.lua;$tree/share/lua/5.1/?/init.lua" \
  LUA_CPATH="$tree/lib/lua/5.1/?.so" \
  luajit -e '
    local fp = require "forkpool"
    assert(fp._VERSION == "forkpool '"$VERSION"'", fp._VERSION)
    local core = require "forkpool.core"
    assert(core._set_worker_fault == nil, "the installed rock carries test hooks")
    local p = fp.new{ n_jobs = 2 }
    local r = p:map(function(x) return x * 2 end, { 1, 2, 3 })
    p:close()
    assert(r[3] == 6 and r.n == 3)
    print("installed forkpool maps: " .. package.searchpath("forkpool", package.path))' || return 1
  exports=$(nm -D --defined-only "$so" | awk '{print $3}')
  [ "$exports" = "luaopen_forkpool_core" ] || { echo "$so exports: $exports"; return 1; }
  works_command "$tree"
}

# The tree's bin/forkpool (LuaRocks' wrapper around bin/forkpool) runs
# `forkpool map` with the tree's modules, from a directory that is not the
# checkout and with no Lua paths in the environment.
works_command() {
  tree=$1
  [ -x "$tree/bin/forkpool" ] || { echo "no $tree/bin/forkpool"; return 1; }
  work=$SCRATCH/command-$$-$(date +%s%N)
  mkdir -p "$work"
  printf 'return function(r) return { r.i, r.i * r.i } end\n' >"$work/sq.lua"
  printf '{"i":1}\n{"i":2}\n{"i":3}\n' >"$work/in.jsonl"
  got=$(cd "$work" && env -u LUA_PATH -u LUA_CPATH "$tree/bin/forkpool" map -j 2 sq.lua in.jsonl) || {
    echo "$tree/bin/forkpool map failed"; return 1; }
  [ "$got" = "$(printf '[1,1]\n[2,4]\n[3,9]')" ] || { echo "$tree/bin/forkpool map wrote: $got"; return 1; }
  version=$(env -u LUA_PATH -u LUA_CPATH "$tree/bin/forkpool" --version) &&
    [ "$version" = "forkpool $VERSION" ] || { echo "--version: $version"; return 1; }
  echo "installed command maps: $tree/bin/forkpool"
}

lint() { luarocks lint forkpool-$VERSION-1.rockspec && luarocks lint forkpool-scm-1.rockspec; }
check lint lint

# The two rockspecs differ only in version and source.
same_build() {
  A=forkpool-$VERSION-1.rockspec B=forkpool-scm-1.rockspec luajit -e '
    local function load(p) local env = {}; local f = assert(loadfile(p)); setfenv(f, env)(); return env end
    local a, b = load(os.getenv("A")), load(os.getenv("B"))
    local function same(x, y, path)
      if type(x) ~= type(y) then error(path .. " differs") end
      if type(x) ~= "table" then if x ~= y then error(path .. " differs") end return end
      for k, v in pairs(x) do same(v, y[k], path .. "." .. tostring(k)) end
      for k in pairs(y) do if x[k] == nil then error(path .. "." .. tostring(k) .. " differs") end end
    end
    for _, k in ipairs{ "rockspec_format", "package", "description", "supported_platforms", "dependencies", "build" } do
      same(a[k], b[k], k)
    end
    print("rockspecs agree")'
}
check rockspecs-agree same_build

git status --porcelain --ignored --untracked-files=all | grep -v ' build/' | sort >"$SCRATCH/status.before"

check make-rock make -s rock

# 3 + 4, system scope: the README's lines, as root, in a scratch sysconfdir.
readme_system() {
  sys=$SCRATCH/etc-luarocks; mkdir -p "$sys"
  cp /etc/luarocks/* "$sys/" 2>/dev/null || true
  export LUAROCKS_SYSCONFDIR=$sys HOME=$SCRATCH/home-sys
  mkdir -p "$HOME"
  # --- the README's Install lines, verbatim but for the scratch tree ---
  luarocks config --scope system lua_version 5.1 &&
  luarocks config --scope system lua_interpreter luajit &&
  luarocks config --scope system variables.LUA_INCDIR /usr/include/luajit-2.1 &&
  [ ! -e "$HOME/.luarocks" ] && grep -q luajit "$sys/config-5.1.lua" &&
  luarocks install "$ROCK" --tree="$SCRATCH/tree-file" &&
  works_from_tree "$SCRATCH/tree-file" &&
  mkdir -p "$SCRATCH/server" && cp "$ROCK" "$SCRATCH/server/" &&
  luarocks-admin make_manifest "$SCRATCH/server" &&
  luarocks install forkpool --server="$SCRATCH/server" --tree="$SCRATCH/tree-server" &&
  works_from_tree "$SCRATCH/tree-server"
}
check install-src-rock-and-server readme_system

# 3, user scope (--local), a scratch HOME, the system config untouched.
readme_user() {
  export HOME=$SCRATCH/home-user
  mkdir -p "$HOME"
  luarocks --local config lua_version 5.1 &&
  luarocks --local config lua_interpreter luajit &&
  luarocks --local config variables.LUA_INCDIR /usr/include/luajit-2.1 &&
  luarocks --local install "$ROCK" &&
  works_from_tree "$HOME/.luarocks"
}
check install-local readme_user

# 5: make install, no configuration at all (scratch HOME, LuaRocks' defaults).
make_install() {
  export HOME=$SCRATCH/home-make
  mkdir -p "$HOME"
  tools/luarocks-luajit.sh make forkpool-scm-1.rockspec --tree="$SCRATCH/tree-make" &&
  works_from_tree "$SCRATCH/tree-make"
}
check make-install make_install

clean_checkout() {
  git status --porcelain --ignored --untracked-files=all | grep -v ' build/' | sort >"$SCRATCH/status.after"
  diff "$SCRATCH/status.before" "$SCRATCH/status.after" && echo "nothing left outside build/"
}
check checkout-clean clean_checkout

check symbols make -s check-symbols

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
