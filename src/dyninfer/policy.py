"""A saved policy: the fitted method and its paths in one folder, reloadable and runnable anywhere.

Layout of ``DIR/policy/``::

    policy.json      method name, path-set kind, input spec (shape, pixel range, class names), provenance
    method/          the fitted method (``method.json`` with settings and learned state, ``state.pt``)
    paths/           the path set (``paths.json`` and checkpoints, or ONNX graphs for onnxruntime paths)

Every file carries a SHA-256 checksum (``state.pt``'s inside ``method.json``'s); a changed byte makes
:func:`load_policy` refuse the folder
with a :class:`~dyninfer.errors.CheckpointError` that says what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError
from .io import atomic_dir, digest
from .methods import Method, load_method
from .paths import PathSet
from .runtime.validate import PIXEL_RANGE

FORMAT = "dyninfer-policy-folder-1"


@dataclass
class Policy:
    """A fitted method with the paths it runs on.

    Attributes:
        method: the fitted method.
        paths: its path set.
        info: ``policy.json`` (input spec, provenance).
    """

    method: Method
    paths: PathSet
    info: dict = field(default_factory=dict)

    def runtime(self, device: str | torch.device | None = None):
        """The method's runtime over these paths (its knob starts at the fitted operating point)."""
        return self.method.runtime(self.paths, device=device)

    @property
    def class_names(self) -> list[str]:
        return list(self.info.get("class_names", []))


def save_policy(folder: str | os.PathLike, method: Method, paths: PathSet, *, class_names=(), extra: dict | None = None) -> Path:
    """Write ``method`` and ``paths`` to ``folder`` (replaced whole)."""
    method.check_fitted()
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        method.save(tmp / "method")
        paths.save(tmp / "paths")
        info = {"format": FORMAT, "method": method.name, "kind": paths.kind, "paths": paths.names,
                "input_shape": list(paths.input_shape) if paths.input_shape else None,
                "pixel_range": [0.0, 1.0], "accepted_range": list(PIXEL_RANGE), "class_names": list(class_names),
                **(extra or {})}
        info = json.loads(json.dumps(info, default=str))  # what will be read back
        (tmp / "policy.json").write_text(json.dumps({**info, "sha256": digest(info)}, indent=1) + "\n")
    return folder


def load_policy(folder: str | os.PathLike, *, device: str | torch.device = "cpu") -> Policy:
    """Read a policy folder written by :func:`save_policy` (or by ``dyninfer run`` under ``DIR/policy``).

    Raises:
        CheckpointError: a missing or changed file, naming it and what to do.
    """
    folder = Path(folder)
    if (folder / "policy" / "policy.json").exists() and not (folder / "policy.json").exists():
        folder = folder / "policy"  # a run folder was given
    path = folder / "policy.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no saved policy at {folder} ({path.name} missing); run `dyninfer run METHOD --out DIR` "
                              f"and pass DIR or DIR/policy") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); save the policy again") from None
    stored = info.pop("sha256", None) if isinstance(info, dict) else None
    if not isinstance(info, dict) or info.get("format") != FORMAT or stored != digest(info):
        raise CheckpointError(f"{path} is not an intact {FORMAT} file (format or SHA-256 checksum differs); save the "
                              f"policy again")
    method = load_method(folder / "method")
    paths = PathSet.load(folder / "paths", device=device)
    if paths.names != list(info["paths"]) or paths.kind != info["kind"] or method.name != info["method"]:
        raise CheckpointError(f"{folder}: the saved method ({method.name}) and paths ({paths.kind} {paths.names}) are "
                              f"not the policy's ({info['method']}, {info['kind']} {info['paths']}); save it again")
    return Policy(method, paths, info)
