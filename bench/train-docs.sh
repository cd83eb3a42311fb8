#!/usr/bin/env bash
# Makes the two pictures of docs/train.md ("What it tells you"): the loss curve and a validation grid
# of a 6000-step `pixforge train` run of a tiny model on the bundled photos (ingested at 64 px),
# cached through the tiny random T5 of the test fixtures and the tiny VAE of `init-tiny` (which
# carries the image): the run of tests/learns.rs, with validation grids.
# Writes docs/img/train-loss.svg and docs/img/train-validation.png. Env: WORK, SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-$(mktemp -d)}
BIN=target/release/pixforge
[ -n "${SKIP_BUILD:-}" ] || cargo build --release
$BIN demo --out "$WORK/demo" >/dev/null
$BIN ingest folder "$WORK/demo/input" --out "$WORK/shards" --image-size 64 --samples-per-shard 4 --no-progress >/dev/null
$BIN models init-tiny --kind vae --out "$WORK/tiny" >/dev/null
$BIN cache t5 --model tests/fixtures/pixart-pipeline --input "$WORK/shards" --out "$WORK/t5" --no-progress >/dev/null
$BIN cache vae --model "$WORK/tiny" --resolution 64 --input "$WORK/shards" --out "$WORK/vae" --no-progress >/dev/null
cut -f2 assets/demo/captions.txt > "$WORK/prompts.txt"
cat > "$WORK/train.toml" <<TOML
output_dir = "run"
max_steps = 6000
seed = 3
ema_decay = 0.99
[data]
caches = [{ t5 = "t5", vae = "vae" }]
batch_size = 6
[model]
layers = 2
heads = 2
head_dim = 16
sample_size = 8
caption_channels = 16
[optimizer]
lr = 3e-3
weight_decay = 0.0
[checkpoints]
every = 2000
[logging]
every = 50
[validation]
prompts = "prompts.txt"
t5 = "$PWD/tests/fixtures/pixart-pipeline"
vae = "tiny"
every = 2000
seeds = [0, 1]
steps = 20
TOML
$BIN train --config "$WORK/train.toml"
mkdir -p docs/img
cp "$WORK/run/loss.svg" docs/img/train-loss.svg
cp "$WORK/run/samples/step_0006000.png" docs/img/train-validation.png
echo "written docs/img/train-loss.svg and docs/img/train-validation.png (run in $WORK/run)"
