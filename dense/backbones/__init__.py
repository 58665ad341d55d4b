"""The backbones: a registry of variants, the DINOv2 and DINOv3 families (a folder each, its ViT and its
specs), and the public functions.

Every variant is a spec (a BackboneSpec subclass) registered by `register_backbone` where it is
defined: the 8 DINOv2 backbones and the tiny test variants in dense/backbones/dinov2/specs.py (imported
here, so registered with the package), the DINOv3 family in dense/backbones/dinov3/specs.py (imported
at the registry's first lookup). `build_backbone(name, pretrained=False, weights=None)` builds any of
them and `list_backbones()` names them. Official checkpoints load as Meta publishes them (strictly: every
key used, every shape checked; dense/backbones/base.py), also in the chunked `blocks.C.I.*` layout and
inside training checkpoints.
"""

from __future__ import annotations

import os

from dense.backbones.base import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
    extract_backbone_state_dict,
    load_state_dict_strictly,
    read_backbone_state,
    register_backbone,
)
from dense.backbones.dinov2.specs import OFFICIAL_NAMES  # registers the DINOv2 variants
from dense.core.errors import WeightsError  # what loading and the official files raise


def list_backbones(include_test: bool = True) -> list[str]:
    """The registered backbone names, sorted (the tiny test variants too unless include_test=False)."""
    return [name for name in BACKBONES.names() if include_test or not BACKBONES.get(name).test_only]


def resolve_name(name: str) -> str:
    """Canonical variant name; accepts upstream spellings (`dinov2_vitl14_reg`, `vitl14_reg4`,
    `dinov3_vitl16`, `vitl16_sat493m`) in any case (the registry's one name form)."""
    return BACKBONES.canonical(name)


def get_spec(name: str) -> BackboneSpec:
    return BACKBONES.get(resolve_name(name))


def build_backbone(name: str, pretrained: bool = False, weights: str | os.PathLike | None = None):
    """A registered backbone (DINOv2 or DINOv3) by name.

    weights:    a local checkpoint file (takes precedence over `pretrained`), loaded strictly.
    pretrained: the official weights from the torch hub cache (DINOv2: downloaded there when missing;
                DINOv3: gated, never downloaded: a missing file says where to request it).
    Without either, the weights are randomly initialised as upstream does.
    """
    spec = get_spec(name)
    if weights is None and pretrained:
        weights = spec.official_weights_path()  # before building: a missing file is found at once
    model = spec.create()
    if weights is not None:
        spec.load_weights(model, weights)
    return model


def check_official_weights(spec: BackboneSpec, timeout: float = 10.0) -> None:
    """Refuse in a second what build_backbone(pretrained=True) would refuse after a slow build: the
    official file is neither in the torch hub cache nor obtainable. Nothing is downloaded or built."""
    spec.check_official_weights(timeout)


__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFFICIAL_NAMES",
    "BackboneSpec",
    "WeightsError",
    "build_backbone",
    "check_official_weights",
    "extract_backbone_state_dict",
    "get_spec",
    "list_backbones",
    "load_state_dict_strictly",
    "read_backbone_state",
    "register_backbone",
    "resolve_name",
]
