"""Head names → what the model needs to know about each head, and how to build it.

One line per head. `layers` names the backbone blocks a head reads by default (the model turns it into
block indices per backbone): "last" = the last block, "four" = upstream's 4 spread-out blocks
(S/B 2,5,8,11; L 4,11,17,23; g 9,19,29,39), "last4" = the last 4 blocks. `norm` is whether those
features pass through the backbone's final LayerNorm (upstream: depth no, segmentation yes).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from heads.depth_dpt import DPTDepthHead
from heads.depth_linear import LinearDepthHead
from heads.seg_linear import LinearSegHead

LAYER_SETS = ("last", "four", "last4")
LAYER_COUNTS = {"last": 1, "four": 4, "last4": 4}


@dataclass(frozen=True)
class HeadSpec:
    name: str
    task: str  # "depth" | "segmentation"
    head_class: type[nn.Module]
    layers: str  # one of LAYER_SETS
    norm: bool
    use_cls_token: bool

    @property
    def num_layers(self) -> int:
        return LAYER_COUNTS[self.layers]

    @property
    def options(self) -> tuple[str, ...]:
        """Option names build_head accepts for this head: the constructor's, plus the shared ones."""
        params = [p for p in inspect.signature(self.head_class).parameters if p != "embed_dim"]
        return tuple(sorted(set(params) | {"num_layers", "use_cls_token"}))


_DEPTH_LINEAR = dict(task="depth", head_class=LinearDepthHead, norm=False, use_cls_token=True)
_SEG_LINEAR = dict(task="segmentation", head_class=LinearSegHead, norm=True, use_cls_token=False)

HEADS: dict[str, HeadSpec] = {
    spec.name: spec
    for spec in [
        HeadSpec("depth_linear", layers="last", **_DEPTH_LINEAR),
        HeadSpec("depth_linear4", layers="four", **_DEPTH_LINEAR),
        HeadSpec(
            "depth_dpt", task="depth", head_class=DPTDepthHead, layers="four", norm=False, use_cls_token=True
        ),
        HeadSpec("seg_linear", layers="last", **_SEG_LINEAR),
        HeadSpec("seg_ms", layers="last4", **_SEG_LINEAR),
    ]
}
ALIASES = {"depth": "depth_dpt", "seg": "seg_ms"}


def head_names(with_aliases: bool = True) -> list[str]:
    return sorted(HEADS) + (sorted(ALIASES) if with_aliases else [])


def get_head_spec(name: str) -> HeadSpec:
    spec = HEADS.get(ALIASES.get(name, name))
    if spec is None:
        raise ValueError(f"unknown head {name!r}; valid heads: {', '.join(head_names())}")
    return spec


def build_head(name: str, embed_dim: int, **options: Any) -> nn.Module:
    """Build head `name` for `embed_dim`-wide features. Options left at None mean "the default".

    `num_layers` is the number of feature layers the model will pass (when the user overrides the
    layer list); `use_cls_token` whether it will pass class tokens.
    """
    spec = get_head_spec(name)
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(
            f"head {spec.name} has no option(s) {', '.join(unknown)}; valid: {', '.join(spec.options)}"
        )
    num_layers = options.pop("num_layers", spec.num_layers)
    use_cls = options.pop("use_cls_token", None)  # None: the head's default
    return _BUILDERS[spec.head_class](spec, embed_dim, num_layers, use_cls, options)


def _build_linear_depth(spec, embed_dim, num_layers, use_cls, kwargs):
    use_cls = spec.use_cls_token if use_cls is None else use_cls
    return LinearDepthHead(embed_dim, num_layers=num_layers, use_cls_token=use_cls, **kwargs)


def _build_dpt(spec, embed_dim, num_layers, use_cls, kwargs):
    if num_layers != 4:
        raise ValueError(f"head {spec.name} fuses exactly 4 feature layers, got num_layers={num_layers}")
    # use_cls_token=False means readout "ignore"; an explicit readout must agree with it.
    readout = kwargs.pop("readout", None)
    if readout is None:
        readout = "ignore" if use_cls is False else "project"
    if use_cls is not None and (readout != "ignore") != use_cls:
        raise ValueError(f"head {spec.name}: readout={readout!r} contradicts use_cls_token={use_cls}")
    return DPTDepthHead(embed_dim, readout=readout, **kwargs)


def _build_seg(spec, embed_dim, num_layers, use_cls, kwargs):
    if use_cls:
        raise ValueError(f"head {spec.name} does not use class tokens (use_cls_token must be False)")
    if "num_classes" not in kwargs:
        raise ValueError(f"head {spec.name} needs num_classes")
    return LinearSegHead(embed_dim, num_layers=num_layers, **kwargs)


_BUILDERS: dict[type, Callable[..., nn.Module]] = {
    LinearDepthHead: _build_linear_depth,
    DPTDepthHead: _build_dpt,
    LinearSegHead: _build_seg,
}
