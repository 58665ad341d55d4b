"""Load Meta's released head files (mmcv checkpoints, keys `decode_head.*`) into our heads.

Loading is strict. When a file does not fit, the user gets one line saying what the file holds and
what the head expects ("a linear depth head for 3072 input channels (ViT-S linear4 or ViT-g linear)"),
worked out from keys and shapes alone, so the same code explains every head/backbone mix-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn as nn

from dense.core.errors import WeightsError
from dense.core.weights_file import check_state_dict, load_weights_file

# Widths of the DINOv2 and DINOv3 ViTs (S, B, L shared); used only to put names on channel counts in messages.
_BACKBONE_DIMS = {"ViT-S": 384, "ViT-B": 768, "ViT-L": 1024, "ViT-H+": 1280, "ViT-g": 1536, "ViT-7B": 4096}
_MAX_LISTED = 3


def load_released_head(
    head: nn.Module,
    source: str | os.PathLike | Mapping,
    *,
    prefix: str = "decode_head.",
    name: str | os.PathLike | None = None,
) -> nn.Module:
    """Load a head file (path) or checkpoint/state dict (mapping) into `head`, strictly; returns `head`.

    Accepts {"state_dict": {...}} (mmcv, Lightning) or a bare state dict. Keys under `prefix` are taken
    with the prefix stripped (other keys, e.g. a backbone's, are ignored); without any such key, the
    state dict is used as it is. Raises dense.core.errors.WeightsError with a one-line reason.
    name: the file a mapping was read from, so that errors name it (default: the path, or
    "the given state dict").
    """
    if isinstance(source, Mapping):
        where, checkpoint = (os.fspath(name) if name is not None else "the given state dict"), source
    else:
        where, checkpoint = os.fspath(source), load_weights_file(source)
    state = _head_state_dict(checkpoint, prefix)
    if state is None:
        raise WeightsError(f"{where} holds no state dict of tensors: not a head checkpoint")
    check_head_state(head, state, where)
    head.load_state_dict(state, strict=True)
    return head


def check_head_state(head: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise a one-line WeightsError unless `state` has exactly the keys and shapes of `head`'s state
    dict. Works on a head built on the meta device, so a file can be checked against the head its
    config describes before anything of that size is allocated."""
    # Every tensor plain and of the head's rank and kind of dtype before any is described or compared.
    check_state_dict(state, where, head.state_dict(), shape=False, owner="the head")
    problem = _mismatch(head.state_dict(), state)
    if problem:
        raise WeightsError(
            f"{where} does not fit this head: the file holds {describe_head_state(state)}, "
            f"the head is {describe_head_state(head.state_dict())} ({problem})"
        )


def _head_state_dict(checkpoint, prefix: str) -> dict[str, torch.Tensor] | None:
    if not isinstance(checkpoint, Mapping):
        return None
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        return None
    ours = [k for k in state if isinstance(k, str) and k.startswith(prefix)]
    if ours:
        state = {k[len(prefix) :]: state[k] for k in ours}
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    return dict(state)


def _mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """'' when keys and shapes agree, else a short account of the first differences."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and expected[k].shape != found[k].shape]
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(f"{k}: file {list(found[k].shape)}, head {list(expected[k].shape)}")
    if missing:
        parts.append(f"missing {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected {_listing(unexpected)}")
    return "; ".join(parts)


def _listing(keys: list[str]) -> str:
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _guess(channels: int, per_layer: int, names: dict[int, str]) -> str:
    """Backbone/head combinations whose width × layers × per_layer gives `channels`."""
    hits = [
        f"{b} {names[n]}" for b, d in _BACKBONE_DIMS.items() for n in names if d * n * per_layer == channels
    ]
    return f" ({' or '.join(hits)})" if hits else ""


def describe_head_state(state: Mapping[str, torch.Tensor]) -> str:
    """What kind of DINOv2 head a state dict is, from its keys and shapes, in a few words."""
    if "reassemble_blocks.projects.0.conv.weight" in state:
        dim = state["reassemble_blocks.projects.0.conv.weight"].shape[1]
        names = [b for b, d in _BACKBONE_DIMS.items() if d == dim]
        readout = (
            "" if "reassemble_blocks.readout_projects.0.0.weight" in state else ", no class-token readout"
        )
        return f"a DPT depth head for {dim}-dim features{' (' + names[0] + ')' if names else ''}{readout}"
    weight = state.get("conv_depth.weight")
    if weight is not None and weight.dim() == 4:
        n_bins, channels = weight.shape[:2]
        guess = _guess(channels, 2, {1: "linear", 4: "linear4"})  # ×2: patch + class token per layer
        return f"a linear depth head for {channels} input channels{guess}, {n_bins} bins"
    weight = state.get("conv_seg.weight")
    if weight is not None and weight.dim() == 4:
        classes, channels = weight.shape[:2]
        guess = _guess(channels, 1, {1: "linear", 4: "ms"})
        return f"a linear segmentation head for {channels} input channels{guess}, {classes} classes"
    return f"{len(state)} tensors of no known head layout (first keys: {_listing(list(state))})"
