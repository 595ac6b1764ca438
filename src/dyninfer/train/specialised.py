"""Training of a specialised EBJR student (paper section 2.4) through the checkpoint cache."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..data.datasets import Dataset
from ..errors import ConfigError
from ..models.specialised import SpecialisedStudent, check_classes
from .checkpoint import cached_model
from .recipe import Recipe


def fit_specialised(base: str, data: Dataset, classes: Sequence[int], recipe: Recipe, *, seed: int = 0,
                    base_kwargs: dict | None = None, device: str | torch.device = "cpu", progress: bool = True,
                    log: Callable[[str], None] = print) -> tuple[SpecialisedStudent, dict]:
    """A specialised student ``base`` for ``classes``, trained on ``data.train`` (cached like every model).

    Training runs the ordinary trainer on the wrapper's K-class logits with the original labels, which is
    cross-entropy on the C̄ + 1 remapped labels plus a constant (see :mod:`dyninfer.models.specialised`);
    label smoothing would break that equality and is refused.

    Raises:
        ConfigError: bad classes, or a recipe with label smoothing.
    """
    cls = check_classes(list(classes), data.spec.num_classes)
    if recipe.label_smoothing:
        raise ConfigError("a specialised student trains without label smoothing (label_smoothing=0): smoothing over "
                          "the K spread logits is not smoothing over the C̄ + 1 classes")
    kwargs = {"base": base, "classes": cls, "base_kwargs": dict(base_kwargs or {})}
    model, meta = cached_model("specialised", data, recipe, seed=seed, model_kwargs=kwargs, device=device,
                               progress=progress, log=log)
    return model, meta  # type: ignore[return-value]
