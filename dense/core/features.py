"""FeatureMaps: the one structure that passes between a backbone (or a feature cache) and a head.

A head never sees the backbone: it only sees these tensors. That is what lets the frozen backbone be
replaced by features read back from disk (see the feature cache) without the head knowing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch


@dataclass
class FeatureMaps:
    """Multi-layer ViT features of one batch.

    patches:    one B×D×h×w tensor per selected block, in the order the blocks were asked for
                (h, w = padded image size / patch size); channels-last in memory when they come
                from DenseModel or the cache (the heads run faster on it, see dense.model.to_maps).
    cls_tokens: one B×D tensor per selected block, or None when the head does not use class tokens.
    """

    patches: tuple[torch.Tensor, ...]
    cls_tokens: tuple[torch.Tensor, ...] | None = None

    def __post_init__(self):
        self.patches = tuple(self.patches)
        if self.cls_tokens is not None:
            self.cls_tokens = tuple(self.cls_tokens)
            if len(self.cls_tokens) != len(self.patches):
                raise ValueError(
                    f"FeatureMaps has {len(self.patches)} patch maps but {len(self.cls_tokens)} class tokens"
                )

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the patch grid."""
        return tuple(self.patches[0].shape[-2:])

    def __len__(self) -> int:
        return len(self.patches)

    def to(self, *args, **kwargs) -> FeatureMaps:
        cls = None if self.cls_tokens is None else tuple(t.to(*args, **kwargs) for t in self.cls_tokens)
        return FeatureMaps(tuple(p.to(*args, **kwargs) for p in self.patches), cls)


class LayerSet(Enum):
    """Which blocks a head reads, named as DINOv3's evaluation code names them (its BackboneLayersSet);
    each backbone turns a set into block indices (`BackboneSpec.layer_indices`).

    LAST: the last block. FOUR_LAST: the last four blocks (the "ms" segmentation heads).
    FOUR_EVEN_INTERVALS: four blocks spread over the depth (linear4 and DPT depth heads), as upstream
    lists them per backbone (ViT-S/B 2,5,8,11; ViT-L 4,11,17,23; ViT-g 9,19,29,39).
    """

    LAST = "LAST"
    FOUR_LAST = "FOUR_LAST"
    FOUR_EVEN_INTERVALS = "FOUR_EVEN_INTERVALS"

    @property
    def num_layers(self) -> int:
        return 1 if self is LayerSet.LAST else 4
