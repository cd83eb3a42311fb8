#!/usr/bin/env bash
# Regenerates docs/ingest.md from `pixforge ingest --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q
{
    echo '# `pixforge ingest` reference'
    echo
    echo 'Every flag with its default, exactly as `pixforge ingest --help` prints it (a test keeps this page'
    echo 'in step with the binary; regenerate with `tools/gen-ingest-doc.sh`).'
    echo
    echo '```text'
    target/debug/pixforge ingest --help
    echo '```'
} > docs/ingest.md
