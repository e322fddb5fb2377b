#!/bin/sh
# End-to-end tests of `forkpool map` under the distributed engines that
# docs/distributed.md describes (issue 12, "Beyond one machine"):
#   1. GNU parallel on one machine: `parallel --pipe --keep-order --block 10M
#      forkpool map s.lua` writes the same output as one `forkpool map s.lua`;
#   2. GNU parallel over ssh: two sshd on their own loopback addresses
#      (127.0.0.2 and 127.0.0.3, a free port each, a temporary host key and
#      authorized key) play two hosts; `parallel --pipe --sshlogin A,B
#      --keep-order` equals the single run; then host A is lost mid-run (its
#      sshd and every session it spawned killed): with --retries the run still
#      ends complete, and without retries `--joblog` + `--results` +
#      `--resume-failed` on the surviving host re-runs exactly the failed
#      blocks, and the per-block results, concatenated in order, equal the
#      single run (nothing missing, nothing duplicated);
#   3. job arrays: `--shard K/3` for K = 1..3 (also with K taken from
#      SLURM_ARRAY_TASK_ID and from JOB_COMPLETION_INDEX + 1, as the sbatch
#      script and the Kubernetes Job in docs/distributed.md do; neither
#      scheduler runs here) gives disjoint outputs whose union is the single
#      run, shard K holding exactly the input lines n with (n - 1) % 3 == K - 1.
# Outputs are compared byte for byte: forkpool map writes the same bytes for
# the same records in every process (object keys sorted, numbers exact), so
# a run cut into blocks, hosts or shards must equal the single run exactly.
# Takes about a minute on 2 cores (more where the login shell is slow to
# start: every ssh job starts one).
# Every command runs under `timeout`; every process started here (sshd, the
# sessions they spawn, parallel) and every temporary file is removed on exit,
# also when a check fails or the script is interrupted.  Builds nothing: run
# `make -s all` first.  Prints "ok   NAME" or "FAIL NAME" (with why and the
# output) per check, then "N passed, M failed"; exits non-zero when any failed.
#
#   tools/test-distributed.sh                   # from anywhere in the checkout
#   FORKPOOL=/path/to/forkpool tools/test-distributed.sh
#   FP_DIST_LINES=100000 tools/test-distributed.sh   # a smaller input
#   FP_DIST_SSH_LINES=N     # lines for the ssh runs (default FP_DIST_LINES / 5)
#
# Needs GNU parallel, openssh-server and openssh-client, procps (./dev.sh deps
# installs them).  As root it creates /run/sshd (sshd's privilege-separation
# directory) when it is missing, and removes it again afterwards.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
FORKPOOL=${FORKPOOL:-$ROOT/bin/forkpool}
LINES=${FP_DIST_LINES:-300000}
SSH_LINES=${FP_DIST_SSH_LINES:-$((LINES / 5))}
SSHD=${SSHD:-/usr/sbin/sshd}
T_RUN=180      # seconds allowed for one forkpool or parallel run
T_SSHD=900     # upper bound on an sshd's life (they are killed long before)

PASSED=0
FAILED=0
WORK=$(mktemp -d "${TMPDIR:-/tmp}/forkpool-distributed.XXXXXX")
SSHD_PIDS=""        # the `timeout` processes that run each sshd, until killed
BG_PIDS=""          # background runs, until reaped (then forgotten: their
                    # ids may be reused by other processes)
MADE_PRIVSEP=""

# ---- process trees ---------------------------------------------------------

# descendants PID: every live descendant of PID, one per line, sorted.
descendants() {
  ps -eo pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END {
      for (p in parent) {
        q = p
        while ((q in parent) && q != root && q > 1) q = parent[q]
        if (q == root && p != root) print p
      }
    }' | sort -n
}

# kill_tree PID: stop PID, then stop its descendants until no new one
# appears (a stopped process cannot fork), then SIGKILL them all.
kill_tree() {
  kt_root=$1
  kill -STOP "$kt_root" 2>/dev/null || return 0
  kt_seen="" kt_round=0
  while [ "$kt_round" -lt 50 ]; do
    kt_now=$(descendants "$kt_root")
    [ -n "$kt_now" ] && kill -STOP $kt_now 2>/dev/null
    [ "$kt_now" = "$kt_seen" ] && break
    kt_seen=$kt_now kt_round=$((kt_round + 1))
  done
  kill -KILL "$kt_root" $kt_seen 2>/dev/null
  wait "$kt_root" 2>/dev/null
  return 0
}

