"""Matplotlib helpers (headless)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    pyplot().close(fig)


def tradeoff_plot(path: Path, *, curves: list[dict], points: list[dict], xlabel: str, title: str,
                  ylabel: str = "test accuracy (%)", logx: bool = True) -> None:
    """Accuracy against a cost: lines (``curves``: label, x, y, optional style/color) and markers
    (``points``: label, x, y, optional marker/color), accuracies given as fractions."""
    import numpy as np
    from matplotlib.ticker import FormatStrFormatter

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ys = []
    for c in curves:
        x, y = np.asarray(c["x"], float), 100 * np.asarray(c["y"], float)
        order = np.lexsort((y, x))  # along the cost axis
        x, y = x[order], y[order]
        ok = np.isfinite(x) & np.isfinite(y) & (x > 0 if logx else True)
        ax.plot(x[ok], y[ok], c.get("style", "-"), color=c.get("color"), label=c["label"], lw=1.3)
        ys += list(y[ok])
    for p in points:
        ax.plot(p["x"], 100 * p["y"], p.get("marker", "o"), color=p.get("color", "0.3"), ms=p.get("ms", 8),
                mfc=p.get("mfc"), label=p["label"] if p.get("legend", True) else None)
        if p.get("annotate"):
            ax.annotate(p["annotate"], (p["x"], 100 * p["y"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
        ys.append(100 * p["y"])
    if ys:
        lo = float(np.percentile(ys, 5))
        ax.set_ylim(max(lo - 1.5, min(ys) - 0.5), max(ys) + 0.5)
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    save(fig, path)
