"""Tensor operations shared by the model and the heads (core: depends on torch only)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dense.constants import IMAGENET_MEAN, IMAGENET_STD


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
