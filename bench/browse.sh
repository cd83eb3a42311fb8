#!/usr/bin/env bash
# The dataset browser benchmark (docs/BENCHMARKS.md, "Dataset browser"): a synthetic dataset of
# COUNT rows (default 1 million) in SHARDS shards (`pixforge bench browse-dataset`: ingest-layout
# parquets with statuses, reasons, alt-text, sizes and an `aesthetic` score; tars of 16×16
# thumbnails), `pixforge browse` started on it and its pages timed over loopback HTTP (`pixforge
# bench browse-pages`), and the anchor in the same run on the same files: pandas + pyarrow reading
# every shard parquet and slicing the same views (bench/browse_anchor.py).
# Results in docs/bench-results/browse.json. Env: BIN, SKIP_BUILD=1, WORK, COUNT, SHARDS, VENV.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/pixforge-browse-bench}
BIN=${BIN:-target/release/pixforge}
COUNT=${COUNT:-1000000}
SHARDS=${SHARDS:-100}
VENV=${VENV:-/tmp/browse-bench-venv}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q pyarrow==22.0.0 pandas==2.3.3
fi
rm -rf "$WORK"
mkdir -p "$WORK" docs/bench-results
"$BIN" bench browse-dataset --out "$WORK/dataset" --count "$COUNT" --shards "$SHARDS" >/dev/null
sync
"$BIN" bench browse-pages --dataset "$WORK/dataset" --sort aesthetic --noun dog >"$WORK/ours.json"
"$VENV/bin/python" bench/browse_anchor.py "$WORK/dataset" aesthetic dog >"$WORK/anchor.json"
python3 - "$WORK/ours.json" "$WORK/anchor.json" "$(du -sb "$WORK/dataset" | cut -f1)" <<'PY'
import json, platform, sys
ours, anchor, size = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), int(sys.argv[3])
res = {
    "machine": platform.processor() or platform.machine(),
    "rows": ours["rows"], "shards": ours["shards"], "dataset_mib": round(size / 2**20, 1),
    "browse": {"open_s": round(ours["open_s"], 4),
               "requests": [{"what": w, "path": p, "seconds": round(s, 4), "status": st, "bytes": b}
                            for w, p, s, st, b in ours["requests"]]},
    "anchor_pandas_pyarrow": {k: round(v, 4) for k, v in anchor["seconds"].items()},
}
json.dump(res, open("docs/bench-results/browse.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
