#!/bin/sh
# The C API and packaging for hosts that embed LuaJIT (README "Embedding"):
#   1. make lib host builds (warnings are errors), and check-lib-symbols:
#      the libraries export luaopen_forkpool, luaopen_forkpool_core and
#      forkpool_* only, have no test hooks, libforkpool.so has its SONAME
#      and does not link LuaJIT;
#   2. tests/host/test_embed.c (forkpool_preload, luaopen_forkpool), plain
#      and under ASan + UBSan -- its own tests are added to the counts;
#   3. examples/host/host.c run every way it is built: shared libluajit +
#      require through LUA_PATH / LUA_CPATH; static libluajit-5.1.a with
#      -Wl,-E; forkpool linked in (forkpool_preload), copied alone into an
#      empty directory and run with an empty environment; the same under
#      AddressSanitizer (leak checking on); a C++ host (tests/host/cxx_host.cpp);
#   4. static LuaJIT *without* -Wl,-E fails to load forkpool.core with
#      "undefined symbol", as the README says;
#   5. make install-lib into a scratch PREFIX (and with DESTDIR): the tree's
#      files, then the host compiled with `pkg-config --cflags --libs
#      forkpool` (shared libforkpool) and against the installed
#      libforkpool.a, each run.
# After every run of a host: exit status 0, its last line "host: ok", and
# no process of that binary left (a worker outliving its host is a failure).
# Prints one line per check and ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PASSED=0 FAILED=0
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
LOG=build/test-logs/host
mkdir -p "$LOG"
CC=${CC:-gcc}
LUA_INC=$(pkg-config --variable=includedir luajit 2>/dev/null || echo /usr/include/luajit-2.1)
LUAJIT_LIBDIR=$(pkg-config --variable=libdir luajit 2>/dev/null || echo /usr/lib/x86_64-linux-gnu)
WARN="-std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror"

. tools/check-lib.sh  # check NAME COMMAND...

# No process named like the binary may be left (workers keep the host's
# name: they are forks, not execs).  Workers that lost their parent die
# within milliseconds (their parent-death signal, the lifeline), so look
# right away.
no_leftovers() {
  comm=$(basename "$1" | cut -c1-15)
  left=$(pgrep -x "$comm" || true)
  [ -z "$left" ] || { echo "processes of $comm left: $left"; ps -o pid,ppid,stat,cmd -p "$(echo $left | tr ' ' ,)"; return 1; }
}

# run_host BINARY [ENV...]: run with a deadline, show its output, require
# status 0, "host: ok" last and no leftover process.
run_host() {
  bin=$1; shift
  out=$SCRATCH/out.$$
  env "$@" timeout 120 "$bin" >"$out" 2>&1; rc=$?
  cat "$out"
  [ "$rc" -eq 0 ] || { echo "exit status $rc"; return 1; }
  [ "$(tail -n 1 "$out")" = "host: ok" ] || { echo "last line is not 'host: ok'"; return 1; }
  ! grep -q 'Sanitizer' "$out" || { echo "sanitizer report"; return 1; }
  no_leftovers "$bin"
}

check build make -s lib host
check lib-symbols make -s check-lib-symbols

