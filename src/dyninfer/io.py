"""Atomic file writing: a result or checkpoint is either whole on disk or absent."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole.

    A report folder is therefore either the old one or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def cache_dir() -> Path:
    """Root folder for checkpoints and traces: $DYNINFER_CACHE or ~/.cache/dyninfer."""
    root = os.environ.get("DYNINFER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dyninfer")
    return Path(root)


def versions() -> dict[str, str]:
    """Versions of the software a result depends on."""
    import platform
    import sys

    import numpy
    import torch
    import torchvision

    from . import __version__

    return {
        "dyninfer": __version__,
        "python": sys.version.split()[0],
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
    }


# ------------------------------------------------------------------------ checksummed torch payloads

def digest(obj: Any) -> str:
    """SHA-256 of ``obj`` in a canonical form: nested dicts (by sorted key), lists, tuples, tensors and
    arrays (dtype, shape and bytes), numbers, strings and None. Equal content gives an equal digest."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj: Any) -> None:
    import numpy as np
    import torch

    if isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(repr(k).encode() + b":")
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[" if isinstance(obj, list) else b"(")
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def write_payload(path: str | os.PathLike, payload: dict) -> Path:
    """``torch.save`` a dict atomically, with the SHA-256 of its content under ``"sha256"``."""
    import torch

    body = {k: v for k, v in payload.items() if k != "sha256"}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({**body, "sha256": digest(body)}, tmp)
    return path


def read_payload(path: str | os.PathLike, *, fmt: str, what: str = "checkpoint") -> dict:
    """Read a payload written by :func:`write_payload`; check its ``format`` tag and its checksum.

    Args:
        path: the file.
        fmt: the format tag the payload must carry.
        what: how error messages name the file (``checkpoint``, ``exit heads file``, ...).

    Raises:
        CheckpointError: missing, unreadable, of another format, or whose content no longer matches its
            checksum (a changed byte anywhere in the weights), each naming the file and what to do.
    """
    import torch

    from .errors import CheckpointError

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist; train or save it first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{what} {path} is unreadable ({type(e).__name__}: {str(e)[:200]}); it is "
                              f"truncated or not a dyninfer file. Delete it and train or save it again.") from e
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a {fmt} file (found {found!r}); delete it and train or save it again")
    stored = payload.pop("sha256", None)
    if stored is None or digest(payload) != stored:
        why = "has no checksum" if stored is None else "does not match its SHA-256 checksum"
        raise CheckpointError(f"{what} {path} {why}: its content was changed or damaged after it was written. "
                              f"Delete it and train or save it again.")
    return payload
