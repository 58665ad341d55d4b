"""Tensor operations shared by the model and the heads (core: depends on torch only): bilinear resizing,
and the axial RoPE of DINOv3 (its backbone and the seg_mask decoder rotate patch tokens the same way)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dense.core.constants import IMAGENET_MEAN, IMAGENET_STD


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) to `size`; `x` itself when it already has that size.

    Maps with many channels (bin or class logits) are resized channels-last on the CPU: PyTorch's
    bilinear kernel is much faster on NHWC there, with values equal to float rounding. Images and depth
    maps (≤ 4 channels; NHWC is slower for 3 channels) and tensors on other devices are resized as they
    are. The output keeps the layout it was resized in; the reductions over channels that follow read
    NHWC contiguously.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.device.type == "cpu" and x.shape[1] > 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def normalisation_table(mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """3×256 float32: channel c's normalised value (x/255 − mean[c]) / std[c] of each uint8 level x,
    computed in float64 and rounded once (dense.data.transforms.normalize_image's table is ImageNet's)."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    mean64, std64 = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    return ((levels[None] - mean64[:, None]) / std64[:, None]).float()


IMAGENET_TABLE = normalisation_table(IMAGENET_MEAN, IMAGENET_STD)


def normalise_levels(images: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """uint8 B×3×H×W RGB → float32 through a normalisation_table: one lookup per value, the same
    numbers on every device (a float computation of (x/255 − mean)/std rounds differently)."""
    offsets = torch.arange(0, 3 * 256, 256, device=images.device).view(1, 3, 1, 1)
    return table.to(images.device).take(images.long() + offsets)


def imagenet_normalised(images: torch.Tensor) -> torch.Tensor:
    """uint8 B×3×H×W RGB → ImageNet-normalised float32, exactly as normalize_image."""
    return normalise_levels(images, IMAGENET_TABLE)


# ---- rotary position embedding -------------------------------------------------------------------


class RopePositionEmbedding(nn.Module):
    """Axial RoPE without learned weights (dinov3/layers/rope_position_encoding.py).

    A head's D dimensions form D/2 rotation pairs (i, i + D/2). The first D/4 pairs turn with the
    patch's row coordinate, the next D/4 with its column, at periods base^(2j / (D/2)), j < D/4.
    Coordinates are patch centres normalised to [-1, 1] separately along each side
    ("separate": (i + 0.5) / h · 2 − 1), so any grid spans the same range.

    Upstream's training-time augmentations of the coordinates (the hub sets rescale_coords=2;
    shift and jitter are unset) apply only in train mode; the DINOv3 backbone is always frozen, so they
    are not implemented and train() changes nothing here (the seg_mask decoder, which trains, uses the
    same un-augmented coordinates). The hub computes RoPE in float32.
    """

    def __init__(self, head_dim: int, base: float = 100.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        # Persistent, as upstream: the released files hold it (our loader also accepts files without it).
        self.register_buffer("periods", self.default_periods(), persistent=True)

    def default_periods(self) -> torch.Tensor:
        quarter = self.head_dim // 4
        return self.base ** (2 * torch.arange(quarter, dtype=torch.float32) / (self.head_dim // 2))

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sin, cos), each (h·w) × head_dim, for the patches of an h×w grid in row-major order."""
        device = self.periods.device
        rows = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        cols = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).flatten(0, 1)  # hw × 2
        coords = 2.0 * coords - 1.0
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float()  # hw × 2 × D/4
        angles = angles.flatten(1, 2).tile(2)  # hw × D: [row angles, column angles] twice
        return torch.sin(angles), torch.cos(angles)


def rotate_patch_tokens(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """RoPE on the last h·w tokens of B×heads×N×D queries or keys; the class and storage tokens
    before them are not rotated. Computed in sin's dtype (float32), returned in x's (bf16 under
    autocast), as upstream's SelfAttention.apply_rope."""
    prefix = x.shape[-2] - sin.shape[-2]
    patches = x[..., prefix:, :].to(sin.dtype)
    first, second = patches.chunk(2, dim=-1)
    rotated = patches * cos + torch.cat((-second, first), dim=-1) * sin
    return torch.cat((x[..., :prefix, :], rotated.to(x.dtype)), dim=-2)
