#!/usr/bin/env bash
# The trainer benchmark of issue 7 (docs/BENCHMARKS.md, "Training loop"): `pixforge train` against a
# PyTorch loop (bench/train_torch.py) over the same diffusers PixArt transformer shape, the same caches
# and the same optimizer settings, on CPU with 2 threads. Model as the training-step benchmark of
# issue 4: depth 4, hidden 384 (6 heads of 64), patch 2, 32x32 latents (256 px, tiny SD-layout VAE),
# 4096-wide T5 embeddings (a one-layer random T5 of XXL width), batch 4, f32, AdamW 2e-5 / wd 0.03 /
# eps 1e-10, clip 0.01, EMA 0.9999, 10% caption drop. Images/s (median step) and peak RSS of each,
# alternating ROUNDS times. Results in docs/bench-results/train.json.
# Env: VENV (torch + diffusers + transformers, created if missing), STEPS, ROUNDS, SKIP_BUILD=1, WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/pixart-bench-venv}
STEPS=${STEPS:-15}
ROUNDS=${ROUNDS:-3}
WORK=${WORK:-/tmp/pixforge-train-bench}
BIN=target/release/pixforge
mkdir -p docs/bench-results "$WORK"
source bench/torch_venv.sh
torch_venv diffusers==0.42.1 transformers==5.24.0 safetensors pillow
[ -n "${SKIP_BUILD:-}" ] || cargo build --release
if [ ! -f "$WORK/vae/_SUCCESS" ]; then
  rm -rf "$WORK"/{photos,shards,t5,vae,models}
  mkdir -p "$WORK/photos"
  # 24 distinct photos (6 shared photos x 4 orientations: ingest drops exact duplicates), captioned
  # with PixArt-α's sample prompts.
  "$VENV/bin/python" bench/train_data.py photos "$WORK/photos" tests/data/images tests/data/prompts/pixart_alpha_samples.txt
  "$VENV/bin/python" bench/train_data.py t5 "$WORK/models/t5" assets/t5/tokenizer.json
  $BIN models init-tiny --kind vae --out "$WORK/models/tiny" >/dev/null
  $BIN ingest folder "$WORK/photos" --out "$WORK/shards" --image-size 256 --samples-per-shard 8 --no-progress >/dev/null
  $BIN cache t5 --model "$WORK/models/t5" --input "$WORK/shards" --out "$WORK/t5" --no-progress >/dev/null
  $BIN cache vae --model "$WORK/models/tiny" --resolution 256 --input "$WORK/shards" --out "$WORK/vae" --no-progress >/dev/null
  touch "$WORK/vae/_SUCCESS"
fi
cat > "$WORK/train.toml" <<TOML
output_dir = "run"
max_steps = $((STEPS + 1))
max_grad_norm = 0.01
[data]
caches = [{ t5 = "t5", vae = "vae" }]
batch_size = 4
[model]
layers = 4
heads = 6
head_dim = 64
sample_size = 32
caption_channels = 4096
[schedule]
warmup_steps = 0
[checkpoints]
every = 100000
[logging]
progress = false
every = 100000
TOML
OUT=$(mktemp -d)
for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  rm -rf "$WORK/run"
  $BIN train --config "$WORK/train.toml" >/dev/null
  cp "$WORK/run/log.jsonl" "$OUT/pixforge-$r.jsonl"
  "$VENV/bin/python" bench/train_torch.py "$WORK/t5" "$WORK/vae" "$STEPS" 4 2>/dev/null | tee "$OUT/torch-$r.json"
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, platform, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
ours = [[json.loads(l) for l in open(f"{out}/pixforge-{r}.jsonl")][1:] for r in range(1, rounds + 1)]
torch = [json.load(open(f"{out}/torch-{r}.json")) for r in range(1, rounds + 1)]
ours_ips = statistics.median(l["images_per_s"] for run in ours for l in run)
torch_ips = statistics.median(4 / s for run in torch for s in run["steps"])
res = {
    "machine": platform.processor() or platform.machine(),
    "config": "depth 4, hidden 384 (6x64), patch 2, 32x32 latents, 4096-wide T5 cache, batch 4, f32, 2 threads, "
              "AdamW + clip 0.01 + EMA, hybrid loss, data from the caches",
    "pixforge_images_per_s": ours_ips, "torch_images_per_s": torch_ips, "speedup_vs_torch": ours_ips / torch_ips,
    "pixforge_peak_rss_mib": max(l["peak_rss_mib"] for run in ours for l in run),
    "torch_peak_rss_mib": max(run["peak_rss_mib"] for run in torch),
    "torch_version": torch[0]["torch"], "rounds": rounds,
}
json.dump(res, open("docs/bench-results/train.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
