"""Your own data: a folder of images with depth maps or label maps matched by file stem.

    root/images/<stem>.{jpg,png,...}
    root/depth/<stem>.png   16-bit integers, metres × depth_scale (default 1000: millimetres), 0 = none
    root/depth/<stem>.npy   or float metres (H×W), 0 = none
    root/disparity/<stem>.png|npy   or, with depth_target=disparity, relative disparity (larger =
                            nearer, any scale and shift, ≥ 0; 0 = infinitely far, a real value):
                            8- or 16-bit integers, or float .npy
    root/valid/<stem>.png   optional with disparity: nonzero = valid, 0 = no value (without the
                            folder every pixel is valid; with it every image needs one)
    root/masks/<stem>.png   or single-channel class ids (L or palette PNG), 255 = ignore
    root/classes.txt        optional, one class name per line (segmentation)
    root/{train,val,test}.txt   optional, one stem per line

Without split files the split is deterministic: a stem goes to val when crc32(stem) falls in the
first `val_fraction` of the hash range, so adding images never moves existing ones between splits;
test is then the val split. Segmentation val/test samples are the original image and mask, evaluated
as ADE20K's (views at eval_short_side, scored on the original mask).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import zlib
from pathlib import Path

import numpy as np

from dense.core.constants import IGNORE_INDEX, IMAGE_SUFFIXES
from dense.core.errors import DatasetError
from dense.data.base import SPLITS, DenseDataset
from dense.data.filelist import read_depth_pair
from dense.data.readers import (
    read_depth_npy,
    read_disparity_png,
    read_label_png,
    read_lines,
    read_rgb,
    read_short_side,
    read_validity_png,
    resolve_root,
)
from dense.data.registry import register_dataset
from dense.data.sample import DatasetInfo, RawSample
from dense.data.transforms import NO_DISPARITY, SegRecipe, depth_train, size_pair

LAYOUT = (
    "images/<stem>.jpg|png plus depth/<stem>.png|npy (task depth), disparity/<stem>.png|npy and optional "
    "valid/<stem>.png (depth_target=disparity) or masks/<stem>.png (task segmentation), or both depth/ "
    "and masks/ (task multi)"
)
DEPTH_TARGETS = ("depth", "disparity")


def check_depth_target(depth_target: str, task: str) -> None:
    if depth_target not in DEPTH_TARGETS:
        raise DatasetError(f"data.depth_target={depth_target!r} is not one of {', '.join(DEPTH_TARGETS)}")
    if depth_target == "disparity" and task != "depth":
        raise DatasetError("data.depth_target=disparity is a depth ground truth: use it with data.task=depth")


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
    """Depth, segmentation or both (task multi: depth/ and masks/, for train.py head=multi), as `task` says. The segmentation recipe's options are SegRecipe's
    fields; `crop_size` is the depth recipe's random crop (None: whole images) and the segmentation
    crop. Segmentation keeps the images' own scale unless told otherwise: `short_side` None is their
    median short side (so the random rescale is 0.5–2× of their size), `crop_size` None that side,
    at most 512, and `eval_short_side` None evaluates each image at its own size. ADE20K's recipe
    (short side 512, 512² crops, evaluation at 512) would blow small images up: 96×128 photos became
    512² crops, 21 times the pixels; set short_side=512 crop_size=512 eval_short_side=512 for it.
    depth_target: "depth" (metres, root/depth) or "disparity" (relative maps, root/disparity and
    root/valid: samples carry "disparity" instead of "depth")."""

    layout = LAYOUT

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
        depth_target: str = "depth",
        short_side: int | None = None,
        eval_short_side: int | None = None,
        **common,
    ):
        super().__init__(
            root,
            split,
            crop_size=crop_size or SegRecipe.crop_size,
            short_side=short_side or SegRecipe.short_side,
            eval_short_side=eval_short_side,
            **common,
        )
        check_depth_target(depth_target, self.task)
        self.depth_target = depth_target
        self.root = resolve_root(root, (), "images", LAYOUT)
        # task multi (train.py head=multi): depth/ and masks/ both, each image with one file in each.
        target_dirs = {
            "depth": [self.root / depth_target],
            "segmentation": [self.root / "masks"],
            "multi": [self.root / "depth", self.root / "masks"],
        }[self.task]
        for target_dir in target_dirs:
            if not target_dir.is_dir():
                raise DatasetError(f"{target_dir} does not exist; expected {LAYOUT}")
        self.depth_scale = depth_scale
        self.min_depth, self.max_depth = min_depth, max_depth  # the range the depth warnings check
        # Nothing is read through a link that leads out of the real root: the split and class lists
        # here, before they are read; the files of every sample below.
        check_inside_root(self.dataset_files(), self.root, LAYOUT)

        images = self._images_by_stem(self.root / "images")
        # every image is checked, not only this split's: a missing target is a layout problem either way
        targets = {s: () for s in images}
        for target_dir in target_dirs:
            found = {s: self._target(target_dir, s) for s in images}
            missing = [s for s, target in found.items() if target is None]
            if missing:
                raise DatasetError(
                    f"{len(missing)} images have no {target_dir.name} file in {target_dir}, e.g. {missing[0]!r}; "
                    f"expected {LAYOUT}"
                )
            targets = {s: (*targets[s], found[s]) for s in images}
        valid_dir = self.root / "valid"
        if depth_target == "disparity" and present(valid_dir):
            valid = {s: valid_dir / f"{s}.png" for s in images}
            missing = [s for s, path in valid.items() if not path.is_file()]
            if missing:
                raise DatasetError(
                    f"{len(missing)} images have no validity mask in {valid_dir}, e.g. {missing[0]}.png; "
                    "with a valid/ folder every image needs one (nonzero = valid)"
                )
            targets = {s: (*targets[s], valid[s]) for s in images}
        self.items = [
            (s, images[s], *targets[s]) for s in self._split_stems(self.split, sorted(images), val_fraction)
        ]

        check_inside_root([path for _, *files in self.items for path in files], self.root, LAYOUT)
        if self.task == "segmentation":
            names = resolve_class_names(self.root, class_names, num_classes)
            if short_side is None or crop_size is None:
                own = self.median_short_side(list(images.values()))
                self.recipe = dataclasses.replace(
                    self.recipe,
                    short_side=short_side or own,
                    crop_size=crop_size or min(own, SegRecipe.crop_size),
                )
            self.use_recipe(self.recipe.transforms(self.augment, self.split), num_classes=len(names))
        else:  # depth, or multi: the depth recipe (flip, colour, crop) moves the labels with the image
            names = resolve_class_names(self.root, class_names, num_classes) if self.task == "multi" else ()
            recipe = depth_train(size_pair(crop_size)) if self.augment else []
            self.use_recipe(recipe, num_classes=len(names))

    @classmethod
    def describe(
        cls,
        root=None,
        task="depth",
        num_classes=None,
        class_names=None,
        min_depth=1e-3,
        max_depth=10.0,
        depth_target="depth",
        **options,
    ) -> DatasetInfo:
        task = cls.check_task(task)
        check_depth_target(depth_target, task)
        if task == "multi":
            names = resolve_class_names(root, class_names, num_classes)
            return DatasetInfo(task=task, class_names=names, min_depth=min_depth, max_depth=max_depth)
        if task != "segmentation":
            return DatasetInfo(task=task, min_depth=min_depth, max_depth=max_depth, depth_target=depth_target)
        return DatasetInfo(
            task=task,
            class_names=resolve_class_names(root, class_names, num_classes),
            min_depth=min_depth,
            max_depth=max_depth,
            # eval_short_side None (the default here, unlike SegRecipe's): each image at its own size
            eval_scale=cls.recipe_from(
                {**options, "eval_short_side": options.get("eval_short_side")}
            ).eval_scale,
        )

    @staticmethod
    def median_short_side(images: list[Path], most: int = 64) -> int:
        """The median short side of the images, from the headers of at most `most` of them, spread
        evenly over the sorted list (a large folder costs no more than a small one)."""
        step = max(1, len(images) // most)
        return int(statistics.median(read_short_side(path) for path in images[::step][:most]))

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
        suffixes = (".png",) if target_dir.name == "masks" else (".png", ".npy")
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
        name, image, target, *valid = self.items[index]
        if self.depth_target == "disparity":
            return self._read_disparity(name, image, target, valid[0] if valid else None)
        if self.task == "multi":  # the depth file, then the mask (valid[0])
            raw = self._read_depth(name, image, target)
            return dataclasses.replace(raw, mask=read_label_png(valid[0]), source=f"{raw.source}, {valid[0]}")
        if self.task == "segmentation":
            return RawSample(name, read_rgb(image), mask=read_label_png(target), source=str(target))
        return self._read_depth(name, image, target)

    def _read_depth(self, name: str, image: Path, target: Path) -> RawSample:
        if target.suffix == ".png":
            return read_depth_pair(name, image, target, self.depth_scale)
        return RawSample(name, read_rgb(image), read_depth_npy(target), source=str(target), depth_unit="m")

    @staticmethod
    def _read_disparity(name: str, image: Path, target: Path, valid_path: Path | None) -> RawSample:
        """A relative disparity map and its validity mask → RawSample.disparity (-1 where not valid)."""
        if target.suffix == ".npy":
            disparity = read_depth_npy(target, "disparity")
        else:
            disparity = read_disparity_png(target)
        valid = np.ones(disparity.shape, bool) if valid_path is None else read_validity_png(valid_path)
        if valid.shape != disparity.shape:
            raise DatasetError(
                f"{valid_path}: the validity mask is {valid.shape[0]}×{valid.shape[1]} but the disparity is "
                f"{disparity.shape[0]}×{disparity.shape[1]}; they must be pixel-aligned"
            )
        # Only valid pixels must hold a disparity; whatever lies under a 0 of the mask is never read.
        values = disparity[valid]
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            raise DatasetError(
                f"{target}: {int(bad.sum())} valid pixels hold NaN, inf or a negative disparity; disparity must "
                "be finite and >= 0 (larger = nearer, 0 = infinitely far): mark pixels without a value with 0 "
                f"in valid/{name}.png"
            )
        disparity = np.where(valid, disparity, NO_DISPARITY).astype(np.float32)
        return RawSample(name, read_rgb(image), disparity=disparity, source=str(target))
