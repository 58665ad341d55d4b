"""The head registry: every head registers itself where it is defined, with `@register_head`.

    @register_head("my_head", task="depth", layer_set=LayerSet.LAST, norm=False, use_cls_token=True)
    class MyHead(nn.Module):
        def __init__(self, embed_dim, num_layers=1, use_cls_token=True, my_option=3): ...

The registration states what the model needs to know about the head: its task, the blocks it reads by
default (a LayerSet, which each backbone turns into its own block indices), whether those features
pass through the backbone's final LayerNorm (`norm`; upstream: depth no, segmentation yes) and
whether it reads class tokens. `test_options` are the head's options for the test suite: sizes small
enough for a CPU (the DPT's fusion channels, the mask head's queries and blocks), which every per-head
test (tests/testers.py, tests/heads, tests/tasks, ...) builds it with; they change nothing outside the
tests. The constructor takes the embedding width, then its options: the model
always passes `num_layers` (how many feature maps it will get) and `use_cls_token`; a head that
supports only some values refuses the others there, in one line.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch.nn as nn

from dense.core.features import LayerSet
from dense.core.plain import learning_rate_problem
from dense.core.registry import Registry

TASKS = ("depth", "segmentation")
# Options under a former name: a config (or checkpoint) written with the old name still builds.
RENAMED_OPTIONS = {"norm_strategy": "bin_weighting"}
# The learning rate a head trains at when task.optimizer.lr is null: small heads trained from scratch on
# frozen features take 1e-3 (upstream's segmentation recipes); a head registers another where it needs it.
DEFAULT_LR = 1e-3


@dataclass(frozen=True)
class HeadSpec:
    """One registered head. `layer_set` is the default set of blocks; `aliases` other names for it;
    `default_lr` its learning rate when the run sets none; `test_options` the small sizes the test suite
    builds it with (module docstring)."""

    name: str
    task: str
    head_class: type[nn.Module]
    layer_set: LayerSet
    norm: bool
    use_cls_token: bool
    aliases: tuple[str, ...] = field(default=())
    default_lr: float = DEFAULT_LR
    test_options: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_layers(self) -> int:
        return self.layer_set.num_layers

    @property
    def options(self) -> tuple[str, ...]:
        """Option names build_head accepts for this head: its constructor's, plus their former names."""
        params = [p for p in inspect.signature(self.head_class).parameters if p != "embed_dim"]
        params += [old for old, new in RENAMED_OPTIONS.items() if new in params]
        return tuple(sorted(set(params) | {"num_layers", "use_cls_token"}))


HEADS: Registry[HeadSpec] = Registry("head", "head.name", "dense.register_head")


def register_head(
    name: str,
    *,
    task: str,
    layer_set: LayerSet,
    norm: bool,
    use_cls_token: bool,
    aliases: tuple[str, ...] = (),
    default_lr: float = DEFAULT_LR,
    test_options: Mapping[str, Any] | None = None,
):
    """Class decorator: register a head under `name` (and `aliases`). See the module docstring."""
    if task not in TASKS:
        raise ValueError(f"head {name}: task must be one of {', '.join(TASKS)}, got {task!r}")
    if not isinstance(layer_set, LayerSet):
        raise ValueError(f"head {name}: layer_set must be a dense.LayerSet, got {layer_set!r}")
    aliases = tuple(aliases)
    problem = learning_rate_problem(default_lr)
    if problem:
        raise ValueError(f"head {name}: default_lr {problem}")
    test_options = MappingProxyType(dict(test_options or {}))  # read-only: every test reads the same sizes

    def make_spec(head_class) -> HeadSpec:
        spec = HeadSpec(
            name,
            task,
            head_class,
            layer_set,
            bool(norm),
            bool(use_cls_token),
            aliases,
            float(default_lr),
            test_options,
        )
        unknown = sorted(set(test_options) - set(spec.options))
        if unknown:
            raise ValueError(f"head {name}: test_options has no option(s) {', '.join(unknown)}")
        return spec

    return HEADS.decorator_for(name, make_spec, aliases)


def list_heads(with_aliases: bool = False) -> list[str]:
    """The registered head names, sorted; with their aliases after them when `with_aliases`."""
    return HEADS.names() + (sorted(HEADS.aliases()) if with_aliases else [])


def get_head_spec(name: str) -> HeadSpec:
    """The registration of head `name` (a name or an alias); one line listing the names if unknown."""
    return HEADS.get(name)


def build_head(name: str, embed_dim: int, **options: Any) -> nn.Module:
    """Head `name` for `embed_dim`-wide features. Options left at None mean "the head's default";
    `num_layers` defaults to the size of the head's layer set."""
    spec = get_head_spec(name)
    options = {RENAMED_OPTIONS.get(k, k): v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(
            f"head {spec.name} has no option(s) {', '.join(unknown)}; valid: {', '.join(spec.options)}"
        )
    options.setdefault("num_layers", spec.num_layers)
    try:
        return spec.head_class(embed_dim, **options)
    except ValueError as error:  # the constructor's refusals, named by the head they are about
        raise ValueError(f"head {spec.name}: {error}") from None
