"""Datasets say what their samples are made of, and refuse or warn about inputs that are probably
wrong (issue 12: the feature cache key, and the dataset parts of 8 and 9).

The key tests go through the real cache: for every dataset class, an unchanged dataset reuses its
entry (nothing recomputed), and each change of an ingredient (a file, an option, the root, the split)
gets a new entry that is filled from scratch. Changes to files are made in place, one after the other,
so every step is a dataset state never seen before.
"""

import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from dense.cache import CachedFeatures
from dense.data import (
    ADE20K,
    DatasetError,
    DepthRangeWarning,
    DepthScaleWarning,
    FolderDataset,
    KITTIEigen,
    NYUDepthV2,
    PascalVOC,
    SyntheticScenes,
)
from dense.model import build_model
from tests._fixtures_data import (
    pattern_image,
    ramp_depth,
    save_labels,
    save_png16,
    save_rgb,
    write_ade20k,
    write_folder,
    write_kitti,
    write_voc,
)

pytestmark = pytest.mark.trust  # the trust audit: `python -m pytest -m trust`

SIZE = 28  # fixture images (where the format allows): the backbone runs fast on them


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny14", "depth_linear")


class Entries:
    """Fills a cache for dataset states; checks reuse and novelty by the fill counts."""

    def __init__(self, model, root: Path):
        self.model, self.root, self.seen = model, str(root), set()

    def new(self, dataset) -> None:
        cache = CachedFeatures(dataset, self.model, self.root, random_flip=False)
        assert cache.directory not in self.seen, "a changed dataset reused an entry"
        assert cache.filled == len(dataset)
        self.seen.add(cache.directory)

    def reused(self, dataset) -> None:
        cache = CachedFeatures(dataset, self.model, self.root, random_flip=False)
        assert cache.directory in self.seen and cache.filled == 0

    def first(self, build) -> None:
        """The starting state: filled once, then reused by a second dataset built the same way."""
        self.new(build())
        self.reused(build())


def touch(path: Path) -> None:
    """A new mtime, same size and content (e.g. a file copied again)."""
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def grow_keeping_mtime(path: Path) -> None:
    """A longer file with its old mtime (bytes after a PNG's end are ignored by readers)."""
    stat = os.stat(path)
    with open(path, "ab") as f:
        f.write(b"\0" * 16)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_synthetic_scenes_key(model, tmp_path):
    entries = Entries(model, tmp_path)
    base = {"split": "train", "image_size": SIZE, "num_train": 3, "num_val": 3}
    entries.first(lambda: SyntheticScenes(**base))
    entries.reused(pickle.loads(pickle.dumps(SyntheticScenes(**base))))  # as a loader worker has it
    entries.reused(
        SyntheticScenes(**base, base_seed=0, seed=5)
    )  # a default spelled out; seed drives augmentation only
    for change in (
        {"base_seed": 1},
        {"shadows": False},
        {"image_size": 2 * SIZE},
        {"num_train": 4},
        {"split": "val"},
    ):
        entries.new(SyntheticScenes(**{**base, **change}))


