"""Tiny datasets in each real on-disk format, written into a temporary folder by the data tests.

Image content is a deterministic function of the pixel position so a test can tell where a pixel
came from (axis order, crops, flips) after reading it back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

VOC_PALETTE = [
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
    (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0), (64, 0, 128), (192, 0, 128),
    (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0), (0, 192, 0), (128, 192, 0), (0, 64, 128),
]  # fmt: skip


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Uniform random colours: an image with no structure (for readers and writers, not for learning)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def pattern_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 H×W×3 whose values encode the position (different per channel and per seed)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x + 3 * seed) % 256, (y + 5 * seed) % 256, (x + 2 * y + 7 * seed) % 256], -1).astype(
        np.uint8
    )


def ramp_depth(h: int, w: int, lo: float = 0.5, hi: float = 9.0, seed: int = 0) -> np.ndarray:
    """float32 metres growing with x and y, distinct per pixel to well below 1 mm."""
    y, x = np.mgrid[0:h, 0:w]
    return (lo + (hi - lo) * (0.7 * x / w + 0.3 * y / h) + 0.01 * seed).astype(np.float32)


def save_png16(path: Path, depth_m: np.ndarray, scale: float) -> np.ndarray:
    """Write depth as a 16-bit PNG of round(metres × scale); returns the exact metres read back."""
    raw = np.round(depth_m * scale).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(raw).save(path)
    return raw.astype(np.float32) / np.float32(scale)


def save_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(image).save(
        path
    )


def save_labels(path: Path, labels: np.ndarray, palette: list | None = None) -> None:
    """Class ids as an 8-bit grey PNG, or as a palette PNG (pixel values = indices) like VOC's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.ascontiguousarray(labels, np.uint8)
    if palette is None:
        Image.fromarray(labels).save(path)
        return
    im = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    im.putpalette([c for rgb in palette for c in rgb] + [224, 224, 192] * (256 - len(palette)))
    im.save(path)


# --------------------------------------------------------------------------- NYU


def write_nyu_mat(root: Path, n: int = 4, train=(1, 2, 4), test=(3,), with_splits: bool = True):
    """The official labelled .mat layout (HDF5: images N×3×W×H, depths N×W×H), 480×640 frames, plus
    splits.mat with 1-based trainNdxs/testNdxs. Returns (images H×W×3, depths H×W) per index."""
    import h5py
    import scipy.io

    root.mkdir(parents=True, exist_ok=True)
    images = [pattern_image(480, 640, seed=i) for i in range(n)]
    depths = [ramp_depth(480, 640, seed=i) for i in range(n)]
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        # MATLAB is column-major: its H×W×3×N array appears to h5py as N×3×W×H.
        f["images"] = np.stack([im.transpose(2, 1, 0) for im in images])
        f["depths"] = np.stack([d.T for d in depths]).astype(np.float64)
    if with_splits:
        scipy.io.savemat(
            root / "splits.mat",
            {"trainNdxs": np.array(train, float)[:, None], "testNdxs": np.array(test, float)[:, None]},
        )
    return images, depths


def write_nyu_filelist(root: Path, n_train: int = 2, n_test: int = 2, metres_in_png: bool = False):
    """BTS layout: nyu_train.txt / nyu_test.txt, scene folders with rgb_*.jpg and sync_depth_*.png (mm)."""
    lines = {"nyu_train.txt": [], "nyu_test.txt": []}
    truth = {}
    for split_file, n, scene in (
        ("nyu_train.txt", n_train, "kitchen_0001a"),
        ("nyu_test.txt", n_test, "bathroom"),
    ):
        for i in range(n):
            rgb, dep = f"{scene}/rgb_{i:05d}.jpg", f"{scene}/sync_depth_{i:05d}.png"
            save_rgb(root / rgb, pattern_image(480, 640, seed=i))
            depth = ramp_depth(480, 640, seed=i)
            depth[:10, :10] = 0.0  # holes
            truth[f"{scene}/rgb_{i:05d}"] = save_png16(root / dep, depth, 1.0 if metres_in_png else 1000.0)
            lines[split_file].append(f"/{rgb} /{dep} 518.8579")  # BTS lists start paths with '/'
    for name, content in lines.items():
        (root / name).write_text("\n".join(content) + "\n")
    return truth


# --------------------------------------------------------------------------- KITTI


