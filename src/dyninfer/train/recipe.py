"""Training recipes: one dataclass of hyperparameters, with units and defaults commented."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..check import flag, number
from ..registry import check_keys


@dataclass(frozen=True)
class Recipe:
    """How a backbone is trained. Unknown keys in :meth:`from_dict` are errors."""

    epochs: int = 10              # passes over the training split
    batch_size: int = 128         # samples per optimiser step
    lr: float = 3e-3              # peak AdamW learning rate of the one-cycle schedule
    weight_decay: float = 5e-4    # AdamW decoupled weight decay
    label_smoothing: float = 0.0  # cross-entropy smoothing (0 keeps scores like energy interpretable)
    augment: bool = True          # random shifts of up to `shift` pixels and horizontal flips
    shift: int = 2                # max translation in pixels for augmentation
    hflip: bool = True            # horizontal flips (right for clothes, wrong for digits)

    def __post_init__(self) -> None:
        number("epochs", self.epochs, lo=1, integer=True)
        number("batch_size", self.batch_size, lo=1, integer=True)
        number("lr", self.lr, lo=0, lo_open=True)
        number("weight_decay", self.weight_decay, lo=0)
        number("label_smoothing", self.label_smoothing, lo=0, hi=1, hi_open=True)
        number("shift", self.shift, lo=0, integer=True)
        flag("augment", self.augment)
        flag("hflip", self.hflip)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        check_keys("Recipe", d, {f.name for f in fields(cls)})
        return cls(**d)
