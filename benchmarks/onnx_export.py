"""ONNX export figures, side by side in one run: onnxruntime against torch for the same policies, INT8 and
FP16 students in a cascade, and the single-graph cascade.

    python benchmarks/onnx_export.py                   # quick preset (a few minutes)
    python benchmarks/onnx_export.py --preset full     # the figures of the closing note (Fashion-MNIST)

For each family (cascade, early exit, backbone selection) the policy is fitted on calibration data as
``dyninfer run`` fits it, saved, exported, reloaded by the onnxruntime runtime, and compared with the torch
runtime on the test split: agreement (same path and prediction; samples within float tolerance of the knob
counted apart), throughput at the serving batch and batch-1 latency, timed in interleaved rounds.
Then the cascade's students are quantised (static INT8 calibrated on calibration images, dynamic INT8,
FP16), each copy becomes a path with its own trace and cost, and a cascade of quantised students and the
float32 teacher is fitted at the same tolerance and timed beside the float32 cascade.
Writes ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dyninfer.evaluate.agreement import agreement
from dyninfer.export.onnx import export_policy
from dyninfer.export.ort_runtime import OrtRuntime, SingleGraphRuntime
from dyninfer.export.quantize import quantized_pool
from dyninfer.harness import prepare
from dyninfer.io import write_json
from dyninfer.methods import create_method
from dyninfer.paths import measure_costs
from dyninfer.policy import save_policy
from dyninfer.runtime.cost import interleaved_latency, torch_threads


def _batches(x: torch.Tensor, b: int) -> list[torch.Tensor]:
    return [x[i:i + b] for i in range(0, x.shape[0], b)]


def _timing(runtimes: dict, x: torch.Tensor, batch: int, rounds: int, single_images: int) -> dict:
    """Throughput at ``batch`` and batch-1 latency of every runtime, interleaved rounds, wall clock."""
    tb = _batches(x, batch)
    nb = [b.numpy() for b in tb]
    ones = [x[i:i + 1] for i in range(single_images)]
    ones_np = [o.numpy() for o in ones]

    def feed(name, rt, many):
        data = (nb if many else ones_np) if name != "torch" else (tb if many else ones)
        return lambda: [rt(b) for b in data]

    lat = interleaved_latency({n: feed(n, rt, True) for n, rt in runtimes.items()}, rounds=rounds, warmup=1,
                              clock="wall")
    lat1 = interleaved_latency({n: feed(n, rt, False) for n, rt in runtimes.items()}, rounds=rounds, warmup=1,
                               clock="wall")
    return {n: {"throughput": x.shape[0] / (lat[n]["median_ms"] / 1e3),
                "batch1_ms": lat1[n]["median_ms"] / single_images} for n in runtimes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads (default 1)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--images", type=int, default=5120, help="test images per timing round")
    p.add_argument("--single-images", type=int, default=200, help="images per batch-1 timing round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.75], help="selection's reward weights")
    p.add_argument("--modes", nargs="+", default=["int8-static", "int8-dynamic", "fp16"])
    p.add_argument("--tolerance", type=float, default=None, help="every method's tolerance (default: its own)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    out = Path(a.out or f"reports/onnx-export-{a.dataset}-{a.preset}")
    t_start = time.perf_counter()
    results: dict = {"preset": a.preset, "dataset": a.dataset, "threads": a.threads, "batch": a.batch, "families": {}}
    with torch_threads(a.threads):
        pool = prepare(a.dataset, a.preset, kind="pool", progress=False, log=print)
        staged = prepare(a.dataset, a.preset, kind="staged", progress=False, log=print)
        x = pool.data.test.x[:a.images]
        fitted = {}
        tol = {} if a.tolerance is None else {"tolerance": a.tolerance}
        for name, prep, params in [("cascade", pool, {}), ("early-exit", staged, {}),
                                   ("selection", pool, {"lambdas": tuple(a.lambdas)})]:
            m = create_method(name, **params, **tol)
            m.fit(prep.calib, **m.fit_options(prep.paths))
            save_policy(out / name / "policy", m, prep.paths)
            t0 = time.perf_counter()
            export_policy(out / name / "policy", out / name / "onnx", sample=prep.data.calib.x[:16], log=None)
            t_export = time.perf_counter() - t0
            ort_rt, torch_rt = OrtRuntime(out / name / "onnx", threads=a.threads), m.runtime(prep.paths)
            rep = agreement(ort_rt, m, prep.test, batch_size=a.batch, near=True)
            runtimes = {"torch": torch_rt, "onnxruntime": ort_rt}
            row = {"export_seconds": t_export, "agreement_vs_trace": rep,
                   "certified": bool(m.operating_point_.certified), "paths": ort_rt.paths}
            if name == "cascade" and m.operating_point_.certified:
                single = SingleGraphRuntime(out / name / "onnx", threads=a.threads)
                row["single_graph_agreement_vs_trace"] = agreement(single, m, prep.test, batch_size=a.batch, near=True)
                runtimes["onnxruntime single graph"] = single
            row["timing"] = _timing(runtimes, x if name != "early-exit" else staged.data.test.x[:a.images], a.batch,
                                    a.rounds, a.single_images)
            results["families"][name] = row
            fitted[name] = m
            tm = row["timing"]
            print(f"[{name}] agreement {100 * rep['agreement']:.3f}% ({rep['pred_mismatch']} predictions, "
                  f"{rep['path_mismatch']} paths differ; {rep['near_threshold']} samples within float tolerance of "
                  f"the knob, {rep['mismatch_outside_near']} mismatches outside them); throughput at batch {a.batch}: "
                  + ", ".join(f"{k} {v['throughput']:.0f} img/s" for k, v in tm.items())
                  + f" (onnxruntime / torch {tm['onnxruntime']['throughput'] / tm['torch']['throughput']:.2f}x); "
                  "batch 1: " + ", ".join(f"{k} {v['batch1_ms']:.3f} ms" for k, v in tm.items()))

        # quantised students: new paths, their own traces and costs, a cascade fitted at the same tolerance
        fp32 = fitted["cascade"]
        teacher = pool.paths.names[-1]
        students = pool.paths.names[:-1]
        qpool = quantized_pool(pool.paths, students, a.modes, out / "quantized", calib_images=pool.data.calib.x,
                               log=print)
        costs = measure_costs(qpool, pool.data.calib.x[:256], batches=(1, a.batch), rounds=1, repeats=3,
                              min_time_s=0.0, log=None)
        qcal, qtest = qpool.record(pool.data.calib, costs=costs), qpool.record(pool.data.test, costs=costs)
        results["quantized_paths"] = {n: {"test_accuracy": qtest.accuracy(i), "calib_accuracy": qcal.accuracy(i),
                                          "bytes": costs[i].bytes} for i, n in enumerate(qpool.names)}
        teacher_acc = qtest.accuracy(qpool.names.index(teacher))
        results["teacher_test_accuracy"] = teacher_acc
        fp32_test = fp32.simulate(pool.test)
        runtimes = {"fp32 cascade (torch)": fp32.runtime(pool.paths),
                    "fp32 cascade (onnxruntime)": OrtRuntime(out / "cascade" / "onnx", threads=a.threads)}
        cascades = {"fp32": {"stages": fp32.stages_, "test_accuracy": fp32_test.accuracy,
                             "mean_flops": fp32_test.mean_flops, "certified": bool(fp32.operating_point_.certified)}}
        for mode in a.modes:
            names = [f"{s}@{mode}" for s in students] + [teacher]
            sub = qpool.subset(names)
            c = create_method("cascade", **tol).fit(qcal.select(names))
            sim = c.simulate(qtest.select(names))
            save_policy(out / f"cascade-{mode}" / "policy", c, sub)
            export_policy(out / f"cascade-{mode}" / "policy", out / f"cascade-{mode}" / "onnx", log=None)
            rt = OrtRuntime(out / f"cascade-{mode}" / "onnx", threads=a.threads)
            rep = agreement(rt, c, qtest.select(names), batch_size=a.batch, near=True)
            cascades[mode] = {"stages": c.stages_, "test_accuracy": sim.accuracy, "mean_flops": sim.mean_flops,
                              "certified": bool(c.operating_point_.certified), "agreement_vs_trace": rep,
                              "path_share": sim.path_share(len(c.stages_)).tolist()}
            runtimes[f"{mode} cascade (onnxruntime)"] = rt
        tb = _batches(x, a.batch)
        lat = interleaved_latency({k: (lambda rt=rt, k=k: [rt(b if "torch" in k else b.numpy()) for b in tb])
                                   for k, rt in runtimes.items()}, rounds=a.rounds, warmup=1, clock="wall")
        base = lat["fp32 cascade (onnxruntime)"]["median_ms"]
        for k in runtimes:
            mode = k.split()[0]
            cascades.setdefault(mode, {})
            entry = cascades[mode] if "onnxruntime" in k else cascades["fp32"].setdefault("torch", {})
            entry["throughput"] = x.shape[0] / (lat[k]["median_ms"] / 1e3)
            entry["throughput_vs_fp32_onnxruntime"] = base / lat[k]["median_ms"]
        results["quantized_cascades"] = cascades
        for mode, v in cascades.items():
            print(f"[{mode}] cascade {' > '.join(v['stages'])}: test {100 * v['test_accuracy']:.2f}% (teacher "
                  f"{100 * teacher_acc:.2f}%, {100 * (v['test_accuracy'] - teacher_acc):+.2f} pts), "
                  f"{v['mean_flops'] / 1e6:.2f} MFLOPs, onnxruntime {v['throughput']:.0f} img/s = "
                  f"{v['throughput_vs_fp32_onnxruntime']:.2f}x the fp32 cascade on onnxruntime"
                  + ("" if mode != "fp32" else f"; torch {v['torch']['throughput']:.0f} img/s"))
    results["seconds"] = time.perf_counter() - t_start
    write_json(out / "results.json", results)
    print(f"[done] {out / 'results.json'} ({results['seconds']:.0f} s, {a.threads} thread(s))")


if __name__ == "__main__":
    main()
