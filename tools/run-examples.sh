#!/bin/sh
# Smoke-runs every example in examples/ against the in-tree build, in quick
# mode (small sizes), and checks each one's output: its "ok:" line and
# whatever files it wrote.  Builds nothing: run `make -s all` first.
# Prints "ok   NAME" or "FAIL NAME" (followed by why and the output) per
# check (an example can have more than one, e.g. wordcount on a generated
# text and on a given file), then "N passed, M failed"; exits non-zero when
# any failed.
#
#   tools/run-examples.sh            # from anywhere in the checkout
#   LUAJIT=/path/to/luajit tools/run-examples.sh
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LUAJIT=${LUAJIT:-luajit}

if [ ! -f "$ROOT/build/forkpool/core.so" ]; then
  echo "build/forkpool/core.so is missing: run 'make -s all' first" >&2
  exit 2
fi

LUA_CPATH="$ROOT/build/?.so;;"
LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;"
FORKPOOL_EXAMPLE_QUICK=1
export LUA_CPATH LUA_PATH FORKPOOL_EXAMPLE_QUICK

WORK=$(mktemp -d "${TMPDIR:-/tmp}/forkpool-examples.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM

PASSED=0
FAILED=0

# run NAME CMD...: runs the command in $WORK with stdout and stderr in
# $WORK/NAME.out (and stdout alone in $WORK/NAME.stdout); returns its status.
run() {
  name=$1
  shift
  rc=0
  (cd "$WORK" && "$@") >"$WORK/$name.stdout" 2>"$WORK/$name.stderr" || rc=$?
  cat "$WORK/$name.stdout" "$WORK/$name.stderr" >"$WORK/$name.out"
  return "$rc"
}

pass() { echo "ok   $1"; PASSED=$((PASSED + 1)); }

fail() {
  echo "FAIL $1"
  echo "  why: $2"
  echo "  output:"
  sed 's/^/    /' "$WORK/$1.out"
  FAILED=$((FAILED + 1))
}

# has NAME REGEX: the example's output has a line matching REGEX
has() { grep -Eq "$2" "$WORK/$1.out"; }

# the last line of a file, without the trailing newline
last_line() { tail -n 1 "$1"; }

# ---- demo.lua: sequential vs parallel Mandelbrot (no quick mode; ~1-2 s)
if ! run demo "$LUAJIT" "$ROOT/examples/demo.lua"; then
  fail demo "exited with an error"
elif ! has demo '^speedup: .*results identical'; then
  fail demo "no 'speedup: ... results identical' line"
else
  pass demo
fi

# ---- mandelbrot.lua: writes a 320x240 binary PGM in quick mode
PGM="$WORK/mandelbrot.pgm"
if ! run mandelbrot "$LUAJIT" "$ROOT/examples/mandelbrot.lua" --quick "$PGM"; then
  fail mandelbrot "exited with an error"
elif ! last_line "$WORK/mandelbrot.stdout" | grep -Eq '^ok: wrote .* \(320x240 PGM, 76815 bytes\)$'; then
  fail mandelbrot "last line is not 'ok: wrote ... (320x240 PGM, 76815 bytes)'"
elif [ ! -f "$PGM" ] || [ "$(head -c 15 "$PGM")" != "$(printf 'P5\n320 240\n255\n')" ]; then
  fail mandelbrot "$PGM: missing or wrong PGM header"
elif [ "$(wc -c <"$PGM" | tr -d ' ')" -ne $((15 + 320 * 240)) ]; then
  fail mandelbrot "$PGM: wrong size (expected $((15 + 320 * 240)) bytes)"
elif [ "$(tail -c +16 "$PGM" | tr -d '\000' | wc -c | tr -d ' ')" -lt 10000 ]; then
  fail mandelbrot "$PGM: the picture is (almost) all black"
else
  pass mandelbrot
fi

# ---- wordcount.lua: generated 2 MB text, all approaches must agree
if ! run wordcount "$LUAJIT" "$ROOT/examples/wordcount.lua" --quick; then
  fail wordcount "exited with an error"
elif ! last_line "$WORK/wordcount.stdout" | grep -Eq '^ok: [0-9]+ words, [0-9]+ distinct, all approaches agree'; then
  fail wordcount "last line is not 'ok: N words, N distinct, all approaches agree ...'"
elif ! has wordcount '^\(b\) naive pool:imap' || ! has wordcount '^\(c2\) byte ranges' || ! has wordcount '^\(d\) pool:map_reduce'; then
  fail wordcount "missing timing lines"
elif ! TEXT=$(sed -n 's|^generated \(.*\) ([0-9.]* MB) in .*|\1|p' "$WORK/wordcount.stdout") || [ -z "$TEXT" ]; then
  fail wordcount "no 'generated PATH (N MB) ...' line"
elif [ -e "$TEXT" ]; then
  fail wordcount "the generated text file was not removed"
else
  pass wordcount
fi

# ---- wordcount.lua on a given file: a known text with known counts
printf 'The cat and the dog.\nA cat, a CAT!\n\nthe end\n' >"$WORK/words.txt"
if ! run wordcount-file "$LUAJIT" "$ROOT/examples/wordcount.lua" "$WORK/words.txt"; then
  fail wordcount-file "exited with an error"
elif ! last_line "$WORK/wordcount-file.stdout" | grep -Eq '^ok: 11 words, 6 distinct, all approaches agree'; then
  fail wordcount-file "last line is not 'ok: 11 words, 6 distinct, all approaches agree ...'"
elif ! has wordcount-file '^top words: cat=3 the=3 a=2 and=1 dog=1 end=1$'; then
  fail wordcount-file "wrong top words"
elif [ ! -f "$WORK/words.txt" ]; then
  fail wordcount-file "the input file was removed"
else
  pass wordcount-file
fi

# ---- jsonl.lua: 5,000 generated orders, line 1000 broken on purpose
OUT="$WORK/orders.jsonl"
if ! run jsonl "$LUAJIT" "$ROOT/examples/jsonl.lua" --quick -o "$OUT"; then
  fail jsonl "exited with an error"
elif ! last_line "$WORK/jsonl.stderr" | grep -Eq '^ok: 5000 lines in, 4999 lines out, 1 skipped, in input order'; then
  fail jsonl "last line is not 'ok: 5000 lines in, 4999 lines out, 1 skipped, in input order ...'"
elif ! has jsonl ':1000: skipped: '; then
  fail jsonl "the broken line 1000 was not reported"
elif [ "$(wc -l <"$OUT" | tr -d ' ')" -ne 4999 ]; then
  fail jsonl "$OUT: expected 4999 lines, found $(wc -l <"$OUT" | tr -d ' ')"
elif ! head -n 1 "$OUT" | grep -q '"id":1[,}]' || ! head -n 1 "$OUT" | grep -Eq '"total":[0-9.]+'; then
  fail jsonl "$OUT: the first line has no \"id\":1 or no \"total\""
elif ! tail -n 1 "$OUT" | grep -q '"id":5000[,}]'; then
  fail jsonl "$OUT: the last line is not id 5000"
elif [ "$(grep -c '"id":1000[,}]' "$OUT")" -ne 0 ]; then
  fail jsonl "$OUT: the broken line 1000 made it to the output"
else
  pass jsonl
fi

# ---- jsonl.lua as a filter: a given file to stdout
printf '%s\n' '{"id":7,"user":"u","country":"fr","items":[{"sku":"A","qty":2,"price":1.25},{"sku":"B","qty":1,"price":3}]}' \
  '{"id":8,"items":[]}' >"$WORK/two.jsonl"
if ! run jsonl-stdout "$LUAJIT" "$ROOT/examples/jsonl.lua" "$WORK/two.jsonl"; then
  fail jsonl-stdout "exited with an error"
elif [ "$(wc -l <"$WORK/jsonl-stdout.stdout" | tr -d ' ')" -ne 2 ]; then
  fail jsonl-stdout "expected 2 lines on stdout"
elif ! head -n 1 "$WORK/jsonl-stdout.stdout" | grep -q '"total":5.5' ||
     ! head -n 1 "$WORK/jsonl-stdout.stdout" | grep -q '"country":"FR"' ||
     ! head -n 1 "$WORK/jsonl-stdout.stdout" | grep -q '"top_sku":"B"'; then
  fail jsonl-stdout "first line: expected total 5.5, country FR, top_sku B"
elif ! last_line "$WORK/jsonl-stdout.stderr" | grep -Eq '^ok: 2 lines in, 2 lines out, 0 skipped'; then
  fail jsonl-stdout "last line on stderr is not 'ok: 2 lines in, 2 lines out, 0 skipped ...'"
else
  pass jsonl-stdout
fi

# ---- assets.lua: 24 generated assets + 1 broken one, temp dir removed
if ! run assets "$LUAJIT" "$ROOT/examples/assets.lua" --quick; then
  fail assets "exited with an error"
elif ! last_line "$WORK/assets.stdout" | grep -Eq '^ok: 24 files processed, 1 failed as expected \(tex_broken.pgm\)'; then
  fail assets "last line is not 'ok: 24 files processed, 1 failed as expected (tex_broken.pgm) ...'"
elif ! has assets '^  ERROR tex_broken\.pgm +tex_broken\.pgm: truncated pixel data'; then
  fail assets "the broken texture was not reported as an error"
elif [ "$(grep -c '^  ok    ' "$WORK/assets.out")" -ne 24 ]; then
  fail assets "expected 24 '  ok    ' lines"
elif [ -e "$(sed -n 's|^[0-9]* assets in \(.*\)/in$|\1|p' "$WORK/assets.stdout")" ]; then
  fail assets "the temporary directory was not removed"
else
  pass assets
fi

# ---- image_filter.lua: blur + Sobel over shared arrays, written as PGM
PGM="$WORK/edges.pgm"
if ! run image_filter "$LUAJIT" "$ROOT/examples/image_filter.lua" --quick "$PGM"; then
  fail image_filter "exited with an error"
elif ! last_line "$WORK/image_filter.stdout" | grep -Eq '^ok: 512x384 blur \+ Sobel, parallel result identical'; then
  fail image_filter "last line is not 'ok: 512x384 blur + Sobel, parallel result identical ...'"
elif [ "$(head -c 15 "$PGM")" != "$(printf 'P5\n512 384\n255\n')" ] ||
     [ "$(wc -c <"$PGM" | tr -d ' ')" -ne $((15 + 512 * 384)) ]; then
  fail image_filter "$PGM: wrong header or size"
else
  pass image_filter
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
