#!/usr/bin/env bash
# Regenerates the `--help` blocks of docs/ingest.md, docs/density.md, docs/train.md and docs/latents.md (tests/cli_docs.rs keeps them
# in step with the binary). docs/density.md, docs/train.md and docs/latents.md keep their hand-written guides above the `<!-- help -->` line.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q
{
    echo '# `pixforge ingest` reference'
    echo
    echo 'Every flag with its default, exactly as `pixforge ingest --help` prints it (a test keeps this page'
    echo 'in step with the binary; regenerate with `tools/gen-cli-docs.sh`).'
    echo
    echo '```text'
    target/debug/pixforge ingest --help
    echo '```'
} > docs/ingest.md
# A page's hand-written guide (above `<!-- help -->`) followed by the --help of each command given
# (one quoted argument per command, e.g. "cache t5").
with_help() {
    local page=$1; shift
    local guide
    guide=$(sed '/^<!-- help -->$/,$d' "$page")
    {
        echo "$guide"
        echo '<!-- help -->'
        for cmd in "$@"; do
            if [ $# -gt 1 ]; then
                echo
                echo "\`pixforge $cmd --help\`:"
                echo
            fi
            echo '```text'
            # shellcheck disable=SC2086
            target/debug/pixforge $cmd --help
            echo '```'
        done
    } > "$page"
}
with_help docs/density.md density
with_help docs/train.md sample train
with_help docs/score.md "score clip" "score laion-emb" "score aesthetic" filter dedup balance
with_help docs/caption.md caption
with_help docs/browse.md browse status
with_help docs/pipelines.md run demo
with_help docs/latents.md "cache t5" "cache vae" "export pixart-official"
