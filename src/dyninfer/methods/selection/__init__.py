"""Adaptive backbone selection (ABS): complexity analyser, learned policy, and the ``selection`` method.

One backbone of a pool is chosen per image, before any runs, by a small policy over cheap shared
features and an edge/texture complexity score, trained with REINFORCE on per-sample traces; the
shared backbone manager keeps the loaded backbones within a memory budget. See
``papers/abs-adaptive-backbone-selection.txt``.
"""

from .complexity import ComplexityAnalyser, ComplexityConfig
from .features import EarlyBlock, PooledPixels, make_features
from .method import DEFAULT_LAMBDAS, Selection, biased_choice, margin_above_hull
from .policy import PolicyConfig, PolicyNet, choose, rewards, train_reinforce
from .selector import BackboneSelector, ScorePolicy, SelectorConfig, time_per_image
from . import figures  # noqa: E402,F401  (registers the selection figures)

__all__ = ["BackboneSelector", "ComplexityAnalyser", "ComplexityConfig", "DEFAULT_LAMBDAS", "EarlyBlock",
           "PolicyConfig", "PolicyNet", "PooledPixels", "ScorePolicy", "Selection", "SelectorConfig",
           "biased_choice", "choose", "make_features", "margin_above_hull", "rewards", "time_per_image",
           "train_reinforce"]
