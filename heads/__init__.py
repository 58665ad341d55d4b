"""Heads: map FeatureMaps (patch maps + class tokens of a few ViT blocks) to a raw output on their own grid.

A head knows nothing about the backbone, padding or resizing to the image: DenseModel does that.
Each head registers itself where it is defined (`@register_head`, heads/registry.py); importing this
package registers the built-in ones. Module names follow Meta's released head files, so those load with
a key prefix strip (`load_released_head`).
"""

from heads._loading import check_head_state, describe_head_state, load_released_head
from heads.depth_dpt import DPTDepthHead
from heads.depth_linear import LinearDepthHead
from heads.registry import HEADS, HeadSpec, build_head, get_head_spec, list_heads, register_head
from heads.seg_linear import LinearSegHead
from heads.seg_mask import MaskSegHead

__all__ = [
    "HEADS",
    "DPTDepthHead",
    "HeadSpec",
    "LinearDepthHead",
    "LinearSegHead",
    "MaskSegHead",
    "build_head",
    "check_head_state",
    "describe_head_state",
    "get_head_spec",
    "list_heads",
    "load_released_head",
    "register_head",
]
