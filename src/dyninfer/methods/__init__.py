"""Dynamic-inference methods: one protocol (:class:`Method`), one registry (:data:`METHODS`).

Importing this package registers the built-in families: ``cascade`` (EBJR), ``early-exit``
(threshold exiting with test-time specialisation), ``selection`` (adaptive backbone selection) and
``slimmable`` (AdaptaNet: subnetworks of one supernet, Var Gates as scores) and ``bigsmall`` (a co-trained
little/big pair of one supernet with a confidence, learned or difficulty-aware router).
"""

from .base import FIGURES, METHODS, Figures, Method, create_method, load_method, register_method
from . import bigsmall, cascade, early_exit, selection, slimmable  # noqa: E402,F401  (registers the families)

__all__ = ["FIGURES", "Figures", "METHODS", "Method", "create_method", "load_method", "register_method"]
