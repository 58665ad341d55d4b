"""The DINOv2 variants (ViT-S/B/L/g, patch 14, with and without 4 registers) plus tiny test variants,
their official files (downloaded to the torch hub cache) and strict loading.

Each variant registers itself in the backbone registry where it is defined, below; dense.backbones
imports this module, so the DINOv2 names are registered as soon as the package is imported.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

import torch

from dense.backbones.base import (
    BACKBONES,
    BackboneSpec,
    load_state_dict_strictly,
    read_backbone_state,
    register_backbone,
)
from dense.backbones.dinov2.vit import DinoVisionTransformer
from dense.core.errors import WeightsError

DINOV2_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"


@dataclass(frozen=True)
class Dinov2Spec(BackboneSpec):
    """One DINOv2 variant. `four_layers` holds the 0-based blocks upstream's linear4 and DPT heads read."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str = "mlp"  # "mlp" or "swiglu" (ViT-g)
    num_register_tokens: int = 0
    four_layers: tuple[int, ...] = ()  # linear4 depth and DPT
    hub_name: str | None = None  # e.g. "dinov2_vits14"; None for the test variants (no official file)
    timm_name: str | None = None
    test_only: bool = False

    family = "dinov2"
    patch_size = 14

    @property
    def url(self) -> str | None:
        if self.hub_name is None:
            return None
        arch = self.hub_name.removesuffix("_reg")
        suffix = "_reg4" if self.num_register_tokens else ""
        return f"{DINOV2_BASE_URL}/{arch}/{arch}{suffix}_pretrain.pth"

    def create(self) -> DinoVisionTransformer:
        registers = self.num_register_tokens > 0
        return DinoVisionTransformer(
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            ffn=self.ffn,
            num_register_tokens=self.num_register_tokens,
            # The two upstream interpolation rules: see DinoVisionTransformer.
            interpolate_offset=0.0 if registers else 0.1,
            interpolate_antialias=registers,
        )

    def load_weights(self, model: DinoVisionTransformer, path) -> None:
        load_backbone_weights(model, self, path)

    def official_weights_path(self) -> str:
        return official_weights_path(self)

    def check_official_weights(self, timeout: float = 10.0) -> None:
        path = hub_cache_path(self._official())
        if os.path.isfile(path):
            return
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url, method="HEAD"), timeout=timeout):
                pass
        except (urllib.error.URLError, OSError, ConnectionError) as error:
            raise _cannot_download(self, path, error) from None


DINOV2_NAMES: list[str] = []  # the DINOv2 variants, as registered below
OFFICIAL_NAMES: list[str] = []  # those with official weights (not test_only)


def _register_dinov2(spec: Dinov2Spec) -> None:
    DINOV2_NAMES.append(spec.name)
    if not spec.test_only:
        OFFICIAL_NAMES.append(spec.name)
    aliases = []
    if spec.hub_name is not None:
        aliases.append(spec.hub_name)
        if spec.num_register_tokens:
            aliases += [spec.name + "4", spec.hub_name + "4"]  # vitl14_reg4, dinov2_vitl14_reg4
    register_backbone(spec, aliases)


for _size, _dim, _depth, _heads, _ffn, _four in [
    ("s", 384, 12, 6, "mlp", (2, 5, 8, 11)),
    ("b", 768, 12, 12, "mlp", (2, 5, 8, 11)),
    ("l", 1024, 24, 16, "mlp", (4, 11, 17, 23)),
    ("g", 1536, 40, 24, "swiglu", (9, 19, 29, 39)),
]:
    _timm_arch = {"s": "small", "b": "base", "l": "large", "g": "giant"}[_size]
    for _reg in (False, True):
        _register_dinov2(
            Dinov2Spec(
                name=f"vit{_size}14" + ("_reg" if _reg else ""),
                embed_dim=_dim,
                depth=_depth,
                num_heads=_heads,
                ffn=_ffn,
                num_register_tokens=4 if _reg else 0,
                four_layers=_four,
                hub_name=f"dinov2_vit{_size}14" + ("_reg" if _reg else ""),
                timm_name=f"vit_{_timm_arch}_patch14_{'reg4_' if _reg else ''}dinov2",
            )
        )

