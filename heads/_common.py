"""Small pieces shared by the heads: input checks and the "class token as a bias" 1×1 conv."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # annotations only: `dense` imports `heads`, so `heads` must not import `dense`
    from dense.features import FeatureMaps


def check_features(
    features: FeatureMaps, *, head: str, embed_dim: int, num_layers: int, uses_cls: bool
) -> None:
    """Refuse, in one line, features that do not fit the head (wrong layer count, width or no class token)."""
    if len(features) != num_layers:
        raise ValueError(f"{head} expects {num_layers} feature layer(s), got {len(features)}")
    widths = {p.shape[1] for p in features.patches}
    if widths != {embed_dim}:
        raise ValueError(
            f"{head} expects {embed_dim}-channel features, got {sorted(widths)} (another backbone?)"
        )
    if uses_cls and features.cls_tokens is None:
        raise ValueError(
            f"{head} uses class tokens but the FeatureMaps holds none (request them from the backbone)"
        )


def pointwise_with_global(
    x: torch.Tensor,
    w_local: torch.Tensor,
    bias: torch.Tensor | None,
    g: torch.Tensor | None = None,
    w_global: torch.Tensor | None = None,
) -> torch.Tensor:
    """A 1×1 conv / linear layer over concat(x, g broadcast over the grid), without building the concat.

    The broadcast half is constant over the grid, so its contribution is one vector per image: we add it
    as a per-image bias. x: B×C×h×w, w_local: O×C, g: B×G, w_global: O×G → B×O×h×w.
    """
    out = F.conv2d(x, w_local[:, :, None, None])
    if g is not None:
        per_image = F.linear(g, w_global, bias)
    elif bias is not None:
        per_image = bias.expand(x.shape[0], -1)
    else:
        return out
    return out + per_image.to(out.dtype)[:, :, None, None]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) to `size`; `x` itself when it already has that size.

    Maps with many channels (bin or class logits) are resized channels-last on the CPU: PyTorch's
    bilinear kernel is much faster on NHWC there (256 logits on a 16×16 grid to 64×64, batch 8:
    163 ms NCHW, 40 ms NHWC, forward and backward; 150 logits to 224×224: 1.1×), with values equal to
    float rounding (scripts/bench_layout.py). Images and depth maps (≤ 4 channels; NHWC is slower for
    3 channels) and tensors on other devices (not measured) are resized as they are. The output keeps
    the layout it was resized in; the reductions over channels that follow read NHWC contiguously.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.device.type == "cpu" and x.shape[1] > 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
