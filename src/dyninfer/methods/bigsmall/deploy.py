"""Deployment of a fitted big/little pair (section 4.6 of the NAS-for-dynamic-inference paper): the chosen little
and big subnets as static modules, exported to ONNX, with FP16 and INT8 variants measured side by side.

:func:`deploy_pair` writes, under ``folder``::

    policy/             the fitted policy (:func:`~dyninfer.policy.save_policy`): method, supernet and router
    onnx/fp32/          :func:`~dyninfer.export.onnx.export_policy` of it: ``paths/little.onnx`` (the static little
                        subnet, with the learned router's keep score as a second output when that router was
                        chosen), ``paths/big.onnx``, the score graph (confidence and difficulty routers), spec.json
    onnx/MODE/          the same policy with both path graphs made ``MODE`` by
                        :func:`~dyninfer.export.quantize.quantize_graph` (the score graph, logits -> score, stays
                        float32); each runs on :class:`~dyninfer.export.ort_runtime.OrtRuntime` like the fp32 one
    deploy.json         the rows below; deploy.md the table

Per variant (and for the torch runtime, the reference row): top-1 on the test split at the fitted operating point,
agreement of its predictions (and of its little/big choices) with the torch runtime's, exit rate (share of images
the little subnet answers), bytes of the path graphs, batch-1 latency (median over single images, so it mixes
images that exit at the little subnet with those that go on) and throughput at the serving batch, all timed in
interleaved rounds (:func:`~dyninfer.runtime.cost.interleaved_latency`) so machine load hits every variant alike.

The fp32 graphs are checked against the torch runtime on the test split: predictions and routes must agree except
on samples whose router score lies within float tolerance of the threshold (``near_threshold``); the check is in
the result (``fp32_check``) and a failure raises :class:`~dyninfer.export.onnx.ExportError`.

``int8-dynamic`` quantises activations with the range of the whole batch, so an image's answer depends on its
batch mates (and the cascade's batch shrinks as images exit); ``int8-static`` uses ranges calibrated on
``calib_images`` and keeps the first convolution float32 (see :mod:`dyninfer.export.quantize`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ...check import number
from ...errors import ConfigError
from ...io import atomic_dir
from ...paths import BigSmallPaths
from ...report.tables import markdown_table
from ...runtime.cost import interleaved_latency, model_bytes, torch_threads
from ...scores import EmittedScore

MODES = ("fp32", "fp16", "int8-dynamic", "int8-static")
NEAR = 1e-4  # a router score this close to the threshold may route differently under float32 rounding


def _check_modes(modes: Sequence[str]) -> list[str]:
    if isinstance(modes, str) or not isinstance(modes, (list, tuple)) or not modes:
        raise ConfigError(f"modes must be a non-empty list of {list(MODES)}, got {modes!r}")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ConfigError(f"unknown deployment mode(s) {bad}; allowed: {list(MODES)}")
    return list(dict.fromkeys(modes))


def _split_arrays(test) -> tuple[torch.Tensor, np.ndarray]:
    x, y = getattr(test, "x", None), getattr(test, "y", None)
    if not isinstance(x, torch.Tensor) or y is None or x.ndim != 4 or len(x) != len(y) or len(x) == 0:
        raise ConfigError("test must be a non-empty data Split (images x (N, C, H, W) in [0, 1], labels y (N,))")
    return x.float().cpu().contiguous(), np.asarray(torch.as_tensor(y).cpu(), dtype=np.int64)


def _little_scores(method, paths: BigSmallPaths, x: torch.Tensor, batch: int) -> np.ndarray:
    """(N,) the router's score of the little stage, from torch (to count samples near the threshold)."""
    little = paths.models[method.stages_[0]].eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            if isinstance(method.score_, EmittedScore):
                out.append(method.score_.head(little)(xb)[1])
            else:
                out.append(method.score_(little(xb)))
    return torch.cat(out).float().numpy()


def _graph_bytes(folder: Path, spec: dict) -> dict[str, int]:
    return {p["name"]: (folder / p["graph"]).stat().st_size for p in spec["paths"]}


