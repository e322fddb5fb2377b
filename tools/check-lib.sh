# tools/check-lib.sh: sourced by the test scripts that count checks
# (tools/check-rock.sh, tools/test-host.sh).  They set LOG, PASSED and
# FAILED first and print "$PASSED passed, $FAILED failed" last.

check() {  # check NAME COMMAND...: run, log, count
  name=$1; shift
  if "$@" >"$LOG/$name.log" 2>&1; then
    echo "ok   $name"; PASSED=$((PASSED + 1))
  else
    echo "FAIL $name"; sed 's/^/    /' "$LOG/$name.log" | tail -n 30; FAILED=$((FAILED + 1))
  fi
}
