"""``dyninfer export POLICY_DIR --format onnx --out OUT``: a fitted policy as ONNX graphs and a JSON spec.

What is written (the folder is replaced whole, atomically)::

    OUT/spec.json            the policy (schema: dyninfer.export.spec.SCHEMA), spec.json.sha256 its checksum
    OUT/paths/NAME.onnx      every path, dynamic batch axis: a cascade stage or pool backbone (images -> logits),
                             an early-exit stage (carry -> carry, logits) and its advance alone (carry -> carry)
    OUT/score.onnx           a sequential policy's score (logits -> score), exactly the torch score
    OUT/decision.onnx        an up-front policy's decision network (images -> policy logits)
    OUT/single/cascade.onnx  a cascade over a module pool as one graph (thresholds are an input; ``If`` branches)

The exporter reads the policy's own torch runtime, so what is exported is what runs: its stages, scores,
thresholds, FLOPs and forced path. Every graph is run on onnxruntime as it is written and compared with
torch on sample images; the largest absolute difference is recorded in the spec (and the export fails
when it exceeds ``atol``).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import ConfigError, DyninferError
from ..io import atomic_dir
from ..paths import is_graph
from ..policy import Policy, load_policy
from ..runtime.sequential import SequentialRuntime, _identity
from ..runtime.upfront import UpfrontRuntime
from ..runtime.validate import PIXEL_RANGE
from ..scores import EmittedScore
from .ort_runtime import make_session
from .spec import FORMAT, VERSION, file_sha256, write_spec

FORMATS = ("onnx",)


class ExportError(DyninferError):
    """A graph could not be exported, or its onnxruntime outputs differ from torch's."""


# ---------------------------------------------------------------------- graph wrappers
class _Stage(nn.Module):
    """carry tensors -> (*carry out, logits) of one early-exit stage (or (*carry out,) with ``head=None``)."""

    def __init__(self, advance: Callable, head: Callable | None) -> None:
        super().__init__()
        self.advance, self.head = advance, head
        for i, f in enumerate((advance, head)):  # register modules so export sees their weights
            if isinstance(f, nn.Module):
                self.add_module(f"part{i}", f)

    def forward(self, *carry: torch.Tensor):
        c = self.advance(carry[0] if len(carry) == 1 else tuple(carry))
        outs = tuple(c) if isinstance(c, (tuple, list)) else (c,)
        return outs if self.head is None else (*outs, self.head(c))


class _Emitting(nn.Module):
    """A path that emits its own score (the big/little router's keep score): images -> (score, logits)."""

    def __init__(self, model: nn.Module, gate: int) -> None:
        super().__init__()
        self.model, self.gate = model, gate

    def forward(self, x: torch.Tensor):
        logits, score = self.model.forward_gated(x, self.gate)
        return score, logits


class _ScoreGraph(nn.Module):
    def __init__(self, score, classes: int) -> None:
        super().__init__()
        self.score = _warm(score, classes)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.score(logits)


def _warm(score, classes: int):
    """Make a score's per-class constants (the random score's projection) before tracing, so they are constants."""
    if hasattr(score, "projection"):
        score.projection(classes)
    return score


class _CascadeGraph(nn.Module):
    """A cascade over separate modules as one graph: stage p runs, inside an ``If``, on the samples every
    earlier stage forwarded (gathered), and its logits are scattered back. Outputs (logits, path)."""

    def __init__(self, models: Sequence[nn.Module], scores: Sequence, classes: int) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.scores = [_warm(s, classes) for s in scores]

    def forward(self, x: torch.Tensor, thresholds: torch.Tensor):
        logits = self.models[0](x)
        path = torch.zeros(x.shape[0], dtype=torch.long)
        alive = torch.ones(x.shape[0], dtype=torch.bool)
        for p in range(1, len(self.models)):
            go = alive & (self.scores[p - 1](logits) < thresholds[p - 1])
            logits, path = torch.cond(go.any(), _Gather(self.models[p], p), _keep, (x, logits, path, go))
            alive = go
        return logits, path


class _Gather(nn.Module):
    def __init__(self, model: nn.Module, p: int) -> None:
        super().__init__()
        self.model, self.p = model, p

    def forward(self, x, logits, path, go):
        idx = go.nonzero().squeeze(1)
        torch._check(idx.shape[0] > 0)
        out = self.model(x.index_select(0, idx))
        return logits.index_put((idx,), out), path.index_put((idx,), torch.full_like(idx, self.p))


