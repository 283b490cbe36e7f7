"""A tiny name -> factory registry, so that a new dataset, encoder or model is one file plus one line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from cirlab.utils.errors import CirlabError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; unknown names raise a CirlabError that lists the valid choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise CirlabError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
