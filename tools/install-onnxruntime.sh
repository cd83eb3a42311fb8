#!/usr/bin/env bash
# Puts ONNX Runtime's shared library (from the onnxruntime wheel on PyPI, pinned to the version ort
# 2.0.0-rc.15 is built against) into DIR and prints its path. DIR defaults to the user's cache,
# ${XDG_CACHE_HOME:-$HOME/.cache}/pixforge/onnxruntime, where pixforge looks for it at run time after
# ORT_DYLIB_PATH and the binary's own folder (docs/score.md, "ONNX Runtime").
# Needs python3 with pip (only to download and unpack the wheel; nothing Python runs afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.31.1
DIR=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/pixforge/onnxruntime}
LIB="$DIR/libonnxruntime.so.$VERSION"
if [ ! -f "$LIB" ]; then
  mkdir -p "$DIR/wheel"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$DIR/wheel" "onnxruntime==$VERSION"
  WHEEL=$(ls "$DIR"/wheel/onnxruntime-"$VERSION"-*.whl | head -1)
  python3 - "$WHEEL" "$DIR" <<'PY'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for n in z.namelist():
        if "/capi/libonnxruntime" in n and ".so" in n:
            with open(os.path.join(out, os.path.basename(n)), "wb") as f:
                f.write(z.read(n))
PY
  rm -rf "$DIR/wheel"
fi
echo "$(cd "$(dirname "$LIB")" && pwd)/$(basename "$LIB")"
