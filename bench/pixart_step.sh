#!/usr/bin/env bash
# The training-step benchmark of issue 4 (docs/BENCHMARKS.md, "PixArt training step"): one forward +
# backward of the same PixArt transformer (depth 4, hidden 384 = 6 heads of 64, patch 2, 32x32
# latents, 120 caption tokens of 4096 channels, batch 4, f32, 2 threads) in pixforge (candle) and in
# PyTorch/diffusers on CPU, alternating ROUNDS times so machine noise hits both; median seconds per
# step and peak RSS of each. Results in docs/bench-results/pixart_step.json.
# Env: VENV (Python venv with torch + diffusers, created if missing), ITERS, ROUNDS, SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/pixart-bench-venv}
ITERS=${ITERS:-7}
ROUNDS=${ROUNDS:-3}
mkdir -p docs/bench-results
source bench/torch_venv.sh
torch_venv diffusers==0.42.1
[ -n "${SKIP_BUILD:-}" ] || cargo build --release
OUT=$(mktemp -d)
for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  target/release/pixforge bench pixart-step --iters "$ITERS" | tee "$OUT/pixforge-$r.json"
  "$VENV/bin/python" bench/pixart_step.py "$ITERS" 2>/dev/null | tee "$OUT/torch-$r.json"
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, platform, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
load = lambda name: [json.load(open(f"{out}/{name}-{r}.json")) for r in range(1, rounds + 1)]
ours, torch = load("pixforge"), load("torch")
med = lambda runs: statistics.median(x for run in runs for x in run["steps"])
rss = lambda runs: max(run["peak_rss_mib"] for run in runs)
res = {
    "machine": platform.processor() or platform.machine(),
    "config": "depth 4, hidden 384 (6x64), patch 2, 32x32 latents, 120x4096 captions, batch 4, f32, 2 threads",
    "pixforge_s_per_step": med(ours), "torch_s_per_step": med(torch),
    "speedup_vs_torch": med(torch) / med(ours),
    "pixforge_peak_rss_mib": rss(ours), "torch_peak_rss_mib": rss(torch),
    "torch_version": torch[0]["torch"], "rounds": rounds,
}
json.dump(res, open("docs/bench-results/pixart_step.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