# forget PID: PID has been reaped; cleanup must not touch that id again
forget() {
  fg_keep=""
  for fg_p in $BG_PIDS; do [ "$fg_p" = "$1" ] || fg_keep="$fg_keep $fg_p"; done
  BG_PIDS=$fg_keep fg_keep=""
  for fg_p in $SSHD_PIDS; do [ "$fg_p" = "$1" ] || fg_keep="$fg_keep $fg_p"; done
  SSHD_PIDS=$fg_keep
}

# reap PID: wait for the background process PID, forget it once it is gone
# (not when a signal interrupted the wait); returns its exit status
reap() {
  wait "$1"
  rp_rc=$?
  kill -0 "$1" 2>/dev/null || forget "$1"
  return "$rp_rc"
}

cleanup() {
  for p in $BG_PIDS $SSHD_PIDS; do kill_tree "$p"; done
  rm -rf "$WORK"
  [ -n "$MADE_PRIVSEP" ] && rmdir /run/sshd 2>/dev/null
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- reporting -------------------------------------------------------------

pass() { echo "ok   $1"; PASSED=$((PASSED + 1)); }

# fail NAME WHY [FILE...]: the check failed; show why and the files given
fail() {
  name=$1 why=$2
  shift 2
  echo "FAIL $name"
  echo "  why: $why"
  for f in "$@"; do
    [ -f "$f" ] || continue
    echo "  $(basename "$f") (last 20 lines):"
    tail -n 20 "$f" | cut -c1-300 | sed 's/^/    /'
  done
  FAILED=$((FAILED + 1))
}

finish() {
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
  exit $?
}

# same A B: files A and B are byte-identical (a short diff on stdout if not)
same() {
  cmp -s "$1" "$2" && return 0
  echo "  $1 ($(wc -l <"$1") lines) differs from $2 ($(wc -l <"$2") lines):"
  diff "$1" "$2" | head -n 6 | cut -c1-200 | sed 's/^/    /'
  return 1
}

# wait_for SECONDS CMD...: poll CMD every 50 ms until it succeeds; 1 on timeout
wait_for() {
  wf_left=$(($1 * 20))
  shift
  while [ "$wf_left" -gt 0 ]; do
    "$@" && return 0
    sleep 0.05
    wf_left=$((wf_left - 1))
  done
  return 1
}

# bounded IN OUT ERR SECONDS CMD...: run CMD <IN >OUT 2>ERR under timeout, in
# the background (recorded for cleanup), and wait for it: a wait the traps
# can interrupt, so an interrupted test stops at once.  Returns CMD's status
# (124 on timeout).
bounded() {
  b_in=$1 b_out=$2 b_err=$3 b_secs=$4
  shift 4
  timeout -k 5 "$b_secs" "$@" <"$b_in" >"$b_out" 2>"$b_err" &
  b_pid=$!
  BG_PIDS="$BG_PIDS $b_pid"
  reap "$b_pid"
}

# ---- prerequisites -----------------------------------------------------------

missing=""
for c in parallel ssh ssh-keygen ps timeout awk; do
  command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
done
[ -x "$SSHD" ] || missing="$missing $SSHD"
if [ -n "$missing" ]; then
  fail prerequisites "not installed:$missing (./dev.sh deps installs parallel, openssh-server)"
  finish
fi
if [ ! -x "$FORKPOOL" ]; then
  fail prerequisites "$FORKPOOL is missing or not executable"
  finish
fi

# GNU parallel keeps its state in $PARALLEL_HOME and its temporary files in
# $TMPDIR: both go to the scratch directory.
PARALLEL_HOME=$WORK/parallel-home
TMPDIR=$WORK/tmp
export PARALLEL_HOME TMPDIR
mkdir -p "$PARALLEL_HOME" "$TMPDIR"

# ---- the input, the transform, the single runs ------------------------------

# Line n of the input is the record with "i": n, so a transform that keeps
# "i" shows which input line each output line came from.  Some names carry
# non-ASCII UTF-8.  About 80 bytes a line: the default 300,000 lines make
# ~24 MB, several blocks of 10M (test 1).  The ssh tests use the first
# SSH_LINES lines, cut into blocks of 512k: about ten jobs.
IN=$WORK/input.jsonl
awk -v n="$LINES" 'BEGIN {
  split("anna bertil cécile dmitrij émile françois gösta", names, " ")
  for (i = 1; i <= n; i++)
    printf "{\"i\":%d,\"name\":\"%s%d\",\"x\":%d,\"price\":%.2f,\"tags\":[\"t%d\",\"u\"]}\n",
      i, names[i % 7 + 1], i % 977, (i * 7) % 1000, (i % 1000) / 8, i % 5
}' >"$IN"
SMALL=$WORK/small.jsonl
head -n "$SSH_LINES" "$IN" >"$SMALL"

