"""One registry pattern for every family of things (backbones, heads, datasets).

A thing registers itself where it is defined, with a decorator (`@register_head("my_head", ...)`), and is
found by name everywhere else. Names have one form on both sides, stripped and in lower case
(Registry.key): `MyViT` registers as `myvit` and is found as `MyViT` or `myvit`; a name that differs
from a registered one only in case (`Tiny14`) is refused at registration, never shadowed. A user's
own module registers the same way; the entry scripts import it when its module is named in the
`imports=[...]` config key, and never import a module named by a file (a checkpoint names things, it
cannot make us import them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from dense.core.errors import UnknownNameError, shown

T = TypeVar("T")


class Registry(Generic[T]):
    """Names (and their aliases) to entries of one kind. Entries are whatever the family needs: a spec
    dataclass for backbones and heads, a class for datasets.

    `builtins`: modules of the project that register entries of this kind where they are defined
    (dense.backbones.dinov3.specs for the DINOv3 backbones); imported at the first lookup, so that a name
    is found whichever module the caller imported first, and `import dense` stays cheap. Fixed names written in
    the code, never read from a file."""

    def __init__(self, kind: str, option: str, decorator: str, builtins: tuple[str, ...] = ()):
        self.kind = kind  # "backbone"
        self.option = option  # the config option that chooses one: "backbone.name"
        self.decorator = decorator  # "dense.register_backbone"
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._builtins = tuple(builtins)  # emptied once imported

    def _load_builtins(self) -> None:
        builtins, self._builtins = self._builtins, ()  # first, as those modules register here
        for module in builtins:
            importlib.import_module(module)

    @staticmethod
    def key(name: str) -> str:
        """The one form a name takes, on registration and on lookup alike: stripped of surrounding
        spaces, in lower case (`MyViT` and ` myvit` are `myvit`)."""
        return name.strip().lower()

    def add(self, name: str, entry: T, aliases: tuple[str, ...] = ()) -> T:
        """Register `entry` under `name` (and `aliases`), in their key() form. A name that is not a
        non-empty string is refused; so is one already taken, in any case: silently replacing a
        built-in (or shadowing it: `Tiny14` for `tiny14`) would change what every config that names
        it means."""
        for given in (name, *aliases):
            if not isinstance(given, str) or not given.strip():
                raise TypeError(f"{self.kind} names are non-empty strings, got {shown(given)}")
        keys = [self.key(given) for given in (name, *aliases)]
        for index, (given, key) in enumerate(zip((name, *aliases), keys)):
            if key in self._entries or key in self._aliases or key in keys[:index]:
                same = "" if key == given else f" (names are compared in lower case: {key!r})"
                raise ValueError(f"{self.kind} {given!r} is registered twice{same}; choose another name")
        self._entries[keys[0]] = entry
        for alias in keys[1:]:
            self._aliases[alias] = keys[0]
        return entry

    def canonical(self, name: str) -> str:
        """The registered name that `name` (a name or an alias, in any case) stands for."""
        if not isinstance(name, str):
            raise UnknownNameError(f"{self.option} must be a name, got {type(name).__name__}")
        self._load_builtins()
        key = self.key(name)
        key = self._aliases.get(key, key)
        if key not in self._entries:
            raise UnknownNameError(
                f"unknown {self.kind} {shown(name)} for {self.option}; choose one of {', '.join(self.names())} "
                f"(your own: define it with @{self.decorator} and name its module in imports=[...])"
            )
        return key

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        """The registered names, sorted (aliases not included)."""
        self._load_builtins()
        return sorted(self._entries)

    def aliases(self) -> dict[str, str]:
        self._load_builtins()
        return dict(self._aliases)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return isinstance(name, str) and (self.key(name) in self._entries or self.key(name) in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load_builtins()
        return len(self._entries)

    def decorator_for(self, name: str, make_entry: Callable[[object], T], aliases: tuple[str, ...] = ()):
        """A decorator that registers the decorated object as `make_entry(obj)` and returns it unchanged."""

        def register(obj):
            self.add(name, make_entry(obj), aliases)
            return obj

        return register
