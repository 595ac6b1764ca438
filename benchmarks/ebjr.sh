#!/usr/bin/env bash
# Every EBJR figure beyond the cascade's own (benchmarks/cascade.sh), Fashion-MNIST, one after another
# (never side by side: each times its runtimes on the same cores). Checkpoints are cached, so a rerun only
# records and times.
#   reports/ebjr-specialised/   specialised and distilled students (section 2.4, Fig. 6 right, Fig. 12, Table 4, 5.7)
#   reports/ebjr-in-network/    the cascade inside one early-exit network (supplementary 5.3) and 5.4's correlations
#   reports/ebjr-regression/    energy-based regression (section 2.2): MAE-cost curves, energy vs variance router
#   reports/ebjr-detection/     detection (section 2.3): mAP-cost curves and the measured speed-up
# Regression and detection are registered methods: `dyninfer run cascade-regression|cascade-detection` (any preset;
# `--preset quick` takes a few minutes), timed on one torch thread by the CPU time of the timing thread.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY benchmarks/ebjr_specialised.py --epochs 5
$PY benchmarks/ebjr_in_network.py
.venv/bin/dyninfer run cascade-regression --preset full --threads 1 --clock cpu --out reports/ebjr-regression
.venv/bin/dyninfer run cascade-detection --preset full --threads 1 --clock cpu --out reports/ebjr-detection
