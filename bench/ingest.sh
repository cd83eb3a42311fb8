#!/usr/bin/env bash
# Ingest benchmark: pixforge against img2dataset 1.47 and against this machine's limit for the work
# (one-core OpenCV/libjpeg-turbo decode + resize + encode, times the cores), on the same corpus of
# real-photo JPEGs served by nginx on loopback, with the same settings: 512 px keep_ratio, JPEG
# quality 95, sha256, WebDataset output. Installs what it needs (nginx, a venv with img2dataset,
# OpenCV and Pillow). Writes $WORK/results.json and prints a markdown table.
#
#   bench/ingest.sh                          # N=3000 images, libjpeg-turbo build
#   N=1000 WORK=/tmp/b bench/ingest.sh
#   FEATURES= bench/ingest.sh                # the pure-Rust build
#   SKIP_BUILD=1 bench/ingest.sh             # use target/release/pixforge as it is
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/pixforge-bench}
N=${N:-3000}
SHARED=${SHARED:-$ROOT/tests/data/images}
PORT=18080
FEATURES=${FEATURES-libjpeg-turbo}
mkdir -p "$WORK"

command -v nginx >/dev/null || { apt-get update -q && apt-get install -y -q nginx; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ ! -x "$WORK/venv/bin/img2dataset" ]; then
    python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install -q img2dataset==1.47.0 opencv-python-headless pillow
fi
PY="$WORK/venv/bin/python"
if [ -n "$FEATURES" ] && ! command -v nasm >/dev/null; then apt-get update -q && apt-get install -y -q nasm; fi
[ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && cargo build --release -q --features "$FEATURES")
PIXFORGE="$ROOT/target/release/pixforge"

if [ ! -f "$WORK/corpus/urls.txt" ]; then
    "$PY" "$ROOT/bench/make_corpus.py" "$WORK/corpus" "$N" "http://127.0.0.1:$PORT" "$SHARED"
fi
"$NGINX" -p "$WORK/corpus" -c "$ROOT/bench/nginx.conf"
trap '"$NGINX" -p "$WORK/corpus" -c "$ROOT/bench/nginx.conf" -s stop' EXIT
cat "$WORK"/corpus/img/*.jpg > /dev/null   # page cache warm for every run alike
curl -sf "http://127.0.0.1:$PORT/img/00000.jpg" -o /dev/null

now() { date +%s.%N; }
count_ok() { "$PY" - "$1" <<'PY'
import glob, json, sys
print(sum(json.load(open(f))["successes"] for f in glob.glob(sys.argv[1] + "/*_stats.json")))
PY
}

echo "== machine limit (OpenCV, one core x cores)"
LIMIT_JSON=$("$PY" "$ROOT/bench/opencv_limit.py" "$WORK/corpus/img" 512 95)
echo "$LIMIT_JSON"

echo "== img2dataset 1.47"
rm -rf "$WORK/out-i2d"
t0=$(now)
"$WORK/venv/bin/img2dataset" --url_list "$WORK/corpus/urls.txt" --input_format txt \
    --output_folder "$WORK/out-i2d" --output_format webdataset --image_size 512 --resize_mode keep_ratio \
    --encode_quality 95 --compute_hash sha256 --processes_count 2 --thread_count 32 \
    --number_sample_per_shard 1000 --extract_exif False --timeout 30 > "$WORK/i2d.log" 2>&1
t1=$(now)
I2D_S=$(awk "BEGIN{print $t1 - $t0}"); I2D_OK=$(count_ok "$WORK/out-i2d")
echo "img2dataset: $I2D_OK images in $I2D_S s"

run_pixforge() { # name, extra flags...
    local name=$1; shift
    rm -rf "$WORK/out-$name"
    local t0 t1
    t0=$(now)
    "$PIXFORGE" ingest laion "$WORK/corpus/urls.txt" --out "$WORK/out-$name" --caption-col '' \
        --image-size 512 --resize-mode keep_ratio --encode-quality 95 --samples-per-shard 1000 \
        --allow-private-addresses --dedup exact --no-progress "$@" > "$WORK/$name.log" 2>&1
    t1=$(now)
    local s ok
    s=$(awk "BEGIN{print $t1 - $t0}"); ok=$(count_ok "$WORK/out-$name")
    echo "pixforge $name: $ok images in $s s" >&2
    echo "\"$name\": {\"seconds\": $s, \"images\": $ok}"
}
echo "== pixforge"
P_FULL=$(run_pixforge full-decode --dct-downscale false)
P_DEFAULT=$(run_pixforge default)
P_FITS=$(run_pixforge fits-kept --resize-only-if-bigger --skip-reencode)

echo "== SA-1B path: 1500 px sources into 512 px shards"
N_SA=${N_SA:-300}
[ -f "$WORK/sa_000000.tar" ] || "$PY" "$ROOT/bench/make_sa1b.py" "$WORK/sa_000000.tar" "$N_SA" "$SHARED"
run_sa1b() { # name, extra flags...
    local name=$1; shift
    rm -rf "$WORK/out-sa-$name"
    local t0 t1 s ok
    t0=$(now)
    "$PIXFORGE" ingest sa1b "$WORK/sa_000000.tar" --out "$WORK/out-sa-$name" --image-size 512 \
        --resize-mode keep_ratio --encode-quality 95 --dedup exact --no-progress "$@" > "$WORK/sa-$name.log" 2>&1
    t1=$(now)
    s=$(awk "BEGIN{print $t1 - $t0}"); ok=$(count_ok "$WORK/out-sa-$name")
    echo "pixforge sa1b $name: $ok images in $s s" >&2
    echo "\"$name\": {\"seconds\": $s, \"images\": $ok}"
}
S_FULL=$(run_sa1b full-decode --dct-downscale false)
S_DCT=$(run_sa1b dct-downscale)

cat > "$WORK/results.json" <<JSON
{"corpus_images": $N, "features": "$FEATURES", "limit": $LIMIT_JSON,
 "img2dataset": {"seconds": $I2D_S, "images": $I2D_OK},
 "pixforge": {$P_FULL, $P_DEFAULT, $P_FITS},
 "sa1b": {$S_FULL, $S_DCT}}
JSON
"$PY" - "$WORK/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
limit = r["limit"]["limit_img_s"]
i2d = r["img2dataset"]["images"] / r["img2dataset"]["seconds"]
print("| run | images | seconds | images/s | vs img2dataset | vs machine limit |")
print("|---|---|---|---|---|---|")
print(f"| machine limit (OpenCV 1 core x {r['limit']['cores']}) | {r['limit']['images']} | | {limit:.0f} | {limit/i2d:.2f}x | 100% |")
print(f"| img2dataset 1.47 | {r['img2dataset']['images']} | {r['img2dataset']['seconds']:.1f} | {i2d:.0f} | 1.00x | {100*i2d/limit:.0f}% |")
for k, v in r["pixforge"].items():
    ips = v["images"] / v["seconds"]
    print(f"| pixforge {k} | {v['images']} | {v['seconds']:.1f} | {ips:.0f} | {ips/i2d:.2f}x | {100*ips/limit:.0f}% |")
print()
print("| SA-1B path (1500 px short side -> 512) | images | seconds | images/s |")
print("|---|---|---|---|")
for k, v in r["sa1b"].items():
    print(f"| pixforge sa1b {k} | {v['images']} | {v['seconds']:.1f} | {v['images'] / v['seconds']:.1f} |")
PY
