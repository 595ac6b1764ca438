"""Issue 3 figures: early exits with test-time specialisation on Fashion-MNIST, side by side in one run.

    python benchmarks/early_exit.py                       # full preset -> reports/early-exit-full/
    python benchmarks/early_exit.py --preset quick        # smoke run -> reports/early-exit-quick/

Other ``dyninfer early-exit`` options pass through (``dyninfer early-exit --help``). Unless given, the
head updates run with the paper's setting (SGD, lr 1e-4, one pass) and with per-head normalised steps
(lr 0.3 over each head's mean squared input norm, the stream replayed 3 times), side by side, each on
3 streams (different images and order).
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
        extra += ["--adapt", "1e-4", "0.3:input-norm:3"]
    if not _has(args, "--stream-seeds"):
        extra += ["--stream-seeds", "3"]
    if not _has(args, "--out"):
        preset = args[args.index("--preset") + 1] if "--preset" in args else "full"
        extra += ["--out", f"reports/early-exit-{preset}"]
    return ["early-exit", *extra, *args]


if __name__ == "__main__":
    sys.exit(main(build_args(sys.argv[1:])))
