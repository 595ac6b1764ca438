"""Benchmark of issue 4: adaptive backbone selection (ABS) on Fashion-MNIST, every figure in one run.

Runs ``dyninfer select`` with the benchmark settings and writes the report folder
(``results.json`` with config/seed/versions, ``report.md`` with the tables, PNG plots) atomically::

    python benchmarks/selection.py                      # preset full, report in reports/selection-full
    python benchmarks/selection.py --preset quick --out reports/selection-quick

Extra arguments are passed on to ``dyninfer select`` (see ``dyninfer select --help``).
"""

from __future__ import annotations

import sys

from dyninfer.cli import main

DEFAULTS = {"--preset": "full", "--out": None, "--dataset": "fashion-mnist"}


def build_argv(argv: list[str]) -> list[str]:
    """``dyninfer select`` arguments: the benchmark defaults, overridden by ``argv``."""
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    preset = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--preset"), DEFAULTS["--preset"])
    out = ["select"]
    for k, v in DEFAULTS.items():
        if k not in given:
            out += [k, v if v is not None else f"reports/selection-{preset}"]
    return out + list(argv)


if __name__ == "__main__":
    sys.exit(main(build_argv(sys.argv[1:])))
