"""Linear segmentation head: BatchNorm + 1×1 conv on the (concatenated) patch features.

Same function and parameter names as DINOv2's mmseg `BNHead` ("linear" = last layer, "ms" = last 4
layers concatenated), so the released `decode_head.bn.*` / `decode_head.conv_seg.*` load after a
prefix strip. Upstream trains with SyncBatchNorm; the model/trainer converts `bn` when it needs to.
The released configs set dropout_ratio 0 (their BNHead has no dropout module), hence default 0.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dense.core.features import FeatureMaps, LayerSet
from heads._common import check_features
from heads.registry import register_head


@register_head(
    "seg_ms",
    task="segmentation",
    layer_set=LayerSet.FOUR_LAST,
    norm=True,
    use_cls_token=False,
    aliases=("seg",),
)
@register_head("seg_linear", task="segmentation", layer_set=LayerSet.LAST, norm=True, use_cls_token=False)
class LinearSegHead(nn.Module):
    """FeatureMaps (num_layers patch maps, no class token) → class logits B×num_classes×h×w on the patch grid."""

    use_cls_token = False

    def __init__(
        self,
        embed_dim: int,
        num_classes: int | None = None,
        num_layers: int = 1,
        dropout: float = 0.0,
        use_cls_token: bool = False,
    ):
        super().__init__()
        if use_cls_token:
            raise ValueError("LinearSegHead does not use class tokens (use_cls_token must be False)")
        if num_classes is None:
            raise ValueError("LinearSegHead needs num_classes (the number of classes it predicts)")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.embed_dim = embed_dim
        self.num_layers = num_layers
        channels = embed_dim * num_layers
        self.bn = nn.BatchNorm2d(channels)
        # mmseg applies Dropout2d before conv_seg when dropout_ratio > 0.
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.num_classes = num_classes
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        # mmseg's decode-head init (Normal std 0.01 on conv_seg): starts near uniform class scores.
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: FeatureMaps) -> torch.Tensor:
        check_features(
            features,
            head="LinearSegHead",
            embed_dim=self.embed_dim,
            num_layers=self.num_layers,
            use_cls_token=False,
        )
        size = features.grid
        maps = [
            p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            for p in features.patches
        ]
        x = torch.cat(maps, dim=1) if len(maps) > 1 else maps[0]
        return self.conv_seg(self.dropout(self.bn(x)))

    def extra_repr(self) -> str:
        return f"layers={self.num_layers}"
