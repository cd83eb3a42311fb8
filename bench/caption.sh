#!/usr/bin/env bash
# The captioning benchmark of issue 6 (docs/BENCHMARKS.md, "Captioning"):
# 1. openai backend: `pixforge caption --backend openai` against a loopback server that answers every
#    request after a fixed 200 ms (`pixforge bench vlm-server`), at concurrency 1, 8 and 64, on 30, 160
#    and 960 images (the 6 bundled photos at 256 px, copied under other names), end to end (tar read,
#    base64, HTTP, journal, parquet). The anchors: the ideal C / 0.2 s, and the Python client a user
#    writes with the `openai` package (AsyncOpenAI + a semaphore; bench/caption_openai_py.py).
# 2. candle backend: tokens/s of greedy generation on the tiny LLaVA (tests/fixtures/golden/llava_tiny),
#    64 new tokens, batch 1 and 4, CPU f32, against transformers' generate (bench/caption_torch.py,
#    2 threads).
# Results in docs/bench-results/caption.json. Env: VENV (torch + transformers + openai + pillow; created
# if missing), SKIP_BUILD=1, WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/pixart-bench-venv}
WORK=${WORK:-/tmp/pixforge-caption-bench}
BIN=target/release/pixforge
mkdir -p docs/bench-results "$WORK"
source bench/torch_venv.sh
torch_venv transformers==5.24.0 openai pillow
[ -n "${SKIP_BUILD:-}" ] || cargo build --release
for n in 30 160 960; do
  if [ ! -f "$WORK/shards-$n/00000_stats.json" ]; then
    rm -rf "$WORK/photos-$n" "$WORK/shards-$n"
    mkdir -p "$WORK/photos-$n"
    i=0
    while [ $i -lt $n ]; do
      for p in assets/demo/*.jpg; do
        [ $i -lt $n ] && cp "$p" "$WORK/photos-$n/$(printf %05d $i)-$(basename "$p")"
        i=$((i + 1))
      done
    done
    $BIN ingest folder "$WORK/photos-$n" --out "$WORK/shards-$n" --image-size 256 --samples-per-shard 1000 --dedup none \
      --no-progress >/dev/null
  fi
done
OUT=$(mktemp -d)
$BIN bench vlm-server --latency-ms 200 > "$OUT/addr" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$OUT/addr" ] && break; sleep 0.1; done
ENDPOINT="http://$(head -1 "$OUT/addr")"
for c in 1 8 64; do
  case $c in 1) n=30 ;; 8) n=160 ;; 64) n=960 ;; esac
  echo "== openai concurrency $c, $n images"
  rm -rf "$WORK/captions-$c"
  $BIN caption --backend openai --endpoint "$ENDPOINT" --model bench --concurrency "$c" \
    --input "$WORK/shards-$n" --out "$WORK/captions-$c" --no-progress > "$OUT/pixforge-$c.json"
  "$VENV/bin/python" bench/caption_openai_py.py "$ENDPOINT" "$WORK/shards-$n" "$c" | tee "$OUT/python-$c.json"
done
for b in 1 4; do
  echo "== candle tiny LLaVA, batch $b"
  $BIN bench caption-local --model tests/fixtures/golden/llava_tiny --image assets/demo/chelsea.jpg --batch $b \
    --tokens 64 --rounds 5 | tee "$OUT/local-$b.json"
  "$VENV/bin/python" bench/caption_torch.py tests/fixtures/golden/llava_tiny assets/demo/chelsea.jpg $b 64 5 \
    2>/dev/null | tail -1 | tee "$OUT/torch-$b.json"
done
python3 - "$OUT" <<'PY'
import json, platform, sys
out = sys.argv[1]
res = {"machine": platform.processor() or platform.machine(), "latency_ms": 200, "openai": [], "candle": []}
for c in [1, 8, 64]:
    ours = json.load(open(f"{out}/pixforge-{c}.json"))
    py = json.load(open(f"{out}/python-{c}.json"))
    rate = ours["run"]["successes"] / ours["run"]["seconds"]
    py_rate = py["captions"] / py["seconds"]
    ideal = c / 0.2
    res["openai"].append({"concurrency": c, "images": ours["run"]["samples"], "captions": ours["captions"],
                          "pixforge_captions_per_s": round(rate, 2), "python_openai_captions_per_s": round(py_rate, 2),
                          "ideal_captions_per_s": ideal, "pixforge_vs_ideal": round(rate / ideal, 3),
                          "pixforge_vs_python": round(rate / py_rate, 2)})
for b in [1, 4]:
    ours = json.load(open(f"{out}/local-{b}.json"))
    torch = json.load(open(f"{out}/torch-{b}.json"))
    res["candle"].append({"batch": b, "new_tokens": ours["new_tokens"], "prompt_tokens": ours["prompt_tokens"],
                          "pixforge_tokens_per_s": round(ours["tokens_per_second"], 1),
                          "torch_tokens_per_s": round(torch["tokens_per_second"], 1),
                          "ratio": round(ours["tokens_per_second"] / torch["tokens_per_second"], 2)})
json.dump(res, open("docs/bench-results/caption.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
