#!/usr/bin/env bash
# Object-store benchmark (docs/BENCHMARKS.md, "Ingest into an object store"): `pixforge ingest
# folder` of the ingest benchmark's corpus (N real-photo JPEGs of web sizes, bench/make_corpus.py)
# into a local folder and into the loopback S3-compatible server of the tests (s3s-fs, the example
# s3_server, with signature checks, on the same machine), alternating, ROUNDS rounds; the ratio of
# the medians is the figure. The CPU seconds of each run (user + system) and the server's own CPU
# seconds for each upload run are recorded too: on one machine the server takes its share of the
# same cores. Writes docs/bench-results/store.json.
#
#   bench/store.sh                     # N=1000, 3 rounds
#   N=300 ROUNDS=1 SKIP_BUILD=1 bench/store.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/pixforge-store-bench}
N=${N:-1000}
ROUNDS=${ROUNDS:-3}
mkdir -p "$WORK" "$ROOT/docs/bench-results"
if ! python3 -c "import PIL" 2>/dev/null && [ ! -x "$WORK/venv/bin/python" ]; then
    python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install -q pillow
fi
PY=python3
python3 -c "import PIL" 2>/dev/null || PY="$WORK/venv/bin/python"
[ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && cargo build --release -q && cargo build --release -q --example s3_server)
[ -x /usr/bin/time ] || { echo "bench/store.sh needs GNU time (apt-get install time)" >&2; exit 1; }
PIXFORGE="$ROOT/target/release/pixforge"
if [ ! -d "$WORK/corpus/img" ]; then
    "$PY" "$ROOT/bench/make_corpus.py" "$WORK/corpus" "$N" "http://127.0.0.1:1" "$ROOT/tests/data/images"
fi
"$ROOT/target/release/examples/s3_server" bench >"$WORK/endpoint" 2>"$WORK/server.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$WORK/endpoint" ] && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=pixforge-test AWS_SECRET_ACCESS_KEY=pixforge-test-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=$(head -1 "$WORK/endpoint") AWS_ALLOW_HTTP=true
cat "$WORK"/corpus/img/*.jpg >/dev/null

: >"$WORK/times.tsv"
SERVER_PID=$(pgrep -f "examples/s3_server bench" | head -1)
ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
run() { # run WHERE OUT
    local start end before after
    before=$(ticks)
    start=$(date +%s.%N)
    /usr/bin/time -f "%U %S" -o "$WORK/cpu" "$PIXFORGE" ingest folder "$WORK/corpus/img" --out "$2" \
        --image-size 512 --resize-mode keep_ratio --samples-per-shard 100 --no-progress >"$WORK/last.out"
    end=$(date +%s.%N)
    after=$(ticks)
    printf '%s\t%s\t%s\t%s\n' "$1" "$(python3 -c "print(round($end - $start, 3))")" \
        "$(awk '{print $1 + $2}' "$WORK/cpu")" "$(python3 -c "print(round(($after - $before) / $(getconf CLK_TCK), 2))")" \
        | tee -a "$WORK/times.tsv"
}
for r in $(seq "$ROUNDS"); do
    rm -rf "$WORK/local-$r"
    run local "$WORK/local-$r"
    run s3 "s3://bench/round-$r"
done
python3 - "$WORK/times.tsv" "$N" "$ROOT/docs/bench-results/store.json" <<'PY'
import json, platform, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
t = {w: [float(r[1]) for r in rows if r[0] == w] for w in ("local", "s3")}
cpu = {w: [float(r[2]) for r in rows if r[0] == w] for w in ("local", "s3")}
server = [float(r[3]) for r in rows if r[0] == "s3"]
med = {w: statistics.median(v) for w, v in t.items()}
n = int(sys.argv[2])
res = {"machine": platform.processor() or platform.machine(), "images": n, "rounds": len(t["local"]),
       "seconds": t, "images_per_s": {w: round(n / m, 1) for w, m in med.items()},
       "s3_over_local": round(med["local"] / med["s3"], 3),
       "client_cpu_seconds": cpu, "server_cpu_seconds": server,
       "client_cpu_local_over_s3": round(statistics.median(cpu["local"]) / statistics.median(cpu["s3"]), 3)}
json.dump(res, open(sys.argv[3], "w"), indent=1)
print(json.dumps(res, indent=1))
PY