# The transform: computes a field, upper-cases one, drops every 10th record
# (a filter), keeps "i".  A table script: its worker_init gets the --set
# values, and `--set spin=US` makes each record cost US microseconds of CPU
# (same output), which the ssh runs use so that a host can be lost while
# forkpool map runs there.
S=$WORK/s.lua
cat >"$S" <<'EOF'
local clock = os.clock
return {
  worker_init = function(config) return { spin = (tonumber(config.spin) or 0) / 1e6 } end,
  map = function(state, r)
    if state.spin > 0 then
      local t = clock() + state.spin
      while clock() < t do end
    end
    if r.i % 10 == 0 then return nil end
    return { i = r.i, name = r.name:upper(), total = r.x * r.price, ntags = #r.tags,
      third = r.price / 3, tags = r.tags, meta = { src = "s/1", odd = r.i % 2 == 1, x = r.x } }
  end,
}
EOF

# jsonlines FILE: every line of FILE is JSON (lua-cjson decodes it)
JSONLINES=$WORK/jsonlines.lua
cat >"$JSONLINES" <<'EOF'
local decode = require("cjson").decode
for line in io.lines() do decode(line) end
EOF
jsonlines() { bounded "$1" /dev/null "$1.jsonlines.err" "$T_RUN" luajit "$JSONLINES"; }

# same_records OUT REF: OUT is byte for byte the single run's output REF
same_records() { same "$1" "$2"; }

# single_run NAME INPUT LINES: the reference, one `forkpool map s.lua INPUT`
single_run() {
  sr_out=$WORK/$1.out
  if ! bounded /dev/null "$sr_out" "$WORK/$1.err" "$T_RUN" "$FORKPOOL" map "$S" "$2"; then
    fail "$1" "forkpool map s.lua $(basename "$2") failed" "$WORK/$1.err"
    finish
  fi
  sr_want=$(($3 - $3 / 10)) sr_got=$(wc -l <"$sr_out" | tr -d ' ')
  if [ "$sr_got" -ne "$sr_want" ]; then
    fail "$1" "expected $sr_want output lines, got $sr_got" "$WORK/$1.err"
    finish
  elif ! head -n 1 "$sr_out" | grep -q '"i":1[,}]' || ! jsonlines "$sr_out"; then
    fail "$1" "the first output line is not record 1, or the output is not JSON lines" "$sr_out"
    finish
  fi
  pass "$1 ($3 lines in, $sr_got out)"
}
single_run single "$IN" "$LINES"
single_run single-small "$SMALL" "$SSH_LINES"
SINGLE=$WORK/single.out
SINGLE_S=$WORK/single-small.out

# jobs_in JOBLOG: the number of jobs a joblog lists
jobs_in() { tail -n +2 "$1" | wc -l | tr -d ' '; }

# ---- 1. GNU parallel, one machine -------------------------------------------

P1=$WORK/p1
bounded "$IN" "$P1.out" "$P1.err" "$T_RUN" \
  parallel --pipe --keep-order --block 10M --joblog "$P1.log" "$FORKPOOL" map "$S"
rc=$?
if [ "$rc" -ne 0 ]; then
  fail parallel-local "parallel exited $rc" "$P1.err" "$P1.log"
elif [ "$(jobs_in "$P1.log")" -lt 2 ]; then
  fail parallel-local "only $(jobs_in "$P1.log") job: the input is too small to test blocks" "$P1.log"
elif ! same_records "$P1.out" "$SINGLE"; then
  fail parallel-local "the output is not the single run's" "$P1.err"
