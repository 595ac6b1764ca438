"""Class-subset streams (paper section 4.2): a deployment that sees only a group of related classes.

Adaptation streams are drawn from data not used for evaluation (the calibration split); figures
are measured on the held-out test split, separately for the subset's classes and all other classes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ...data.datasets import DataSpec, Split
from ...errors import ConfigError

# Groups of related classes per dataset, by class name.
SUBSETS: dict[str, dict[str, tuple[str, ...]]] = {
    "fashion-mnist": {
        "footwear": ("Sandal", "Sneaker", "Ankle boot"),
        "tops": ("T-shirt/top", "Pullover", "Coat", "Shirt"),
    },
    "digits": {
        "round": ("0", "6", "8", "9"),
        "straight": ("1", "4", "7"),
    },
}


def subset_classes(spec: DataSpec, subset: str | Sequence[str]) -> list[int]:
    """Class indices of a named subset of ``spec``'s dataset, or of an explicit list of class names.

    Raises:
        ConfigError: unknown subset or class name.
    """
    if isinstance(subset, str):
        known = SUBSETS.get(spec.name, {})
        if subset not in known:
            raise ConfigError(f"no class subset {subset!r} for {spec.name}; known: {sorted(known) or '(none)'}; "
                              f"or pass class names")
        names: Sequence[str] = known[subset]
    else:
        names = subset
    missing = [n for n in names if n not in spec.class_names]
    if missing or not names:
        raise ConfigError(f"classes {missing or list(names)} are not classes of {spec.name}: {list(spec.class_names)}")
    return sorted(spec.class_names.index(n) for n in names)


def class_mask(labels: np.ndarray | torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """(N,) bool: which labels belong to ``classes``."""
    return np.isin(np.asarray(labels), np.asarray(list(classes)))


def subset_stream(split: Split, classes: Sequence[int], *, per_class: int | None = None, seed: int = 0) -> Split:
    """An unlabelled-in-spirit stream of ``split``'s images of ``classes``, shuffled with ``seed``.

    Args:
        split: where the stream is drawn from (keep it apart from the evaluation split).
        classes: class indices of the subset.
        per_class: images per class (at most what the split holds); None takes all.
        seed: order of the stream.

    Returns:
        a :class:`Split` (labels kept for analysis only; adaptation never reads them).
    """
    rng = np.random.default_rng(seed)
    y = split.y.numpy()
    idx = []
    for c in classes:
        cand = np.flatnonzero(y == c)
        if cand.size == 0:
            raise ConfigError(f"class {c} has no images in the split the stream is drawn from")
        take = cand.size if per_class is None else min(per_class, cand.size)
        idx.append(rng.choice(cand, size=take, replace=False))
    order = rng.permutation(np.concatenate(idx))
    return split.subset(order)
