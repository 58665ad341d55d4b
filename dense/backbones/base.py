"""What every backbone family builds on: BackboneSpec (the facts a variant states), the registry its
variants register in (`register_backbone`), and strict weights loading (every key used, every shape
checked, in the layouts checkpoints come in). dense.backbones hands these on with the public functions;
each family's specs (dense/backbones/dinov2/specs.py, dense/backbones/dinov3/specs.py) import them here,
so that the package can register DINOv2 on its import without an import cycle.
"""

from __future__ import annotations

import os
import re

import torch

from dense.core.errors import WeightsError
from dense.core.features import LayerSet
from dense.core.registry import Registry
from dense.core.weights_file import check_state_dict, load_weights_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneSpec:
    """What every registered backbone variant states (its subclasses are frozen dataclasses).

    Attributes: name, embed_dim, depth, patch_size, num_register_tokens (DINOv3: its storage tokens),
    four_layers (the FOUR_EVEN_INTERVALS blocks), hub_name (None for test variants), test_only,
    image_mean / image_std (the normalisation its weights were trained with). Methods: create() (the
    randomly initialised module), load_weights(model, path) (strict), official_weights_path() and
    check_official_weights() (the released file for pretrained=True).
    """

    family = "backbone"
    patch_size: int
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    def layer_indices(self, layer_set: LayerSet) -> tuple[int, ...]:
        """The 0-based block indices of `layer_set` on this backbone."""
        if layer_set is LayerSet.LAST:
            return (self.depth - 1,)
        if layer_set is LayerSet.FOUR_LAST:
            return tuple(range(self.depth - 4, self.depth))
        if layer_set is LayerSet.FOUR_EVEN_INTERVALS:
            return tuple(self.four_layers)
        raise ValueError(f"layer_set must be a dense.LayerSet, got {layer_set!r}")

    @property
    def last_layer(self) -> tuple[int, ...]:
        return self.layer_indices(LayerSet.LAST)

    @property
    def last_four_layers(self) -> tuple[int, ...]:
        return self.layer_indices(LayerSet.FOUR_LAST)

    def _official(self):
        if self.hub_name is None:
            raise WeightsError(
                f"backbone {self.name} is a test variant with no official weights; use pretrained=False"
            )
        return self


# The DINOv2 variants register themselves in dense/backbones/dinov2/specs.py, which dense.backbones imports;
# the DINOv3 variants in dense/backbones/dinov3/specs.py, loaded at the first lookup.
BACKBONES: Registry[BackboneSpec] = Registry(
    "backbone", "backbone.name", "dense.register_backbone", builtins=("dense.backbones.dinov3.specs",)
)


def register_backbone(spec: BackboneSpec, aliases: tuple[str, ...] = ()) -> BackboneSpec:
    """Register a backbone variant under `spec.name` (and `aliases`, e.g. upstream's spellings) and
    return it. Called where each variant is defined (the spec tables in dense/backbones/dinov2/specs.py
    and dense/backbones/dinov3/specs.py); a variant of your own is a BackboneSpec subclass instance
    registered the same way."""
    return BACKBONES.add(spec.name, spec, tuple(aliases))


# ---- loading a checkpoint file ------------------------------------------------------------------------

_CHUNKED_KEY = re.compile(r"^blocks\.\d+\.(\d+)\.(.*)$")


def extract_backbone_state_dict(checkpoint: dict, where: str = "the file") -> dict[str, torch.Tensor]:
    """The plain official key layout from any of the shapes a DINOv2 checkpoint comes in.

    - a plain state dict (the published files);
    - a training checkpoint holding it under "model", "teacher" or "state_dict";
    - keys prefixed with `backbone.` (training checkpoints also hold heads: only the backbone is kept);
    - the chunked layout `blocks.C.I.*` of FSDP training runs (I is the global block index).
    """
    state = checkpoint
    for wrapper in ("teacher", "model", "state_dict"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{where} holds no state dict of tensors (expected a DINOv2 backbone checkpoint)")
    check_state_dict(state, where)  # names are strings (before they are matched below)
    for prefix in ("module.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    unchunked = {}
    for key, value in state.items():
        match = _CHUNKED_KEY.match(key)
        unchunked[f"blocks.{match.group(1)}.{match.group(2)}" if match else key] = value
    return unchunked


def read_backbone_state(model: torch.nn.Module, name: str, path) -> dict[str, torch.Tensor]:
    """The backbone tensors of weights file `path` (any layout extract_backbone_state_dict knows), each
    checked against `model`'s tensor of that name (rank, kind of dtype) before any is looked at: the
    shapes are compared once the file is known to be for this variant (load_state_dict_strictly)."""
    where = os.fspath(path)
    state = extract_backbone_state_dict(load_weights_file(path), where)
    check_state_dict(state, where, model.state_dict(), shape=False, owner=name)
    return state


def load_state_dict_strictly(model: torch.nn.Module, state: dict, name: str, path, optional=None) -> None:
    """Every key used, every shape checked, one line naming what differs (for any backbone family).
    Keys of the model that match `optional` (a compiled regex) may be absent from `state`: the model's
    own values are kept."""
    expected = model.state_dict()
    absent = set(expected) - set(state)
    missing = sorted(k for k in absent if optional is None or not optional.match(k))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: checkpoint keys do not match {name}: "
            f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}"
        )
    check_state_dict(state, os.fspath(path), expected, owner=name)
    model.load_state_dict({**expected, **state}, strict=True)
