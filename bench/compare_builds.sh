#!/usr/bin/env bash
# Two pixforge builds measured side by side in one run on this machine (e.g. before and after a
# change, to show it costs nothing): the training step (`bench pixart-step`), the feature-cache
# encoders (`bench latents`, on bench/latents_models.py's random-weight SD VAE and T5 v1.1-base) and
# ingest (`ingest laion` of bench/ingest.sh's corpus served by nginx on loopback, default settings),
# the two builds alternating ROUNDS times so the machine's drift hits both alike. Median per side.
#
#   bench/compare_builds.sh OLD/pixforge NEW/pixforge
#   ROUNDS=3 ITERS=7 N=1000 bench/compare_builds.sh …
#
# Env: ROUNDS (3), ITERS (7, timed training steps per round), N (images of the ingest corpus, 1000),
# VENV (PyTorch venv that writes the encoder models, made by bench/torch_venv.sh), MODELS, WORK.
# Results: docs/bench-results/compare_builds.json.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=$(realpath "$1"); NEW=$(realpath "$2")
ROUNDS=${ROUNDS:-3}; ITERS=${ITERS:-7}; N=${N:-1000}
VENV=${VENV:-/tmp/pixart-bench-venv}
MODELS=${MODELS:-/tmp/pixforge-latents-bench-models}
WORK=${WORK:-/tmp/pixforge-compare}
PORT=18080
mkdir -p "$WORK" "$ROOT/docs/bench-results"
cd "$ROOT"
source bench/torch_venv.sh
torch_venv diffusers==0.42.1 transformers==5.24.0 pillow
[ -f "$MODELS/t5/model.safetensors" ] || "$VENV/bin/python" bench/latents_models.py "$MODELS"
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { apt-get update -q && apt-get install -y -q nginx; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -f "$WORK/corpus/urls.txt" ] || "$VENV/bin/python" bench/make_corpus.py "$WORK/corpus" "$N" "http://127.0.0.1:$PORT" tests/data/images
"$NGINX" -p "$WORK/corpus" -c "$ROOT/bench/nginx.conf"
trap '"$NGINX" -p "$WORK/corpus" -c "$ROOT/bench/nginx.conf" -s stop' EXIT
cat "$WORK"/corpus/img/*.jpg > /dev/null

ingest() { # binary, out
    rm -rf "$2"
    local t0 t1
    t0=$(date +%s.%N)
    "$1" ingest laion "$WORK/corpus/urls.txt" --out "$2" --caption-col '' --image-size 512 \
        --resize-mode keep_ratio --encode-quality 95 --samples-per-shard 1000 --allow-private-addresses \
        --dedup exact --no-progress > /dev/null 2>&1
    t1=$(date +%s.%N)
    awk "BEGIN{print $t1 - $t0}"
}
OUT=$(mktemp -d)
for r in $(seq "$ROUNDS"); do
    for side in old new; do
        bin=$OLD; [ "$side" = new ] && bin=$NEW
        echo "== round $r, $side"
        "$bin" bench pixart-step --iters "$ITERS" > "$OUT/step-$side-$r.json"
        "$bin" bench latents --models "$MODELS" --prompts tests/data/prompts/pixart_alpha_samples.txt \
            --tokenizer assets/t5/tokenizer.json > "$OUT/latents-$side-$r.json"
        ingest "$bin" "$WORK/out-$side" > "$OUT/ingest-$side-$r.txt"
        cat "$OUT/step-$side-$r.json" "$OUT/latents-$side-$r.json" "$OUT/ingest-$side-$r.txt"
    done
done
python3 - "$OUT" "$ROUNDS" "$N" "$OLD" "$NEW" <<'PY'
import json, platform, statistics, sys
out, rounds, n, old, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def side(name):
    steps = [x for r in range(1, rounds + 1) for x in json.load(open(f"{out}/step-{name}-{r}.json"))["steps"]]
    lat = [json.load(open(f"{out}/latents-{name}-{r}.json")) for r in range(1, rounds + 1)]
    ing = [float(open(f"{out}/ingest-{name}-{r}.txt").read()) for r in range(1, rounds + 1)]
    med = statistics.median
    return {
        "train_step_s": med(steps),
        "vae_256_images_per_s": med(l["vae_256_images_per_s"] for l in lat),
        "vae_512_images_per_s": med(l["vae_512_images_per_s"] for l in lat),
        "t5_captions_per_s": med(l["t5_captions_per_s"] for l in lat),
        "ingest_images_per_s": med(n / s for s in ing),
    }
res = {"machine": platform.processor() or platform.machine(), "rounds": rounds, "ingest_images": n,
       "old": {"binary": old, **side("old")}, "new": {"binary": new, **side("new")}}
json.dump(res, open("docs/bench-results/compare_builds.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
