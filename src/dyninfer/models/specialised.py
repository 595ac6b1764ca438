"""A specialised student (EBJR section 2.4): C̄ popular classes plus one "other" class, seen as K-class logits.

The inner model maps images to C̄ + 1 logits: the popular classes in the order of ``classes``, then "other".
:class:`SpecialisedStudent` spreads the "other" logit over the m = K - C̄ remaining classes as
``other - log m`` each, so that

* ``logsumexp`` over the non-subset logits equals the "other" logit exactly, and the K-class softmax gives
  the remaining classes together the "other" class's probability;
* cross-entropy on the K logits with the original labels equals cross-entropy on the C̄ + 1 logits with
  the remapped labels (:func:`remap_labels`) plus the constant ``log m`` on out-of-subset samples: the
  same gradients, so the wrapper trains with the ordinary trainer and labels.

Every path of a policy therefore still maps images to K-class logits (traces, runtimes and export are
unchanged). The wrapper is registered as the backbone ``specialised`` (``base``, ``classes``,
``base_kwargs``), so a pool that holds it saves and reloads it like any model built by
:func:`~dyninfer.models.create_model`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.datasets import DataSpec
from ..errors import ConfigError
from .registry import create_model, register_backbone


def check_classes(classes: Any, num_classes: int) -> list[int]:
    """``classes`` as a list of distinct class indices of a ``num_classes``-class task, leaving at least one out.

    Raises:
        ConfigError: not a non-empty sequence of distinct integers in [0, num_classes), or C̄ >= K.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"a specialised student needs a task of 2 or more classes, got num_classes={num_classes!r}")
    if isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple, np.ndarray)) or len(classes) == 0:
        raise ConfigError(f"classes must be a non-empty list of class indices, got {classes!r}")
    out = []
    for c in classes:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
            raise ConfigError(f"classes must be integer class indices, got {c!r} in {list(classes)!r}")
        out.append(int(c))
    unknown = [c for c in out if not 0 <= c < num_classes]
    if unknown:
        raise ConfigError(f"classes {unknown} are not classes of a {num_classes}-class task (use 0..{num_classes - 1})")
    if len(set(out)) != len(out):
        raise ConfigError(f"classes must be distinct, got {out}")
    if len(out) >= num_classes:
        raise ConfigError(f"a specialised student keeps C̄ < K classes apart from 'other'; got C̄={len(out)} of "
                          f"K={num_classes} (leave at least one class to 'other')")
    return out


def remap_labels(y: torch.Tensor, classes: Sequence[int], num_classes: int) -> torch.Tensor:
    """Labels (N,) of a K-class task -> labels of the C̄ + 1-class student: ``classes[i]`` -> i, any other -> C̄."""
    cls = check_classes(list(classes), num_classes)
    table = torch.full((num_classes,), len(cls), dtype=torch.long)
    table[torch.tensor(cls)] = torch.arange(len(cls))
    y = torch.as_tensor(y, dtype=torch.long)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ConfigError(f"labels must lie in [0, {num_classes}), got values from {int(y.min())} to {int(y.max())}")
    return table[y]


class SpecialisedStudent(nn.Module):
    """K-class logits from a C̄ + 1-class model (see the module doc).

    Args:
        model: maps images (N, C, H, W) to C̄ + 1 logits: ``classes`` in order, then "other".
        classes: the C̄ popular class indices of the K-class task.
        num_classes: K.

    Attributes:
        classes: the popular classes (list of int); ``others``: the remaining classes, increasing.
    """

    def __init__(self, model: nn.Module, classes: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.classes = check_classes(classes, num_classes)
        self.num_classes = int(num_classes)
        self.others = [c for c in range(num_classes) if c not in self.classes]
        self.model = model
        # where each K-class logit comes from among the C̄ + 1 inner logits, and its offset
        src = torch.full((num_classes,), len(self.classes), dtype=torch.long)
        src[torch.tensor(self.classes)] = torch.arange(len(self.classes))
        offset = torch.zeros(num_classes)
        offset[torch.tensor(self.others)] = -math.log(len(self.others))
        self.register_buffer("source", src, persistent=False)
        self.register_buffer("offset", offset, persistent=False)
        arch = getattr(model, "dyninfer_arch", None)
        if arch is not None:  # saveable with a policy: rebuilt by create_model("specialised", ...)
            spec = {**arch["spec"], "num_classes": self.num_classes, "class_names": []}
            self.dyninfer_arch = {"name": "specialised",
                                  "kwargs": {"base": arch["name"], "classes": list(self.classes),
                                             "base_kwargs": dict(arch["kwargs"])},
                                  "spec": spec}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)  # (N, C̄ + 1)
        if z.shape[-1] != len(self.classes) + 1:
            raise ConfigError(f"the specialised model returned {z.shape[-1]} logits; it must return C̄ + 1 = "
                              f"{len(self.classes) + 1} (the popular classes, then 'other')")
        return z.index_select(-1, self.source) + self.offset.to(z.dtype)  # (N, K)


@register_backbone("specialised")
def specialised(spec: DataSpec, *, base: str, classes: Sequence[int], base_kwargs: dict | None = None
                ) -> SpecialisedStudent:
    """A :class:`SpecialisedStudent` around the backbone ``base`` built for C̄ + 1 classes of ``spec``'s data."""
    cls = check_classes(list(classes), spec.num_classes)
    names = tuple(spec.class_names[c] for c in cls) + ("other",) if spec.class_names else ()
    inner_spec = dataclasses.replace(spec, num_classes=len(cls) + 1, class_names=names)
    inner = create_model(base, inner_spec, **dict(base_kwargs or {}))
    return SpecialisedStudent(inner, cls, spec.num_classes)


__all__ = ["SpecialisedStudent", "check_classes", "remap_labels", "specialised"]
