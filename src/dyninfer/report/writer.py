"""The one report writer: a run folder holds ``results.json``, ``report.md`` and PNG plots, replaced whole.

Every run records where its numbers come from (:func:`provenance`): the command line, the config,
the seed, library versions, the git commit and the machine. A report is a list of
:class:`Section` objects — the pipeline's shared ones and a method's own — each with its Markdown,
its results (stored under its key in ``results.json``) and its plots.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..io import atomic_dir, versions, write_json

REPORT = "report.md"
RESULTS = "results.json"


@dataclass
class Section:
    """One part of a report.

    Attributes:
        key: where its results go in ``results.json`` (and its anchor).
        title: its heading.
        markdown: its body.
        results: JSON-able figures (none: the section only presents results stored elsewhere).
        plots: file name -> writer called with the path to write (a PNG).
    """

    key: str
    title: str
    markdown: str
    results: dict = field(default_factory=dict)
    plots: dict[str, Callable[[Path], None]] = field(default_factory=dict)


def git_commit() -> str:
    """The commit of the source tree dyninfer runs from (``+dirty`` with uncommitted changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that is running, as a shell line (``dyninfer ...`` for the console script)."""
    argv = list(sys.argv if argv is None else argv)
    prog = argv[0] if argv else "dyninfer"
    head = "dyninfer" if prog.endswith("dyninfer") else f"python {os.path.relpath(prog)}" if prog.endswith(".py") else prog
    return " ".join([head] + [shlex.quote(a) for a in argv[1:]])


def provenance(config: Any, seed: int, command: str | None = None) -> dict:
    """Where a run's numbers come from (``command``: the command line; default: this process's)."""
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"command": command or command_line(), "config": config, "seed": seed, "versions": versions(), "git_commit": git_commit(),
            "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "torch_threads": torch.get_num_threads(), "load_average_1_5_15": list(load),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}


def write_report(folder: str | os.PathLike, *, title: str, sections: Sequence[Section], results: dict,
                 intro: str = "", extras: Sequence[Callable[[Path], None]] = ()) -> Path:
    """Write ``results.json``, ``report.md`` and every section's plots into ``folder``, replacing it whole.

    Args:
        folder: the run folder.
        title: the report's heading.
        sections: in report order.
        results: top-level results (provenance and the like); each section's results go under its key.
        intro: Markdown after the heading.
        extras: more writers, each called with the (temporary) folder, e.g. to save the fitted policy.
    """
    out = dict(results)
    for s in sections:
        if s.results:
            if s.key in out:
                raise ValueError(f"report section {s.key!r} would overwrite a result of the same name")
            out[s.key] = s.results
    lines = [f"# {title}", "", intro, ""] if intro else [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", "", s.markdown.rstrip(), ""]
        if s.plots:
            lines += [f"![{name}]({name})" for name in s.plots] + [""]
    with atomic_dir(folder) as tmp:
        for s in sections:
            for name, draw in s.plots.items():
                draw(tmp / name)
        for extra in extras:
            extra(tmp)
        write_json(tmp / RESULTS, out)
        (tmp / REPORT).write_text("\n".join(lines))
    return Path(folder)
