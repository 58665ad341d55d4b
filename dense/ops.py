"""Tensor operations shared by the model and the heads (core: depends on torch only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
