"""Specialised EBJR (paper section 2.4): a student for the C̄ popular classes plus "other", routed by eqs. 16-17.

* :func:`~dyninfer.train.specialised.fit_specialised` trains (or reuses from the checkpoint cache) a
  :class:`~dyninfer.models.specialised.SpecialisedStudent` on the training split with labels remapped to
  C̄ + 1 classes; it maps images to K-class logits, so it is a path like any other.
* :class:`SpecialisedCascade` (method ``cascade-specialised``) is the cascade with the ``specialised`` router
  (:class:`~dyninfer.scores.SpecialisedEnergy`): a sample stays with the student when -F̄ over the popular
  classes reaches the threshold and its argmax is not "other". Sweep, guarantee, runtime and storage are the
  cascade's; the router's classes are saved with the score's settings.
* :func:`energy_gap` measures inequality (15): the gap between the mean free energy of in-subset and
  out-of-subset samples.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ...errors import ConfigError
from ...models.specialised import SpecialisedStudent, check_classes
from ...paths import ModulePool
from ...scores import Score, make_score
from ...trace import Trace
from ..base import register_method
from .method import DEFAULT_TEMPERATURES, ROUTERS, Cascade


def pool_classes(paths: Any) -> list[int] | None:
    """The popular classes of the specialised students in a module pool (None: it has none)."""
    if not isinstance(paths, ModulePool):
        return None
    found = {tuple(m.classes) for m in paths.models.values() if isinstance(m, SpecialisedStudent)}
    if len(found) > 1:
        raise ConfigError(f"the pool holds specialised students for different classes {sorted(found)}; pass classes=")
    return list(found.pop()) if found else None


@register_method("cascade-specialised")
class SpecialisedCascade(Cascade):
    """The cascade (EBJR) with the specialised router of section 2.4 among its scores.

    Args:
        classes: the C̄ popular classes of the ``specialised`` router; None: those of the pool's specialised
            student (``fit_options``), or the ``classes`` given to ``fit``.
        scores: routers to choose among: those of :class:`Cascade` and ``specialised``.
        stages, temperatures, tolerance, confidence, bound, grid, order_share, seed: as :class:`Cascade`.

    Fitted attributes: those of :class:`Cascade`, and ``classes_``.
    """

    experimental = True  # needs a specialised student in the pool; `dyninfer compare` runs it when named
    routers = (*ROUTERS, "specialised")

    def __init__(self, *, classes: Sequence[int] | None = None, stages: Sequence[str] | None = None,
                 scores: Sequence[str] = ("specialised",), temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
                 tolerance: float = 0.001, confidence: float = 0.95, bound: str = "clt", grid: int = 40,
                 order_share: float = 0.3, seed: int = 0) -> None:
        super().__init__(stages=stages, scores=scores, temperatures=temperatures, tolerance=tolerance,
                         confidence=confidence, bound=bound, grid=grid, order_share=order_share, seed=seed)
        self.classes = classes
        if classes is not None:
            make_score("specialised", classes=list(classes) if isinstance(classes, tuple) else classes)

    def path_options(self) -> dict:
        """With ``classes``, the pool's cheapest model is replaced by a specialised student for them (trained or
        reused from the cache; :func:`dyninfer.harness.prepare`), so ``dyninfer run cascade-specialised --set
        classes=[...]`` runs end to end."""
        return {"student": "specialised", "classes": list(self.classes)} if self.classes is not None else {}

    def fit_options(self, paths) -> dict:
        """The classes of the pool's specialised student, when this cascade was given none."""
        found = pool_classes(paths) if self.classes is None else None
        return {"classes": found} if found is not None else {}

    def fit(self, calib: Trace, *, classes: Sequence[int] | None = None, **kwargs: Any) -> "SpecialisedCascade":
        """As :meth:`Cascade.fit`; ``classes`` (when the constructor got none) are the router's popular classes."""
        if self.classes is not None and classes is not None and list(classes) != list(self.classes):
            raise ConfigError(f"classes {list(classes)} given to fit differ from the cascade's {list(self.classes)}")
        chosen = self.classes if self.classes is not None else classes
        if chosen is None and "specialised" in self.scores:
            raise ConfigError("the specialised router needs its popular classes: pass classes= to the cascade or to "
                              "fit, or fit with a pool holding a specialised student (fit_options)")
        K = calib.logits.shape[-1]
        self.classes_ = check_classes(list(chosen), K) if chosen is not None else None
        return super().fit(calib, **kwargs)

    def _variants(self, router: str) -> list[Score]:
        if router == "specialised":
            return [make_score("specialised", classes=list(self.classes_))]
        return super()._variants(router)

    def _state(self) -> tuple[dict, dict]:
        state, tensors = super()._state()
        state["classes_"] = self.classes_
        return state, tensors

    def _set_state(self, state: dict, tensors: dict) -> None:
        self.classes_ = None if state["classes_"] is None else [int(c) for c in state["classes_"]]
        super()._set_state(state, tensors)


