"""Manager measurements of the selection experiment: switching overhead and memory under partial budgets.

Two streams: the trained pool driven by the learned policy (the adaptive runtime itself), and the
paper's torchvision pool (weights=None, saved once as checkpoints) under half its bytes, driven by
complexity-score bins so that every batch needs every backbone.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .manager import BackboneManager
from .pool import BackbonePool
from .runtime import SelectionRuntime, resident_first
from .selector import BackboneSelector, ScorePolicy

if TYPE_CHECKING:
    from ...harness import Prepared
    from .complexity import ComplexityAnalyser
    from .experiment import SelectionExperimentConfig


def measure_manager(selector: BackboneSelector, pool: BackbonePool, budget: int, stream: torch.Tensor, batch: int,
                    dev: torch.device, seed: int, log: Callable[[str], None]) -> dict:
    """Stream images through the selection runtime with a manager under ``budget``; overhead and memory."""
    mgr = BackboneManager(pool, budget, device=dev)
    rt = SelectionRuntime(selector, mgr, seed=seed)
    rt(stream[:batch])  # warm-up batch (first loads are cold-start, not switching)
    cold = mgr.stats().load_seconds
    mgr.reset_stats()
    r = rt.run(stream, batch)
    st = mgr.stats()
    out = {"budget_bytes": budget, "budget_share_of_pool": budget / pool.total_bytes,
           "switching_overhead": r.switching_share, "total_seconds": r.seconds,
           "load_seconds": r.load_seconds, "inference_seconds": float(r.backbone_seconds.sum()),
           "decide_seconds": r.decide_seconds, "batches": -(-stream.shape[0] // batch), "images": stream.shape[0],
           "within_budget": st.peak_bytes <= budget and st.peak_measured_bytes <= budget,
           "cold_start_load_seconds": cold, **st.to_dict()}
    log(f"[manager] budget {budget} B ({100 * out['budget_share_of_pool']:.0f}% of pool): switching overhead "
        f"{100 * out['switching_overhead']:.2f}%, peak {st.peak_measured_bytes} B, hits {st.hits}, "
        f"misses {st.misses}, evictions {st.evictions}")
    return out


def torchvision_manager(cfg: "SelectionExperimentConfig", prep: "Prepared", analyser: "ComplexityAnalyser",
                        log: Callable[[str], None]) -> dict:
    """The paper's torchvision pool (weights=None) under half its bytes, on a mixed Fashion-MNIST stream.

    Images are padded to ``tv_image_size`` (DenseNets need at least 32x32) and routed by the complexity
    score in equal-mass bins (lightest backbone for the simplest images); backbones load on a miss from
    checkpoints written once to a temporary folder.
    """
    dev = torch.device(cfg.device)
    pad = (cfg.tv_image_size - prep.data.spec.image_size[0]) // 2
    spec = dataclasses.replace(prep.data.spec, image_size=(cfg.tv_image_size, cfg.tv_image_size))
    x = prep.data.test.x[: cfg.tv_stream]
    x = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    with tempfile.TemporaryDirectory(prefix="dyninfer-tvpool-") as folder:
        pool = BackbonePool.from_registry(list(cfg.tv_pool), spec, folder, weights=None, progress=log)
        half = pool.total_bytes // 2
        if half < pool.largest_bytes:
            log("[manager] torchvision pool: half its bytes cannot hold its largest backbone; skipped")
            return {"pool": pool.names,
                    "error": f"half the pool ({half} B) < largest backbone ({pool.largest_bytes} B)"}
        n = len(pool)
        cuts = np.quantile(analyser.score(prep.data.calib.x).numpy(), np.linspace(0, 1, n + 1)[1:-1])
        pol = ScorePolicy(analyser, cuts)
        choice = pol.choose(prep.data.test.x[: cfg.tv_stream])  # on the unpadded images, as fitted
        runs = [_stream(pool, half, x, choice, b, dev, cfg.progress) for b in sorted(set(cfg.tv_batches))]
    main = runs[-1]  # the largest batch is the headline figure; every batch size is reported
    out = {"pool": pool.names, "pool_bytes": {e.name: e.bytes for e in pool}, "pool_total_bytes": pool.total_bytes,
           "image_size": cfg.tv_image_size, "runs": runs, **main}
    for r in runs:
        log(f"[manager] torchvision pool ({pool.total_bytes / 1e6:.0f} MB), budget half ({half / 1e6:.0f} MB), batch "
            f"{r['batch']}: switching overhead {100 * r['switching_overhead']:.2f}%, peak "
            f"{r['peak_measured_bytes'] / 1e6:.1f} MB, misses {r['misses']}, evictions {r['evictions']}")
    return out


def _stream(pool: BackbonePool, budget: int, x: torch.Tensor, choice: torch.Tensor, batch: int, dev: torch.device,
            progress: bool) -> dict:
    """Stream ``x`` in batches through a fresh manager, each image to backbone ``choice``; first batch = cold start."""
    mgr = BackboneManager(pool, budget, device=dev)
    order = pool.names
    t_total = inf = cold = 0.0
    first = True
    for i in tqdm(range(0, x.shape[0], batch), desc=f"torchvision pool stream, batch {batch}", disable=not progress):
        xb, cb = x[i:i + batch], choice[i:i + batch]
        t0 = time.perf_counter()
        present = resident_first([p for p in range(len(order)) if bool((cb == p).any())], order, mgr)
        t_inf = 0.0
        for p in present:
            idx = (cb == p).nonzero().squeeze(1)
            with mgr.use(order[p]) as model, torch.inference_mode():
                ts = time.perf_counter()
                model(xb[idx].to(dev))
                t_inf += time.perf_counter() - ts
        if first:  # the first batch is the cold start: every backbone it needs loads once
            cold = mgr.stats().load_seconds
            mgr.reset_stats()
            first = False
            continue
        t_total += time.perf_counter() - t0
        inf += t_inf
    st = mgr.stats()
    return {"budget_bytes": budget, "images": int(x.shape[0]), "batch": batch,
            "switching_overhead": st.load_seconds / t_total if t_total else 0.0, "total_seconds": t_total,
            "inference_seconds": inf, "cold_start_load_seconds": cold,
            "within_budget": st.peak_bytes <= budget and st.peak_measured_bytes <= budget, **st.to_dict()}
