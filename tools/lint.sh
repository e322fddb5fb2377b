#!/bin/sh
# Lints the Lua sources with luacheck (Debian's lua-check) under the
# project's .luacheckrc.  Ends with one line "N passed, N failed"; exit
# status 0 only when luacheck reported no warning and no error.
set -eu
cd "$(dirname "$0")/.."
if ! command -v luacheck >/dev/null 2>&1; then
  echo "luacheck not found (apt-get install lua-check)"
  echo "0 passed, 1 failed"
  exit 1
fi
if out=$(luacheck --config .luacheckrc --no-color lua spec bench examples 2>&1); then
  echo "1 passed, 0 failed"
else
  printf '%s\n' "$out"
  echo "0 passed, 1 failed"
  exit 1
fi
