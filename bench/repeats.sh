#!/usr/bin/env bash
# The whole-dataset repeat benchmark (docs/BENCHMARKS.md, "Repeats across a whole dataset"):
# `pixforge dedup --phash` over a synthetic ingested dataset of COUNT samples (default 10 million
# in 1,000 shard parquets: key, status, sha256, phash; 5% planted repeats within 4 bits), its wall
# time and peak RSS (GNU time), and the in-memory search alone against the anchor, ingest's
# per-worker pHash index (a hash table per band, keys as strings), on the same hashes in the same
# run: at ANCHOR_COUNT (default 1 million) both, at COUNT the whole-dataset search alone (the
# anchor's bands hold ~1,200 hashes each at 10 million: minutes, and gigabytes).
# Results in docs/bench-results/repeats.json. Env: BIN, SKIP_BUILD=1, WORK, COUNT, ANCHOR_COUNT.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/pixforge-repeats-bench}
BIN=${BIN:-target/release/pixforge}
COUNT=${COUNT:-10000000}
ANCHOR_COUNT=${ANCHOR_COUNT:-1000000}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release
rm -rf "$WORK"
mkdir -p "$WORK" docs/bench-results
: > "$WORK/results.jsonl"

# measure NAME COMMAND...: one process; its JSON line (if any), wall seconds and peak RSS appended.
measure() {
  local name=$1
  shift
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$WORK/rss" "$@" >"$WORK/$name.out"
  end=$(date +%s.%N)
  python3 - "$name" "$start" "$end" "$(tail -1 "$WORK/rss")" "$WORK/$name.out" >>"$WORK/results.jsonl" <<'PY'
import json, sys
name, start, end, kib, out = sys.argv[1:]
lines = [l for l in open(out) if l.strip()]
try:
    detail = json.loads(lines[-1])
except Exception:
    detail = {"output": "".join(lines).strip()}
print(json.dumps({"run": name, "wall_s": round(float(end) - float(start), 2),
                  "peak_rss_mib": round(int(kib) / 1024, 1), **detail}))
PY
  tail -1 "$WORK/results.jsonl"
}

measure write-dataset "$BIN" bench repeats-dataset --out "$WORK/dataset" --count "$COUNT" --shards 1000
measure dedup-phash "$BIN" dedup --phash "$WORK/dataset" --out "$WORK/selection.parquet"
measure search-first-copies-anchor-size "$BIN" bench repeats-search --method first_copies --count "$ANCHOR_COUNT"
measure search-phash-index-anchor-size "$BIN" bench repeats-search --method phash_index --count "$ANCHOR_COUNT"
measure search-first-copies "$BIN" bench repeats-search --method first_copies --count "$COUNT"

python3 - "$WORK/results.jsonl" "$COUNT" "$ANCHOR_COUNT" "$(du -sb "$WORK/dataset" | cut -f1)" <<'PY'
import json, platform, sys
runs = {r["run"]: r for r in map(json.loads, open(sys.argv[1]))}
count, anchor_count, dataset_bytes = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ours, anchor = runs["search-first-copies-anchor-size"], runs["search-phash-index-anchor-size"]
res = {
    "machine": platform.processor() or platform.machine(),
    "count": count,
    "dataset_mib": round(dataset_bytes / 2**20, 1),
    "dedup_phash": {k: runs["dedup-phash"][k] for k in ("wall_s", "peak_rss_mib", "output")},
    "search_at_count": runs["search-first-copies"],
    "anchor_count": anchor_count,
    "search_vs_anchor": {
        "first_copies": ours,
        "phash_index": anchor,
        "same_repeats_found": ours["found"] == anchor["found"],
        "speedup": round(anchor["seconds"] / ours["seconds"], 1),
        "rss_ratio": round(ours["peak_rss_mib"] / anchor["peak_rss_mib"], 2),
    },
}
json.dump(res, open("docs/bench-results/repeats.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
