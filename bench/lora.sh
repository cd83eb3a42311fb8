#!/usr/bin/env bash
# LoRA training against the full fine-tune (docs/BENCHMARKS.md, "LoRA training step"): the training
# benchmark's model, caches and settings (bench/train.sh: depth 4, hidden 384, 256 px, batch 4, f32,
# 2 threads, AdamW + clip 0.01 + EMA), trained whole and as rank-16 LoRA adapters on the attention's
# q/k/v/out by `pixforge train`, and as the same adapters by PyTorch + peft (bench/train_torch.py),
# alternating ROUNDS times. Images/s (median step) and peak RSS of each. Results in
# docs/bench-results/lora.json. Env: VENV, STEPS, ROUNDS, SKIP_BUILD=1, WORK (bench/train.sh's caches).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/pixart-bench-venv}
STEPS=${STEPS:-15}
ROUNDS=${ROUNDS:-3}
WORK=${WORK:-/tmp/pixforge-train-bench}
RANK=16
BIN=target/release/pixforge
source bench/torch_venv.sh
torch_venv diffusers==0.42.1 transformers==5.24.0 safetensors pillow peft==0.21.2
[ -n "${SKIP_BUILD:-}" ] || cargo build --release
# The caches (and the full fine-tune's config) come from the training benchmark.
[ -f "$WORK/vae/_SUCCESS" ] || STEPS=1 ROUNDS=1 SKIP_BUILD=1 bash bench/train.sh >/dev/null
sed -e '/^\[schedule\]/i [lora]\nrank = '"$RANK"'\nalpha = '"$RANK"'.0\n' "$WORK/train.toml" > "$WORK/lora.toml"
OUT=$(mktemp -d)
for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  for kind in train lora; do
    rm -rf "$WORK/run"
    $BIN train --config "$WORK/$kind.toml" >/dev/null
    cp "$WORK/run/log.jsonl" "$OUT/$kind-$r.jsonl"
  done
  "$VENV/bin/python" bench/train_torch.py "$WORK/t5" "$WORK/vae" "$STEPS" 4 "$RANK" 2>/dev/null | tee "$OUT/torch-$r.json"
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def ours(kind):
    lines = [l for r in range(1, rounds + 1) for l in [json.loads(x) for x in open(f"{out}/{kind}-{r}.jsonl")][1:]]
    return statistics.median(l["images_per_s"] for l in lines), max(l["peak_rss_mib"] for l in lines)
torch = [json.load(open(f"{out}/torch-{r}.json")) for r in range(1, rounds + 1)]
full, lora = ours("train"), ours("lora")
tips = statistics.median(4 / s for run in torch for s in run["steps"])
res = {"config": "bench/train.sh's model and caches; LoRA rank 16 (alpha 16) on attn q/k/v/out", "rounds": rounds,
       "pixforge_full_images_per_s": full[0], "pixforge_full_peak_rss_mib": full[1],
       "pixforge_lora_images_per_s": lora[0], "pixforge_lora_peak_rss_mib": lora[1],
       "torch_peft_lora_images_per_s": tips, "torch_peft_lora_peak_rss_mib": max(r["peak_rss_mib"] for r in torch),
       "lora_vs_full": lora[0] / full[0], "lora_vs_torch_peft": lora[0] / tips, "torch": torch[0]["torch"]}
json.dump(res, open("docs/bench-results/lora.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
