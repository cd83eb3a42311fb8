#!/usr/bin/env bash
# The bomb benchmark (docs/BENCHMARKS.md, "Hostile inputs"): the peak resident memory of each stage
# that reads images or text, on hostile inputs against the same stage on normal inputs, in the same
# run on the same machine. The corpus (`pixforge bench bomb-corpus`): 8 files of each kind — normal
# 512 px JPEGs; 1x1 PNGs whose ICC profile or zTXt text inflates to 1 GiB; PNG, JPEG, WebP and GIF
# headers declaring 10^10, 3.6x10^9, 2.7x10^8 and 4.3x10^9 pixels; all of them mixed — as folders
# (ingest folder) and as WebDataset shards (cache vae, caption through the openai backend against a
# loopback server, caption with the candle LLaVA backend); gzipped metadata (URL list, CSV, JSONL:
# ingest laion) and caption lists (.txt, .json: density) with one row inflating to 1 GiB among
# normal rows. Each run is one process, measured by GNU time's maximum resident set size.
# BEFORE=BINARY also measures another build (an older commit) on the same corpus in the same run.
# Results in docs/bench-results/bombs.json. Env: BIN, BEFORE, SKIP_BUILD=1, WORK, INFLATED_MIB (default 1024).
set -euo pipefail
# A user error's backtrace is not what is measured.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/pixforge-bomb-bench}
BIN=${BIN:-target/release/pixforge}
INFLATED_MIB=${INFLATED_MIB:-1024}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release
rm -rf "$WORK"
mkdir -p "$WORK/runs" docs/bench-results
C="$WORK/corpus"
$BIN bench bomb-corpus --out "$C" --inflated-mib "$INFLATED_MIB"
$BIN models init-tiny --kind vae --out "$WORK/vae" >/dev/null
$BIN models init-tiny --kind llava --out "$WORK/llava" >/dev/null
: > "$WORK/results.tsv"

# measure BUILD STAGE CASE COMMAND...: one run, its exit status and peak RSS (KiB) appended to results.tsv.
measure() {
  local build=$1 stage=$2 case=$3
  shift 3
  local rc=0 log="$WORK/runs/$build-$stage-$case"
  /usr/bin/time -f "%M" -o "$WORK/rss" "$@" >"$log.out" 2>"$log.err" || rc=$?
  printf '%s\t%s\t%s\t%s\t%s\n' "$build" "$stage" "$case" "$rc" "$(tail -1 "$WORK/rss")" | tee -a "$WORK/results.tsv"
}

$BIN bench vlm-server --latency-ms 5 >"$WORK/addr" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$WORK/addr" ] && break; sleep 0.1; done
ENDPOINT="http://$(head -1 "$WORK/addr")"

# run_all BUILD BINARY: every stage on every kind of input.
run_all() {
  local build=$1 bin=$2 o="$WORK/$1"
  for kind in normal icc-profile text-chunk png-pixels jpeg-pixels webp-pixels gif-pixels all-bombs; do
    measure "$build" "ingest folder" "$kind" "$bin" ingest folder "$C/images/$kind" --out "$o/ingest-$kind" \
      --image-size 256 --no-progress
    measure "$build" "cache vae" "$kind" "$bin" cache vae --model "$WORK/vae" --resolution 256 \
      --input "$C/shards/$kind" --out "$o/vae-$kind" --no-progress
    measure "$build" "caption openai" "$kind" "$bin" caption --backend openai --endpoint "$ENDPOINT" --model bench \
      --input "$C/shards/$kind" --out "$o/caption-$kind" --no-progress
    measure "$build" "caption candle" "$kind" "$bin" caption --backend candle --model "$WORK/llava" --max-tokens 4 \
      --input "$C/shards/$kind" --out "$o/llava-$kind" --no-progress
  done
  for which in normal bomb; do
    for f in urls.txt.gz metadata.csv.gz metadata.jsonl.gz; do
      extra=()
      [ "$f" = urls.txt.gz ] && extra=(--caption-col '')
      # Every row is filtered before download: only the metadata is read.
      measure "$build" "ingest laion $f" "$which" "$bin" ingest laion "$C/text/$which/$f" \
        --out "$o/laion-$which-$f" --min-caption-chars 100000 "${extra[@]}" --no-progress
    done
    for f in captions.txt.gz captions.json.gz; do
      measure "$build" "density $f" "$which" "$bin" density "$C/text/$which/$f" --out "$o/density-$which-$f" \
        --no-progress
    done
  done
}
run_all pixforge "$BIN"
[ -z "${BEFORE:-}" ] || run_all before "$BEFORE"

python3 - "$WORK/results.tsv" "$INFLATED_MIB" "${BEFORE:-}" <<'PY'
import json, platform, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
runs = {}
for build, stage, case, rc, kib in rows:
    runs.setdefault(build, {}).setdefault(stage, {})[case] = {"exit": int(rc), "peak_rss_mib": round(int(kib) / 1024, 1)}
res = {"machine": platform.processor() or platform.machine(), "inflated_mib": int(sys.argv[2]),
       "before_build": sys.argv[3] or None, "stages": []}
for stage, cases in runs["pixforge"].items():
    base = cases["normal"]["peak_rss_mib"]
    out = {"stage": stage, "normal_peak_rss_mib": base, "normal_exit": cases["normal"]["exit"], "hostile": []}
    for case, r in cases.items():
        if case == "normal":
            continue
        h = {"case": case, **r, "ratio_to_normal": round(r["peak_rss_mib"] / base, 2)}
        if "before" in runs:
            b = runs["before"][stage]
            h["before"] = {**b[case], "ratio_to_normal": round(b[case]["peak_rss_mib"] / b["normal"]["peak_rss_mib"], 2)}
        out["hostile"].append(h)
    out["worst_ratio"] = max(h["ratio_to_normal"] for h in out["hostile"])
    res["stages"].append(out)
json.dump(res, open("docs/bench-results/bombs.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
