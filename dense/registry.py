"""One registry pattern for every family of things (backbones, heads, datasets).

A thing registers itself where it is defined, with a decorator (`@register_head("my_head", ...)`), and is
found by name everywhere else. A user's own module registers the same way; the entry scripts import it
when its module is named in the `imports=[...]` config key, and never import a module named by a file
(a checkpoint names things, it cannot make us import them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from dense.errors import DenseError

T = TypeVar("T")


class UnknownNameError(DenseError, ValueError):
    """A name that no registered backbone, head or dataset has."""


class Registry(Generic[T]):
    """Names (and their aliases) to entries of one kind. Entries are whatever the family needs: a spec
    dataclass for backbones and heads, a class for datasets."""

    def __init__(self, kind: str, option: str, decorator: str):
        self.kind = kind  # "backbone"
        self.option = option  # the config option that chooses one: "backbone.name"
        self.decorator = decorator  # "dense.register_backbone"
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, entry: T, aliases: tuple[str, ...] = ()) -> T:
        """Register `entry` under `name` (and `aliases`). A name already taken is refused: silently
        replacing a built-in would change what every config that names it means."""
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is registered twice; choose another name")
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def canonical(self, name: str) -> str:
        """The registered name that `name` (a name or an alias) stands for."""
        if not isinstance(name, str):
            raise UnknownNameError(f"{self.option} must be a name, got {type(name).__name__}")
        name = self._aliases.get(name, name)
        if name not in self._entries:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r} for {self.option}; choose one of {', '.join(self.names())} "
                f"(your own: define it with @{self.decorator} and name its module in imports=[...])"
            )
        return name

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        """The registered names, sorted (aliases not included)."""
        return sorted(self._entries)

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def decorator_for(self, name: str, make_entry: Callable[[object], T], aliases: tuple[str, ...] = ()):
        """A decorator that registers the decorated object as `make_entry(obj)` and returns it unchanged."""

        def register(obj):
            self.add(name, make_entry(obj), aliases)
            return obj

        return register