def _keep(x, logits, path, go):
    return logits.clone(), path.clone()


# ---------------------------------------------------------------------- export and check
def export_graph(module: nn.Module, args: tuple[torch.Tensor, ...], file: Path, input_names: Sequence[str],
                 output_names: Sequence[str], *, batched: Sequence[bool] | None = None,
                 atol: float = 1e-3) -> float:
    """Export ``module`` at ``args`` to ``file`` with a dynamic batch axis on the batched inputs, then run
    the graph on onnxruntime on ``args`` and on a batch of a different size and compare with torch.

    Returns:
        the largest absolute difference between torch's and onnxruntime's outputs.

    Raises:
        ExportError: the exporter failed, or a difference exceeds ``atol``.
    """
    batched = list(batched) if batched is not None else [True] * len(args)
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} if b else None for b in batched)
    params = list(inspect.signature(module.forward).parameters.values())
    if params and params[0].kind is inspect.Parameter.VAR_POSITIONAL:
        dynamic = (dynamic,)  # forward(*carry): one entry, the tuple of all positional inputs
    file.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(file), dynamo=True, input_names=list(input_names),
                              output_names=list(output_names), dynamic_shapes=dynamic, optimize=True,
                              external_data=False)
    except Exception as e:  # the exporter raises many types; say which graph failed
        raise ExportError(f"could not export {file.name}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    session = make_session(file)
    worst = 0.0
    n = int(args[0].shape[0])
    for m in sorted({n, max(1, n // 2 + 1)}):
        sub = tuple(a[:m] if b else a for a, b in zip(args, batched))
        with torch.no_grad():
            ref = module(*sub)
        ref = ref if isinstance(ref, (tuple, list)) else (ref,)
        got = session.run(None, {k: v.detach().cpu().numpy() for k, v in zip(input_names, sub)})
        for r, g in zip(ref, got):
            r = r.detach().cpu().numpy()
            if r.dtype.kind == "f":
                worst = max(worst, float(np.abs(r.astype(np.float64) - g.astype(np.float64)).max(initial=0.0)))
            elif not np.array_equal(r, g):
                raise ExportError(f"{file.name}: onnxruntime's integer output differs from torch's")
    if not worst <= atol:
        raise ExportError(f"{file.name}: onnxruntime's outputs differ from torch's by {worst:.3g} (> {atol:g})")
    return worst


def _as_tuple(c) -> tuple[torch.Tensor, ...]:
    return tuple(c) if isinstance(c, (tuple, list)) else (c,)


def export_policy(policy: Policy | str | os.PathLike, out: str | os.PathLike, *, fmt: str = "onnx",
                  sample: torch.Tensor | None = None, single_graph: bool = True, atol: float = 1e-3,
                  log: Callable[[str], None] | None = print) -> Path:
    """Export a saved (or loaded) policy to ``out``.

    Args:
        policy: a :class:`~dyninfer.policy.Policy` or its folder (``DIR`` or ``DIR/policy``).
        out: the export folder (replaced whole).
        fmt: ``onnx``.
        sample: images (N, C, H, W) in [0, 1] the graphs are checked on (default: 16 seeded uniform images).
        single_graph: also export a cascade over a module pool as one graph.
        atol: the largest torch/onnxruntime difference accepted.

    Returns:
        the folder.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; known: {list(FORMATS)}")
    if not isinstance(policy, Policy):
        policy = load_policy(policy)
    say = log or (lambda s: None)
    method, paths = policy.method, policy.paths
    if method.task != "classification":
        raise ConfigError(f"ONNX export covers classifier policies; this one ({method.name}) answers a {method.task} "
                          f"task. Its two models are plain modules in DIR/policy/paths: export them with "
                          f"torch.onnx.export if needed")
    paths.to("cpu")
    rt = method.runtime(paths, device="cpu")
    shape = tuple(rt.input_shape or paths.input_shape or ())
    if len(shape) != 3:
        raise ConfigError("the policy does not record its input shape (C, H, W); it cannot be exported")
    if sample is None:
        sample = torch.rand(16, *shape, generator=torch.Generator().manual_seed(0))
    sample = sample[:16].float().cpu()
    curve = getattr(method, "calib_curve_", None)
    op = method.operating_point_
    spec: dict = {
        "format": FORMAT, "version": VERSION, "library_version": __version__, "method": method.name,
        "kind": paths.kind, "paths": [], "score": None, "decision": None, "single_graph": None,
        "forced": rt.forced,
        "operating_point": {k: (v.item() if isinstance(v, np.generic) else v) for k, v in vars(op).items()},
        "curve": None if curve is None else {"label": curve.label, "settings": np.asarray(curve.settings).tolist(),
                                             "accuracy": np.asarray(curve.accuracy).tolist(),
                                             "cost": np.asarray(curve.cost).tolist()},
        "input": {"shape": list(shape), "dtype": "float32", "layout": "NCHW", "pixel_range": [0.0, 1.0],
                  "accepted_range": list(rt.value_range or PIXEL_RANGE),
                  "normalisation": "inside the graphs (they take raw pixels in [0, 1])"},
        "class_names": policy.class_names, "files": {},
    }
    out = Path(out)
    with atomic_dir(out) as tmp:
        if isinstance(rt, SequentialRuntime):
            _export_sequential(rt, paths, sample, tmp, spec, atol, say)
            if single_graph and all(s.advance is _identity for s in rt.stages) and len(rt.stages) > 1:
                _export_single(rt, paths, sample, tmp, spec, atol, say)
        elif isinstance(rt, UpfrontRuntime):
            _export_upfront(rt, method, paths, sample, tmp, spec, atol, say)
        else:
            raise ConfigError(f"cannot export a {type(rt).__name__}; known executors: sequential, up-front")
        spec["files"] = {str(f.relative_to(tmp)): file_sha256(f) for f in sorted(tmp.rglob("*.onnx"))}
        write_spec(tmp, spec)
    say(f"[export] {method.name}: {len(spec['paths'])} paths, spec {out / 'spec.json'}")
    return out


def _copy_or_export(model: nn.Module, sample: torch.Tensor, file: Path, atol: float) -> tuple[float, str]:
    """A pool path's graph: copied when the path already is an ONNX graph, else exported and checked."""
    if is_graph(model):  # an OnnxModule: the graph as it was traced and timed
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(model.graph_bytes)
        return 0.0, model.precision
    return export_graph(model, (sample,), file, ["images"], ["logits"], atol=atol), "fp32"


def _export_sequential(rt: SequentialRuntime, paths, sample, tmp: Path, spec: dict, atol: float, say) -> None:
    carry: tuple[torch.Tensor, ...] = (sample,)
    emitted = rt.scores[0] if rt.scores and isinstance(rt.scores[0], EmittedScore) else None
    for p, (name, stage) in enumerate(zip(rt.paths, rt.stages)):
        entry = {"name": name, "flops": float(rt.stage_flops[p]), "skip_flops": float(rt.skip_flops[p]),
                 "advance_graph": None}
        if emitted is not None and p < len(rt.stages) - 1 and stage.advance is _identity:
            # a cascade stage that emits its own score (the big/little router): images -> (score, logits)
            diff = export_graph(_Emitting(paths.models[name], emitted.params["gate"]), (sample,),
                                tmp / "paths" / f"{name}.onnx", ["images"], ["score", "logits"], atol=atol)
            entry.update(graph=f"paths/{name}.onnx", inputs=["images"], outputs=["score", "logits"], precision="fp32",
                         emits_score=True, max_abs_diff=diff)
        elif stage.advance is _identity:  # a cascade stage: images -> logits, the carry is the image
            model = paths.models[name]
            diff, precision = _copy_or_export(model, sample, tmp / "paths" / f"{name}.onnx", atol)
            entry.update(graph=f"paths/{name}.onnx", inputs=["images"], outputs=["logits"], precision=precision,
                         max_abs_diff=diff)
        else:  # an early-exit stage: carry in, carry out and logits
            ins = ["images"] if p == 0 else [f"carry_in{i}" for i in range(len(carry))]
            with torch.no_grad():
                nxt = _as_tuple(stage.advance(carry[0] if len(carry) == 1 else carry))
            outs = [f"carry_out{i}" for i in range(len(nxt))]
            diff = export_graph(_Stage(stage.advance, stage.head), carry, tmp / "paths" / f"{name}.onnx", ins,
                                [*outs, "logits"], atol=atol)
            if p < len(rt.stages) - 1:  # what a runtime forced past this exit runs
                diff = max(diff, export_graph(_Stage(stage.advance, None), carry, tmp / "paths" / f"{name}.advance.onnx",
                                              ins, outs, atol=atol))
                entry["advance_graph"] = f"paths/{name}.advance.onnx"
            entry.update(graph=f"paths/{name}.onnx", inputs=ins, outputs=[*outs, "logits"], precision="fp32",
                         max_abs_diff=diff)
            carry = nxt
        spec["paths"].append(entry)
        say(f"[export] {entry['graph']}: max |torch - onnxruntime| {entry['max_abs_diff']:.2e}")
    scores = {repr(s) for s in rt.scores}
    if len(scores) > 1:
        raise ConfigError(f"the exported runtime takes one score for every stage; this policy uses {sorted(scores)}")
    score = rt.scores[0] if rt.scores else None
    if score is not None and not score.deterministic:
        raise ConfigError(f"the {score.name} router hashes its logits through sin() at 1e-16 precision, which "
                          f"onnxruntime's arithmetic does not reproduce; export a policy with a confidence score "
                          f"(energy, max_softmax, margin, entropy)")
    if isinstance(score, EmittedScore):  # emitted by the stages' graphs beside their logits: no score graph
        spec["score"] = {"name": score.name, "params": dict(score.params), "graph": None, "emitted": True}
    elif score is not None:  # a one-stage runtime decides nothing: no score
        with torch.no_grad():
            logits = _as_tuple(_Stage(rt.stages[0].advance, rt.stages[0].head)(sample))[-1].float()
        diff = export_graph(_ScoreGraph(score, logits.shape[1]), (logits,), tmp / "score.onnx", ["logits"], ["score"],
                            atol=atol)
        spec["score"] = {"name": score.name, "params": dict(score.params), "graph": "score.onnx", "max_abs_diff": diff}
    spec["executor"] = "sequential"
    spec["knob"] = {"kind": "thresholds", "value": list(rt.knob), "direction": 1}


def _export_single(rt: SequentialRuntime, paths, sample, tmp: Path, spec: dict, atol: float, say) -> None:
    models = [paths.models[n] for n in rt.paths]
    if any(is_graph(m) for m in models):
        say("[export] single graph skipped: a path is already an ONNX graph (quantised)")
        return
    if any(isinstance(s, EmittedScore) for s in rt.scores):
        say("[export] single graph skipped: the score is emitted by a path (a router), not computed from logits")
        return
    thr = torch.tensor([float(np.clip(t, -1e30, 1e30)) for t in rt.knob], dtype=torch.float32)
    try:
        with torch.no_grad():
            classes = int(models[0](sample[:1]).shape[1])
        diff = export_graph(_CascadeGraph(models, rt.scores, classes), (sample, thr), tmp / "single" / "cascade.onnx",
                            ["images", "thresholds"], ["logits", "path"], batched=[True, False], atol=atol)
    except ExportError as e:  # the per-path export stands; say why there is no single graph
        say(f"[export] single graph not written: {e}")
        spec["single_graph"] = None
        shutil.rmtree(tmp / "single", ignore_errors=True)
        return
    spec["single_graph"] = {"graph": "single/cascade.onnx", "inputs": ["images", "thresholds"],
                            "outputs": ["logits", "path"], "max_abs_diff": diff}
    say(f"[export] single/cascade.onnx: max |torch - onnxruntime| {diff:.2e}")


def _export_upfront(rt: UpfrontRuntime, method, paths, sample, tmp: Path, spec: dict, atol: float, say) -> None:
    for p, name in enumerate(rt.paths):
        diff, precision = _copy_or_export(paths.models[name], sample, tmp / "paths" / f"{name}.onnx", atol)
        spec["paths"].append({"name": name, "graph": f"paths/{name}.onnx", "flops": float(rt.path_flops[p]),
                              "skip_flops": 0.0, "advance_graph": None, "inputs": ["images"], "outputs": ["logits"],
                              "precision": precision, "max_abs_diff": diff})
        say(f"[export] paths/{name}.onnx: max |torch - onnxruntime| {diff:.2e}")
    module, rule = method.decision_module(), method.decision_rule()
    diff = export_graph(module, (sample,), tmp / "decision.onnx", ["images"], ["policy_logits"], atol=atol)
    spec["decision"] = {"graph": "decision.onnx", **rule, "decide_flops": float(rt.decide_flops), "max_abs_diff": diff}
    spec["executor"] = "upfront"
    spec["knob"] = {"kind": "cost_bias", "value": float(rt.knob), "direction": -1}
    say(f"[export] decision.onnx: max |torch - onnxruntime| {diff:.2e}")