else
  pass "parallel-local (--pipe --keep-order --block 10M: $(jobs_in "$P1.log") jobs, output = single run)"
fi

# --pipe-part: parallel cuts a seekable file itself, without copying the
# blocks through its own process (much faster than --pipe for a file).
P1B=$WORK/p1b
bounded /dev/null "$P1B.out" "$P1B.err" "$T_RUN" \
  parallel --pipe-part -a "$IN" --keep-order --block 4M --joblog "$P1B.log" "$FORKPOOL" map "$S"
rc=$?
if [ "$rc" -ne 0 ]; then
  fail parallel-local-pipe-part "parallel exited $rc" "$P1B.err" "$P1B.log"
elif [ "$(jobs_in "$P1B.log")" -lt 2 ]; then
  fail parallel-local-pipe-part "only $(jobs_in "$P1B.log") job" "$P1B.log"
elif ! same_records "$P1B.out" "$SINGLE"; then
  fail parallel-local-pipe-part "the output is not the single run's" "$P1B.err"
else
  pass "parallel-local-pipe-part (--pipe-part -a FILE --keep-order --block 4M: $(jobs_in "$P1B.log") jobs, output = single run)"
fi

# ---- 2. GNU parallel over ssh, two hosts ------------------------------------

# Keys: one host key for both servers, one client key authorized on both.
ssh-keygen -q -t ed25519 -N '' -C forkpool-test-host -f "$WORK/host_key" &&
  ssh-keygen -q -t ed25519 -N '' -C forkpool-test-client -f "$WORK/client_key" &&
  cp "$WORK/client_key.pub" "$WORK/authorized_keys" ||
  { fail ssh-setup "ssh-keygen failed"; finish; }

if [ "$(id -u)" -eq 0 ] && [ ! -d /run/sshd ]; then
  mkdir -m 755 /run/sshd && MADE_PRIVSEP=1
fi

# start_sshd NAME ADDRESS: run an sshd on ADDRESS and a free port (tried
# from a pseudo-random one up); sets NAME_PID (its `timeout` process) and
# NAME_PORT.  Returns 1 when no sshd came up.
start_sshd() {
  ss_name=$1 ss_addr=$2
  ss_port=$((20000 + ($$ * 7) % 30000))
  [ "$ss_addr" = 127.0.0.3 ] && ss_port=$((ss_port + 17))
  ss_try=0
  while [ "$ss_try" -lt 20 ]; do
    ss_conf=$WORK/sshd_$ss_name.conf ss_log=$WORK/sshd_$ss_name.log
    cat >"$ss_conf" <<EOF
ListenAddress $ss_addr:$ss_port
HostKey $WORK/host_key
AuthorizedKeysFile $WORK/authorized_keys
PidFile $WORK/sshd_$ss_name.pid
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PrintMotd no
LogLevel INFO
EOF
    : >"$ss_log"
    timeout -k 5 "$T_SSHD" "$SSHD" -D -f "$ss_conf" -E "$ss_log" &
    ss_pid=$!
    SSHD_PIDS="$SSHD_PIDS $ss_pid"
    if wait_for 10 grep -q "Server listening on $ss_addr port $ss_port" "$ss_log"; then
      eval "${ss_name}_PID=$ss_pid ${ss_name}_PORT=$ss_port"
      return 0
    fi
    kill_tree "$ss_pid"
    forget "$ss_pid"
    grep -q 'Bind to port .* failed\|Cannot bind' "$ss_log" || return 1
    ss_port=$((ss_port + 101)) ss_try=$((ss_try + 1))
  done
  return 1
}

# write_ssh_config: the client side, host names fpA and fpB in a private ssh
# config, no known_hosts, only our key.
SSHCFG=$WORK/ssh_config
write_ssh_config() {
  cat >"$SSHCFG" <<EOF
Host fpA
  HostName 127.0.0.2
  Port $A_PORT
Host fpB
  HostName 127.0.0.3
  Port $B_PORT
Host *
  User $(id -un)
  IdentityFile $WORK/client_key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  GlobalKnownHostsFile /dev/null
  BatchMode yes
  ConnectTimeout 10
  LogLevel ERROR
EOF
}

