#!/usr/bin/env bash
# The scoring benchmark of issue 8 (docs/BENCHMARKS.md, "CLIP scoring"): `pixforge score clip` against
# the same ONNX tower run by onnxruntime-Python over the same shards, end to end (decode, CLIP
# preprocessing, tower), 2 threads, CPU, alternating ROUNDS times: the tiny test tower
# (tests/fixtures/golden/clip_tiny.onnx, 32 px) and a random ViT-B/32-shaped tower (224 px). 96 images
# (24 distinct photos at 256 px, 4 copies each under other keys). Results in docs/bench-results/score.json.
# Env: VENV (torch + transformers + onnx + onnxruntime==1.31.1 + pillow; created if missing), ROUNDS,
# SKIP_BUILD=1, WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/pixart-bench-venv}
ROUNDS=${ROUNDS:-2}
WORK=${WORK:-/tmp/pixforge-score-bench}
BIN=target/release/pixforge
mkdir -p docs/bench-results "$WORK"
source bench/torch_venv.sh
torch_venv transformers==5.24.0 onnx onnxruntime==1.31.1 pillow
[ -n "${SKIP_BUILD:-}" ] || cargo build --release
tools/install-onnxruntime.sh >/dev/null
if [ ! -f "$WORK/shards/_done" ]; then
  rm -rf "$WORK/photos" "$WORK/shards"
  "$VENV/bin/python" bench/train_data.py photos "$WORK/photos" tests/data/images tests/data/prompts/pixart_alpha_samples.txt
  $BIN ingest folder "$WORK/photos" --out "$WORK/shards" --image-size 256 --samples-per-shard 24 --no-progress >/dev/null
  # 4 copies of each shard under other shard numbers (the images are the same, the keys are not).
  for s in "$WORK"/shards/0000?.tar; do
    base=$(basename "$s" .tar)
    for k in 1 2 3; do
      n=$(printf "%05d" $((10#$base + 10 * k)))
      cp "$s" "$WORK/shards/$n.tar"; cp "$WORK/shards/${base}_stats.json" "$WORK/shards/${n}_stats.json"
      cp "$WORK/shards/$base.parquet" "$WORK/shards/$n.parquet"
    done
  done
  touch "$WORK/shards/_done"
fi
[ -f "$WORK/vitb32.onnx" ] || "$VENV/bin/python" bench/score_models.py "$WORK/vitb32.onnx"
OUT=$(mktemp -d)
for r in $(seq "$ROUNDS"); do
  for m in tiny vitb32; do
    if [ $m = tiny ]; then tower=tests/fixtures/golden/clip_tiny.onnx; size=32; else tower="$WORK/vitb32.onnx"; size=224; fi
    echo "== round $r $m"
    rm -rf "$WORK/scores-$m"
    /usr/bin/time -f '{"peak_rss_kib": %M}' -o "$OUT/pixforge-$m-$r.rss" \
      $BIN score clip --tower "$tower" --size $size --crop $size --input "$WORK/shards" --out "$WORK/scores-$m" \
        --no-progress > "$OUT/pixforge-$m-$r.json"
    "$VENV/bin/python" bench/score_ort.py "$tower" "$WORK/shards" $size 2>/dev/null | tee "$OUT/ort-$m-$r.json"
  done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, platform, sys
out, rounds = sys.argv[1], int(sys.argv[2])
res = {"machine": platform.processor() or platform.machine(), "images": 96, "threads": 2, "rounds": rounds}
for m in ["tiny", "vitb32"]:
    ours = [json.load(open(f"{out}/pixforge-{m}-{r}.json")) for r in range(1, rounds + 1)]
    rss = [json.load(open(f"{out}/pixforge-{m}-{r}.rss")) for r in range(1, rounds + 1)]
    ort = [json.load(open(f"{out}/ort-{m}-{r}.json")) for r in range(1, rounds + 1)]
    best = max(o["successes"] / o["seconds"] for o in ours)
    anchor = max(o["images_per_s"] for o in ort)
    res[m] = {"pixforge_images_per_s": best, "ort_python_images_per_s": anchor, "speedup": best / anchor,
              "ort_python_model_only_images_per_s": max(o["model_images_per_s"] for o in ort),
              "pixforge_peak_rss_mib": max(r["peak_rss_kib"] for r in rss) / 1024,
              "ort_python_peak_rss_mib": max(o["peak_rss_mib"] for o in ort), "onnxruntime": ort[0]["onnxruntime"]}
json.dump(res, open("docs/bench-results/score.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
