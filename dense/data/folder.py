"""Your own data: a folder of images with depth maps or label maps matched by file stem.

    root/images/<stem>.{jpg,png,...}
    root/depth/<stem>.png   16-bit integers, metres × depth_scale (default 1000: millimetres), 0 = none
    root/depth/<stem>.npy   or float metres (H×W), 0 = none
    root/masks/<stem>.png   or single-channel class ids (L or palette PNG), 255 = ignore
    root/classes.txt        optional, one class name per line (segmentation)
    root/{train,val,test}.txt   optional, one stem per line

Without split files the split is deterministic: a stem goes to val when crc32(stem) falls in the
first `val_fraction` of the hash range, so adding images never moves existing ones between splits;
test is then the val split. Segmentation val/test samples are the original image and mask, evaluated
as ADE20K's (views at eval_short_side, scored on the original mask).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from dense.constants import IGNORE_INDEX, IMAGE_SUFFIXES
from dense.data.base import SPLITS, DenseDataset
from dense.data.filelist import read_depth_pair
from dense.data.readers import read_depth_npy, read_label_png, read_lines, read_rgb, resolve_root
from dense.data.registry import register_dataset
from dense.data.sample import DatasetInfo, RawSample
from dense.data.transforms import SegRecipe, depth_train, size_pair
from dense.errors import DatasetError

LAYOUT = (
    "images/<stem>.jpg|png plus depth/<stem>.png|npy (task depth) or masks/<stem>.png (task segmentation)"
)


def present(path: Path) -> bool:
    """Whether a split or class file is there at all: anything by that name counts, so that a FIFO, a
    device or a folder named train.txt is refused by read_lines rather than skipped in silence."""
    return os.path.lexists(path)


def check_inside_root(paths, root: Path, expected: str) -> None:
    """Every one of `paths` resolves (links followed) inside the real `root`, or a one-line DatasetError
    names the first that does not: a link in a dataset folder (a file, or a whole `depth/` folder)
    leading out of it would make the dataset read files it does not hold. Links that stay inside the
    root are fine, and so is a root that is itself a link. Each folder is resolved once."""
    real_root = os.path.realpath(root)
    real_folders: dict[str, str] = {}
    for path in paths:
        path = os.fspath(path)
        if os.path.islink(path):
            real = os.path.realpath(path)
        else:
            folder = os.path.dirname(path)
            if folder not in real_folders:
                real_folders[folder] = os.path.realpath(folder)
            real = os.path.join(real_folders[folder], os.path.basename(path))
        if os.path.commonpath([real, real_root]) != real_root:
            raise DatasetError(
                f"{path} leads out of data.root {root} (it is {real}, through a link): a dataset reads only "
                f"files inside its root; copy the file in, or point data.root at the folder that holds it; "
                f"expected {expected}"
            )


def resolve_class_names(root, class_names=None, num_classes=None) -> tuple[str, ...]:
    """Class names from the config (names or a count) or root/classes.txt."""
    if class_names is not None:
        names = tuple(str(n) for n in class_names)
        if num_classes is not None and num_classes != len(names):
            raise DatasetError(f"data.num_classes={num_classes} but data.class_names has {len(names)} names")
    elif num_classes is not None:
        names = tuple(f"class_{i}" for i in range(int(num_classes)))
    elif root is not None and present(Path(root).expanduser() / "classes.txt"):
        names = tuple(read_lines(Path(root).expanduser() / "classes.txt", "class list"))
    else:
        raise DatasetError(
            "a segmentation folder needs data.num_classes, data.class_names or <root>/classes.txt (one name per line)"
        )
    if not 0 < len(names) <= IGNORE_INDEX:
        raise DatasetError(
            f"a segmentation folder needs 1–{IGNORE_INDEX} classes (255 means ignore), got {len(names)}"
        )
    return names


def hash_split(stems: list[str], val_fraction: float) -> dict[str, list[str]]:
    """Deterministic train/val split by stem hash; val gets at least one stem when there are two."""
    key = {s: zlib.crc32(s.encode()) / 2**32 for s in stems}
    val = [s for s in stems if key[s] < val_fraction]
    if not val and len(stems) > 1 and val_fraction > 0:
        val = [min(stems, key=key.get)]
    in_val = set(val)
    train = [s for s in stems if s not in in_val]
    return {"train": train, "val": val, "test": val}


@register_dataset("folder")
class FolderDataset(DenseDataset):
    """Depth or segmentation, as `task` says. The segmentation recipe's options are SegRecipe's
    fields; `crop_size` is the depth recipe's random crop (None: whole images) and the segmentation
    crop (None: 512)."""

    recipe_options = SegRecipe

    def __init__(
        self,
        root=None,
        split: str = "train",
        *,
        depth_scale: float = 1000.0,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        num_classes: int | None = None,
        class_names=None,
        val_fraction: float = 0.1,
        crop_size=None,
        **common,
    ):
        super().__init__(root, split, crop_size=crop_size or SegRecipe.crop_size, **common)
        self.root = resolve_root(root, (), "images", LAYOUT)
        target_dir = self.root / ("depth" if self.task == "depth" else "masks")
        if not target_dir.is_dir():
            raise DatasetError(f"{target_dir} does not exist; expected {LAYOUT}")
        self.depth_scale = depth_scale
        self.min_depth, self.max_depth = min_depth, max_depth  # the range the depth warnings check
        # Nothing is read through a link that leads out of the real root: the split and class lists
        # here, before they are read; the files of every sample below.
        check_inside_root(self.dataset_files(), self.root, LAYOUT)

        images = self._images_by_stem(self.root / "images")
        # every image is checked, not only this split's: a missing target is a layout problem either way
        targets = {s: self._target(target_dir, s) for s in images}
        missing = [s for s, target in targets.items() if target is None]
        if missing:
            raise DatasetError(
                f"{len(missing)} images have no {target_dir.name} file in {target_dir}, e.g. {missing[0]!r}; "
                f"expected {LAYOUT}"
            )
        self.items = [
            (s, images[s], targets[s]) for s in self._split_stems(self.split, sorted(images), val_fraction)
        ]

        check_inside_root([path for _, *files in self.items for path in files], self.root, LAYOUT)
        if self.task == "segmentation":
            names = resolve_class_names(self.root, class_names, num_classes)
            self.use_recipe(self.recipe.transforms(self.augment, self.split), num_classes=len(names))
        else:
            self.use_recipe(depth_train(size_pair(crop_size)) if self.augment else [], num_classes=0)

    @classmethod
    def describe(
        cls,
        root=None,
        task="depth",
        num_classes=None,
        class_names=None,
        min_depth=1e-3,
        max_depth=10.0,
        **options,
    ) -> DatasetInfo:
        task = cls.check_task(task)
        if task != "segmentation":
            return DatasetInfo(task=task, min_depth=min_depth, max_depth=max_depth)
        return DatasetInfo(
            task=task,
            class_names=resolve_class_names(root, class_names, num_classes),
            min_depth=min_depth,
            max_depth=max_depth,
            eval_scale=cls.recipe_from(options).eval_scale,
        )

    @staticmethod
    def _images_by_stem(image_dir: Path) -> dict[str, Path]:
        images: dict[str, Path] = {}
        for p in sorted(image_dir.iterdir()):
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not p.is_file():  # found now rather than when epoch 0 reaches it
                raise DatasetError(
                    f"{p} is named like an image but is not a file (a folder or a broken link); "
                    f"move it out of {image_dir}"
                )
            if p.stem in images:
                raise DatasetError(
                    f"{image_dir} has two images with stem {p.stem!r} ({images[p.stem].name}, {p.name})"
                )
            images[p.stem] = p
        if not images:
            raise DatasetError(
                f"{image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}); expected {LAYOUT}"
            )
        return images

    def _split_stems(self, split: str, stems: list[str], val_fraction: float) -> list[str]:
        split_files = {s: self.root / f"{s}.txt" for s in SPLITS}
        if any(present(p) for p in split_files.values()):
            path = split_files[split]
            if split == "test" and not present(path):
                path = split_files["val"]  # no test list: evaluate on val, as without split files
            if not present(path):
                raise DatasetError(
                    f"{path} is missing; this folder has split files, so the {split} split needs one"
                )
            chosen = read_lines(path, "split file")
            known = set(stems)
            unknown = [s for s in chosen if s not in known]
            if unknown:
                raise DatasetError(
                    f"{path} names {len(unknown)} stems with no image in {self.root / 'images'}, e.g. {unknown[0]!r}"
                )
            where = str(path)
        else:
            chosen = hash_split(stems, val_fraction)[split]
            where = f"the hash split of {self.root / 'images'} (val_fraction={val_fraction})"
        if not chosen:
            raise DatasetError(
                f"the {split} split is empty ({where}); add images or split files train.txt/val.txt"
            )
        return chosen

    def _target(self, target_dir: Path, stem: str) -> Path | None:
        suffixes = (".png", ".npy") if self.task == "depth" else (".png",)
        found = [
            target_dir / f"{stem}{suffix}"
            for suffix in suffixes
            if (target_dir / f"{stem}{suffix}").is_file()
        ]
        if len(found) > 1:
            raise DatasetError(f"{target_dir} has both {stem}.png and {stem}.npy; keep one")
        return found[0] if found else None

    def __len__(self) -> int:
        return len(self.items)

    def dataset_files(self) -> tuple[Path, ...]:
        # The split files choose the samples and classes.txt names the classes.
        candidates = [self.root / f"{s}.txt" for s in SPLITS] + [self.root / "classes.txt"]
        return tuple(p for p in candidates if present(p))

    def read(self, index: int) -> RawSample:
        name, image, target = self.items[index]
        if target.suffix == ".png" and self.task == "depth":
            return read_depth_pair(name, image, target, self.depth_scale)
        rgb = read_rgb(image)
        if self.task == "segmentation":
            return RawSample(name, rgb, mask=read_label_png(target), source=str(target))
        return RawSample(name, rgb, read_depth_npy(target), source=str(target), depth_unit="m")
