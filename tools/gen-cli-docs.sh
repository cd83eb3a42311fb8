#!/usr/bin/env bash
# Regenerates the `--help` blocks of docs/ingest.md, docs/density.md and docs/train.md (tests/cli_docs.rs keeps them
# in step with the binary). docs/density.md and docs/train.md keep their hand-written guides above the `<!-- help -->` line.
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
guide=$(sed '/^<!-- help -->$/,$d' docs/density.md)
{
    echo "$guide"
    echo '<!-- help -->'
    echo '```text'
    target/debug/pixforge density --help
    echo '```'
} > docs/density.md
guide=$(sed '/^<!-- help -->$/,$d' docs/train.md)
{
    echo "$guide"
    echo '<!-- help -->'
    echo '```text'
    target/debug/pixforge sample --help
    echo '```'
} > docs/train.md
