#!/bin/sh
# forkpool's one entry point for a fresh Debian 12 machine.
#
#   ./dev.sh demo    install what is missing, build, run the parallel-map demo
#   ./dev.sh test    install what is missing, build, run every test suite
#   ./dev.sh deps    only install the Debian packages that are missing
#
# Packages come from Debian only (apt-get); nothing is downloaded otherwise.
set -eu
cd "$(dirname "$0")"

PKGS="make gcc luajit libluajit-5.1-dev lua-cjson lua-busted luarocks pkg-config git"
# libluajit-5.1-dev also brings libluajit-5.1.a and luajit.pc, which `make
# host` and tools/test-host.sh use (a host linking LuaJIT statically;
# pkg-config); gcc brings binutils (ld -r, objcopy, ar for `make lib`) and
# libasan.
# lua5.1 .. lua5.4: spec/install_spec.lua checks that PUC Lua gets a clear
# refusal; zip/unzip: the src rock; lua-check: luacheck; parallel and
# openssh-server (which brings the client and ssh-keygen):
# tools/test-distributed.sh runs `forkpool map` under GNU parallel, locally
# and over ssh to two sshd it starts on loopback addresses.
TEST_PKGS="clang libclang-rt-14-dev procps coreutils util-linux binutils zip unzip lua-check lua5.1 lua5.2 lua5.3 lua5.4 parallel openssh-server"

missing() {
  out=""
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out="$out $p"
  done
  echo "$out"
}

deps() {
  need=$(missing "$@")
  [ -z "$need" ] && return 0
  echo "dev.sh: installing Debian packages:$need" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
}

case "${1:-}" in
  deps) deps $PKGS $TEST_PKGS ;;
  demo) deps $PKGS; make -s all; make -s demo ;;
  test) deps $PKGS $TEST_PKGS; exec tools/run-tests.sh ;;
  *) echo "usage: ./dev.sh demo | test | deps" >&2; exit 2 ;;
esac
