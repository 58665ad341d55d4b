"""Content checks of a sample as read (shapes, NaN/inf, negative depth, label range), and the hints
for depth stored in the wrong unit or outside the dataset's range."""

from __future__ import annotations

import numpy as np

from dense.core.constants import IGNORE_INDEX
from dense.core.errors import DatasetError
from dense.data.sample import RawSample


class DepthScaleWarning(UserWarning):
    """Depth values in an implausible range for the configured unit (metres vs millimetres), or an
    8-bit depth PNG (too few levels for depth: usually a visualisation)."""


class DepthRangeWarning(UserWarning):
    """Depth whose every valid pixel lies outside the dataset's [min_depth, max_depth]: the loss and
    the metrics ignore such a sample entirely."""


def check_sample(raw: RawSample, num_classes: int) -> None:
    """Content checks at read time, each failing with the offending file named."""
    h, w = raw.image.shape[:2]
    if raw.depth is not None:
        if raw.depth.shape != (h, w):
            raise DatasetError(
                f"{raw.source}: depth is {raw.depth.shape[0]}×{raw.depth.shape[1]} but the image is {h}×{w}; "
                "depth must be pixel-aligned with the image"
            )
        finite = np.isfinite(raw.depth)
        if not finite.all():
            raise DatasetError(
                f"{raw.source}: depth has {np.count_nonzero(~finite)} NaN/inf values; store missing depth as 0"
            )
        if (raw.depth < 0).any():
            raise DatasetError(
                f"{raw.source}: depth has negative values (min {raw.depth.min():.3g}); depth must be ≥ 0, 0 = missing"
            )
    if raw.disparity is not None and raw.disparity.shape != (h, w):
        raise DatasetError(
            f"{raw.source}: disparity is {raw.disparity.shape[0]}×{raw.disparity.shape[1]} but the image is "
            f"{h}×{w}; disparity must be pixel-aligned with the image"
        )
    if raw.mask is not None:
        if raw.mask.shape != (h, w):
            raise DatasetError(
                f"{raw.source}: label map is {raw.mask.shape[0]}×{raw.mask.shape[1]} but the image is {h}×{w}; "
                "labels must be pixel-aligned with the image"
            )
        bad = (raw.mask >= num_classes) & (raw.mask != IGNORE_INDEX)
        if bad.any():
            values = sorted(np.unique(raw.mask[bad]).tolist())[:5]
            raise DatasetError(
                f"{raw.source}: label values {values} are outside [0, {num_classes}) and not {IGNORE_INDEX} (ignore); "
                "check the class count or the label encoding"
            )


def depth_scale_hint(depth: np.ndarray, source: str, unit: str, bits: int | None = None) -> str | None:
    """A message when valid depth looks stored in the other unit, else None.

    "scaled" (integer PNG divided by depth_scale): an 8-bit PNG (at most 255 steps: a visualisation,
    not depth), or a maximum under 0.1 m (the PNG holds metres).
    "m" (float metres): a maximum over 1000 m means the values are millimetres.
    """
    if unit == "scaled" and bits == 8:
        return (
            f"{source} is an 8-bit PNG: 255 levels cannot hold depth in millimetres (it is usually a "
            "visualisation); depth PNGs must be 16-bit integers of metres × depth_scale"
        )
    valid = depth[depth > 0]
    if valid.size == 0:
        return None
    peak = float(valid.max())
    if unit == "scaled" and peak < 0.1:
        return (
            f"{source}: depth peaks at {peak:.4f} m after dividing by depth_scale; the PNG looks stored in "
            "metres, but integers of metres × depth_scale (e.g. millimetres) are expected"
        )
    if unit == "m" and peak > 1000.0:
        return (
            f"{source}: depth peaks at {peak:.0f} m; it looks stored in millimetres, but metres are expected"
        )
    return None


def depth_range_hint(depth: np.ndarray, source: str, min_depth: float, max_depth: float) -> str | None:
    """A message when depth has valid pixels but none inside [min_depth, max_depth], else None: the loss
    and the metrics skip every such pixel, so a whole dataset like it trains on nothing."""
    valid = depth[depth > 0]
    if valid.size == 0 or ((valid >= min_depth) & (valid <= max_depth)).any():
        return None
    return (
        f"{source}: every valid depth value ({float(valid.min()):.3g}–{float(valid.max()):.3g} m) lies outside "
        f"[min_depth, max_depth] = [{min_depth:g}, {max_depth:g}] m, so the loss and the metrics ignore it; "
        "check depth_scale and data.max_depth"
    )
