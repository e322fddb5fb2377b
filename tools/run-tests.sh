#!/bin/sh
# Runs every test suite and ends with one line "N passed, N failed" that adds
# them all up: C unit tests (plain and under ASan+UBSan), busted specs (plain
# and against an ASan build of the engine), the decoder fuzz run, a smoke run
# of the benchmarks (QUICK: small sizes, results verified, no timing
# targets), and the packaging check (luarocks make into a scratch tree, then
# require it).
# Exit status 0 only when nothing failed.
set -u
cd "$(dirname "$0")/.."
LOG=build/test-logs
mkdir -p "$LOG"
PASSED=0
FAILED=0
FUZZ_SECONDS=${FUZZ_SECONDS:-60}

add() { PASSED=$((PASSED + $1)); FAILED=$((FAILED + $2)); }

# Sum the "N passed, N failed" lines a C test log printed; a test binary
# that crashed before its summary counts as one failure.
count_c() {
  log=$1 rc=$2
  p=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | awk '{s+=$1} END {print s+0}')
  f=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | awk '{s+=$3} END {print s+0}')
  n=$(grep -cE '^[0-9]+ passed, [0-9]+ failed$' "$log")
  exp=$(grep -c '^== ' "$log")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  if [ "$n" -lt "$exp" ] && [ "$f" -eq 0 ]; then f=1; fi
  add "$p" "$f"
}

# busted's summary: "N successes / N failures / N errors / N pending"
count_busted() {
  log=$1 rc=$2
  line=$(grep -E '^[0-9]+ successes? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' "$log" | tail -n 1)
  if [ -z "$line" ]; then add 0 1; return; fi
  s=$(echo "$line" | awk '{print $1}')
  f=$(echo "$line" | awk '{print $4 + $7}')
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  add "$s" "$f"
}

step() { echo; echo "==== $*"; }

step "build (warnings are errors)"
if make -s all >"$LOG/build.log" 2>&1; then add 1 0; else cat "$LOG/build.log"; add 0 1; fi

step "C unit tests"
make -s ctest >"$LOG/ctest.log" 2>&1; rc=$?
cat "$LOG/ctest.log"; count_c "$LOG/ctest.log" $rc

step "C unit tests under AddressSanitizer + UndefinedBehaviorSanitizer"
make -s ctest-san >"$LOG/ctest-san.log" 2>&1; rc=$?
cat "$LOG/ctest-san.log"; count_c "$LOG/ctest-san.log" $rc

step "busted specs"
busted --lua=luajit -o utfTerminal spec >"$LOG/busted.log" 2>&1; rc=$?
cat "$LOG/busted.log"; count_busted "$LOG/busted.log" $rc

step "busted specs against the AddressSanitizer build"
make -s asan >"$LOG/busted-asan.log" 2>&1; rc=$?
tail -n 40 "$LOG/busted-asan.log"; count_busted "$LOG/busted-asan.log" $rc

step "decoder fuzzing (${FUZZ_SECONDS}s)"
if make -s fuzz FUZZ_SECONDS="$FUZZ_SECONDS" >"$LOG/fuzz.log" 2>&1; then
  tail -n 3 "$LOG/fuzz.log"; add 1 0
else
  tail -n 40 "$LOG/fuzz.log"; add 0 1
fi

step "benchmarks, smoke run (make bench QUICK=1: each workload once, small; results verified)"
if make -s bench QUICK=1 >"$LOG/bench-quick.log" 2>&1; then
  tail -n 3 "$LOG/bench-quick.log"; add 1 0
else
  tail -n 40 "$LOG/bench-quick.log"; add 0 1
fi

step "packaging: luarocks make into a scratch tree, then require it"
TREE=$(mktemp -d)
if luarocks make --tree="$TREE" forkpool-scm-1.rockspec LUA_INCDIR=/usr/include/luajit-2.1 \
     >"$LOG/luarocks.log" 2>&1 &&
   LUA_PATH="$TREE/share/lua/5.1/?.lua;$TREE/share/lua/5.1/?/init.lua;;" \
   LUA_CPATH="$TREE/lib/lua/5.1/?.so;;" \
   luajit -e 'local fp = require "forkpool"; local p = fp.new{n_jobs = 2}
              local r = p:map(function(x) return x * 2 end, {1, 2, 3}); p:close()
              assert(r[3] == 6 and r.n == 3)
              assert(package.loaded["forkpool.core"]); print("installed rock works")' >>"$LOG/luarocks.log" 2>&1
then tail -n 1 "$LOG/luarocks.log"; add 1 0
else cat "$LOG/luarocks.log"; add 0 1
fi
rm -rf "$TREE"

echo
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
