#!/usr/bin/env bash
# Prints the path of a headless-capable Chromium for the browser tests (tests/browse.rs), installing
# Debian's `chromium` package with apt when the machine has none. PIXFORGE_CHROMIUM names another
# Chromium or Chrome binary. Needs root (or sudo without a password) only when it installs.
set -euo pipefail
if [ -n "${PIXFORGE_CHROMIUM:-}" ]; then
  echo "$PIXFORGE_CHROMIUM"
  exit 0
fi
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null; then
    command -v "$name"
    exit 0
  fi
done
SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO="sudo -n"
fi
if ! command -v apt-get >/dev/null; then
  echo "no Chromium found and no apt-get to install one: install Chromium or set PIXFORGE_CHROMIUM" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
($SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends chromium) >&2 || {
  echo "could not install Debian's chromium package with apt-get: install Chromium or set PIXFORGE_CHROMIUM" >&2
  exit 1
}
command -v chromium
