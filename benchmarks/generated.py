"""Tiny datasets in the real on-disk formats, written on the fly for the loader and loop benches.

The images are rendered synthetic scenes (dense.data.scenes), so that JPEG decoding costs what it
costs on real photographs rather than on flat test patterns; the depth and labels are the scenes' own.
`samples` names point at `files` distinct files (hard links, or copies where the file system has none),
so an epoch can be long without writing hundreds of images.

    nyu     BTS file lists (nyu_train.txt, nyu_test.txt), 480×640 JPEG + 16-bit PNG depth in millimetres:
            what the NYU training recipe crops to 416×544
    ade20k  ADEChallengeData2016: 512×683 JPEG images (the dataset's typical size, short side 512) and
            8-bit PNG annotations 0–150
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from dense.data.scenes import render_scene

FORMATS = ("nyu", "ade20k")
NYU_FRAME = (480, 640)
ADE20K_IMAGE = (512, 683)


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def scene(index: int, size: tuple[int, int]):
    return render_scene(np.random.default_rng([22, index]), *size)


def write_nyu(root: Path, files: int = 8, samples: int = 64) -> dict:
    """NYU in its BTS file-list layout; returns the data options of the generated dataset."""
    lines = {"train": [], "test": []}
    for split, count in (("train", samples), ("test", max(1, samples // 8))):
        for i in range(count):
            rgb, depth = f"{split}_scene/rgb_{i:05d}.jpg", f"{split}_scene/sync_depth_{i:05d}.png"
            if i < files:
                s = scene(i, NYU_FRAME)
                (root / rgb).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(s.image).save(root / rgb, quality=95)
                Image.fromarray(np.round(s.depth * 1000).astype(np.uint16)).save(root / depth)
            else:
                link_or_copy(root / f"{split}_scene/rgb_{i % files:05d}.jpg", root / rgb)
                link_or_copy(root / f"{split}_scene/sync_depth_{i % files:05d}.png", root / depth)
            lines[split].append(f"/{rgb} /{depth} 518.8579")
    for split, content in lines.items():
        (root / f"nyu_{split}.txt").write_text("\n".join(content) + "\n")
    return {"name": "nyu", "root": str(root), "layout": "filelist"}


def write_ade20k(root: Path, files: int = 8, samples: int = 64) -> dict:
    """ADE20K in its ADEChallengeData2016 layout (labels 1–150 from the scenes' classes, 0 = other);
    returns the data options of the generated dataset."""
    base = root / "ADEChallengeData2016"
    for sub, count in (("training", samples), ("validation", max(1, samples // 8))):
        for i in range(count):
            stem = f"ADE_{sub[:5]}_{i:08d}"
            image, labels = base / "images" / sub / f"{stem}.jpg", base / "annotations" / sub / f"{stem}.png"
            if i < files:
                s = scene(100 + i, ADE20K_IMAGE)
                image.parent.mkdir(parents=True, exist_ok=True)
                labels.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(s.image).save(image, quality=95)
                Image.fromarray((s.mask.astype(np.uint8) * 21 + 1) % 151).save(labels)
            else:
                first = f"ADE_{sub[:5]}_{i % files:08d}"
                link_or_copy(base / "images" / sub / f"{first}.jpg", image)
                link_or_copy(base / "annotations" / sub / f"{first}.png", labels)
    return {"name": "ade20k", "root": str(root)}


WRITERS = {"nyu": write_nyu, "ade20k": write_ade20k}


def generated_data(name: str, root: Path, files: int = 8, samples: int = 64) -> dict:
    """Write dataset `name` (one of FORMATS) into the empty folder `root`; its data options."""
    return WRITERS[name](root, files=files, samples=samples)