if ! start_sshd A 127.0.0.2 || ! start_sshd B 127.0.0.3; then
  fail ssh-setup "an sshd did not start" "$WORK/sshd_A.log" "$WORK/sshd_B.log"
  finish
fi
write_ssh_config
SSH="ssh -F $SSHCFG"

if ! timeout -k 5 30 $SSH fpA true >"$WORK/ssh.err" 2>&1 ||
   ! timeout -k 5 30 $SSH fpB true >>"$WORK/ssh.err" 2>&1; then
  fail ssh-setup "cannot log in to the test sshd" "$WORK/ssh.err" "$WORK/sshd_A.log" "$WORK/sshd_B.log"
  finish
fi
pass "ssh-setup (sshd on 127.0.0.2:$A_PORT and 127.0.0.3:$B_PORT, temporary keys)"

# ssh_parallel OUT SSHLOGINS EXTRA...: parallel over ssh on the small input,
# 512k blocks (about 6,000 lines: with SPIN 150 µs a record, forkpool map
# runs about half a second per block on 2 cores), in order.
SPIN=${FP_DIST_SPIN:-150}
# Both "hosts" share this filesystem, so the checkout's absolute paths work.
ssh_parallel() {
  out=$1 logins=$2
  shift 2
  bounded "$SMALL" "$out.out" "$out.err" "$T_RUN" parallel --pipe --block 512k --keep-order \
    --ssh "$SSH" --sshlogin "$logins" "$@" "$FORKPOOL" map --set spin="$SPIN" "$S"
}

# 2a. both hosts up
P2=$WORK/p2
ssh_parallel "$P2" 1/fpA,1/fpB --joblog "$P2.log"
rc=$?
if [ "$rc" -ne 0 ]; then
  fail parallel-ssh "parallel exited $rc" "$P2.err" "$P2.log"
elif ! awk 'NR > 1 && $2 == "fpA" { a = 1 } NR > 1 && $2 == "fpB" { b = 1 } END { exit !(a && b) }' "$P2.log"; then
  fail parallel-ssh "the jobs did not run on both hosts" "$P2.log"
elif ! same_records "$P2.out" "$SINGLE_S"; then
  fail parallel-ssh "the output is not the single run's" "$P2.err"
else
  pass "parallel-ssh (two hosts, $(jobs_in "$P2.log") jobs, output = single run)"
fi

# ssh_parallel_bg OUT SSHLOGINS EXTRA...: ssh_parallel in the background;
# sets bg (its process id); OUT.done appears when the run has ended.
ssh_parallel_bg() {
  rm -f "$1.done"
  ( ssh_parallel "$@"; sp_rc=$?; : >"$1.done"; exit "$sp_rc" ) &
  bg=$!
  BG_PIDS="$BG_PIDS $bg"
}

# lose_host_A_mid_run OUT: once a job of the run OUT has finished on fpA and
# forkpool map runs there again (a luajit process under A's sshd), kill A's
# sshd and all it spawned.  Returns 1 when the run ended before that moment
# came (or at it: then no job was lost).  (Killing a session while the login shell still runs its startup
# files could leave their locks behind, on this one shared filesystem.)
a_busy() {
  awk 'NR > 1 && $2 == "fpA" { f = 1 } END { exit !f }' "$1" 2>/dev/null || return 1
  for ab_p in $(descendants "$A_PID"); do
    case $(cat "/proc/$ab_p/comm" 2>/dev/null) in luajit*) return 0 ;; esac
  done
  return 1
}
busy_or_over() { a_busy "$1.log" || [ -e "$1.done" ]; }
lose_host_A_mid_run() {
  wait_for 120 busy_or_over "$1"
  [ -e "$1.done" ] && return 1
  kill_tree "$A_PID"
  forget "$A_PID"
  [ ! -e "$1.done" ]
}

# restart_A: a fresh sshd for fpA on the same address and port
restart_A() { start_sshd A 127.0.0.2 && write_ssh_config; }

# 2b. host A lost mid-run, --retries: its failed jobs are retried on B and
# the run ends complete, in order, nothing duplicated.  (The joblog lists
# only each job's last attempt.)
P3=$WORK/p3
ssh_parallel_bg "$P3" 1/fpA,1/fpB --retries 3 --joblog "$P3.log"
if ! lose_host_A_mid_run "$P3"; then
  reap "$bg"
  fail parallel-ssh-retries "the run ended before host A could be lost mid-run" "$P3.log"