# Tiny variants for tests: the same code paths (both interpolation rules, registers, SwiGLU) in milliseconds.
_register_dinov2(Dinov2Spec("tiny14", 48, 4, 3, four_layers=(0, 1, 2, 3), test_only=True))
_register_dinov2(
    Dinov2Spec("tiny14_reg", 48, 4, 3, num_register_tokens=4, four_layers=(0, 1, 2, 3), test_only=True)
)
_register_dinov2(
    Dinov2Spec("tiny14_swiglu", 48, 4, 3, ffn="swiglu", four_layers=(0, 1, 2, 3), test_only=True)
)

DINOV2_NAMES.sort()
OFFICIAL_NAMES.sort()


# ---- official weights ---------------------------------------------------------------------------------


def hub_cache_path(spec: Dinov2Spec) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", spec.url.rsplit("/", 1)[1])


def official_weights_path(spec: Dinov2Spec) -> str:
    """Path of the official file in the torch hub cache, downloading it there if it is not yet present."""
    path = hub_cache_path(spec._official())
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, path, progress=True)
    except (urllib.error.URLError, OSError, ConnectionError) as error:
        raise _cannot_download(spec, path, error) from None
    return path


def _cannot_download(spec: Dinov2Spec, path: str, error: BaseException) -> WeightsError:
    return WeightsError(
        f"could not download the {spec.name} weights ({type(error).__name__}: {error}). Without a network, "
        f"download {spec.url} elsewhere and place it at {path}, or pass its path with "
        "backbone.weights=PATH (train.py, predict.py; in Python: weights=PATH)"
    )


# ---- loading a checkpoint file ------------------------------------------------------------------------


def describe_state_dict(state: dict[str, torch.Tensor]) -> tuple[int | None, int, int, str]:
    """(embed dim, number of blocks, register tokens, ffn) of a checkpoint, for error messages."""
    dim = state["cls_token"].shape[-1] if "cls_token" in state else None
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))}
    registers = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    ffn = "swiglu" if any(".mlp.w12." in k for k in state) else "mlp"
    return dim, len(blocks), registers, ffn


def _guess_variant(dim, depth, registers, ffn) -> str:
    for spec in (BACKBONES.get(name) for name in DINOV2_NAMES):
        if (spec.embed_dim, spec.depth, spec.num_register_tokens, spec.ffn) == (dim, depth, registers, ffn):
            return spec.name
    return "an unknown variant"


def check_compatible(state: dict[str, torch.Tensor], spec: Dinov2Spec) -> None:
    """One clear line when a checkpoint is for another variant, before any key-by-key comparison."""
    dim, depth, registers, ffn = describe_state_dict(state)
    if dim is None:
        raise WeightsError("the file has no 'cls_token': it is not a DINOv2 backbone checkpoint")
    guess = _guess_variant(dim, depth, registers, ffn)
    if dim != spec.embed_dim:
        raise WeightsError(
            f"checkpoint has embed dim {dim} ({guess}) but the backbone is {spec.name} ({spec.embed_dim})"
        )
    if depth != spec.depth:
        raise WeightsError(
            f"checkpoint has {depth} blocks ({guess}) but the backbone is {spec.name} ({spec.depth})"
        )
    if registers != spec.num_register_tokens:
        raise WeightsError(
            f"checkpoint has {registers} register tokens ({guess}) but the backbone is {spec.name} "
            f"({spec.num_register_tokens}): choose the backbone {guess}"
        )
    if ffn != spec.ffn:
        raise WeightsError(
            f"checkpoint uses a {ffn} feed-forward but the backbone {spec.name} uses {spec.ffn}"
        )


def load_backbone_weights(model: DinoVisionTransformer, spec: Dinov2Spec, path) -> None:
    state = read_backbone_state(model, spec.name, path)
    check_compatible(state, spec)
    load_state_dict_strictly(model, state, spec.name, path)
