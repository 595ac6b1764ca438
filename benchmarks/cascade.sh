#!/usr/bin/env bash
# The cascade figures: `dyninfer cascade` (= `dyninfer run cascade`) on the `full` preset, Fashion-MNIST.
# Trains the pool once (cached), then measures costs, fits chain, router and thresholds on calibration,
# runs the cascade beside the plain teacher, compares the routers. Writes reports/cascade-fashion-mnist-full/.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/dyninfer cascade --preset full --dataset fashion-mnist --out reports/cascade-fashion-mnist-full "$@"
