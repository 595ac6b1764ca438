"""A small name -> factory registry, one per kind of plug-in (dataset, backbone, score, method)."""

from __future__ import annotations

import fnmatch
from typing import Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; names are unique, listable by glob pattern.

    Args:
        kind: what is registered ("dataset", "backbone", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted.

        Raises:
            ConfigError: if ``name`` is already registered.
        """

        def _add(o: T) -> T:
            if name in self._items:
                raise ConfigError(f"{self.kind} {name!r} is already registered; pick another name")
            self._items[name] = o
            return o

        return _add if obj is None else _add(obj)

    def get(self, name: str) -> T:
        """Return the object registered as ``name``.

        Raises:
            ConfigError: naming the close matches, if ``name`` is unknown.
        """
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a glob ``pattern``, sorted."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)


def check_keys(cls_name: str, given: dict, allowed: set[str]) -> None:
    """Raise ConfigError naming any key of ``given`` not in ``allowed``."""
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ConfigError(f"unknown {cls_name} keys {unknown}; allowed: {sorted(allowed)}")
