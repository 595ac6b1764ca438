#!/usr/bin/env bash
# The AdaptaNet figures: `dyninfer run slimmable` on the `full` preset, Fashion-MNIST.
# Trains (cached, resumable per phase) the teacher and the AdaptaNet supernet (cascade, locking-in, δ cascade,
# Var Gates), records every path of the `all` path set (uniform widths, δ, the four mixed configurations), measures
# their costs, fits the gate-scored confidence cascade on calibration, runs it beside the plain x1.0 network, then
# trains the US-Net / DS-Net baselines and their random-3 variants and writes Table II, Fig. 3, Fig. 4, Table III,
# the load-aware budgets and the frontiers. Writes reports/slimmable-fashion-mnist-full/ (report.md, results.json,
# PNGs; per-phase seconds are in the Fig. 3 section and results.json).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/dyninfer run slimmable --preset full --dataset fashion-mnist --out reports/slimmable-fashion-mnist-full "$@"
