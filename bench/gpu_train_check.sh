#!/usr/bin/env bash
# The GPU check of the trainer (docs/train.md, "GPU runs"): the training benchmark's model (depth 4,
# hidden 384, 32x32 latents, 4096-wide T5, batch 4) for 40 steps on cuda:0 in f32, bf16 and f16, then
# the f32 run again launched torchrun-style as one rank (RANK=0 WORLD_SIZE=1), so that its gradients
# and losses go through the NCCL all-reduce: its log must equal the unlaunched run's bit for bit; and
# that launch stopped at step 20 and resumed to 40 (`--resume`), against the straight launch.
# Usage: bench/gpu_train_check.sh PIXFORGE T5_CACHE VAE_CACHE WORKDIR   (a --features nccl build; the
# caches as bench/train.sh makes them). Prints a line per run; logs stay in WORKDIR.
set -euo pipefail
BIN=$(realpath "$1"); T5=$(realpath "$2"); VAE=$(realpath "$3"); WORK=$4
mkdir -p "$WORK" && cd "$WORK"
config() { # name precision [max_steps]
  cat > "$1.toml" <<TOML
output_dir = "$1"
max_steps = ${3:-40}
max_grad_norm = 0.01
device = "cuda:0"
precision = "$2"
seed = 3
[data]
caches = [{ t5 = "$T5", vae = "$VAE" }]
batch_size = 4
[model]
layers = 4
heads = 6
head_dim = 64
sample_size = 32
caption_channels = 4096
[optimizer]
lr = 1e-4
[schedule]
warmup_steps = 0
[checkpoints]
every = 20
[logging]
progress = false
every = 20
TOML
}
summary() {
  python3 - "$1" <<'PY'
import json, statistics, sys
l = [json.loads(x) for x in open(sys.argv[1] + "/log.jsonl")]
mean = lambda xs: statistics.mean(x["loss"] for x in xs)
print(f"{sys.argv[1]}: {len(l)} steps, {sum(x['skipped'] for x in l)} skipped, loss {mean(l[:10]):.4f} -> "
      f"{mean(l[-10:]):.4f}, {statistics.median(x['images_per_s'] for x in l[1:]):.1f} images/s")
PY
}
for p in f32 bf16 f16; do
  rm -rf "run_$p"; config "run_$p" "$p"
  "$BIN" train --config "run_$p.toml" > "run_$p.out" 2>&1 || { cat "run_$p.out"; exit 1; }
  summary "run_$p"
done
rm -rf launched; config launched f32
launch() { # name [--resume]
  RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 "$BIN" train --config "$1.toml" ${2:-} \
    > "$1.out" 2>&1 || { cat "$1.out"; exit 1; }
}
launch launched
rm -rf resumed; config resumed f32 20; launch resumed; config resumed f32 40; launch resumed --resume
python3 - <<'PY'
import json
a, b = ([json.loads(x) for x in open(f"{d}/log.jsonl")] for d in ("run_f32", "launched"))
same = len(a) == len(b) and all((x["loss"], x["grad_norm"]) == (y["loss"], y["grad_norm"]) for x, y in zip(a, b))
state = json.load(open("launched/checkpoints/step_0000040/state.json"))
print(f"launched through NCCL (one rank): log equal to the unlaunched run: {same}; rank_rngs {state.get('rank_rngs')}")
c = [json.loads(x) for x in open("resumed/log.jsonl")]
exact = len(c) == len(b) and all((x["loss"], x["grad_norm"]) == (y["loss"], y["grad_norm"]) for x, y in zip(b, c))
worst = max(abs(x["loss"] - y["loss"]) for x, y in zip(b, c))
first = next((x["step"] for x, y in zip(b, c) if (x["loss"], x["grad_norm"]) != (y["loss"], y["grad_norm"])), None)
print(f"launched, stopped at 20 and resumed to 40: {len(c)} steps, equal to the straight launch: {exact} "
      f"(first difference at step {first}, largest loss difference {worst:.3g})")
PY
