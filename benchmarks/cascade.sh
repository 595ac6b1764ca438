#!/usr/bin/env bash
# Benchmark behind the cascade figures (issue: foundation + EBJR): the `full` preset on
# Fashion-MNIST. Trains the three CNNs once (cached), then measures costs, traces, routers and
# the runtime side by side in one run. Writes reports/cascade-fashion-mnist-full/.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/dyninfer cascade --preset full --dataset fashion-mnist --out reports/cascade-fashion-mnist-full "$@"
