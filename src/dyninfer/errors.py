"""The one exception family users catch: every error says what was wrong and what to do."""

from __future__ import annotations


class DyninferError(Exception):
    """Base class of every error dyninfer raises on purpose."""


class ConfigError(DyninferError, ValueError):
    """A setting, name or argument is invalid (unknown key, bad value, unknown registry name)."""


class DataError(DyninferError):
    """A dataset is missing, corrupt or of the wrong format."""


class CheckpointError(DyninferError):
    """A checkpoint is missing, truncated, or belongs to another architecture."""


class InputError(DyninferError, ValueError):
    """A batch handed to a model or runtime has the wrong shape, dtype or values."""


class TraceError(DyninferError):
    """A trace is missing, corrupt, or does not fit the policy evaluated on it."""


class NotFittedError(DyninferError):
    """A method was used before ``fit`` (or ``load``) gave it its learned state."""
