"""Pascal VOC 2012 segmentation, 21 classes (background + 20).

    root/JPEGImages/<id>.jpg
    root/SegmentationClass/<id>.png        palette PNGs: pixel values are class indices, 255 = border/ignore
    root/SegmentationClassAug/<id>.png     optional SBD-augmented labels (grey PNGs, same encoding)
    root/ImageSets/Segmentation/{train,val}.txt   one id per line (train_aug.txt or aug.txt for use_aug;
                                           those may also hold DeepLab's two paths per line,
                                           "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png")

(root may also be the folder holding VOC2012 or VOCdevkit/VOC2012.) val and test are both `val`.
Same mmseg recipe as ADE20K (crop 512), and the same evaluation: val/test keep the original image and
annotation, the model sees views at eval_short_side (SegmentationTask).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from dense.core.errors import DatasetError
from dense.data.palettes import voc_palette
from dense.data.readers import read_lines, read_text, resolve_root
from dense.data.registry import register_dataset
from dense.data.segmentation import SegmentationFiles

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
LAYOUT = (
    "VOC2012 with JPEGImages/, SegmentationClass/ (palette PNGs) and ImageSets/Segmentation/{train,val}.txt"
)


def read_id_list(path: Path) -> list[str]:
    ids = read_lines(path, "id list")
    if not ids:
        raise DatasetError(f"{path} is empty; expected one image id per line")
    return ids


def read_aug_id_list(path: Path) -> list[str]:
    """The SBD-augmented train list: one id per line, or DeepLab's train_aug.txt form
    "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png", whose id is the two files' common stem.
    The files are then read from the usual folders, like those of an id line."""
    ids = []
    for lineno, line in enumerate(read_text(path, "id list").splitlines(), start=1):
        fields = line.split()
        stems = {PurePosixPath(f.replace("\\", "/")).stem for f in fields}
        if len(fields) > 2 or len(stems) > 1:
            raise DatasetError(
                f"{path}:{lineno}: expected an image id or 'image_path label_path' of one image, "
                f"got {line.strip()!r}"
            )
        ids.extend(stems)
    if not ids:
        raise DatasetError(f"{path} is empty; expected one image id per line")
    return ids


@register_dataset("voc")
class PascalVOC(SegmentationFiles):
    layout = LAYOUT
    class_names = VOC_CLASSES
    palette = voc_palette(len(VOC_CLASSES))

    def __init__(self, root=None, split: str = "train", *, use_aug: bool = False, **common):
        self.use_aug = use_aug  # read by find_items, which the base constructor calls
        super().__init__(root, split, **common)

    def find_items(self, root, split: str) -> list[tuple[str, Path, Path]]:
        self.root = resolve_root(root, ("VOC2012", "VOCdevkit/VOC2012"), "JPEGImages", LAYOUT)
        sets = self.root / "ImageSets" / "Segmentation"
        if split == "train" and self.use_aug:
            # mmseg's tools/convert_datasets/voc_aug.py writes aug.txt; other tools write train_aug.txt
            candidates = [sets / "train_aug.txt", sets / "aug.txt"]
            list_file = next((p for p in candidates if p.exists()), None)
            if list_file is None:
                raise DatasetError(
                    f"{candidates[0]} (or aug.txt) is missing; use_aug needs the SBD-augmented id list"
                )
            label_dir = self.root / "SegmentationClassAug"
            ids = read_aug_id_list(list_file)
        else:
            list_file = sets / ("train.txt" if split == "train" else "val.txt")
            if not list_file.exists():  # anything else there is refused by read_id_list, naming it
                raise DatasetError(f"{list_file} is missing; expected {LAYOUT}")
            label_dir = self.root / "SegmentationClass"
            ids = read_id_list(list_file)
        if not label_dir.is_dir():
            raise DatasetError(f"{label_dir} does not exist; expected {LAYOUT}")
        self.list_file = list_file
        items = [(i, self.root / "JPEGImages" / f"{i}.jpg", label_dir / f"{i}.png") for i in ids]
        missing = [p for _, image, label in items for p in (image, label) if not p.is_file()]
        if missing:
            raise DatasetError(f"{list_file} names {len(missing)} files that do not exist, e.g. {missing[0]}")
        return items

    def dataset_files(self) -> tuple[Path, ...]:
        return (self.list_file,)
