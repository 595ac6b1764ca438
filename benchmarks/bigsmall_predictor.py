"""How well the once-for-all accuracy predictor ranks little/big pairs of the co-trained supernet, and how many
measured pairs it needs (section 3.5.3 of the NAS-for-dynamic-inference paper; the RMSE figure of its issue).

    python benchmarks/bigsmall_predictor.py                  # quick preset's supernet (trained and cached by
                                                             # `dyninfer run bigsmall --preset quick` if missing)
    python benchmarks/bigsmall_predictor.py --pairs 200      # more measured pairs

Measures ``--pairs`` random pairs (plus the smallest and the largest) of the preset's co-trained supernet with the
search's :class:`~dyninfer.search.fitness.PairEvaluator` — the confidence router at ``--threshold``, batch norms
re-estimated per pair on training images, accuracy on calibration images; the test split is never read. The
measured pairs are kept in ``OUT/pairs.json`` (written atomically every few pairs: an interrupted run resumes).

Then, over ``--repeats`` random splits, a fixed ``--holdout`` of the pairs scores predictors trained on growing
shares of the rest (:func:`dyninfer.search.train_predictor`): predicting the training mean (the floor), the MLP on
the one-hot encoding alone (once-for-all's form), with the pairs' counted FLOPs as two more features, the same on
the ordinal encoding (one feature per choice), and ensembles of five.
Writes ``OUT/report.md`` (the RMSE table and a learning-curve plot) and ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from dyninfer.harness import load_data
from dyninfer.errors import ConfigError
from dyninfer.io import write_json
from dyninfer.presets import get_preset
from dyninfer.report.plots import pyplot, save
from dyninfer.report.tables import markdown_table
from dyninfer.report.writer import Section, provenance, write_report
from dyninfer.search import PairEvaluator, train_predictor
from dyninfer.search.fitness import PairRecord
from dyninfer.search.predictor import supernet_flops_range
from dyninfer.train.bigsmall import fit_bigsmall

# name -> train_predictor settings (None: predict the training pairs' mean accuracy)
VARIANTS = {"mean of the training pairs": None,
            "MLP, one-hot (once-for-all)": {"members": 1, "flops": False, "encoding": "one-hot"},
            "MLP, one-hot + FLOPs": {"members": 1, "flops": True, "encoding": "one-hot"},
            "5 MLPs, one-hot + FLOPs": {"members": 5, "flops": True, "encoding": "one-hot"},
            "MLP, ordinal + FLOPs": {"members": 1, "flops": True, "encoding": "ordinal"},
            "5 MLPs, ordinal + FLOPs": {"members": 5, "flops": True, "encoding": "ordinal"}}


def measure_pairs(ev: PairEvaluator, n: int, path: Path, seed: int, log) -> list[PairRecord]:
    """The corners and ``n`` distinct random pairs, measured (resumes from ``path``; saved every 8 pairs)."""
    net, space = ev.supernet, ev.space
    done: dict[tuple, PairRecord] = {}
    if path.exists():
        try:
            for d in json.loads(path.read_text())["records"]:
                r = PairRecord.from_dict(d)
                done[r.encoding] = r
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path} is not a readable list of measured pairs ({e}); delete it to measure again") from None
        log(f"[predictor] resuming: {len(done)} pairs already measured in {path}")
    from dyninfer.models.bigsmall import PairConfig

    pairs = [PairConfig(net.max_subnet("little"), net.max_subnet("big")),
             PairConfig(net.min_subnet("little"), net.min_subnet("big"))]
    rng = np.random.default_rng(seed)
    keys = {tuple(int(v) for v in space.encode(p)) for p in pairs}
    while len(pairs) < n + 2:
        p = space.sample_pair(rng)
        k = tuple(int(v) for v in space.encode(p))
        if k not in keys:
            keys.add(k)
            pairs.append(p)
    t0 = time.perf_counter()
    for i, p in enumerate(pairs):
        k = tuple(int(v) for v in space.encode(p))
        if k in done:
            continue
        done[k] = ev.evaluate(p)
        if len(done) % 8 == 0 or i == len(pairs) - 1:
            write_json(path, {"records": [r.as_dict() for r in done.values()]})
            log(f"[predictor] {len(done)}/{len(pairs)} pairs measured ({time.perf_counter() - t0:.0f} s this run)")
    return [done[tuple(int(v) for v in space.encode(p))] for p in pairs]


def study(records: list[PairRecord], space, flops_range, *, holdout: int, sizes: list[int], repeats: int,
          seed: int) -> dict:
    """RMSE (points) on ``holdout`` held-out pairs of each variant trained on each size, over random splits."""
    out: dict = {name: {n: [] for n in sizes} for name in VARIANTS}
    rng = np.random.default_rng(seed)
    for rep in range(repeats):
        order = rng.permutation(len(records))
        hold = [records[i] for i in order[:holdout]]
        rest = [records[i] for i in order[holdout:]]
        for n in sizes:
            train = rest[:n]
            for name, v in VARIANTS.items():
                if v is None:
                    mu = np.mean([r.accuracy for r in train])
                    rmse = 100 * float(np.sqrt(np.mean([(r.accuracy - mu) ** 2 for r in hold])))
                else:
                    model, _ = train_predictor(train, space, holdout=0.0, members=v["members"], encoding=v["encoding"],
                                               flops_range=flops_range if v["flops"] else None, seed=seed + rep)
                    enc = np.array([r.encoding for r in hold], np.int64)
                    fl = np.array([[r.little_flops, r.big_flops] for r in hold], np.float64)
                    pred = model.predict(enc, fl if v["flops"] else None)[:, 0]
                    rmse = 100 * float(np.sqrt(np.mean((pred - np.array([r.accuracy for r in hold])) ** 2)))
                out[name][n].append(rmse)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--pairs", type=int, default=120, help="random pairs measured (besides the two corners)")
    ap.add_argument("--threshold", type=float, default=0.9, help="the confidence router's τ")
    ap.add_argument("--eval-images", type=int, default=1000, help="calibration images scoring a pair")
    ap.add_argument("--bn-images", type=int, default=512, help="training images re-estimating a pair's norms")
    ap.add_argument("--holdout", type=int, default=24, help="held-out pairs scoring each predictor")
    ap.add_argument("--repeats", type=int, default=5, help="random splits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default reports/bigsmall-predictor-<dataset>-<preset>")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    log = print
    preset = get_preset(args.preset)
    out = Path(args.out or f"reports/bigsmall-predictor-{args.dataset}-{preset.name}")
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args.dataset, preset, seed=args.seed, log=log)
    net, _, meta = fit_bigsmall(preset.bigsmall_model, data, preset.bigsmall_training, seed=args.seed, progress=False,
                                log=log)
    calib = data.calib.subset(range(min(args.eval_images, len(data.calib))))
    ev = PairEvaluator(net, calib.x, calib.y, data.train.x[:args.bn_images], threshold=args.threshold)
    records = measure_pairs(ev, args.pairs, out / f"pairs-tau{args.threshold:g}-seed{args.seed}.json", args.seed, log)
    sizes_all = [n for n in (8, 16, 32, 64, 96, 128, 192) if n < len(records) - args.holdout]
    sizes = sizes_all + [len(records) - args.holdout]
    flops_range = supernet_flops_range(ev.supernet)
    log(f"[predictor] study: {len(VARIANTS)} predictors x {len(sizes)} training sizes x {args.repeats} splits")
    res = study(records, ev.space, flops_range, holdout=args.holdout, sizes=sizes, repeats=args.repeats, seed=args.seed)
    acc = np.array([r.accuracy for r in records])
    rows = [[name, *[f"{np.mean(res[name][n]):.2f} ± {np.std(res[name][n]):.2f}" for n in sizes]] for name in VARIANTS]
    table = markdown_table(["predictor \\ training pairs", *map(str, sizes)], rows)

    def plot(path: Path) -> None:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name in VARIANTS:
            m = [np.mean(res[name][n]) for n in sizes]
            s = [np.std(res[name][n]) for n in sizes]
            ax.errorbar(sizes, m, yerr=s, marker="o", capsize=3, label=name)
        ax.axhline(1.0, ls="--", color="0.4", lw=0.8, label="1 point")
        ax.set_xscale("log")
        ax.set_xlabel("measured pairs the predictor trains on")
        ax.set_ylabel(f"held-out accuracy RMSE (points, {args.holdout} pairs)")
        ax.legend(fontsize=8)
        save(fig, path)

    body = (f"{len(records)} pairs of the `{preset.name}` supernet measured under the confidence router at τ = "
            f"{args.threshold:g} on {len(calib)} calibration images (batch norms re-estimated per pair on "
            f"{args.bn_images} training images). Their dynamic accuracy: mean {100 * acc.mean():.2f}%, std "
            f"{100 * acc.std():.2f} points, range {100 * acc.min():.2f}–{100 * acc.max():.2f}%. Accuracy RMSE in "
            f"points on {args.holdout} held-out pairs, mean ± std over {args.repeats} random splits:\n\n{table}\n")
    results = {"provenance": provenance(vars(args), args.seed), "supernet": meta.get("checkpoint"),
               "pairs": len(records), "accuracy": {"mean": float(acc.mean()), "std": float(acc.std()),
                                                   "min": float(acc.min()), "max": float(acc.max())},
               "sizes": sizes, "rmse_points": res, "seconds_total": time.perf_counter() - t_start}
    write_report(out / "study", title=f"Accuracy predictor — {args.dataset}, preset {preset.name}",
                 sections=[Section("predictor", "Held-out RMSE against measured pairs", body, {"table": rows},
                                   {"learning_curve.png": plot})],
                 results=results, intro=f"Command: `{results['provenance']['command']}`.")
    log(f"[predictor] {out / 'study' / 'report.md'}\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