def test_folder_depth_key(model, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write_folder(first, h=SIZE, w=SIZE)
    # The same stems and count in another folder, other content: the bug the old key had.
    write_folder(second, h=SIZE, w=SIZE, npy=())
    entries = Entries(model, tmp_path / "cache")
    entries.first(lambda: FolderDataset(first))
    entries.new(FolderDataset(second))
    entries.new(FolderDataset(first, depth_scale=500.0))
    entries.new(FolderDataset(first, split="val"))
    touch(first / "depth" / "a.png")
    entries.new(FolderDataset(first))
    grow_keeping_mtime(first / "images" / "d.png")
    entries.new(FolderDataset(first))
    # Split files naming the same train stems as the hash split: the split files are an input too.
    (first / "train.txt").write_text("a\nb\nd\n")
    (first / "val.txt").write_text("c\n")
    entries.new(FolderDataset(first))
    (first / "train.txt").write_text("a\nd\nb\n")  # the order of the samples
    entries.new(FolderDataset(first))


def test_folder_segmentation_key(model, tmp_path):
    write_folder(tmp_path / "seg", task="segmentation", h=SIZE, w=SIZE, num_classes=5)
    root = tmp_path / "seg"
    (root / "classes.txt").write_text("sky\nroad\ncar\ntree\nperson\n")
    entries = Entries(model, tmp_path / "cache")
    options = {"task": "segmentation", "eval_short_side": None}
    entries.first(lambda: FolderDataset(root, **options))
    entries.new(FolderDataset(root, **options, class_names=["a", "b", "c", "d", "e"]))
    (root / "classes.txt").write_text("sky\nroad\ncar\ntree\nhuman\n")
    entries.new(FolderDataset(root, **options))
    touch(root / "masks" / "a.png")
    entries.new(FolderDataset(root, **options))
    entries.new(FolderDataset(root, **{**options, "eval_short_side": 2 * SIZE}))


# The NYU writers of tests._fixtures_data make 480×640 frames, on which every fill takes a second:
# the same layouts at SIZE×SIZE.


def write_small_nyu_filelist(root: Path, n: int = 2) -> None:
    for list_file, scene in (("nyu_train.txt", "kitchen_0001a"), ("nyu_test.txt", "bathroom")):
        lines = []
        for i in range(n):
            rgb, depth = f"{scene}/rgb_{i:05d}.jpg", f"{scene}/sync_depth_{i:05d}.png"
            save_rgb(root / rgb, pattern_image(SIZE, SIZE, seed=i))
            save_png16(root / depth, ramp_depth(SIZE, SIZE, seed=i), 1000.0)
            lines.append(f"/{rgb} /{depth} 518.8579")
        (root / list_file).write_text("\n".join(lines) + "\n")


def write_small_nyu_mat(root: Path, n: int = 3, train=(1, 2), test=(3,)) -> None:
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:  # MATLAB's column-major N×3×W×H
        f["images"] = np.stack([pattern_image(SIZE, SIZE, seed=i).transpose(2, 1, 0) for i in range(n)])
        f["depths"] = np.stack([ramp_depth(SIZE, SIZE, seed=i).T for i in range(n)]).astype(np.float64)
    scipy.io.savemat(
        root / "splits.mat",
        {"trainNdxs": np.array(train, float)[:, None], "testNdxs": np.array(test, float)[:, None]},
    )


def test_nyu_filelist_key(model, tmp_path):
    write_small_nyu_filelist(tmp_path / "nyu")
    root = tmp_path / "nyu"
    entries = Entries(model, tmp_path / "cache")
    entries.first(lambda: NYUDepthV2(root))
    entries.new(NYUDepthV2(root, split="test"))  # as many samples as train
    entries.new(NYUDepthV2(root, depth_scale=500.0))
    touch(root / "kitchen_0001a" / "sync_depth_00001.png")
    entries.new(NYUDepthV2(root))
    grow_keeping_mtime(root / "kitchen_0001a" / "rgb_00000.jpg")
    entries.new(NYUDepthV2(root))
    lines = (root / "nyu_train.txt").read_text().splitlines()
    (root / "nyu_train.txt").write_text("\n".join(reversed(lines)) + "\n")
    entries.new(NYUDepthV2(root))


def test_nyu_mat_key(model, tmp_path):
    write_small_nyu_mat(tmp_path / "nyu")
    root = tmp_path / "nyu"
    entries = Entries(model, tmp_path / "cache")
    entries.first(lambda: NYUDepthV2(root))
    touch(root / "nyu_depth_v2_labeled.mat")  # every sample lives in the one file
    entries.new(NYUDepthV2(root))
    write_small_nyu_mat(tmp_path / "other", train=(2, 1))
    shutil.copy(tmp_path / "other" / "splits.mat", root / "splits.mat")  # the same images, in another order
    entries.new(NYUDepthV2(root))


def test_kitti_key(model, tmp_path):
    write_kitti(tmp_path / "kitti", n_train=1, n_test=1)
    root = tmp_path / "kitti"
    entries = Entries(model, tmp_path / "cache")
    entries.first(lambda: KITTIEigen(root))
    entries.new(KITTIEigen(root, depth_scale=128.0))
    shutil.copytree(root / "input", root / "input_rectified", copy_function=shutil.copy2)  # same mtimes
    entries.new(KITTIEigen(root, image_dir="input_rectified"))
    touch(next((root / "gt_depth").rglob("*.png")))
    entries.new(KITTIEigen(root))


def test_ade20k_key(model, tmp_path):
    sizes = ((SIZE, SIZE), (SIZE, SIZE))
    write_ade20k(tmp_path / "ade", sizes_train=sizes, sizes_val=sizes)
    root = tmp_path / "ade"
    entries = Entries(model, tmp_path / "cache")
    entries.first(lambda: ADE20K(root, eval_short_side=None))
    entries.new(ADE20K(root, split="val", eval_short_side=None))  # as many samples as train
    entries.new(ADE20K(root, eval_short_side=SIZE))  # a resize that happens to keep the size
    label = next((root / "ADEChallengeData2016" / "annotations" / "training").glob("*.png"))
    save_labels(label, np.ones((SIZE, SIZE), np.uint8))
    entries.new(ADE20K(root, eval_short_side=None))


def test_voc_key(model, tmp_path):
    write_voc(tmp_path / "voc", h=SIZE, w=SIZE, with_aug=True)
    root = tmp_path / "voc"
    entries = Entries(model, tmp_path / "cache")
    entries.first(lambda: PascalVOC(root, eval_short_side=None))
    entries.new(PascalVOC(root, eval_short_side=None, use_aug=True))  # other label files, same ids
    touch(root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000032.png")
    entries.new(PascalVOC(root, eval_short_side=None))
    sets = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (sets / "train.txt").write_text("2007_000039\n2007_000032\n")
    entries.new(PascalVOC(root, eval_short_side=None))


def all_datasets(root: Path) -> dict:
    write_folder(root / "folder", h=SIZE, w=SIZE)
    write_small_nyu_filelist(root / "nyu_list")
    write_small_nyu_mat(root / "nyu_mat", train=(1, 3), test=(2,))
    write_kitti(root / "kitti", n_train=1, n_test=1)
    write_ade20k(root / "ade", sizes_train=((SIZE, SIZE),) * 2)
    write_voc(root / "voc", h=SIZE, w=SIZE)
    return {
        "synthetic": SyntheticScenes(image_size=SIZE, num_train=3),
        "folder": FolderDataset(root / "folder"),
        "nyu_filelist": NYUDepthV2(root / "nyu_list"),
        "nyu_mat": NYUDepthV2(root / "nyu_mat"),
        "kitti": KITTIEigen(root / "kitti", split="test"),
        "ade20k": ADE20K(root / "ade", eval_short_side=None),
        "voc": PascalVOC(root / "voc", eval_short_side=None),
    }


def test_sample_names_are_the_names_of_the_items(tmp_path):
    for name, dataset in all_datasets(tmp_path).items():
        assert dataset.sample_names() == [dataset[i]["name"] for i in range(len(dataset))], name


# --------------------------------------------------------------------------- found at construction


def test_a_folder_named_like_an_image_is_refused_at_construction(tmp_path):
    write_folder(tmp_path / "folder", h=SIZE, w=SIZE)
    (tmp_path / "folder" / "images" / "e.png").mkdir()
    (tmp_path / "folder" / "depth" / "e.npy").write_bytes(
        (tmp_path / "folder" / "depth" / "b.npy").read_bytes()
    )
    with pytest.raises(DatasetError, match=r"images/e\.png is named like an image but is not a file"):
        FolderDataset(tmp_path / "folder")
    write_ade20k(tmp_path / "ade")
    (tmp_path / "ade" / "ADEChallengeData2016" / "images" / "training" / "x.jpg").mkdir()
    save_labels(
        tmp_path / "ade" / "ADEChallengeData2016" / "annotations" / "training" / "x.png",
        np.zeros((SIZE, SIZE), np.uint8),
    )
    with pytest.raises(DatasetError, match=r"training/x\.jpg is named like an image but is not a file"):
        ADE20K(tmp_path / "ade")


def _denied(monkeypatch, module, name: str, protected: str) -> None:
    """module.name raises PermissionError for paths containing `protected`, as the OS would for a
    file without read permission (the tests run as root, which chmod cannot lock out)."""
    original = getattr(module, name)

    def guarded(path, *args, **kwargs):
        if protected in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(module, name, guarded)


@pytest.mark.parametrize("target", ["depth/a.png", "depth/b.npy", "masks/a.png"])
def test_permission_denied_is_reported_as_such(tmp_path, monkeypatch, target):
    task = "segmentation" if target.startswith("masks") else "depth"
    write_folder(tmp_path, task=task, h=SIZE, w=SIZE)
    (tmp_path / "train.txt").write_text("a\nb\n")
    (tmp_path / "val.txt").write_text("c\n")
    dataset = FolderDataset(tmp_path, task=task, num_classes=5 if task == "segmentation" else None)
    _denied(monkeypatch, os, "open", target)
    with pytest.raises(DatasetError) as error:
        dataset[0 if target.endswith("a.png") else 1]
    message = str(error.value)
    assert target in message and "permission denied; make it readable" in message
    assert "truncated" not in message and "\n" not in message


def test_permission_denied_on_a_split_file_is_one_line(tmp_path, monkeypatch):
    write_folder(tmp_path, h=SIZE, w=SIZE)
    (tmp_path / "train.txt").write_text("a\nb\n")
    _denied(monkeypatch, os, "open", "train.txt")
    with pytest.raises(DatasetError, match=r"train\.txt: permission denied; make it readable"):
        FolderDataset(tmp_path)


# --------------------------------------------------------------------------- probably wrong inputs


def _depth_folder(root: Path, save_depth) -> FolderDataset:
    for stem in ("a", "b"):
        Image.fromarray(pattern_image(SIZE, SIZE)).save(_mkdir(root / "images") / f"{stem}.png")
        save_depth(_mkdir(root / "depth"), stem)
    (root / "train.txt").write_text("a\nb\n")
    (root / "val.txt").write_text("a\n")
    return FolderDataset(root)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _assert_warns_once(dataset, category, words: str, file: str) -> None:
    with pytest.warns(category, match=words) as record:
        dataset[0]
    assert len(record) == 1 and file in str(record[0].message) and "\n" not in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset[1]  # once per dataset: the second file (just as wrong) stays quiet


def test_depth_outside_the_range_warns_once(tmp_path):
    # 50 m everywhere: metres (no unit warning), but all beyond max_depth 10 m, so the loss is 0.
    dataset = _depth_folder(
        tmp_path, lambda d, s: np.save(d / f"{s}.npy", np.full((SIZE, SIZE), 50.0, np.float32))
    )
    _assert_warns_once(
        dataset, DepthRangeWarning, r"every valid depth value \(50–50 m\) lies outside", "a.npy"
    )
    within = FolderDataset(tmp_path, max_depth=80.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        within[0]  # the same files with data.max_depth=80: nothing to say


def test_an_8_bit_depth_png_warns_once(tmp_path):
    # 8-bit values up to 200 read as millimetres: 0.2 m at most, above the old 0.1 m threshold.
    depth = np.tile(np.linspace(50, 200, SIZE).astype(np.uint8), (SIZE, 1))
    dataset = _depth_folder(tmp_path, lambda d, s: Image.fromarray(depth, mode="L").save(d / f"{s}.png"))
    _assert_warns_once(dataset, DepthScaleWarning, "is an 8-bit PNG", "a.png")
    sixteen = _depth_folder(
        tmp_path / "16", lambda d, s: Image.fromarray(depth.astype(np.uint16) * 40).save(d / f"{s}.png")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sixteen[0]  # the same depth in 16 bits (2–8 m): fine
