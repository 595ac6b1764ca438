#!/usr/bin/env bash
# The headline comparison: every registered family on the `full` preset, the same splits and test images.
# Writes reports/compare-fashion-mnist-full/ (one table, accuracy against FLOPs, batch-1 and serving-batch
# time, and energy). About 15 minutes on 2 CPU cores once the models are cached.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/dyninfer compare --preset full --dataset fashion-mnist --out reports/compare-fashion-mnist-full "$@"
