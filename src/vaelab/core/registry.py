"""A name -> object registry with a decorator and "did you mean" errors (like torch's `register_kl`)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from vaelab.core.errors import VaelabError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes or functions; `@REG.register("name")` adds one, `REG.get(name)` finds it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise VaelabError(f"unknown {self.kind} {name!r}: {hint}choose one of {', '.join(self)}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