def free_energy(logits: torch.Tensor | np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """(N,) free energy F over ``classes`` (default: all K), eqs. 3 and 17: minus the ``energy`` score."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)  # (N, K)
    if classes is not None:
        z = z[:, check_classes(list(classes), z.shape[-1])]
    return (-make_score("energy")(z)).numpy()


def energy_gap(logits: torch.Tensor | np.ndarray, labels: np.ndarray | torch.Tensor, classes: Sequence[int], *,
               specialised: bool) -> dict:
    """Inequality (15): free energies of in-subset (label in ``classes``) and out-of-subset samples.

    Args:
        logits: (N, K) a student's logits.
        labels: (N,) true labels (they only split the samples into in and out).
        classes: the popular classes.
        specialised: True: F̄ over ``classes`` (eq. 17, the specialised student); False: F over all K (eq. 3).

    Returns:
        ``gap`` |mean F(in) - mean F(out)|, ``mean_in``, ``mean_out``, ``std_in``, ``std_out``, ``d`` (the gap
        over the pooled standard deviation, scale-free) and ``auroc`` (-F ranking in above out; 0.5: no
        separation), with the counts ``n_in``, ``n_out``.

    Raises:
        ConfigError: no in-subset or no out-of-subset samples.
    """
    z = np.asarray(logits)
    y = np.asarray(labels).reshape(-1)
    cls = check_classes(list(classes), z.shape[-1])
    f = free_energy(z, cls if specialised else None)
    inside = np.isin(y, cls)
    if inside.all() or not inside.any():
        raise ConfigError("the energy gap needs samples of the popular classes and of the others")
    fi, fo = f[inside], f[~inside]
    pooled = np.sqrt((fi.var(ddof=1) * (fi.size - 1) + fo.var(ddof=1) * (fo.size - 1)) / (f.size - 2))
    auroc = roc_auc_score(inside, -f)  # -F ranking in-subset samples above the others
    return {"gap": float(abs(fi.mean() - fo.mean())), "mean_in": float(fi.mean()), "mean_out": float(fo.mean()),
            "std_in": float(fi.std()), "std_out": float(fo.std()), "d": float(abs(fi.mean() - fo.mean()) / pooled),
            "auroc": float(auroc), "n_in": int(fi.size), "n_out": int(fo.size)}


def energy_gap_terms(logits: torch.Tensor | np.ndarray, labels: np.ndarray | torch.Tensor,
                     classes: Sequence[int]) -> dict:
    """Supplementary 5.7, eq. (28)-(29): a general student's free energy split as F = -S_y + F̂ (y the true label,
    F̂ = -log(1 + sum_{i != y} exp(S_i - S_y))), averaged over in-subset and out-of-subset samples.

    The two terms move in opposite directions between in and out samples (a confident true logit lowers -S_y and
    raises F̂), so their changes partly cancel in the general student's gap; the specialised student's F̄ has no
    such cancellation. Returns the mean of each term in and out, the change of each (out - in) and of F, and
    ``cancelled``: the share of the larger term change that the other term cancels (0: none, 1: all).

    Raises:
        ConfigError: no in-subset or no out-of-subset samples.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels).reshape(-1), dtype=torch.long)
    cls = check_classes(list(classes), z.shape[-1])
    inside = np.isin(y.numpy(), cls)
    if inside.all() or not inside.any():
        raise ConfigError("the energy gap needs samples of the popular classes and of the others")
    s_y = z.gather(1, y[:, None])[:, 0]
    f = -torch.logsumexp(z, 1)
    f_hat = f + s_y  # F̂ = F + S_y
    parts = {"minus_s_y": (-s_y).numpy(), "f_hat": f_hat.numpy(), "f": f.numpy()}
    out = {}
    for k, v in parts.items():
        out[k] = {"mean_in": float(v[inside].mean()), "mean_out": float(v[~inside].mean()),
                  "change": float(v[~inside].mean() - v[inside].mean())}
    a, b = out["minus_s_y"]["change"], out["f_hat"]["change"]
    big = max(abs(a), abs(b))
    out["cancelled"] = float(min(abs(a), abs(b)) / big) if big > 0 and a * b < 0 else 0.0
    return out


__all__ = ["SpecialisedCascade", "energy_gap", "energy_gap_terms", "free_energy", "pool_classes"]
