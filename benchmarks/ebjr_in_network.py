"""EBJR inside one network (supplementary 5.3) and the theory checks of supplementary 5.4, on Fashion-MNIST.

    python benchmarks/ebjr_in_network.py                 # -> reports/ebjr-in-network/ (full preset, cached)
    python benchmarks/ebjr_in_network.py --preset quick  # the quick preset's early-exit network

The multi-column early-exit network of the preset (revcol, cached checkpoint and traces) is the one network.
Its first exit is the student and its last the teacher: the early-exit method with ``exits=[first, last]`` and
the ``energy`` score is the cascade inside one network (the intermediate heads do not run; their columns do).
Beside it, on the same trace and network: the early-exit policy over every exit (max-softmax, as the early-exit
paper, and energy), and the first-and-last cascade with max-softmax. Every operating point is certified on the
calibration split (tolerance ``--tolerance`` at 95%); accuracy and FLOPs are measured on the test split; the
runtimes are timed side by side (interleaved rounds, batch 256, one thread) beside the network forced to its
last exit. Supplementary 5.4: the point-biserial correlation and AUROC of -F, max-softmax and entropy with the
first exit's correctness on the same test trace.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from scipy.stats import pointbiserialr
from sklearn.metrics import roc_auc_score

from dyninfer.evaluate.frontier import hull_cost_to_reach
from dyninfer.harness import prepare
from dyninfer.methods.early_exit import EarlyExit
from dyninfer.report.plots import tradeoff_plot
from dyninfer.report.tables import markdown_table
from dyninfer.report.writer import Section, provenance, write_report
from dyninfer.runtime.cost import interleaved_latency
from dyninfer.scores import make_score


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="full")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--tolerance", type=float, default=0.005, help="accuracy the policies may lose (certified)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--images", type=int, default=2048, help="test images timed per round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="reports/ebjr-in-network")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    prep = prepare(args.dataset, args.preset, kind="staged", seed=args.seed, progress=False,
                   log=lambda s: print(s, flush=True))
    calib, test, paths = prep.calib, prep.test, prep.paths
    first, last = calib.paths[0], calib.paths[-1]
    total = sum(c.flops for c in test.costs)
    policies = {
        "early exit, max-softmax, every exit": EarlyExit(score="max_softmax", tolerance=args.tolerance),
        "early exit, energy, every exit": EarlyExit(score="energy", tolerance=args.tolerance),
        f"EBJR in one network: energy, {first} > {last}": EarlyExit(score="energy", tolerance=args.tolerance,
                                                                    exits=[first, last]),
        f"max-softmax, {first} > {last}": EarlyExit(score="max_softmax", tolerance=args.tolerance,
                                                     exits=[first, last]),
    }
    ref_acc = test.accuracy(last)
    rows, curves, res = [], [], {}
    for label, m in policies.items():
        m.fit(calib)
        out, curve = m.simulate(test), m.curve(test)
        front = curve.frontier()
        at_ref = hull_cost_to_reach(front.cost, front.accuracy, ref_acc - args.tolerance)
        res[label] = {"settings": m.get_params(), "knob": list(m.knob_), "certified": m.operating_point_.certified,
                      "test_accuracy": out.accuracy, "test_flops": out.mean_flops,
                      "exit_shares": np.bincount(out.path, minlength=len(m.exits_)).tolist(),
                      "test_flops_at_reference_minus_tolerance": at_ref}
        rows.append([label, "yes" if m.operating_point_.certified else "no", f"{100 * out.accuracy:.2f}",
                     f"{out.mean_flops / 1e6:.2f}", f"{total / out.mean_flops:.2f}x",
                     "—" if at_ref is None else f"{at_ref / 1e6:.2f}",
                     " / ".join(f"{100 * v / test.n:.0f}%" for v in res[label]["exit_shares"])])
        curves.append({"label": label, "x": front.cost / 1e6, "y": front.accuracy})
        print(f"[bench] {label}: test {100 * out.accuracy:.2f}%, {out.mean_flops / 1e6:.2f} MFLOPs", flush=True)

    # measured: every policy's runtime, and the network forced to its last exit, on the same batches
    xs = test.inputs()[:args.images]
    rts = {label: m.runtime(paths) for label, m in policies.items()}
    forced = policies[next(iter(policies))].runtime(paths)
    forced.force(last)
    calls = {label: (lambda r=rt: r.run(xs, 256)) for label, rt in rts.items()}
    calls["network to its last exit"] = lambda: forced.run(xs, 256)
    timing = interleaved_latency(calls, rounds=args.rounds, warmup=1, clock="cpu")
    base = timing["network to its last exit"]["median_ms"]
    trows = [[k, f"{v['median_ms'] / len(xs):.4f}", f"{base / v['median_ms']:.2f}x"] for k, v in timing.items()]
    for k, v in timing.items():
        print(f"[bench] time {k}: {v['median_ms'] / len(xs):.4f} ms/img ({base / v['median_ms']:.2f}x)", flush=True)

    # supplementary 5.4: scores of the first exit against its correctness, on the same test trace
    z, corr = test.logits_of(first), test.correct[0]
    srows, corrs = [], {}
    for name in ("energy", "max_softmax", "entropy", "margin"):
        s = make_score(name)(z).numpy().astype(np.float64)
        r = float(pointbiserialr(corr, s).statistic)
        corrs[name] = {"r": r, "auroc": float(roc_auc_score(corr, s))}
        srows.append([name, f"{r:.3f}", f"{corrs[name]['auroc']:.4f}"])
    best = max(corrs, key=lambda k: corrs[k]["auroc"])
    md = (f"Network: {', '.join(prep.model_meta) or 'the preset early-exit network'} "
          f"({len(test.paths)} exits, {total / 1e6:.2f} MFLOPs through its last exit; {first} alone "
          f"{test.costs[0].flops / 1e6:.2f} MFLOPs, {100 * test.accuracy(first):.2f}%; {last} {100 * ref_acc:.2f}%). "
          f"Operating points certified on {calib.n} calibration images (tolerance {args.tolerance}, 95%); test on "
          f"{test.n}. 'MFLOPs at ref - tol': the cheapest point of the test curve's upper hull reaching the last "
          f"exit's accuracy minus the tolerance (threshold-free).\n\n"
          + markdown_table(["policy", "certified", "test %", "MFLOPs/img", "fewer FLOPs", "MFLOPs at ref - tol",
                            "exit shares"], rows)
          + f"\n\nMeasured on this machine ({args.rounds} interleaved rounds over {len(xs)} test images, batch 256, "
            "one thread, CPU time), against the network run to its last exit:\n\n"
          + markdown_table(["runtime", "ms / image", "speed-up"], trows)
          + f"\n\nSupplementary 5.4 on the same test trace: each score of {first}'s logits against its correctness "
            f"(point-biserial r, AUROC). Best here: **{best}**.\n\n" + markdown_table(["score", "r", "AUROC"], srows))
    sections = [Section("in_network", "A cascade inside one network (supplementary 5.3) and the scores' correlations "
                        "(5.4)", md, {"policies": res, "timing": timing, "correlations": corrs},
                        {"in_network_vs_early_exit.png": lambda p: tradeoff_plot(
                            p, curves=curves, points=[{"label": n, "x": c.flops / 1e6, "y": test.accuracy(n),
                                                       "marker": "s", "legend": False, "annotate": n}
                                                      for n, c in zip(test.paths, _cumulative(test.costs))],
                            xlabel="MFLOPs per image", title="early exits vs EBJR inside one network (test)")})]
    results = {"provenance": provenance(vars(args), args.seed), "seconds": time.perf_counter() - t0}
    write_report(args.out, title="EBJR inside one network", sections=sections, results=results)
    print(f"[bench] wrote {args.out}/report.md ({time.perf_counter() - t0:.0f} s)")
    return 0


def _cumulative(costs):
    """Each exit's cost when a sample leaves there (every earlier stage paid)."""
    import dataclasses

    acc, out = 0, []
    for c in costs:
        acc += c.flops
        out.append(dataclasses.replace(c, flops=acc))
    return out


if __name__ == "__main__":
    sys.exit(main())
