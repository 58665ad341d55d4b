"""ADE20K (SceneParsing / ADEChallengeData2016), 150 classes.

    root/ADEChallengeData2016/images/{training,validation}/*.jpg
    root/ADEChallengeData2016/annotations/{training,validation}/*.png   (same stem)

(root may also be the ADEChallengeData2016 folder itself.) Annotations hold 0 = "other" and 1–150;
reduce_zero_label maps 0 → 255 (ignore) and k → k−1. val and test are both `validation`.
Train: the mmseg linear-probe recipe (rescale short side 512 × 0.5–2.0, random crop 512 with
cat_max_ratio 0.75, flip, photometric distortion, pad with ignore); val/test: the original image and
annotation, scored there as mmseg does (the model sees views at short side eval_short_side = 512,
long side at most 2048, and its logits are resized back: SegmentationTask). Validation images differ
in size: val_batch_size 1, or batches padded by pad_collate (each image is still predicted and scored
at its own size).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dense.core.constants import IGNORE_INDEX, IMAGE_SUFFIXES
from dense.core.errors import DatasetError
from dense.data.palettes import ADE20K_PALETTE
from dense.data.readers import resolve_root
from dense.data.registry import register_dataset
from dense.data.segmentation import SegmentationFiles

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip
SPLIT_DIRS = {"train": "training", "val": "validation", "test": "validation"}
LAYOUT = "ADEChallengeData2016/{images,annotations}/{training,validation} with <stem>.jpg images and <stem>.png annotations"


def reduce_zero_label(labels: np.ndarray) -> np.ndarray:
    """0 ("other") → 255 (ignore), k → k−1: the 150 ADE20K classes become 0–149."""
    return np.where(labels == 0, IGNORE_INDEX, labels.astype(np.int16) - 1).astype(np.uint8)


def paired_files(
    image_dir: Path, label_dir: Path, label_suffix: str = ".png"
) -> list[tuple[str, Path, Path]]:
    """(stem, image, label) for every image in image_dir; fails if a label is missing or none is found."""
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"{image_dir} holds no images; expected {LAYOUT}")
    not_files = [p for p in images if not p.is_file()]
    if not_files:  # found now rather than when epoch 0 reaches it
        raise DatasetError(
            f"{not_files[0]} is named like an image but is not a file (a folder or a broken link); "
            f"move it out of {image_dir}"
        )
    pairs = [(p.stem, p, label_dir / (p.stem + label_suffix)) for p in images]
    missing = [label for _, _, label in pairs if not label.is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(pairs)} images in {image_dir} have no annotation, e.g. {missing[0]}"
        )
    return pairs


@register_dataset("ade20k")
class ADE20K(SegmentationFiles):
    layout = LAYOUT
    class_names = ADE20K_CLASSES
    palette = ADE20K_PALETTE

    def find_items(self, root, split: str) -> list[tuple[str, Path, Path]]:
        sub = SPLIT_DIRS[split]
        self.root = resolve_root(root, ("ADEChallengeData2016",), f"images/{sub}", LAYOUT)
        if not (self.root / "annotations" / sub).is_dir():
            raise DatasetError(f"{self.root / 'annotations' / sub} does not exist; expected {LAYOUT}")
        return paired_files(self.root / "images" / sub, self.root / "annotations" / sub)

    def to_class_ids(self, labels: np.ndarray) -> np.ndarray:
        return reduce_zero_label(labels)
