"""Path sets: the ways to get a prediction that a dynamic-inference policy chooses between.

A path set is one of three kinds, and every method runs on one of them:

* :class:`ModulePool` (``pool``) — separate modules: cascade stages, the backbones of a selection pool;
* :class:`StagedNetwork` (``staged``) — the stages of one network that hand a carry on: early exits;
* :class:`SupernetPaths` (``supernet``) — subnetworks of one supernet, each a path. It follows the
  once-for-all API: ``set_active_subnet(cfg)``, ``sample_active_subnet()`` (returns a cfg) and
  ``get_active_subnet()`` (returns a plain static module with copied weights), and otherwise
  behaves as a pool of those static modules (they are what gets timed and exported).

Each path set counts its paths' costs (:meth:`PathSet.count`), gives timing probes to
:func:`measure_costs` (which measures every path once per run, as a median over interleaved
rounds), records traces (:meth:`PathSet.record`), names its reference (the last, most expensive
path, run as the plain model), and saves itself beside a fitted policy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn

from .data.datasets import Split
from .errors import CheckpointError, ConfigError, TraceError
from .io import atomic_dir, digest, versions
from .models.exits import EarlyExitNetwork
from .runtime.cost import (DEFAULT_CPU_WATTS_PER_THREAD, EnergyMeter, LatencyStats, PathCost, count_flops,
                           count_params, median_costs, model_bytes, model_device, time_calls)
from .runtime.sequential import Stage, model_stage
from .trace import Trace
from .train.checkpoint import load_checkpoint, save_checkpoint
from .train.exits import exit_logits
from .train.trainer import predict_logits

Probe = Callable[[], object]
KINDS = ("pool", "staged", "supernet", "bigsmall")


@runtime_checkable
class Supernet(Protocol):
    """The once-for-all supernet API a :class:`SupernetPaths` needs."""

    def set_active_subnet(self, cfg: Any) -> None: ...

    def sample_active_subnet(self) -> Any: ...

    def get_active_subnet(self) -> nn.Module: ...


def _batch(sample: torch.Tensor, b: int) -> torch.Tensor:
    """``b`` images cut from ``sample`` (repeated when it holds fewer)."""
    if sample.shape[0] >= b:
        return sample[:b]
    return sample.repeat((b + sample.shape[0] - 1) // sample.shape[0], 1, 1, 1)[:b]


class PathSet:
    """Base of the three kinds. Subclasses set ``kind`` and implement the abstract methods."""

    kind: ClassVar[str] = ""
    names: list[str]
    input_shape: tuple[int, ...] | None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def device(self) -> torch.device:
        return model_device(self.reference())

    def count(self) -> list[PathCost]:
        """FLOPs, parameters and bytes of every path (counted, no timing)."""
        raise NotImplementedError

    def probes(self, sample: torch.Tensor, batches: Sequence[int]) -> dict[str, dict[int, Probe]]:
        """name -> batch size -> a call that runs that path once on that many images (for timing)."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor, *, batch_size: int = 512, progress: bool = False) -> np.ndarray:
        """(P, N, K) logits of every path on ``x``."""
        raise NotImplementedError

    def reference(self) -> nn.Module:
        """The plain model of the reference path (the last, most expensive one)."""
        raise NotImplementedError

    def to(self, device: str | torch.device) -> "PathSet":
        raise NotImplementedError

    def record(self, split: Split, *, costs: Sequence[PathCost] | None = None, meta: dict | None = None,
               batch_size: int = 512, progress: bool = False) -> Trace:
        """Run every path over ``split`` once and keep logits, labels and costs (counted if not given)."""
        if len(split) == 0:
            raise TraceError("cannot record a trace on an empty split")
        logits, aux = self._outputs(split.x, batch_size=batch_size, progress=progress)
        meta = {**(meta or {}), "kind": self.kind}
        meta.setdefault("versions", versions())
        return Trace(list(self.names), logits.astype(np.float32), split.y.numpy().astype(np.int64),
                     list(costs) if costs is not None else self.count(), meta, x=split.x, aux=aux)

    def _outputs(self, x: torch.Tensor, *, batch_size: int, progress: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(P, N, K) logits and the aux arrays a trace keeps (default: none)."""
        return self.logits(x, batch_size=batch_size, progress=progress), {}

    # ------------------------------------------------------------------ storage beside a policy
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the path set into ``folder`` (replaced whole): ``paths.json`` and checkpoints."""
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            info = {"kind": self.kind, "names": self.names, "input_shape": self.input_shape, **self._save_into(tmp)}
            info = json.loads(json.dumps(info))  # what will be read back
            (tmp / "paths.json").write_text(json.dumps({**info, "sha256": digest(info)}, indent=2))
        return folder

    def _save_into(self, folder: Path) -> dict:
        raise NotImplementedError

    @staticmethod
    def load(folder: str | os.PathLike, *, device: str | torch.device = "cpu") -> "PathSet":
        """Read a path set written by :meth:`save` (its checkpoints are checked against their checksums)."""
        folder = Path(folder)
        try:
            info = json.loads((folder / "paths.json").read_text())
        except FileNotFoundError:
            raise CheckpointError(f"no path set at {folder} (paths.json missing); save the policy again") from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{folder / 'paths.json'} is corrupt ({e}); save the policy again") from None
        stored = info.pop("sha256", None) if isinstance(info, dict) else None
        if not isinstance(info, dict) or stored != digest(info):
            raise CheckpointError(f"{folder / 'paths.json'} is not an intact path-set description (its SHA-256 checksum "
                                  f"differs); save the policy again")
        kind = info.get("kind")
        if kind == "pool":
            graphs = info.get("graphs", {})
            models = {n: _load_graph(folder / f"{n}.onnx", graphs[n], device) if n in graphs
                      else load_checkpoint(folder / f"{n}.pt", map_location=device)[0] for n in info["names"]}
            return ModulePool(models, input_shape=info["input_shape"],
                              files={n: folder / f"{n}.pt" for n in models if n not in graphs})
        if kind == "staged":
            net, _ = load_checkpoint(folder / "network.pt", map_location=device)
            return StagedNetwork(net)  # type: ignore[arg-type]
        if kind == "supernet":
            net, _ = load_checkpoint(folder / "supernet.pt", map_location=device)
            return SupernetPaths(net, dict(zip(info["names"], info["configs"])))  # type: ignore[arg-type]
        if kind == "bigsmall":
            from .train.bigsmall import load_bigsmall

            net, router, _ = load_bigsmall(folder / "supernet.pt", device=device)
            if router is None:
                raise CheckpointError(f"{folder / 'supernet.pt'} holds no router; save the policy again")
            return BigSmallPaths(net, router, dict(zip(info["names"], info["configs"])))
        raise CheckpointError(f"{folder / 'paths.json'} names an unknown path-set kind {kind!r}; use one of {KINDS}")


class ModulePool(PathSet):
    """Separate modules as paths, cheapest first (the last is the reference).

    A path may also be an ONNX graph run on onnxruntime (:class:`~dyninfer.export.graph.OnnxModule`, e.g. an
    INT8 copy of a student from :func:`~dyninfer.export.quantize.quantized_pool`): its FLOPs are those of the
    module it came from, and a saved pool stores the graph itself (``NAME.onnx``, checksummed).

    Args:
        models: name -> module mapping images (N, C, H, W) in [0, 1] to logits (N, K).
        input_shape: (C, H, W) of the images (default: what the models were built for, when dyninfer built them).
        files: name -> checkpoint file each module was loaded from (a backbone manager loads from
            there on a miss; without files it copies the in-memory modules).
    """

    kind = "pool"

    def __init__(self, models: Mapping[str, nn.Module], *, input_shape: Sequence[int] | None = None,
                 files: Mapping[str, str | os.PathLike] | None = None) -> None:
        if not models:
            raise ConfigError("a module pool needs at least one module")
        self.models = {n: m.eval() for n, m in models.items()}
        self.names = list(self.models)
        self.input_shape = tuple(input_shape) if input_shape is not None else _shape_from_arch(self.models.values())
        self.files = {n: Path(f) for n, f in (files or {}).items()}

    def count(self) -> list[PathCost]:
        if self.input_shape is None:
            raise ConfigError("the pool does not know its input shape; pass input_shape=(C, H, W)")
        return [_graph_cost(n, m) if is_graph(m) else
                PathCost(name=n, flops=count_flops(m, self.input_shape), params=count_params(m),
                         bytes=sum(model_bytes(m).values()), device=str(model_device(m)))
                for n, m in self.models.items()]

    def probes(self, sample: torch.Tensor, batches: Sequence[int]) -> dict[str, dict[int, Probe]]:
        xs = {b: _batch(sample, b) for b in batches}
        return {n: {b: (lambda m=m, x=xs[b]: m(x)) for b in batches} for n, m in self.models.items()}

    def logits(self, x: torch.Tensor, *, batch_size: int = 512, progress: bool = False) -> np.ndarray:
        return np.stack([predict_logits(m, x, batch_size=batch_size, progress=progress, desc=f"trace {n}").numpy()
                         for n, m in self.models.items()])

    def reference(self) -> nn.Module:
        return self.models[self.names[-1]]

    def stages(self, names: Sequence[str] | None = None) -> list[Stage]:
        """Cascade stages of the given paths (default: all), in order."""
        return [model_stage(self.models[n]) for n in (names or self.names)]

    def subset(self, names: Sequence[str]) -> "ModulePool":
        missing = [n for n in names if n not in self.models]
        if missing:
            raise ConfigError(f"the pool has no paths {missing}; it has {self.names}")
        return ModulePool({n: self.models[n] for n in names}, input_shape=self.input_shape,
                          files={n: self.files[n] for n in names if n in self.files})

    def to(self, device: str | torch.device) -> "ModulePool":
        for m in self.models.values():
            m.to(device)
        return self

    def backbone_pool(self):
        """A :class:`~dyninfer.runtime.pool.BackbonePool` of these modules, for a memory-budgeted manager."""
        from .runtime.pool import BackbonePool

        if all(n in self.files and self.files[n].exists() for n in self.names):
            return BackbonePool.from_checkpoints({n: self.files[n] for n in self.names})
        return BackbonePool.from_models(self.models)

    def _save_into(self, folder: Path) -> dict:
        graphs = {}
        for n, m in self.models.items():
            if is_graph(m):  # an ONNX path (a quantised copy): the graph file itself, checksummed
                (folder / f"{n}.onnx").write_bytes(m.graph_bytes)
                graphs[n] = {**m.describe(), "sha256": hashlib.sha256(m.graph_bytes).hexdigest()}
            else:
                save_checkpoint(m, folder / f"{n}.pt", {"path": n})
        return {"graphs": graphs} if graphs else {}


def is_graph(m: nn.Module) -> bool:
    """An :class:`~dyninfer.export.graph.OnnxModule` (duck-typed: this module does not import onnxruntime)."""
    return getattr(m, "graph_bytes", None) is not None


def _graph_cost(name: str, m) -> PathCost:
    return PathCost(name=name, flops=m.flops, params=m.params, bytes=len(m.graph_bytes), device="cpu")


def _load_graph(file: Path, info: dict, device) -> nn.Module:
    from .export.graph import OnnxModule

    if not file.is_file() or hashlib.sha256(file.read_bytes()).hexdigest() != info.get("sha256"):
        raise CheckpointError(f"{file} is missing or corrupt (its SHA-256 differs from paths.json); save the policy "
                              f"again")
    if torch.device(device).type != "cpu":
        raise ConfigError(f"{file.name} is an onnxruntime (CPU) path; load this policy with device='cpu'")
    return OnnxModule(file, flops=info["flops"], params=info["params"], precision=info["precision"],
                      source=info["source"])


def _shape_from_arch(models) -> tuple[int, ...] | None:
    """(C, H, W) the models were built for (their ``dyninfer_arch`` spec), if they all agree; else None."""
    shapes = set()
    for m in models:
        spec = (getattr(m, "dyninfer_arch", None) or {}).get("spec")
        if spec is None:
            return None
        shapes.add((spec["in_channels"], *spec["image_size"]))
    return shapes.pop() if len(shapes) == 1 else None


class StagedNetwork(PathSet):
    """The exits of one :class:`~dyninfer.models.exits.EarlyExitNetwork` as paths.

    Path p's cost is *incremental*: segment p plus head p; a sample leaving at exit p pays the sum up
    to p. ``skip_flops`` is segment p alone (what a runtime forced past exit p pays for it).
    """

    kind = "staged"

    def __init__(self, net: EarlyExitNetwork) -> None:
        if not isinstance(net, EarlyExitNetwork):
            raise ConfigError(f"a staged path set needs an EarlyExitNetwork, got {type(net).__name__}")
        self.net = net.eval()
        self.names = list(net.exit_names)
        self.input_shape = tuple(net.input_shape) if net.input_shape is not None else None

    def count(self) -> list[PathCost]:
        net = self.net
        if self.input_shape is None:
            raise ConfigError("the network does not know its input shape; set net.input_shape = (C, H, W)")
        cum = [count_flops(net.exit_module(p, all_heads=True), self.input_shape) for p in range(net.n_exits)]
        seg = [count_flops(_Segments(net, p), self.input_shape) for p in range(net.n_exits)]
        out = []
        for p in range(net.n_exits):
            parts = [net.segments[p], net.heads[p]]
            out.append(PathCost(name=self.names[p], flops=int(cum[p] - (cum[p - 1] if p else 0)),
                                skip_flops=int(seg[p] - (seg[p - 1] if p else 0)),
                                params=sum(count_params(m) for m in parts),
                                bytes=sum(sum(model_bytes(m).values()) for m in parts),
                                device=str(model_device(net))))
        return out

    def probes(self, sample: torch.Tensor, batches: Sequence[int]) -> dict[str, dict[int, Probe]]:
        carries: dict[int, Any] = {b: _batch(sample, b) for b in batches}
        out: dict[str, dict[int, Probe]] = {}
        with torch.inference_mode():
            for p, name in enumerate(self.names):
                stage = self.net.stage_module(p)
                out[name] = {b: (lambda s=stage, c=carries[b]: s(c)) for b in batches}
                carries = {b: self.net.segments[p](c) for b, c in carries.items()}
        return out

    def logits(self, x: torch.Tensor, *, batch_size: int = 512, progress: bool = False) -> np.ndarray:
        return np.stack([lo.numpy() for lo in exit_logits(self.net, x, batch_size=batch_size, progress=progress,
                                                           desc="exit trace")])

    def reference(self) -> nn.Module:
        return self.net

    def stages(self) -> list[Stage]:
        return [Stage(head=h, advance=s) for s, h in zip(self.net.segments, self.net.heads)]

    def to(self, device: str | torch.device) -> "StagedNetwork":
        self.net.to(device)
        return self

    def _save_into(self, folder: Path) -> dict:
        if getattr(self.net, "dyninfer_arch", None) is None:
            raise ConfigError("only networks built by dyninfer.models.create_model can be saved with a policy")
        save_checkpoint(self.net, folder / "network.pt", {"exits": self.names})
        return {}


class _Segments(nn.Module):
    """Segments 0..p of a network, no heads (the FLOPs a runtime forced past those exits still pays)."""

    def __init__(self, net: EarlyExitNetwork, p: int) -> None:
        super().__init__()
        self.segs = list(net.segments)[:p + 1]
        self.training = net.training

    def forward(self, x: torch.Tensor):
        for s in self.segs:
            x = s(x)
        return x


class SupernetPaths(ModulePool):
    """Named subnetworks of a once-for-all style supernet as a pool of static modules.

    When static subnets also answer ``forward_scored(x) -> (logits (N, K), scores (N, G))`` (the Var Gates of a
    slimmable network, a big/little pair's router), a recorded trace keeps those scores as its ``gate`` aux array
    (P, N, G), NaN for the paths that emit none (they must agree on G).

    Args:
        supernet: implements :class:`Supernet` and maps images to logits.
        configs: path name -> subnet configuration, cheapest first (the last is the reference).
    """

    kind = "supernet"

    def __init__(self, supernet: nn.Module, configs: Mapping[str, Any]) -> None:
        if not isinstance(supernet, Supernet):
            raise ConfigError(f"{type(supernet).__name__} lacks the supernet API "
                              f"(set_active_subnet, sample_active_subnet, get_active_subnet)")
        self.supernet = supernet.eval()
        self.configs = dict(configs)
        models = {}
        for name, cfg in self.configs.items():
            supernet.set_active_subnet(cfg)
            models[name] = supernet.get_active_subnet().eval()
        shape = getattr(supernet, "input_shape", None)
        super().__init__(models, input_shape=shape)

    def gate_costs(self) -> dict | None:
        """Counted FLOPs of the paths' Var Gates, when the static subnets have them: ``gate`` (per gate, on its
        anchor; the same for every path) and ``prefix`` (path name -> per gate, the stem and stages up to that
        gate's anchor). None for subnets without gates."""
        if self.input_shape is None or not all(hasattr(m, "gate_costs") for m in self.models.values()):
            return None
        per = {n: m.gate_costs(self.input_shape) for n, m in self.models.items()}
        return {"gate": next(iter(per.values()))["gate"], "prefix": {n: c["prefix"] for n, c in per.items()}}

    def record(self, split: Split, *, costs: Sequence[PathCost] | None = None, meta: dict | None = None,
               batch_size: int = 512, progress: bool = False) -> Trace:
        """As :meth:`PathSet.record`; the trace's meta also holds :meth:`gate_costs` (key ``gate_flops``)."""
        gates = self.gate_costs()
        meta = {**(meta or {}), **({"gate_flops": gates} if gates is not None else {})}
        return super().record(split, costs=costs, meta=meta, batch_size=batch_size, progress=progress)

    def _outputs(self, x: torch.Tensor, *, batch_size: int, progress: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if not any(hasattr(m, "forward_scored") for m in self.models.values()):
            return super()._outputs(x, batch_size=batch_size, progress=progress)
        logits, gates = [], {}
        with torch.inference_mode():
            for name, m in self.models.items():
                m.eval()
                dev = model_device(m)
                if not hasattr(m, "forward_scored"):
                    logits.append(predict_logits(m, x, batch_size=batch_size).numpy())
                    continue
                parts = [m.forward_scored(x[i:i + batch_size].to(dev)) for i in range(0, x.shape[0], batch_size)]
                logits.append(torch.cat([lo.float().cpu() for lo, _ in parts]).numpy())
                gates[name] = torch.cat([g.float().cpu() for _, g in parts]).numpy()
        widths = {g.shape[1] for g in gates.values()}
        if len(widths) != 1:
            raise TraceError(f"the paths emit different numbers of scores ({sorted(widths)}); they must agree")
        blank = np.full((x.shape[0], widths.pop()), np.nan, np.float32)
        return np.stack(logits), {"gate": np.stack([gates.get(n, blank) for n in self.names]).astype(np.float32)}

    def _save_into(self, folder: Path) -> dict:
        if getattr(self.supernet, "dyninfer_arch", None) is None:
            raise ConfigError("only supernets built by dyninfer.models.create_model can be saved with a policy")
        save_checkpoint(self.supernet, folder / "supernet.pt", {"configs": self.configs})
        return {"configs": list(self.configs.values())}


class BigSmallPaths(SupernetPaths):
    """The two paths of a big/little pair of a :class:`~dyninfer.models.bigsmall.BigSmallSupernet`: ``little`` (its
    static little subnet with the learned router, :class:`~dyninfer.models.bigsmall_router.RoutedSubnet`, which
    emits the router's keep score ``1 - p_forward``) and ``big`` (the reference, no router).

    A recorded trace keeps the keep score as the little path's ``gate`` aux (NaN for ``big``) and the router's
    counted FLOPs in its meta ``gate_flops`` (``gate``: [router]; ``prefix``: the little subnet's), which a stage
    scored by the router pays.

    Args:
        supernet: the co-trained supernet.
        router: its :class:`~dyninfer.models.bigsmall_router.BigSmallRouter`.
        pair: the deployed pair (a ``PairConfig`` or ``{"little": cfg, "big": cfg}``; default: the largest little
            and the largest big subnet).
        big_supernet: the supernet the big subnet comes from (default: ``supernet``; the independently trained
            baseline of the co-training ablation has two). Only paths of one supernet can be saved.
    """

    kind = "bigsmall"

    def __init__(self, supernet: nn.Module, router: nn.Module, pair: Any = None, *,
                 big_supernet: nn.Module | None = None) -> None:
        from .models.bigsmall import BigSmallSupernet, PairConfig
        from .models.bigsmall_router import RoutedSubnet

        for net in (supernet, big_supernet):
            if net is not None and not isinstance(net, BigSmallSupernet):
                raise ConfigError(f"big/little paths need a BigSmallSupernet, got {type(net).__name__}")
        pair = PairConfig(supernet.max_subnet("little"), supernet.max_subnet("big")) if pair is None \
            else supernet.space.check_pair(pair)
        super().__init__(supernet, supernet.pair_paths(pair))
        self.pair = pair
        self.big_supernet = big_supernet
        if big_supernet is not None:
            if big_supernet.space != supernet.space:
                raise ConfigError("the little and big supernets of a pair must share one search space")
            big_supernet.eval().set_active_subnet(pair.big)
            self.models["big"] = big_supernet.get_active_subnet().eval()
        self.router = router.eval()
        self.models["little"] = RoutedSubnet(self.models["little"], self.router).eval()

    def gate_costs(self) -> dict:
        little = self.models["little"]
        return {"gate": [little.router_flops()],
                "prefix": {"little": [count_flops(little, self.input_shape)]}}

    def _save_into(self, folder: Path) -> dict:
        from .train.bigsmall import save_bigsmall

        if getattr(self.supernet, "dyninfer_arch", None) is None:
            raise ConfigError("only supernets built by dyninfer.models.create_model can be saved with a policy")
        if self.big_supernet is not None:
            raise ConfigError("a pair drawn from two supernets cannot be saved as a policy; save one supernet's pair")
        save_bigsmall(folder / "supernet.pt", self.supernet, self.router, {"configs": self.configs})
        return {"configs": list(self.configs.values())}


def measure_costs(paths: PathSet, sample: torch.Tensor, *, batches: Sequence[int] = (1, 16, 64, 256),
                  rounds: int = 3, repeats: int = 10, min_time_s: float = 0.2, warmup: int = 3,
                  cpu_watts_per_thread: float = DEFAULT_CPU_WATTS_PER_THREAD,
                  log: Callable[[str], None] | None = print) -> list[PathCost]:
    """Measure every path's cost once: counted FLOPs, parameters and bytes, and latency and energy as the
    median over ``rounds`` interleaved rounds (each round times every path at every batch size).

    Args:
        paths: the path set.
        sample: images (N, C, H, W) on the paths' device; batches larger than N repeat them.
        batches: batch sizes to time.
        rounds, repeats, min_time_s, warmup: per round, path and batch size: warm-up calls, then at least
            ``repeats`` timed calls lasting at least ``min_time_s``.
        cpu_watts_per_thread: the stated power model where no energy counter exists.

    Returns:
        one :class:`PathCost` per path, in path order.
    """
    counted = paths.count()
    device = sample.device
    batches = tuple(sorted(set(int(b) for b in batches)))
    with torch.inference_mode():
        probes = paths.probes(sample, batches)
        per_round = []
        for _ in range(max(1, rounds)):
            costs = []
            for c in counted:
                lat: dict[int, LatencyStats] = {b: time_calls(probes[c.name][b], repeats=repeats, warmup=warmup,
                                                              batch=b, device=device, min_time_s=min_time_s)
                                                for b in batches}
                meter = EnergyMeter(device, cpu_watts_per_thread)
                with meter:
                    for _ in range(3):
                        probes[c.name][batches[-1]]()
                costs.append(dataclasses.replace(c, latency=lat, energy_j_per_sample=meter.joules / (3 * batches[-1]),
                                                 energy_source=meter.source, device=str(device)))
            per_round.append(costs)
    out = median_costs(per_round)
    if log is not None:
        for c in out:
            log(f"[cost] {c.name}: {c.flops / 1e6:.2f} MFLOPs, batch 1 {c.latency[batches[0]].median_s * 1e3:.3f} ms, "
                f"batch {batches[-1]} {c.latency[batches[-1]].throughput:.0f} img/s")
    return out

