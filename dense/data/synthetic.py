"""The synthetic dataset: the default, needing no download. Each index renders one scene
(dense/data/scenes.py), deterministically from (base_seed, split, index), with RGB, metric depth and
class labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dense.core.errors import DatasetError
from dense.data.base import DenseDataset
from dense.data.readers import check_pixels
from dense.data.registry import register_dataset
from dense.data.sample import RawSample
from dense.data.scenes import RENDERER_VERSION, SYNTHETIC_CLASSES, Scene, render_scene
from dense.data.transforms import depth_train, size_pair

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
MAX_SCENES = 10**8  # per split: a count read from a checkpoint's config is bounded


@register_dataset("synthetic")
class SyntheticScenes(DenseDataset):
    """Rendered on the fly; deterministic per (base_seed, split, index). Returns both `depth` and
    `mask`; `task` only tells the training task which one to learn."""

    class_names = SYNTHETIC_CLASSES
    min_depth, max_depth = 1e-3, 10.0
    needs_root = False

    def __init__(
        self,
        root=None,
        split: str = "train",
        *,
        image_size=(224, 224),
        num_train: int = 2000,
        num_val: int = 200,
        num_test: int = 200,
        base_seed: int = 0,
        shadows: bool = True,
        **common,
    ):
        super().__init__(root, split, **common)
        self.size = size_pair(image_size)
        height, width = self.size
        if height < 1 or width < 1:
            raise DatasetError(f"data.image_size={list(self.size)} must be positive (height, width)")
        # These options also come from a checkpoint's config: bounded before anything is rendered.
        check_pixels("synthetic data.image_size", height, width)
        self.length = {"train": num_train, "val": num_val, "test": num_test}[self.split]
        if self.length <= 0:
            raise DatasetError(
                f"synthetic split {self.split!r} is empty: set data.num_{self.split} to a positive number"
            )
        if self.length > MAX_SCENES:
            raise DatasetError(
                f"data.num_{self.split}={self.length:,} is more than the {MAX_SCENES:,} synthetic scenes allowed"
            )
        self.base_seed, self.shadows = base_seed, shadows
        self.use_recipe(depth_train() if self.augment else [])

    def __len__(self) -> int:
        return self.length

    def sample_names(self) -> list[str]:
        return [self._name(index) for index in range(self.length)]

    def sample_files(self, index: int) -> tuple[Path, ...]:
        return ()  # rendered from (base_seed, split, index) and the options: the fingerprint has them

    def fingerprint(self) -> dict:
        # The samples are what the renderer draws: a renderer that draws other images for the same
        # (base_seed, split, index) makes other samples (the feature cache keys by this).
        return {**super().fingerprint(), "renderer": RENDERER_VERSION}

    def _name(self, index: int) -> str:
        return f"{self.split}_{index:06d}"

    def scene(self, index: int) -> Scene:
        """The full rendered scene (with camera and room), e.g. for notebooks and tests."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} synthetic {self.split} scenes")
        rng = np.random.default_rng([self.base_seed, SPLIT_CODES[self.split], index])
        return render_scene(rng, *self.size, shadows=self.shadows)

    def read(self, index: int) -> RawSample:
        s = self.scene(index)
        return RawSample(
            self._name(index), s.image, s.depth, s.mask, source=f"synthetic {self.split}[{index}]"
        )
