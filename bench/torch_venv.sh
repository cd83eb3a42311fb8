# Sourced by the benchmark scripts: makes sure "$VENV" is a virtual environment with CPU PyTorch 2.15
# (the anchors' version) and the packages given, e.g. `torch_venv transformers==5.24.0 pillow`.
torch_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch==2.15.0 --index-url https://download.pytorch.org/whl/cpu \
      || "$VENV/bin/pip" install -q torch==2.15.0
  fi
  if [ $# -gt 0 ]; then "$VENV/bin/pip" install -q "$@"; fi
}
