"""The early-exit figures: threshold exiting with test-time specialisation on Fashion-MNIST, in one run of
``dyninfer early-exit`` (= ``dyninfer run early-exit``).

    python benchmarks/early_exit.py                       # full preset -> reports/early-exit-full/
    python benchmarks/early_exit.py --preset quick        # smoke run -> reports/early-exit-quick/
    python benchmarks/early_exit.py --no-select           # without the cross-validated setting (faster)

Other ``dyninfer early-exit`` options pass through (``dyninfer early-exit --help``). Unless given, the
head updates run with the paper's setting (SGD, lr 1e-4, one pass) and with the setting that 5-fold
cross-validation on the calibration split chooses per subset from a default grid (plain SGD steps and
per-head normalised steps, one pass or three; ``--select``), side by side, each on 3 streams (different
images and order). The test split is never used to choose.
"""

from __future__ import annotations

import sys

from dyninfer.cli import main


def _has(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def build_args(args: list[str]) -> list[str]:
    """The ``dyninfer`` arguments: the benchmark's defaults, then the user's."""
    extra = []
    if not _has(args, "--preset"):
        extra += ["--preset", "full"]
    if not _has(args, "--adapt"):
        extra += ["--adapt", "1e-4"]
    if "--no-select" in args:  # the paper's setting and --adapt only: no cross-validation
        args = [a for a in args if a != "--no-select"]
    elif not _has(args, "--select"):
        extra += ["--select"]
    if not _has(args, "--stream-seeds"):
        extra += ["--stream-seeds", "3"]
    if not _has(args, "--out"):
        preset = next((a.split("=", 1)[1] for a in args if a.startswith("--preset=")), None) or \
            (args[args.index("--preset") + 1] if "--preset" in args else "full")
        extra += ["--out", f"reports/early-exit-{preset}"]
    return ["early-exit", *extra, *args]


if __name__ == "__main__":
    sys.exit(main(build_args(sys.argv[1:])))
