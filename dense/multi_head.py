"""MultiHeadModel: one frozen backbone pass feeding several heads.

    images → normalise, pad (as DenseModel)
      → backbone blocks run once, up to the deepest block any head reads; each block a head asks for
        is taken once per `norm` setting asked for (depth heads read raw tokens, segmentation heads
        normalised ones: `get_token_sets`)
      → each head gets its own FeatureMaps (its layers, in its order) → its DenseModel.forward_head
        (clamp, resize, crop) → {"depth": B×1×H×W, "seg": B×K×H×W}

Each head keeps a DenseModel of its own (`model.parts[name]`): the same backbone module, its head, its
layers, norm and depth range. That part is what the single-head code paths use (the per-head
training losses and metrics, the segmentation evaluation protocol, export metadata); it is not a
submodule, so the state dict holds the backbone once (`backbone.*`) and each head under its name
(`heads.<name>.*`). Given the same weights, each output equals the single-head model's.

Build it with `dense.build_model(backbone, heads={"depth": "depth_dpt", "seg": "seg_linear"})` (or
a dict of options per head: {"seg": {"head": "seg_linear", "num_classes": 7}}).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from dense.backbones import build_backbone, get_spec
from dense.core.errors import DenseError
from dense.core.features import FeatureMaps
from dense.model import DenseModel, assemble, load_head_weights, plan_head, to_maps
from dense.model import build_model as build_single_head_model

# A head's name becomes a module name, a metric prefix (val/<name>/...) and a file-name part: short,
# lower-case letters, digits and underscores, starting with a letter.
HEAD_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_HEADS = 16
# The options of one head in heads={name: {...}}: the registered head's name ("head"), then what
# build_model takes per head.
PER_HEAD_KEYS = {
    "head",
    "layers",
    "norm",
    "use_cls_token",
    "min_depth",
    "max_depth",
    "depth_mode",
    "head_weights",
}


def check_head_names(names: Sequence, where: str = "heads") -> None:
    """Names of a multi-head model's heads: 1 to MAX_HEADS of them, each matching HEAD_NAME and not an
    attribute of nn.ModuleDict (ValueError, one line)."""
    names = list(names)
    if not 1 <= len(names) <= MAX_HEADS:
        raise ValueError(f"{where}: a multi-head model has 1 to {MAX_HEADS} heads, got {len(names)}")
    reserved = set(dir(nn.ModuleDict()))
    for name in names:
        if not isinstance(name, str) or not HEAD_NAME.fullmatch(name) or name in reserved:
            raise ValueError(
                f"{where}: the head name {str(name)[:40]!r} must be 1-32 lower-case letters, digits or "
                "underscores starting with a letter (e.g. depth, seg), and not a module attribute"
            )


class MultiHeadModel(nn.Module):
    """Several heads on one frozen backbone, run once per forward (module docstring)."""

    def __init__(self, parts: Mapping[str, DenseModel], config: dict | None = None):
        super().__init__()
        check_head_names(list(parts))
        first = next(iter(parts.values()))
        if any(p.backbone is not first.backbone for p in parts.values()):
            raise ValueError("the heads of a MultiHeadModel must share one backbone module")
        self.backbone = first.backbone
        self.heads = nn.ModuleDict({name: part.head for name, part in parts.items()})
        # Plain dict, not submodules: each part holds the backbone and its head, registered above once.
        self.parts: dict[str, DenseModel] = dict(parts)
        self.config = dict(config or {})

    # ---- what code written for one DenseModel reads -------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self.parts)

    @property
    def task(self) -> str:
        return "multi"

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    @property
    def head(self) -> nn.ModuleDict:
        """Every head, as one module: what the optimiser trains (the backbone stays frozen)."""
        return self.heads

    @property
    def backbone_dtype(self) -> torch.dtype:
        return next(iter(self.parts.values())).backbone_dtype

    def train(self, mode: bool = True):
        super().train(mode)
        for part in self.parts.values():
            part.training = mode  # the clamp of forward_head reads it
        self.backbone.eval()
        return self

    def cast_backbone(self, dtype: torch.dtype = torch.bfloat16) -> None:
        """DenseModel.cast_backbone, for the shared backbone (every part then knows its dtype)."""
        first = next(iter(self.parts.values()))
        first.cast_backbone(dtype)
        for part in self.parts.values():
            part.backbone_dtype = dtype

    def compile(self, **options) -> None:
        """torch.compile each part (the per-head inference paths) and the shared token extraction."""
        for part in self.parts.values():
            part.compile(**options)
        self._compiled_token_sets = torch.compile(self.backbone.get_token_sets, **options)

    # ---- the one pass ---------------------------------------------------------------------------

    def token_requests(self) -> dict[bool, list[int]]:
        """{norm: the blocks read with that norm}: the union over the heads, each block once."""
        requests: dict[bool, set[int]] = {}
        for part in self.parts.values():
            requests.setdefault(part.norm, set()).update(part.layers)
        return {norm: sorted(blocks) for norm, blocks in requests.items()}

    @torch.no_grad()
    def extract_features(self, padded_images: torch.Tensor) -> dict[str, FeatureMaps]:
        """Each head's FeatureMaps from one backbone pass over images whose sides are multiples of the
        patch size."""
        first = next(iter(self.parts.values()))
        device_type = padded_images.device.type
        if first.backbone_dtype != torch.float32 and not torch.is_autocast_enabled(device_type):
            raise DenseError(
                f"the backbone's weights are stored in {first.backbone_dtype} (cast_backbone): run the model "
                f"under torch.autocast('{device_type}', dtype={first.backbone_dtype})"
            )
        requests = self.token_requests()
        get_sets = getattr(self, "_compiled_token_sets", None) or self.backbone.get_token_sets
        token_sets = get_sets(padded_images, requests)
        _, _, height, width = padded_images.shape
        h, w = height // self.patch_size, width // self.patch_size
        maps, cls = {}, {}
        for norm, blocks in requests.items():
            for block, tokens in zip(blocks, token_sets[norm]):
                maps[norm, block] = to_maps(tokens.patches, h, w)
                cls[norm, block] = tokens.cls
        return {
            name: FeatureMaps(
                tuple(maps[part.norm, i] for i in part.layers),
                tuple(cls[part.norm, i] for i in part.layers) if part.use_cls_token else None,
            )
            for name, part in self.parts.items()
        }

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{head name: its output} for B×3×H×W images, uint8 RGB or ImageNet-normalised floats: depth
        B×1×H×W, logits B×K×H×W."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape B×3×H×W, got {tuple(images.shape)}")
        first = next(iter(self.parts.values()))
        padded, padding = first.pad(first.normalise(images))
        features = self.extract_features(padded)
        size = tuple(images.shape[-2:])
        return {name: part.forward_head(features[name], padding, size) for name, part in self.parts.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, mode: str = "whole", **options) -> dict[str, torch.Tensor]:
        """DenseModel.predict for every head: depth B×1×H×W, class probabilities B×K×H×W. One backbone
        pass for the whole image at scale 1 without flip; other settings predict head by head."""
        scales = tuple(options.get("scales", (1.0,)))
        if mode == "whole" and scales == (1.0,) and not options.get("flip"):
            out = self(images)
            return {
                name: value.float().softmax(dim=1)
                if self.parts[name].task == "segmentation"
                else value.float()
                for name, value in out.items()
            }
        return {name: part.predict(images, mode, **options) for name, part in self.parts.items()}


def head_settings(name: str, value, shared: dict) -> dict:
    """One entry of heads={...} as plan_head's keyword arguments: a registered head's name, or a dict
    with "head" and per-head options; the shared options apply where the head takes them."""
    if isinstance(value, str):
        value = {"head": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("head"), str):
        raise ValueError(
            f"heads[{name!r}] must be a head's name or a dict with 'head' (its name) and options"
        )
    return {**shared, **dict(value)}


def build_model(
    backbone: str,
    head: str | None = None,
    *,
    heads: Mapping[str, str | Mapping] | None = None,
    pretrained: bool = False,
    backbone_weights: str | os.PathLike | None = None,
    **options,
):
    """dense.build_model: one head (`head`, a DenseModel, see dense.model.build_model) or several
    (`heads`, a MultiHeadModel): {name: registered head} or {name: {"head": ..., per-head options}}.
    With `heads`, the other keyword options (num_classes, min_depth, max_depth, layers, ...) go to every
    head that takes them; per-head values win."""
    if heads is None:
        if head is None:
            raise ValueError("build_model needs a head (head='depth_dpt') or several (heads={'depth': ...})")
        return build_single_head_model(
            backbone, head, pretrained=pretrained, backbone_weights=backbone_weights, **options
        )
    if head is not None:
        raise ValueError("give build_model one head (head=...) or several (heads={...}), not both")
    if not isinstance(heads, Mapping):
        raise ValueError(f"heads must be a dict of head name → head, got {type(heads).__name__}")
    check_head_names(list(heads))
    import heads as head_registry

    backbone_spec = get_spec(backbone)
    plans, weights = {}, {}
    used = set()
    for name, value in heads.items():
        settings = head_settings(name, value, {})
        spec = head_registry.get_head_spec(settings["head"])
        shared = {  # head_weights names one head's file: per head only
            k: v
            for k, v in options.items()
            if k != "head_weights"
            and (
                k in PER_HEAD_KEYS
                or k in spec.options
                or (k == "num_classes" and spec.task == "segmentation")
            )
        }
        if spec.task != "depth":
            shared = {k: v for k, v in shared.items() if k not in ("min_depth", "max_depth", "depth_mode")}
        used |= set(shared)
        settings = {**shared, **settings}
        weights[name] = settings.pop("head_weights", None)
        head_name = settings.pop("head")
        try:
            plans[name] = plan_head(backbone_spec, head_name, **settings)
        except (ValueError, TypeError) as error:
            raise type(error)(f"heads[{name!r}]: {error}") from None
    unused = sorted(set(options) - used)
    if unused:
        raise ValueError(f"{', '.join(unused)}: no head of {sorted(heads)} takes this option")
    backbone_module = build_backbone(backbone_spec.name, pretrained=pretrained, weights=backbone_weights)
    parts = {
        name: assemble(
            backbone_module, backbone_spec, plan, pretrained=pretrained, backbone_weights=backbone_weights
        )
        for name, plan in plans.items()
    }
    for name, path in weights.items():
        if path is not None:
            load_head_weights(parts[name], path)
    return MultiHeadModel(parts, config=multi_config(parts))


# The keys every part shares, stored once at the top of a multi-head config.
SHARED_KEYS = ("backbone", "pretrained", "backbone_weights", "backbone_sha256")


def multi_config(parts: Mapping[str, DenseModel]) -> dict:
    """What rebuilds a MultiHeadModel (stored in checkpoints): the shared backbone keys once, and per
    head its single-head config without them."""
    first = next(iter(parts.values())).config
    return {
        **{k: first[k] for k in SHARED_KEYS if k in first},
        "heads": {
            name: {k: v for k, v in part.config.items() if k not in SHARED_KEYS}
            for name, part in parts.items()
        },
    }


def part_configs(config: dict) -> dict[str, dict]:
    """The single-head config of each head of a multi-head config (multi_config's inverse)."""
    shared = {k: config[k] for k in SHARED_KEYS if k in config}
    return {name: {**shared, **entry} for name, entry in config["heads"].items()}