else
  reap "$bg"
  rc=$?
  if [ "$rc" -ne 0 ]; then
    fail parallel-ssh-retries "parallel exited $rc after losing host A" "$P3.err" "$P3.log"
  elif ! same_records "$P3.out" "$SINGLE_S"; then
    fail parallel-ssh-retries "the output is not the single run's" "$P3.err" "$P3.log"
  else
    pass "parallel-ssh-retries (host A lost while forkpool map ran there, --retries 3: $(jobs_in "$P3.log") jobs, output = single run)"
  fi
fi
restart_A || { fail ssh-setup "could not restart host A's sshd" "$WORK/sshd_A.log"; finish; }

# 2c. host A lost mid-run without retries: the run fails some blocks; the
# joblog records which, and --results keeps each block's output in its own
# file (RES/<job number>).  `--resume-failed` with the same input, command,
# joblog and results, on the surviving host, re-runs exactly those blocks;
# concatenating RES/1 .. RES/N gives the complete output, in order.
P4=$WORK/p4
RES=$WORK/results
mkdir -p "$RES"
ssh_parallel_bg "$P4" 1/fpA,1/fpB --joblog "$P4.log" --results "$RES/{#}"
if ! lose_host_A_mid_run "$P4"; then
  reap "$bg"
  fail parallel-ssh-resume-failed "the run ended before host A could be lost mid-run" "$P4.log"
else
  reap "$bg"
  rc1=$?
  cp "$P4.log" "$P4.log.first"
  failed1=$(awk 'NR > 1 && $7 != 0 { print $1 }' "$P4.log.first" | sort -n | tr '\n' ' ')
  ssh_parallel "$P4.again" 1/fpB --joblog "$P4.log" --results "$RES/{#}" --resume-failed
  rc2=$?
  # the jobs the second run ran: joblog lines it appended
  rerun=$(tail -n +"$(($(wc -l <"$P4.log.first") + 1))" "$P4.log" | awk '{ print $1 }' | sort -n | tr '\n' ' ')
  n=$(awk 'NR > 1 && $1 > m { m = $1 } END { print m + 0 }' "$P4.log")
  : >"$P4.final"
  k=1
  while [ "$k" -le "$n" ]; do
    cat "$RES/$k" >>"$P4.final" 2>/dev/null || break
    k=$((k + 1))
  done
  extra=$(ls "$RES" | grep -cvE '^[0-9]+(\.err|\.seq)?$|^$')
  # A job past the last one logged: with --pipe, GNU parallel starts a job
  # (and opens its --results file) before it has a block for it; when the
  # input ends first, that "virgin" job is closed unrun and left out of
  # the joblog, its RES file empty (/usr/bin/parallel: openoutputfiles at
  # start, "Skip --joblog" for virgin jobs).  It happens when a slot frees
  # up before the last block is read, e.g. host A's jobs failing at once.
  # Such files may exist, empty; one with any byte in it is a failure.
  virgins="" full_virgin=""
  for f in $(ls "$RES" | grep -E '^[0-9]+$'); do
    if [ "$f" -gt "$n" ]; then
      virgins="$virgins $f"
      [ -s "$RES/$f" ] && full_virgin="$full_virgin $f"
    fi
  done
  if [ "$rc1" -eq 0 ] || [ -z "$failed1" ]; then
    fail parallel-ssh-resume-failed "losing host A failed no job (exit $rc1): nothing to resume" "$P4.log.first"
  elif [ "$rc2" -ne 0 ]; then
    fail parallel-ssh-resume-failed "the --resume-failed run exited $rc2" "$P4.again.err" "$P4.log"
  elif [ "$rerun" != "$failed1" ]; then
    fail parallel-ssh-resume-failed "--resume-failed ran jobs [$rerun], the failed ones were [$failed1]" "$P4.log"
  elif [ "$k" -le "$n" ] || [ -n "$full_virgin" ] || [ "$extra" -ne 0 ]; then
    fail parallel-ssh-resume-failed "results are not exactly RES/1 .. RES/$n (first missing: $k; files past job $n with output:${full_virgin:- none}; other entries: $(ls "$RES" | grep -vE '^[0-9]+(\.err|\.seq)?$' | tr '\n' ' '))" "$P4.log"
  elif ! same_records "$P4.final" "$SINGLE_S"; then
    fail parallel-ssh-resume-failed "RES/1 .. RES/$n concatenated is not the single run's output" "$P4.log"
  else
    pass "parallel-ssh-resume-failed (host A lost, jobs [${failed1% }] failed (exit $rc1), re-run on B; $n blocks = single run${virgins:+; empty RES of jobs never run:$virgins})"
  fi
