"""Image complexity analyser (ABS section 3.1): Sobel edge intensity and channel-wise texture variance.

``S_edge`` is the mean Sobel gradient magnitude of the grey image, ``S_texture`` the mean over
channels of each channel's pixel variance. Their raw scales differ by orders of magnitude, so
each is mapped to [0, 1] by a robust min-max normalisation fitted on calibration images (low and
high quantiles, clipped) and stored with the analyser; the score is
``S = w_edge * edge_norm + w_texture * texture_norm`` (0.6 / 0.4 as in the paper), in [0, 1].
Everything is batched torch and runs on the device the images are on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ...check import number
from ...errors import ConfigError, InputError
from ...runtime.validate import check_batch

GREY_RGB = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights


@dataclass
class ComplexityConfig:
    """Settings of the complexity analyser."""

    edge_weight: float = 0.6      # weight of the normalised Sobel edge intensity (paper: 0.6)
    texture_weight: float = 0.4   # weight of the normalised channel-wise texture variance (paper: 0.4)
    low_quantile: float = 0.01    # calibration quantile mapped to 0 (robust min)
    high_quantile: float = 0.99   # calibration quantile mapped to 1 (robust max)

    def __post_init__(self) -> None:
        for name in ("edge_weight", "texture_weight", "low_quantile", "high_quantile"):
            number(name, getattr(self, name), lo=0, hi=None if name.endswith("weight") else 1)
        if self.edge_weight < 0 or self.texture_weight < 0 or self.edge_weight + self.texture_weight <= 0:
            raise ConfigError(f"complexity weights must be >= 0 with a positive sum, got "
                              f"{self.edge_weight}, {self.texture_weight}")
        if not 0.0 <= self.low_quantile < self.high_quantile <= 1.0:
            raise ConfigError(f"need 0 <= low_quantile < high_quantile <= 1, got "
                              f"{self.low_quantile}, {self.high_quantile}")


class ComplexityAnalyser:
    """Scores images by edge and texture richness; normalisation fitted on calibration data.

    Args:
        config: weights and normalisation quantiles (:class:`ComplexityConfig`).

    Fitted attributes: ``edge_range_`` and ``texture_range_`` (low, high) raw values mapped to 0 and 1.
    """

    def __init__(self, config: ComplexityConfig | None = None) -> None:
        self.config = config or ComplexityConfig()

    # ------------------------------------------------------------------ raw components
    def raw(self, x: torch.Tensor, *, validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised edge intensity and texture variance.

        The Sobel responses are computed separably with slices (a [-1, 0, 1] difference along one
        axis, a [1, 2, 1] smoothing along the other) over the valid interior (H-2, W-2) instead of a
        1-channel ``conv2d``; the constant scale this changes is absorbed by the fitted normalisation.

        Args:
            x: images (N, C, H, W) in [0, 1] with H, W >= 3; C is 1 (grey) or 3 (RGB).
            validate: run :func:`~dyninfer.runtime.validate.check_batch` (NaN/inf included); the runtime
                validates its batches once and passes False.

        Returns:
            (edge (N,), texture (N,)) float tensors on ``x``'s device.
        """
        if validate:
            x = check_batch(x, None, where="complexity analyser")
        elif x.ndim != 4 or x.shape[0] == 0:
            raise InputError(f"complexity analyser: expected a non-empty batch (N, C, H, W), got {tuple(x.shape)}")
        n, c, h, w = x.shape
        if h < 3 or w < 3:
            raise InputError(f"complexity analyser: images of {h}x{w} are too small for a 3x3 Sobel filter")
        if c == 1:
            grey = x  # (N, 1, H, W)
        elif c == 3:
            wts = torch.tensor(GREY_RGB, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            grey = (x * wts).sum(1, keepdim=True)  # (N, 1, H, W)
        else:
            grey = x.mean(1, keepdim=True)
        d = grey[..., 2:] - grey[..., :-2]  # (N, 1, H, W-2)  [-1, 0, 1] along W
        gx = d[..., :-2, :] + d[..., 2:, :]  # (N, 1, H-2, W-2)  [1, 2, 1] along H
        gx.add_(d[..., 1:-1, :], alpha=2.0)
        s = grey[..., :-2] + grey[..., 2:]  # (N, 1, H, W-2)  [1, 2, 1] along W
        s.add_(grey[..., 1:-1], alpha=2.0)
        gy = s[..., 2:, :] - s[..., :-2, :]  # (N, 1, H-2, W-2)  [-1, 0, 1] along H
        edge = gx.mul_(gx).addcmul_(gy, gy).sqrt_().flatten(1).mean(1)  # (N,)  mean Sobel magnitude M
        xf = x.flatten(2)  # (N, C, H*W)
        mean = xf.mean(2)  # (N, C)
        texture = ((xf * xf).mean(2) - mean * mean).clamp_min_(0.0).mean(1)  # (N,)  mean_c Var(x_c)
        return edge, texture

    # ------------------------------------------------------------------ fitting and scoring
    def fit(self, x: torch.Tensor, batch_size: int = 4096) -> "ComplexityAnalyser":
        """Fit the normalisation of both components on calibration images ``x`` (N, C, H, W).

        Returns:
            self.
        """
        edges, texs = [], []
        for i in range(0, x.shape[0], batch_size):
            e, t = self.raw(x[i:i + batch_size])
            edges.append(e.float().cpu())
            texs.append(t.float().cpu())
        edge, tex = torch.cat(edges), torch.cat(texs)
        q = torch.tensor([self.config.low_quantile, self.config.high_quantile])
        self.edge_range_ = tuple(float(v) for v in torch.quantile(edge, q))
        self.texture_range_ = tuple(float(v) for v in torch.quantile(tex, q))
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "edge_range_"):
            raise ConfigError("the complexity analyser is not fitted; call fit(calibration_images) first")

    def _affine(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cached (lo (2,), scale (2,), weights (2,)) of the fitted normalisation on ``device``."""
        key = (device, dtype, self.edge_range_, self.texture_range_)
        tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()  # never cache traced tensors
        if tracing or getattr(self, "_affine_key", None) != key:
            (elo, ehi), (tlo, thi) = self.edge_range_, self.texture_range_
            total = self.config.edge_weight + self.config.texture_weight
            self._affine_cache = (
                torch.tensor([elo, tlo], dtype=dtype, device=device),
                torch.tensor([1 / max(ehi - elo, 1e-12), 1 / max(thi - tlo, 1e-12)], dtype=dtype, device=device),
                torch.tensor([self.config.edge_weight / total, self.config.texture_weight / total], dtype=dtype,
                             device=device))
            self._affine_key = None if tracing else key
        return self._affine_cache

    def components(self, x: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """Normalised components and score.

        Args:
            x: images (N, C, H, W) in [0, 1].
            validate: full input validation (see :meth:`raw`).

        Returns:
            (N, 3) float tensor: edge_norm, texture_norm, score (all in [0, 1]).
        """
        self._check_fitted()
        edge, tex = self.raw(x, validate=validate)
        lo, scale, w = self._affine(x.device, edge.dtype)
        en = torch.stack([edge, tex], 1).sub_(lo).mul_(scale).clamp_(0.0, 1.0)  # (N, 2) in [0, 1]
        return torch.cat([en, (en @ w).unsqueeze(1)], 1)  # (N, 3): edge, texture, 0.6 e + 0.4 t

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Complexity score S in [0, 1], shape (N,), for images ``x`` (N, C, H, W)."""
        return self.components(x)[:, 2]

    __call__ = score

    # ------------------------------------------------------------------ storage
    def state_dict(self) -> dict:
        """Settings and fitted normalisation, JSON-serialisable."""
        self._check_fitted()
        return {"config": asdict(self.config), "edge_range": list(self.edge_range_),
                "texture_range": list(self.texture_range_)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ComplexityAnalyser":
        """Rebuild a fitted analyser from :meth:`state_dict` output."""
        try:
            a = cls(ComplexityConfig(**state["config"]))
            a.edge_range_ = tuple(float(v) for v in state["edge_range"])
            a.texture_range_ = tuple(float(v) for v in state["texture_range"])
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not a complexity-analyser state: {e}") from e
        return a
