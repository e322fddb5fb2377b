#!/bin/sh
# Runs every test suite and ends with one line "N passed, N failed" that adds
# them all up: C unit tests (plain and under ASan+UBSan), busted specs (plain
# and against an ASan build of the engine), the decoder fuzz run, a smoke run
# of the benchmarks (QUICK: small sizes, results verified, no timing
# targets), the examples, the distributed runs of `forkpool map`
# (tools/test-distributed.sh: GNU parallel locally and over ssh to two
# loopback sshd, --shard job arrays), luacheck, and the packaging checks
# (tools/check-rock.sh: the src rock installed by file and by name from a
# local rocks server, the README's luarocks config lines, make install), and
# the C API for hosts (tools/test-host.sh: make lib, the example host built
# against shared and static LuaJIT and with forkpool linked in, under ASan,
# make install-lib + pkg-config).
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

step "benchmarks, records series smoke run (make bench-series QUICK=1: 6 maps of 500 records on each pool; results verified)"
if make -s bench-series QUICK=1 >"$LOG/bench-series.log" 2>&1; then
  tail -n 3 "$LOG/bench-series.log"; add 1 0
else
  tail -n 40 "$LOG/bench-series.log"; add 0 1
fi

# A script that prints one "N passed, N failed" line of its own.
run_counted() {
  name=$1; shift
  "$@" >"$LOG/$name.log" 2>&1; rc=$?
  cat "$LOG/$name.log"
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$LOG/$name.log" | tail -n 1)
  if [ -z "$line" ]; then add 0 1; return; fi
  p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $3}')
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  add "$p" "$f"
}

step "examples, smoke run (each one's output checked)"
run_counted examples tools/run-examples.sh

step "distributed: forkpool map under GNU parallel (one machine; two ssh hosts, one lost mid-run), --shard job arrays"
run_counted distributed tools/test-distributed.sh

step "lint (luacheck over lua/ spec/ bench/ examples/)"
run_counted lint tools/lint.sh

step "packaging: lint both rockspecs, make rock, install it (file, local server, --local, make install), exports"
run_counted rock tools/check-rock.sh

step "embedding: make lib, the example host four ways (ASan included), install-lib + pkg-config"
run_counted host tools/test-host.sh

echo
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
