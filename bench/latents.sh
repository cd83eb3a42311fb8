#!/usr/bin/env bash
# The feature-cache benchmark of issue 5 (docs/BENCHMARKS.md, "Feature caches"): the SD VAE encoder
# (the real sd-vae-ft-ema architecture, random weights) at 256 and 512 px, and the T5 encoder at
# t5-v1_1-base size over PixArt-α's 63 sample prompts (cleaned and tokenized as PixArt-α does), in
# pixforge and in PyTorch (diffusers / transformers) on CPU with the same 2 threads, same weights,
# alternating ROUNDS times. Results in docs/bench-results/latents.json.
# Env: VENV (Python venv with torch + diffusers + transformers + ftfy + bs4, created if missing),
# ROUNDS, SKIP_BUILD=1, MODELS (where the random-weight models are written; kept between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/pixart-bench-venv}
ROUNDS=${ROUNDS:-2}
MODELS=${MODELS:-/tmp/pixforge-latents-bench-models}
PROMPTS=tests/data/prompts/pixart_alpha_samples.txt
TOKENIZER=assets/t5/tokenizer.json
mkdir -p docs/bench-results
source bench/torch_venv.sh
torch_venv diffusers==0.42.1 transformers==5.24.0 ftfy beautifulsoup4
if [ ! -f "$MODELS/t5/model.safetensors" ]; then
  "$VENV/bin/python" bench/latents_models.py "$MODELS"
fi
[ -n "${SKIP_BUILD:-}" ] || cargo build --release
OUT=$(mktemp -d)
for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  target/release/pixforge bench latents --models "$MODELS" --prompts "$PROMPTS" --tokenizer "$TOKENIZER" \
    | tee "$OUT/pixforge-$r.json"
  "$VENV/bin/python" bench/latents_torch.py "$MODELS" "$PROMPTS" "$TOKENIZER" 2 2 2>/dev/null | tee "$OUT/torch-$r.json"
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, platform, sys
out, rounds = sys.argv[1], int(sys.argv[2])
load = lambda name: [json.load(open(f"{out}/{name}-{r}.json")) for r in range(1, rounds + 1)]
ours, torch = load("pixforge"), load("torch")
best = lambda runs, key: max(run[key] for run in runs)
res = {
    "machine": platform.processor() or platform.machine(),
    "threads": 2, "rounds": rounds, "torch_version": torch[0]["torch"],
    "t5_tokens_mean": ours[0]["t5_tokens_mean"],
}
for size in (256, 512):
    o, t = best(ours, f"vae_{size}_images_per_s"), best(torch, f"vae_{size}_images_per_s")
    tb = best(torch, f"vae_{size}_batch{4 if size == 256 else 2}_images_per_s")
    res[f"vae_{size}"] = {"pixforge_images_per_s": o, "torch_images_per_s": t, "torch_batched_images_per_s": tb,
                          "speedup_vs_torch": o / max(t, tb)}
o = best(ours, "t5_captions_per_s")
t, tl = best(torch, "t5_official_captions_per_s"), best(torch, "t5_longest_captions_per_s")
res["t5_base"] = {"pixforge_captions_per_s": o, "torch_official_captions_per_s": t,
                  "torch_longest_captions_per_s": tl, "speedup_vs_torch": o / max(t, tl)}
json.dump(res, open("docs/bench-results/latents.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