def write_kitti(root: Path, n_train: int = 2, n_test: int = 2, h: int = 375, w: int = 1242):
    """Toolbox layout: kitti_eigen_{train,test}.txt, input/<rgb>, gt_depth/<depth> (uint16 m×256, sparse);
    the test list also has one line with depth 'None'."""
    truth, lines = {}, {"kitti_eigen_train.txt": [], "kitti_eigen_test.txt": []}
    for split_file, n, offset in (
        ("kitti_eigen_train.txt", n_train, 0),
        ("kitti_eigen_test.txt", n_test, 100),
    ):
        for i in range(offset, offset + n):
            rgb = f"2011_09_26/2011_09_26_drive_0002_sync/image_02/data/{i:010d}.png"
            dep = f"2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/{i:010d}.png"
            image = pattern_image(h, w, seed=i)
            save_rgb(root / "input" / rgb, image)
            depth = ramp_depth(h, w, 2.0, 70.0, seed=i)
            depth[::3] = 0.0  # LiDAR: sparse
            truth[rgb[:-4]] = (image, save_png16(root / "gt_depth" / dep, depth, 256.0))
            lines[split_file].append(f"{rgb} {dep} 721.5377")
    lines["kitti_eigen_test.txt"].append(
        "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000009999.png None 721.5377"
    )
    for name, content in lines.items():
        (root / name).write_text("\n".join(content) + "\n")
    return truth


# --------------------------------------------------------------------------- ADE20K / VOC


def write_ade20k(root: Path, sizes_train=((60, 80), (64, 48), (50, 50)), sizes_val=((40, 70), (56, 42))):
    """ADEChallengeData2016 layout; annotations hold 0 (other) and 1–150. Returns {stem: raw labels}."""
    base, truth = root / "ADEChallengeData2016", {}
    for sub, sizes in (("training", sizes_train), ("validation", sizes_val)):
        for i, (h, w) in enumerate(sizes):
            stem = f"ADE_{sub[:5]}_{i:08d}"
            save_rgb(base / "images" / sub / f"{stem}.jpg", pattern_image(h, w, seed=i))
            y, x = np.mgrid[0:h, 0:w]
            labels = ((x // 8 + y // 8 * 7 + i) % 151).astype(np.uint8)  # 0..150, blocks of 8 px
            save_labels(base / "annotations" / sub / f"{stem}.png", labels)
            truth[stem] = labels
    return truth


def write_voc(
    root: Path,
    train=("2007_000032", "2007_000039"),
    val=("2007_000063",),
    h: int = 50,
    w: int = 60,
    with_aug: bool = False,
):
    """VOC2012 layout with palette PNGs (indices 0–20, 255 on a border line). Returns {id: labels}."""
    base, truth = root / "VOCdevkit" / "VOC2012", {}
    for k, image_id in enumerate((*train, *val)):
        save_rgb(base / "JPEGImages" / f"{image_id}.jpg", pattern_image(h, w, seed=k))
        y, x = np.mgrid[0:h, 0:w]
        labels = ((x // 10 + y // 10 + k) % 21).astype(np.uint8)
        labels[h // 2, :] = 255  # object boundary = ignore
        save_labels(base / "SegmentationClass" / f"{image_id}.png", labels, palette=VOC_PALETTE)
        if with_aug:
            save_labels(base / "SegmentationClassAug" / f"{image_id}.png", labels)
        truth[image_id] = labels
    sets = base / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("\n".join(train) + "\n")
    (sets / "val.txt").write_text("\n".join(val) + "\n")
    if with_aug:
        (sets / "train_aug.txt").write_text("\n".join(train) + "\n")
    return truth


# --------------------------------------------------------------------------- folder


def write_folder(
    root: Path,
    stems=("a", "b", "c", "d"),
    task: str = "depth",
    npy: tuple = ("b",),
    h: int = 40,
    w: int = 52,
    num_classes: int = 5,
):
    """images/ plus depth/ (.png mm, or .npy metres for the stems in `npy`) or masks/ (class ids)."""
    truth = {}
    for k, stem in enumerate(stems):
        save_rgb(root / "images" / f"{stem}.png", pattern_image(h, w, seed=k))
        if task == "depth":
            depth = ramp_depth(h, w, seed=k)
            if stem in npy:
                (root / "depth").mkdir(parents=True, exist_ok=True)
                np.save(root / "depth" / f"{stem}.npy", depth)
                truth[stem] = depth
            else:
                truth[stem] = save_png16(root / "depth" / f"{stem}.png", depth, 1000.0)
        else:
            y, x = np.mgrid[0:h, 0:w]
            labels = ((x // 6 + y // 6 + k) % num_classes).astype(np.uint8)
            save_labels(root / "masks" / f"{stem}.png", labels)
            truth[stem] = labels
    return truth