fi

# ---- 3. job arrays: --shard K/N ---------------------------------------------

# check_shards LABEL PREFIX REF: PREFIX.1 .. PREFIX.3 are the shard outputs,
# REF the single run's output: shard K must be, byte for byte, the lines of
# REF whose "i" (input line number) n has (n - 1) % 3 == K - 1, in order
# (so the shards are disjoint and their union is the single run).
check_shards() {
  cs_label=$1 cs_pre=$2 cs_ref=$3
  cs_bad=""
  for k in 1 2 3; do
    if ! awk -v k="$k" '{ if (!match($0, /"i":[0-9]+/)) exit 1
                          i = substr($0, RSTART + 4, RLENGTH - 4) + 0
                          if ((i - 1) % 3 == k - 1) print }' "$cs_ref" >"$cs_pre.want.$k"; then
      fail "$cs_label" "a line of the single run has no \"i\"" "$cs_ref"
      return
    fi
    same "$cs_pre.$k" "$cs_pre.want.$k" || cs_bad="$cs_bad $k"
  done
  if [ -n "$cs_bad" ]; then
    fail "$cs_label" "shard(s)$cs_bad are not the single run's lines n with (n - 1) % 3 = K - 1" "$cs_pre.1"
  else
    pass "$cs_label (3 shards: each is byte for byte the single run's lines n with (n-1) % 3 = K-1)"
  fi
}

SH=$WORK/shard
err=""
for k in 1 2 3; do
  bounded /dev/null "$SH.$k" "$SH.$k.err" "$T_RUN" "$FORKPOOL" map --shard "$k/3" "$S" "$IN" ||
    err="$err $k"
done
if [ -n "$err" ]; then
  fail shard "forkpool map --shard K/3 failed for K =$err" "$SH.1.err" "$SH.2.err" "$SH.3.err"
else
  check_shards shard "$SH" "$SINGLE"
fi

# The arithmetic of the sbatch script in docs/distributed.md (sbatch
# --array=1-3 sets SLURM_ARRAY_TASK_ID to 1..3; the shard count is fixed in
# the script, SHARDS=3), each task reading the small input on stdin.
SL=$WORK/slurm
err=""
for id in 1 2 3; do
  bounded "$SMALL" "$SL.$id" "$SL.$id.err" "$T_RUN" env SLURM_ARRAY_TASK_ID="$id" SHARDS=3 sh -c \
    '"$1" map --shard "$SLURM_ARRAY_TASK_ID/$SHARDS" "$2"' sh "$FORKPOOL" "$S" || err="$err $id"
done
if [ -n "$err" ]; then
  fail shard-slurm "a task failed: SLURM_ARRAY_TASK_ID =$err" "$SL.1.err" "$SL.2.err" "$SL.3.err"
else
  check_shards shard-slurm "$SL" "$SINGLE_S"
fi

# The arithmetic of the Kubernetes indexed Job in docs/distributed.md
# (completions: 3: JOB_COMPLETION_INDEX is 0..2; SHARDS set in the pod spec).
KJ=$WORK/k8s
err=""
for idx in 0 1 2; do
  bounded /dev/null "$KJ.$((idx + 1))" "$KJ.$((idx + 1)).err" "$T_RUN" \
    env JOB_COMPLETION_INDEX="$idx" SHARDS=3 sh -c \
    '"$1" map --shard "$((JOB_COMPLETION_INDEX + 1))/$SHARDS" "$2" "$3"' sh "$FORKPOOL" "$S" "$SMALL" ||
    err="$err $idx"
done
if [ -n "$err" ]; then
  fail shard-k8s "a task failed: JOB_COMPLETION_INDEX =$err" "$KJ.1.err" "$KJ.2.err" "$KJ.3.err"
else
  check_shards shard-k8s "$KJ" "$SINGLE_S"
fi

finish
