#!/usr/bin/env bash
# Opens a report.html in headless Chromium, fails on any console or page error, and writes a
# screenshot next to it (report.png) that must not be blank.
#   tools/html-check.sh density-report/report.html
# Installs Debian's chromium-headless-shell when no Chromium is found.
set -euo pipefail
html="$(realpath "$1")"
png="${html%.html}.png"
chrome=""
for c in chrome-headless-shell chromium-headless-shell chromium chromium-browser google-chrome; do
  if command -v "$c" >/dev/null; then chrome="$c"; break; fi
done
if [ -z "$chrome" ] && [ -x /usr/lib/chromium/chrome-headless-shell ]; then chrome=/usr/lib/chromium/chrome-headless-shell; fi
if [ -z "$chrome" ]; then
  sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_ apt-get install -y -q chromium-headless-shell >/dev/null
  chrome=$(command -v chrome-headless-shell || echo /usr/lib/chromium/chrome-headless-shell)
fi
log=$(mktemp)
"$chrome" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,2400 \
  --enable-logging=stderr --v=0 --screenshot="$png" "file://$html" 2>"$log" >/dev/null || { cat "$log"; exit 1; }
if grep -E "CONSOLE|Uncaught|ERROR:.*(html|svg)" "$log" | grep -v -E "dbus|gpu|sandbox|fontconfig|Fontconfig"; then
  echo "html-check: errors while rendering $html" >&2
  exit 1
fi
python3 - "$png" <<'PY'
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
w, h = struct.unpack(">II", data[16:24])
# Count distinct colours in the decoded image rows (8-bit RGB/RGBA, no interlace): a rendered
# report has text, bars and chart lines; a blank page has one colour.
pos, idat = 8, b""
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    if kind == b"IHDR":
        depth, ctype = data[pos + 16], data[pos + 17]
    if kind == b"IDAT":
        idat += data[pos + 8:pos + 8 + n]
    pos += 12 + n
raw = zlib.decompress(idat)
bpp = 4 if ctype == 6 else 3
colours = {raw[i:i + 3] for i in range(1, min(len(raw), 4_000_000), bpp * 7)}
assert len(colours) > 8, f"screenshot looks blank ({len(colours)} colours)"
print(f"html-check: {sys.argv[1]} {w}x{h}, {len(colours)} colours sampled, no console errors")
PY
