#!/usr/bin/env bash
# The big/little NAS figures: `dyninfer run bigsmall` on Fashion-MNIST (preset: first argument, default `quick`).
# Co-trains (cached, resumable per phase) the big/little supernet and its router, records the deployed pair, fits
# the router and threshold on calibration, runs it beside the plain big subnet, then writes section 5 of the paper:
# 5.1 (little, big, dynamic at τ 0.5/0.7/0.9, the torchvision baselines trained here, the fixed MobileNetV3
# cascade, the project's cascade and early exits, once-for-all singles; all timed side by side), co-training vs the
# independent cascade, 5.2 Pareto plots, 5.3 the three search strategies (state cached: a rerun resumes), 5.4.1
# routers, 5.4.2-5.4.4 ablation arms (each arm's supernet cached), 4.6 ONNX/FP16/INT8 and 5.6.
# Writes reports/bigsmall-fashion-mnist-<preset>/. Extra arguments go to `dyninfer run`, e.g.
#   benchmarks/bigsmall.sh quick --figure 'seeds=[1,2]'   or   --set pair=reports/search/search.json
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-quick}"
shift || true
.venv/bin/dyninfer run bigsmall --preset "$preset" --dataset fashion-mnist \
  --out "reports/bigsmall-fashion-mnist-$preset" "$@"
