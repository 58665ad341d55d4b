"""Small pieces shared by the heads: input checks and the "class token as a bias" 1×1 conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dense.core.features import FeatureMaps


def check_features(
    features: FeatureMaps, *, head: str, embed_dim: int, num_layers: int, use_cls_token: bool
) -> None:
    """Refuse, in one line, features that do not fit the head (wrong layer count, width or no class token)."""
    if len(features) != num_layers:
        raise ValueError(f"{head} expects {num_layers} feature layer(s), got {len(features)}")
    widths = {p.shape[1] for p in features.patches}
    if widths != {embed_dim}:
        raise ValueError(
            f"{head} expects {embed_dim}-channel features, got {sorted(widths)} (another backbone?)"
        )
    if use_cls_token and features.cls_tokens is None:
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
