"""What a dataset says of itself before reading a file (DatasetInfo), and a sample as read from disk
(RawSample), before the recipe turns it into tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dense.data.palettes import generic_palette


@dataclass
class DatasetInfo:
    """What the model, the training task and the metrics need to know before any file is read."""

    task: str
    class_names: tuple[str, ...] = ()
    # One (r, g, b) per class, the dataset's own colours (ADE20K's, VOC's); empty: the generic palette.
    palette: tuple[tuple[int, int, int], ...] = ()
    min_depth: float = 1e-3
    max_depth: float = 10.0
    eval_crop: str | None = None  # "eigen" (NYU), "garg" (KITTI) or None
    # Segmentation: the test-time scale (long, short) the evaluation views are made at
    # (transforms.eval_view_size), e.g. (2048, 512); None: each image at its own size.
    eval_scale: tuple[int, int] | None = None
    # Depth ground truth: "depth" (metres) or "disparity" (relative maps up to scale and shift, the
    # sample's "disparity" key; only task.depth_mode=relative trains on them).
    depth_target: str = "depth"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_colours(self) -> list[list[int]]:
        """One [r, g, b] per class, as a checkpoint stores it: the dataset's palette, else the generic one."""
        rows = self.palette or generic_palette(self.num_classes)
        return [[int(c) for c in row] for row in rows[: self.num_classes]]


@dataclass
class RawSample:
    """A sample as read from disk, before augmentation. `source` names the file(s) for errors."""

    name: str
    image: np.ndarray  # uint8 H×W×3 RGB
    depth: np.ndarray | None = None  # float32 H×W metres, 0 = invalid
    mask: np.ndarray | None = None  # uint8 H×W class ids, 255 = ignore
    # float32 H×W relative disparity ≥ 0 (larger = nearer, any scale and shift), -1 = no value: a
    # disparity of 0 is a real value (infinitely far, the sky), so "none" needs another mark.
    disparity: np.ndarray | None = None
    source: str = ""
    depth_unit: str = "m"  # what the file stored: "m" (floats) or "scaled" (integers = metres × depth_scale)
    depth_bits: int | None = None  # bits per stored value of an integer depth file (8 or 16 for PNGs)
