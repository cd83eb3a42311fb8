#!/usr/bin/env bash
# Ingest memory against input size (docs/BENCHMARKS.md, "Ingest memory and input rows"): `pixforge
# ingest laion` of synthetic LAION parquet metadata (`pixforge bench laion-rows`: URL, TEXT,
# similarity, WIDTH, HEIGHT) of 10k, 100k and 1M rows, each run ROUNDS times under GNU time; the
# URLs point at a loopback port, so every row is refused before a request (private address) and
# written to its shard parquet: what is measured is the rows' path through the ingest, not the
# downloads (in flight per shard, bounded by --concurrency). Writes docs/bench-results/rows-SHARD.json.
#
#   bench/rows.sh                        # 3 rounds, 1000 samples a shard
#   ROUNDS=1 SHARD=10000 SKIP_BUILD=1 bench/rows.sh
#   BEFORE=/path/to/older/pixforge bench/rows.sh   # the same runs with another build too
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/pixforge-rows-bench}
ROUNDS=${ROUNDS:-3}
SHARD=${SHARD:-1000}
SIZES=${SIZES:-"10000 100000 1000000"}
mkdir -p "$WORK" "$ROOT/docs/bench-results"
[ -x /usr/bin/time ] || { echo "bench/rows.sh needs GNU time (apt-get install time)" >&2; exit 1; }
[ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && cargo build --release -q)
PIXFORGE="$ROOT/target/release/pixforge"
: >"$WORK/runs.tsv"
for n in $SIZES; do
    [ -f "$WORK/rows-$n.parquet" ] || "$PIXFORGE" bench laion-rows --rows "$n" --out "$WORK/rows-$n.parquet" >/dev/null
    for r in $(seq "$ROUNDS"); do
        rm -rf "$WORK/out"
        /usr/bin/time -f "%e %M" -o "$WORK/time" "$PIXFORGE" ingest laion "$WORK/rows-$n.parquet" \
            --out "$WORK/out" --samples-per-shard "$SHARD" --no-progress >"$WORK/last.out"
        grep -q "rows: $n " "$WORK/last.out" || { cat "$WORK/last.out"; exit 1; }
        printf '%s\t%s\n' "$n" "$(cat "$WORK/time")" | tee -a "$WORK/runs.tsv"
        if [ -n "${BEFORE:-}" ]; then
            rm -rf "$WORK/out"
            /usr/bin/time -f "%e %M" -o "$WORK/time" "$BEFORE" ingest laion "$WORK/rows-$n.parquet" \
                --out "$WORK/out" --samples-per-shard "$SHARD" --no-progress >/dev/null
            printf 'before-%s\t%s\n' "$n" "$(cat "$WORK/time")" | tee -a "$WORK/runs.tsv"
        fi
    done
done
rm -rf "$WORK/out"
python3 - "$WORK/runs.tsv" "$SHARD" "$ROOT/docs/bench-results/rows-$SHARD.json" <<'PY'
import json, platform, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    n, rest = line.rstrip("\n").split("\t")
    secs, kib = rest.split()
    runs.setdefault(n, []).append((float(secs), int(kib)))
res = {"machine": platform.processor() or platform.machine(), "samples_per_shard": int(sys.argv[2]),
       "rows": {n: {"seconds": [s for s, _ in v], "peak_rss_mib": [round(k / 1024, 1) for _, k in v],
                    "median_seconds": statistics.median(s for s, _ in v),
                    "max_peak_rss_mib": round(max(k for _, k in v) / 1024, 1)} for n, v in runs.items()}}
json.dump(res, open(sys.argv[3], "w"), indent=1)
print(json.dumps({n: (r["median_seconds"], r["max_peak_rss_mib"]) for n, r in res["rows"].items()}))
PY