def _make_variant(src: Path, dst: Path, mode: str, calib: np.ndarray | None) -> None:
    """``dst``: the export ``src`` with every path graph made ``mode`` (score graph and spec otherwise kept)."""
    from ...export.quantize import quantize_graph
    from ...export.spec import file_sha256, read_spec, write_spec

    spec = read_spec(src)
    with atomic_dir(dst) as tmp:
        for p in spec["paths"]:
            quantize_graph(src / p["graph"], tmp / p["graph"], mode, calib_images=calib)
            p["precision"] = mode
            p.pop("max_abs_diff", None)  # measured against torch for the fp32 graph only
        if spec.get("score") and spec["score"].get("graph"):
            shutil.copy2(src / spec["score"]["graph"], tmp / spec["score"]["graph"])
        spec["single_graph"] = None
        spec["files"] = {str(f.relative_to(tmp)): file_sha256(f) for f in sorted(tmp.rglob("*.onnx"))}
        write_spec(tmp, spec)


def _cycling(fn: Callable[[object], object], images) -> Callable[[], object]:
    """A zero-argument call that runs ``fn`` on the next image of ``images`` (batch 1) each time."""
    state = {"i": 0}

    def call():
        i = state["i"] % len(images)
        state["i"] += 1
        return fn(images[i:i + 1])
    return call


