"""What the input checks cost: a cascade runtime with its checks against the same runtime without them,
side by side at one batch size (interleaved rounds, paired per-round ratio with a bootstrap interval).

    python benchmarks/validation_overhead.py                    # quick preset, batch 256
    python benchmarks/validation_overhead.py --preset full --models cnn-s cnn-m --rounds 30

Every call validates its batch (dtype, shape, channels and size, NaN and inf, the pixel range) before
any work; the checks are one fused min/max pass over the batch. Besides the side-by-side ratio (noisy on a
shared CPU), the checks are timed alone on the same batches and given as a share of the runtime's time.
"""

from __future__ import annotations

import argparse

import torch

from dyninfer.harness import prepare
from dyninfer.methods.cascade import Cascade
from dyninfer.runtime.cost import interleaved_latency, paired_overhead, torch_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--models", nargs="+", default=None, help="the preset's pool models to cascade (default: all)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--images", type=int, default=5120, help="test images per round")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    with torch_threads(a.threads):
        prep = prepare("fashion-mnist", a.preset, kind="pool", models=a.models, progress=False, log=lambda s: None)
        c = Cascade(scores=("energy",)).fit(prep.calib)
        checked = c.runtime(prep.paths)
        unchecked = c.runtime(prep.paths)
        unchecked.check = lambda x: x  # the same runtime, no input checks at all
        x = prep.data.test.x[:a.images]
        batches = [x[i:i + a.batch] for i in range(0, x.shape[0], a.batch)]
        assert torch.equal(torch.cat([checked(b).pred for b in batches]), torch.cat([unchecked(b).pred for b in batches]))
        lat = interleaved_latency({"with checks": lambda: [checked(b) for b in batches],
                                   "without": lambda: [unchecked(b) for b in batches]}, rounds=a.rounds, warmup=2,
                                  clock="wall")
        # the checks alone, timed on the same batches: their share of a batch's time is the precise figure
        checks = interleaved_latency({"checks alone": lambda: [checked.check(b) for b in batches]}, rounds=a.rounds,
                                     warmup=2, clock="wall")["checks alone"]
    o = paired_overhead(lat, "with checks", "without")
    print(f"cascade {' > '.join(c.stages_)}, batch {a.batch}, {x.shape[0]} images per round, {a.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    for k, v in lat.items():
        print(f"  {k:12s} median {v['median_ms']:.2f} ms per round ({x.shape[0] / v['median_ms'] * 1e3:.0f} img/s)")
    print(f"  paired per-round ratio: the checked runtime takes {o['pct']:+.2f}% longer (95% bootstrap interval "
          f"{o['ci_low_pct']:+.2f} to {o['ci_high_pct']:+.2f}%)")
    print(f"  the checks alone: {checks['median_ms'] / len(batches) * 1e3:.1f} us per batch of {a.batch}, "
          f"{100 * checks['median_ms'] / lat['without']['median_ms']:.2f}% of the unchecked runtime's time")


if __name__ == "__main__":
    main()
