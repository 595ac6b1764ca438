#!/usr/bin/env bash
# Set up dyninfer on a fresh machine: Debian's Fashion-MNIST package, a virtual environment in .venv with
# torch/torchvision (pinned) and the package itself in editable mode with its tests. One line per step; the
# tools' own output goes to .venv/setup.log and is shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

LOG=".venv/setup.log"
step() {  # step "what" command...: run quietly, print one line, show the log's tail on failure
  local what="$1"; shift
  local t0=$SECONDS
  if "$@" >>"$LOG" 2>&1; then
    echo "[setup] $what ($((SECONDS - t0)) s)"
  else
    echo "[setup] FAILED: $what; the last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
}

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
mkdir -p .venv
: >"$LOG"

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  step "apt: dataset-fashion-mnist" $SUDO env DEBIAN_FRONTEND=noninteractive sh -c \
    "apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist"
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  step "apt: chromium and chromium-driver (the web page's browser test)" $SUDO env DEBIAN_FRONTEND=noninteractive \
    sh -c "apt-get update -qq && apt-get install -y -qq chromium chromium-driver"
fi
if [ ! -x .venv/bin/python ]; then
  step "virtual environment .venv ($($PY --version))" "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
step "pip itself" .venv/bin/python -m pip install -q --upgrade pip
step "torch==2.14.1, torchvision==0.29.1 (a few minutes the first time)" \
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
step "dyninfer with its ONNX, serving, Ray and detection extras and its test dependencies" \
  .venv/bin/python -m pip install -q -e ".[test,onnx,serve,ray,detection,search]"
echo "[setup] done: $(.venv/bin/dyninfer list methods | cut -d: -f1 | paste -sd, -) ready"
