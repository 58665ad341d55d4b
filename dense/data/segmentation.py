"""Image + label PNG pairs with the mmseg recipe: what ADE20K and VOC share."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dense.data.base import DenseDataset
from dense.data.readers import read_label_png, read_rgb
from dense.data.sample import RawSample
from dense.data.transforms import SegRecipe


class SegmentationFiles(DenseDataset):
    """Subclasses implement `find_items(root, split) -> [(name, image, label)]` and may override
    `to_class_ids` (stored label values → class ids).

    val and test samples are the original image and annotation (mmseg's protocol: the score is taken
    on the untouched annotation); the evaluation makes the model's views of the image at
    `eval_scale` = (max_long_side, eval_short_side) and resizes the prediction back
    (SegmentationTask). The recipe's options are SegRecipe's fields (`data.crop_size`, ...)."""

    fixed_task = "segmentation"
    recipe_options = SegRecipe

    def __init__(self, root=None, split: str = "train", **common):
        super().__init__(root, split, **common)
        self.items = self.find_items(root, self.split)
        self.use_recipe(self.recipe.transforms(self.augment, self.split))

    def find_items(self, root, split: str) -> list[tuple[str, Path, Path]]:
        raise NotImplementedError

    def to_class_ids(self, labels: np.ndarray) -> np.ndarray:
        """Stored label values → class ids (255 = ignore)."""
        return labels

    def __len__(self) -> int:
        return len(self.items)

    def read(self, index: int) -> RawSample:
        name, image, label = self.items[index]
        return RawSample(
            name, read_rgb(image), mask=self.to_class_ids(read_label_png(label)), source=str(label)
        )
