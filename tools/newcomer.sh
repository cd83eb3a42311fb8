#!/usr/bin/env bash
# A newcomer's first hour, timed: a fresh clone of this repository (or of REPO) in a temporary
# folder, then the README's set-up as written — the demo (`cargo run --release -- demo`), the test
# command (`cargo test`), `cargo install --locked --path .`, and a look at the demo's data with the installed
# binary (`pixforge status`, `pixforge browse --static`). Prints each step's wall time and the disk
# its build took. `.ci/run` does not run it (it takes most of an hour on 2 cores).
#
#   tools/newcomer.sh                 # this repository's committed HEAD
#   REPO=https://… tools/newcomer.sh  # another clone
#   KEEP=1 tools/newcomer.sh          # leave the work folder
set -euo pipefail
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
WORK=$(mktemp -d /tmp/pixforge-newcomer.XXXXXX)
export CARGO_TARGET_DIR="$WORK/clone/target"
export CARGO_TERM_COLOR=never
results="$WORK/times.tsv"
: >"$results"

step() { # step NAME COMMAND...: runs it in the clone, records its wall time
  local name=$1
  shift
  local t0 t1
  t0=$(date +%s)
  (cd "$WORK/clone" && "$@") >"$WORK/$name.log" 2>&1 || {
    echo "step $name failed: see $WORK/$name.log" >&2
    tail -20 "$WORK/$name.log" >&2
    exit 1
  }
  t1=$(date +%s)
  printf '%s\t%s\t%s\n' "$name" "$((t1 - t0))" "$(du -sm "$WORK/clone/target" 2>/dev/null | cut -f1)" | tee -a "$results"
}

git clone -q "$REPO" "$WORK/clone"
echo "work folder: $WORK (step, seconds, target/ MiB after it)"
step demo cargo run --release -- demo
step tests cargo test
step install cargo install --locked --path . --root "$WORK/bin"
step status "$WORK/bin/bin/pixforge" status pixforge-demo
step browse-static "$WORK/bin/bin/pixforge" browse pixforge-demo --static "$WORK/pages"
grep -q "rows in 4 shards" "$WORK/status.log"
test -f "$WORK/pages/index.html"
echo
echo "README set-up followed on a fresh clone:"
awk -F'\t' '{ printf "  %-14s %6.1f min   target/ %6.1f GiB\n", $1, $2 / 60, $3 / 1024 }' "$results"
[ -n "${KEEP:-}" ] || rm -rf "$WORK"
