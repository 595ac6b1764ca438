"""dyninfer: dynamic inference, spending neural-network compute per input."""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    DyninferError,
    InputError,
    NotFittedError,
    TraceError,
)

__all__ = [
    "__version__",
    "DyninferError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "InputError",
    "NotFittedError",
    "TraceError",
]
