"""Adaptive backbone selection (ABS): complexity analyser, learned policy, LRU backbone manager.

One backbone of a pool is chosen per image, before any runs, by a small policy over cheap shared
features and an edge/texture complexity score, trained with REINFORCE on per-sample traces; a
manager keeps the loaded backbones within a memory budget. See ``papers/abs-adaptive-backbone-selection.txt``.
"""

from .complexity import ComplexityAnalyser, ComplexityConfig
from .features import EarlyBlock, PooledPixels, make_features
from .manager import BackboneManager, ManagerStats
from .policy import PolicyConfig, PolicyNet, choose, rewards, train_reinforce
from .pool import BackboneEntry, BackbonePool, CheckpointLoader, load_backbone
from .runtime import SelectionResult, SelectionRuntime
from .selector import BackboneSelector, ScorePolicy, SelectorConfig, time_per_image

__all__ = ["BackboneEntry", "BackboneManager", "BackbonePool", "BackboneSelector", "CheckpointLoader",
           "ComplexityAnalyser", "ComplexityConfig", "EarlyBlock", "ManagerStats", "PolicyConfig", "PolicyNet",
           "PooledPixels", "ScorePolicy", "SelectionResult", "SelectionRuntime", "SelectorConfig", "choose", "load_backbone",
           "make_features", "rewards", "time_per_image", "train_reinforce"]