def deploy_pair(method, paths: BigSmallPaths, test, folder: str | os.PathLike, *,
                modes: Sequence[str] = MODES, calib_images: torch.Tensor | None = None, serving_batch: int = 256,
                rounds: int = 3, batch1_samples: int = 50, threads: int | None = None, clock: str | None = None,
                class_names: Sequence[str] = (), log: Callable[[str], None] | None = print) -> dict:
    """Export a fitted big/little policy to ONNX, make its FP16/INT8 variants, and measure them beside torch.

    Args:
        method: a fitted ``bigsmall`` method.
        paths: its :class:`~dyninfer.paths.BigSmallPaths` (static little subnet with router, static big subnet).
        test: the test :class:`~dyninfer.data.datasets.Split` (images in [0, 1], labels).
        folder: where the policy, the exports and the report are written (each replaced whole).
        modes: variants among ``fp32``, ``fp16``, ``int8-dynamic``, ``int8-static`` (fp32 is always exported, as
            the others are made from it; it gets a row only when named).
        calib_images: calibration images (N, C, H, W) in [0, 1]; ``int8-static`` calibrates its activation ranges
            on the first 1024 and the export checks its graphs on the first 16 (default: test images).
        serving_batch: batch size of the throughput measurement and of the accuracy runs.
        rounds: interleaved timed rounds of the serving batch per variant.
        batch1_samples: interleaved single-image calls per variant (one image each, the same sequence for all);
            the batch-1 latency is their median.
        threads: intra-op threads of torch and onnxruntime alike (default: leave torch as is, onnxruntime's
            default); 1 gives comparable single-core figures.
        clock: ``cpu`` or ``wall`` (default: ``cpu`` with one thread, where every thread's work is the calling
            thread's, else ``wall``).
        class_names: stored with the saved policy.

    Returns:
        a JSON-able dict: ``rows`` (one per variant, the torch runtime first: variant, precision, top1,
        agreement, path_agreement, exit_rate, mean_flops, bytes, bytes_kind, graph_bytes, batch1_ms,
        batch1_mean_ms, throughput_ips, serving_ms, clock, error), ``table`` (markdown), ``fp32_check``
        (pred/path mismatches against torch and samples near the threshold), ``router``, ``knob``,
        ``operating_point``, ``folders`` and ``settings``.

    Raises:
        NotFittedError: the method is not fitted.
        ConfigError: an unknown mode, no ``calib_images`` for ``int8-static``, paths that are not a pair's, a bad
            test split or setting.
        ExportError: the policy cannot be exported, or its fp32 graphs disagree with torch beyond near-ties.
    """
    from ...export.onnx import ExportError, export_policy
    from ...export.ort_runtime import OrtRuntime
    from ...policy import save_policy

    method.check_fitted()
    modes = _check_modes(modes)
    if not isinstance(paths, BigSmallPaths):
        raise ConfigError(f"deploy_pair deploys a big/little pair (BigSmallPaths), got {type(paths).__name__}")
    number("serving_batch", serving_batch, lo=1, integer=True)
    number("rounds", rounds, lo=1, integer=True)
    number("batch1_samples", batch1_samples, lo=1, integer=True)
    number("threads", threads, lo=1, integer=True, none_ok=True)
    if clock is None:
        clock = "cpu" if threads == 1 else "wall"
    if clock not in ("cpu", "wall"):
        raise ConfigError(f"unknown clock {clock!r}; use 'cpu' or 'wall'")
    if "int8-static" in modes and (calib_images is None or len(calib_images) == 0):
        raise ConfigError("int8-static needs calibration images (calib_images=...) for its activation ranges; "
                          "pass the calibration split's images or drop the mode")
    x, y = _split_arrays(test)
    xn = x.numpy()
    calib = None if calib_images is None else torch.as_tensor(calib_images)[:1024].float().cpu()
    say = log or (lambda s: None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths.to("cpu")

    # 1. the policy, saved and exported; the fp32 graphs checked against the torch runtime
    policy_dir = save_policy(folder / "policy", method, paths, class_names=class_names,
                             extra={"deployed_by": "dyninfer.methods.bigsmall.deploy"})
    fp32_dir = export_policy(policy_dir, folder / "onnx" / "fp32", sample=(calib if calib is not None else x)[:16],
                             single_graph=False, log=say)
    with torch_threads(threads):
        trt = method.runtime(paths, device="cpu")
        ref = trt.run(x, serving_batch)
    ref_pred, ref_path = ref.pred.numpy(), ref.path.numpy()
    thr = float(trt.knob[0])
    near = np.abs(_little_scores(method, paths, x, serving_batch) - thr) <= NEAR if trt.forced is None \
        else np.zeros(len(x), bool)
    fp32_rt = OrtRuntime(fp32_dir, threads=threads)
    got = fp32_rt.run(xn, serving_batch)
    pred_mis, path_mis = got.pred != ref_pred, got.path != ref_path
    check = {"n": int(len(x)), "pred_mismatch": int(pred_mis.sum()), "path_mismatch": int(path_mis.sum()),
             "near_threshold": int(near.sum()), "mismatch_outside_near": int(((pred_mis | path_mis) & ~near).sum()),
             "max_abs_diff": {p["name"]: p.get("max_abs_diff") for p in fp32_rt.spec["paths"]}}
    say(f"[deploy] fp32 ONNX vs torch on {len(x)} test images: {check['pred_mismatch']} predictions and "
        f"{check['path_mismatch']} routes differ ({check['near_threshold']} samples within {NEAR:g} of the threshold)")
    if check["mismatch_outside_near"]:
        raise ExportError(f"the fp32 ONNX export disagrees with the torch runtime on {check['mismatch_outside_near']} "
                          f"test images away from the threshold; see {fp32_dir}")

    # 2. the variants
    runtimes: dict[str, OrtRuntime] = {}
    errors: dict[str, str] = {}
    dirs: dict[str, str] = {"fp32": str(fp32_dir)}
    for mode in modes:
        if mode == "fp32":
            runtimes[mode] = fp32_rt
            continue
        dst = folder / "onnx" / mode
        try:
            _make_variant(fp32_dir, dst, mode, None if calib is None else calib.numpy())
            runtimes[mode] = OrtRuntime(dst, threads=threads)
            dirs[mode] = str(dst)
        except Exception as e:  # an op the mode or the CPU provider does not support: recorded, not fatal
            errors[mode] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            say(f"[deploy] {mode}: failed ({errors[mode]})")

    # 3. accuracy, agreement, routes and bytes
    little, big = paths.models[method.stages_[0]], paths.models[method.stages_[-1]]
    tensor_bytes = {n: sum(model_bytes(m).values()) for n, m in ((method.stages_[0], little), (method.stages_[-1], big))}
    rows: list[dict] = [{
        "variant": "torch", "precision": "fp32", "top1": float((ref_pred == y).mean()), "agreement": 1.0,
        "path_agreement": 1.0, "exit_rate": float((ref_path == 0).mean()), "mean_flops": float(ref.flops.mean()),
        "bytes": int(sum(tensor_bytes.values())), "bytes_kind": "tensors", "graph_bytes": tensor_bytes, "error": None}]
    for mode in modes:
        row = {"variant": f"onnx-{mode}", "precision": mode}
        if mode in errors:
            rows.append({**row, "error": errors[mode]})
            continue
        rt = runtimes[mode]
        res = got if mode == "fp32" else rt.run(xn, serving_batch)
        gb = _graph_bytes(rt.folder, rt.spec)
        rows.append({**row, "top1": float((res.pred == y).mean()), "agreement": float((res.pred == ref_pred).mean()),
                     "path_agreement": float((res.path == ref_path).mean()), "exit_rate": float((res.path == 0).mean()),
                     "mean_flops": float(np.mean(res.flops)), "bytes": int(sum(gb.values())), "bytes_kind": "file",
                     "graph_bytes": gb, "error": None})

    # 4. latency: batch 1 over a sequence of single images, and the serving batch, interleaved
    k = min(serving_batch, len(x))
    reps = -(-serving_batch // k)
    xb_t = x[:k].repeat(reps, 1, 1, 1)[:serving_batch].contiguous()
    xb_n = xb_t.numpy()
    one = {"torch": _cycling(trt, x)}
    many = {"torch": lambda: trt.run(xb_t, serving_batch)}
    for mode, rt in runtimes.items():
        one[f"onnx-{mode}"] = _cycling(rt, xn)
        many[f"onnx-{mode}"] = (lambda r: lambda: r.run(xb_n, serving_batch))(rt)
    with torch_threads(threads), torch.inference_mode():
        lat1 = interleaved_latency(one, rounds=batch1_samples, warmup=min(5, batch1_samples), clock=clock)
        latb = interleaved_latency(many, rounds=rounds, warmup=1, clock=clock)
    for row in rows:
        v = row["variant"]
        if v in lat1:
            row.update(batch1_ms=lat1[v]["median_ms"], batch1_mean_ms=lat1[v]["mean_ms"],
                       serving_ms=latb[v]["median_ms"], throughput_ips=serving_batch / (latb[v]["median_ms"] / 1e3),
                       clock=clock)

    # 5. the report
    header = ["variant", "top-1 (%)", "agrees with torch (%)", "exit rate (%)", "size (MB)", "batch-1 (ms)",
              f"img/s at {serving_batch}"]
    body = []
    for r in rows:
        if r.get("error"):
            body.append([r["variant"], f"failed: {r['error']}", "", "", "", "", ""])
            continue
        size = f"{r['bytes'] / 1e6:.3f}" + (" (tensors)" if r["bytes_kind"] == "tensors" else "")
        body.append([r["variant"], f"{100 * r['top1']:.2f}", f"{100 * r['agreement']:.2f}",
                     f"{100 * r['exit_rate']:.1f}", size, f"{r['batch1_ms']:.3f}", f"{r['throughput_ips']:.0f}"])
    table = markdown_table(header, body)
    op = method.operating_point_
    out = {
        "rows": rows, "table": table, "fp32_check": check, "router": method.router_, "knob": [float(v) for v in trt.knob],
        "forced": trt.forced,
        "operating_point": {k2: (v.item() if isinstance(v, np.generic) else v) for k2, v in vars(op).items()},
        "folders": {"policy": str(policy_dir), **dirs},
        "settings": {"modes": modes, "serving_batch": int(serving_batch), "rounds": int(rounds),
                     "batch1_samples": int(batch1_samples), "threads": threads, "clock": clock,
                     "test_images": int(len(x)), "calib_images": None if calib is None else int(len(calib)),
                     "score_graph": "float32 in every variant (logits -> score)"},
    }
    out = json.loads(json.dumps(out, default=float))  # JSON-able, as written
    (folder / "deploy.json").write_text(json.dumps(out, indent=1) + "\n")
    (folder / "deploy.md").write_text(table)
    say(table)
    return out
