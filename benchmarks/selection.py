"""Adaptive backbone selection (ABS) on Fashion-MNIST, every figure in one run.

Runs ``dyninfer select`` (= ``dyninfer run selection``) with the benchmark settings and writes the run
folder (``results.json`` with command, config, seed, versions and commit; ``report.md``; PNG plots; the
saved policy) atomically::

    python benchmarks/selection.py                      # preset full, report in reports/selection-full
    python benchmarks/selection.py --preset quick --out reports/selection-quick

Extra arguments are passed on to ``dyninfer select`` (see ``dyninfer select --help``).
"""

from __future__ import annotations

import sys

from dyninfer.cli import main


def preset_of(argv: list[str], default: str) -> str:
    """The ``--preset`` value in ``argv`` (``--preset X`` or ``--preset=X``), else ``default``."""
    for i, a in enumerate(argv):
        if a.startswith("--preset="):
            return a.split("=", 1)[1]
        if a == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
    return default


DEFAULTS = {"--preset": "full", "--out": None, "--dataset": "fashion-mnist", "--threads": "1"}


def build_argv(argv: list[str]) -> list[str]:
    """``dyninfer select`` arguments: the benchmark defaults, overridden by ``argv``."""
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    preset = preset_of(argv, DEFAULTS["--preset"])
    out = ["select"]
    for k, v in DEFAULTS.items():
        if k not in given:
            out += [k, v if v is not None else f"reports/selection-{preset}"]
    return out + list(argv)


if __name__ == "__main__":
    sys.exit(main(build_argv(sys.argv[1:])))