# 2. the C API's tests, plain and under ASan + UBSan (leak checking on):
# their counts are added to ours.
for t in test_embed test_embed-asan; do
  env -i PATH=/usr/bin:/bin timeout 120 "build/host/$t" >"$LOG/$t.log" 2>&1; rc=$?
  sed 's/^/    /' "$LOG/$t.log"
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$LOG/$t.log" | tail -n 1)
  if [ -z "$line" ]; then FAILED=$((FAILED + 1)); echo "FAIL $t (no summary, status $rc)"
  else
    p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $3}')
    [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && f=1
    grep -q 'Sanitizer' "$LOG/$t.log" && [ "$f" -eq 0 ] && f=1
    PASSED=$((PASSED + p)); FAILED=$((FAILED + f))
    echo "$([ "$f" -eq 0 ] && echo "ok  " || echo FAIL) $t ($p passed, $f failed)"
  fi
  no_leftovers "build/host/$t" || FAILED=$((FAILED + 1))
done

# 3. the example host, every way.
check host-dynamic run_host build/host/host-dynamic \
  LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua" LUA_CPATH="$ROOT/build/?.so"
check host-static-luajit run_host build/host/host-static-lj \
  LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua" LUA_CPATH="$ROOT/build/?.so"
alone() {  # the binary alone in an empty directory, an empty environment
  mkdir -p "$SCRATCH/alone" && cp "$1" "$SCRATCH/alone/" &&
    (cd "$SCRATCH/alone" && run_host "./$(basename "$1")" -i PATH=/usr/bin:/bin) &&
    rm -rf "$SCRATCH/alone"
}
check host-preload alone build/host/host-preload
check host-preload-asan alone build/host/host-asan
# (env -i drops ASAN_OPTIONS: LeakSanitizer is on by default)

# 3b. a C++ host (clang++ comes with Debian's clang, which dev.sh installs):
# include/forkpool.h included before lua.hpp must still declare lua_* as C.
cxx_host() {
  for cxx in ${CXX:-} clang++ g++ c++; do command -v "$cxx" >/dev/null 2>&1 && break; cxx=; done
  [ -n "$cxx" ] || { echo "no C++ compiler (clang++, g++)"; return 1; }
  "$cxx" -std=c++11 -O2 -Wall -Wextra -Werror -Iinclude -I"$LUA_INC" -o "$SCRATCH/cxx_host" \
    tests/host/cxx_host.cpp build/libforkpool.a -lluajit-5.1 -lpthread -lm -ldl || return 1
  env -i PATH=/usr/bin:/bin timeout 60 "$SCRATCH/cxx_host" || return 1
  no_leftovers "$SCRATCH/cxx_host"
}
check cxx-host cxx_host

# 4. without -Wl,-E, core.so cannot find the Lua API in a static host.
no_export() {
  $CC $WARN -I"$LUA_INC" -o "$SCRATCH/host-noexport" examples/host/host.c \
    "$LUAJIT_LIBDIR/libluajit-5.1.a" -lm -ldl || return 1
  env LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua" LUA_CPATH="$ROOT/build/?.so" \
    timeout 60 "$SCRATCH/host-noexport" >"$SCRATCH/noexport.out" 2>&1 && {
      cat "$SCRATCH/noexport.out"; echo "a static host without -Wl,-E loaded forkpool.core"; return 1; }
  cat "$SCRATCH/noexport.out"
  grep -q 'undefined symbol: lua' "$SCRATCH/noexport.out"
}
check static-luajit-without-E-fails no_export

# 5. make install-lib, then hosts built against the installed tree.
install_tree() {
  prefix=$SCRATCH/prefix
  make -s install-lib PREFIX="$prefix" || return 1
  for f in include/forkpool.h lib/libforkpool.a lib/libforkpool.so lib/libforkpool.so.0 \
           lib/libforkpool.so.0.1.0 lib/pkgconfig/forkpool.pc; do
    [ -e "$prefix/$f" ] || { echo "missing $prefix/$f"; return 1; }
  done
  find "$prefix" | sed "s|^$SCRATCH/||"
  v=$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --modversion forkpool) &&
    [ "$v" = 0.1.0 ] || { echo "pkg-config --modversion forkpool: $v"; return 1; }
  # DESTDIR: files under it, the .pc names the real prefix.
  make -s install-lib PREFIX=/opt/fp DESTDIR="$SCRATCH/dest" || return 1
  grep -qx 'prefix=/opt/fp' "$SCRATCH/dest/opt/fp/lib/pkgconfig/forkpool.pc" &&
    [ -f "$SCRATCH/dest/opt/fp/lib/libforkpool.a" ] || { echo "DESTDIR install wrong"; return 1; }
}
check install-lib install_tree

pkgconfig_shared() {
  export PKG_CONFIG_PATH="$SCRATCH/prefix/lib/pkgconfig"
  flags=$(pkg-config --cflags --libs forkpool) || return 1
  echo "pkg-config --cflags --libs forkpool: $flags"
  # shellcheck disable=SC2086
  $CC $WARN -DHOST_PRELOAD -o "$SCRATCH/host-pc" examples/host/host.c $flags \
    -Wl,-rpath,"$SCRATCH/prefix/lib" || return 1
  objdump -p "$SCRATCH/host-pc" | grep -q 'NEEDED.*libforkpool.so.0' || { echo "not linked to libforkpool.so.0"; return 1; }
  (cd "$SCRATCH" && run_host ./host-pc -i PATH=/usr/bin:/bin)
}
check host-pkg-config-shared pkgconfig_shared

pkgconfig_static() {
  export PKG_CONFIG_PATH="$SCRATCH/prefix/lib/pkgconfig"
  libdir=$(pkg-config --variable=libdir forkpool) || return 1
  # shellcheck disable=SC2086
  $CC $WARN -DHOST_PRELOAD $(pkg-config --cflags forkpool) -o "$SCRATCH/host-pc-static" \
    examples/host/host.c "$libdir/libforkpool.a" $(pkg-config --libs luajit) -lpthread -lm -ldl || return 1
  ! objdump -p "$SCRATCH/host-pc-static" | grep -q 'NEEDED.*libforkpool' || { echo "linked to libforkpool.so"; return 1; }
  (cd "$SCRATCH" && run_host ./host-pc-static -i PATH=/usr/bin:/bin)
}
check host-pkg-config-static pkgconfig_static

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
