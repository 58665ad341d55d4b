"""Hostile inputs (issue 7), the datasets: every bad image, depth map, label map or dataset layout is
refused with one line that names it and says what is wrong (or is a documented skip), nothing crashes deep
inside.

Images go through both readers users meet: the datasets (FolderDataset, via dense.data.readers.read_rgb)
and predict.py (dense.core.io.read_image) — the two must agree (predict.py's side is in
tests/cli/test_hostile_cli.py, the cases in tests/_hostile.py).
The case counts in the README's Failure modes table are the parametrised cases of the three hostile files
(tests/{data,model,cli}/test_hostile_*.py).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dense
import dense.core.errors
import dense.tasks.losses
import dense.tasks.metrics
from dense.core.io import read_image
from dense.data import DatasetError, DepthScaleWarning, FolderDataset
from tests._fixtures_data import rgb
from tests._hostile import IMAGE_CASES, one_line

pytestmark = pytest.mark.hostile  # the hostile audit: `python -m pytest -m hostile`


def write_folder_dataset(root: Path, image_name: str, writer) -> tuple[np.ndarray | None, Path]:
    """A depth folder dataset with one image (written by `writer`) and a depth map of the size the
    image displays at (read with the robust reader when it can be read at all)."""
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    path = root / "images" / image_name
    expected = writer(path)
    try:
        h, w = read_image(path).shape[:2]
    except dense.core.errors.DenseError:
        h, w = 4, 4
    np.save(root / "depth" / "x.npy", np.ones((h, w), np.float32))
    (root / "train.txt").write_text("x\n")
    (root / "val.txt").write_text("x\n")
    return expected, path


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_through_the_dataset(tmp_path, case):
    name, writer, outcome, words = IMAGE_CASES[case]
    expected, path = write_folder_dataset(tmp_path, name, writer)
    dataset = FolderDataset(tmp_path, "train")
    if outcome == "error":
        with pytest.raises(DatasetError) as error:
            dataset[0]
        message = one_line(error.value)
        assert str(path) in message and words in message
        return
    image = dense.data.readers.read_rgb(path)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert np.array_equal(image, read_image(path))  # the datasets read images as predict.py does
    if expected is not None:
        assert np.array_equal(image, expected)
    sample = dataset[0]  # the whole sample contract, depth aligned with the displayed image
    assert tuple(sample["image"].shape) == (3, *image.shape[:2])
    assert tuple(sample["depth"].shape) == (1, *image.shape[:2])


# ---- depth maps ----------------------------------------------------------------------------------------

H, W = 12, 16


def depth_folder(root: Path, depth, image_size=(H, W), png: bool = False) -> FolderDataset:
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    Image.fromarray(rgb(*image_size)).save(root / "images" / "x.png")
    if png:
        Image.fromarray(depth).save(root / "depth" / "x.png")
    else:
        np.save(root / "depth" / "x.npy", depth)
    (root / "train.txt").write_text("x\n")
    (root / "val.txt").write_text("x\n")
    return FolderDataset(root, "train")


def _with(value):
    depth = np.full((H, W), 2.0, np.float32)
    depth[3, 4] = value
    return depth


DEPTH_ERRORS = {
    "nan": (_with(np.nan), "NaN/inf values; store missing depth as 0"),
    "inf": (_with(np.inf), "NaN/inf values; store missing depth as 0"),
    "minus_inf": (_with(-np.inf), "NaN/inf values"),
    "negative": (_with(-0.5), "negative values"),
    "size_mismatch": (np.ones((H + 2, W), np.float32), f"depth is {H + 2}×{W} but the image is {H}×{W}"),
    "three_dims": (np.ones((2, H, W), np.float32), "expected an H×W float array"),
    "object_array": (np.array([None, 1], dtype=object), "x.npy"),
}


@pytest.mark.parametrize("case", DEPTH_ERRORS)
def test_bad_depth_is_refused_naming_the_file(tmp_path, case):
    depth, words = DEPTH_ERRORS[case]
    with pytest.raises(DatasetError) as error:
        if depth.dtype == object:
            # np.save pickles object arrays; reading must refuse them (allow_pickle=False), not unpickle
            np.save(tmp_path / "probe.npy", depth, allow_pickle=True)
            depth_folder(tmp_path, np.zeros((H, W), np.float32))
            os.replace(tmp_path / "probe.npy", tmp_path / "depth" / "x.npy")
            FolderDataset(tmp_path, "train")[0]
        else:
            depth_folder(tmp_path, depth)[0]
    message = one_line(error.value)
    assert "x.npy" in message and words in message


def test_all_invalid_depth_is_a_documented_skip(tmp_path):
    """A map with no valid pixel is allowed (sensors drop whole frames): the loss gives 0 for it, not
    NaN, and the metrics count it in n_skipped instead of averaging it in."""
    sample = depth_folder(tmp_path, np.zeros((H, W), np.float32))[0]
    assert not sample["depth"].any()
    loss = dense.tasks.losses.DepthLoss(max_depth=10.0)
    value = loss(torch.rand(1, 1, H, W) + 0.5, sample["depth"][None])["loss"]
    assert torch.isfinite(value) and float(value) == 0.0
    metrics = dense.tasks.metrics.DepthMetrics(min_depth=1e-3, max_depth=10.0)
    metrics.update(torch.rand(1, 1, H, W) + 0.5, sample["depth"][None])
    result = metrics.compute()
    assert int(result["n_skipped"]) == 1 and int(result["n_images"]) == 0


@pytest.mark.parametrize(
    "case, depth, png, words",
    [
        ("png_in_metres", np.full((H, W), 3, np.uint16), True, "looks stored in metres"),
        ("npy_in_millimetres", np.full((H, W), 3000.0, np.float32), False, "looks stored in millimetres"),
    ],
)
def test_depth_in_the_wrong_unit_warns(tmp_path, case, depth, png, words):
    dataset = depth_folder(tmp_path, depth, png=png)
    with pytest.warns(DepthScaleWarning, match=words) as record:
        dataset[0]
    one_line(record[0].message)
    assert "x.png" in str(record[0].message) or "x.npy" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset[0]  # once per dataset, not once per sample


# ---- label maps ----------------------------------------------------------------------------------------


def label_folder(root: Path, labels: Image.Image, image_size=(H, W)) -> FolderDataset:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(rgb(*image_size)).save(root / "images" / "x.png")
    labels.save(root / "masks" / "x.png")
    (root / "train.txt").write_text("x\n")
    (root / "val.txt").write_text("x\n")
    return FolderDataset(root, "train", task="segmentation", num_classes=5, eval_short_side=None)


def _ids(value, dtype=np.uint8, shape=(H, W)):
    labels = np.zeros(shape, dtype)
    labels[2, 3] = value
    return labels


LABEL_ERRORS = {
    "id_equal_num_classes": (Image.fromarray(_ids(5)), "label values [5] are outside [0, 5) and not 255"),
    "id_200": (Image.fromarray(_ids(200)), "label values [200]"),
    "sixteen_bit_ids_over_255": (Image.fromarray(_ids(300, np.uint16)), "values outside 0–255"),
    "rgb_colour_mask": (Image.fromarray(rgb(H, W)), "is a RGB image; expected a single-channel PNG"),
    "grey_alpha_mask": (
        Image.fromarray(_ids(1)).convert("LA"),
        "is a LA image; expected a single-channel PNG",
    ),
    "size_mismatch": (
        Image.fromarray(_ids(1, shape=(H, W + 1))),
        f"label map is {H}×{W + 1} but the image is",
    ),
}


@pytest.mark.parametrize("case", LABEL_ERRORS)
def test_bad_labels_are_refused_naming_the_file(tmp_path, case):
    labels, words = LABEL_ERRORS[case]
    with pytest.raises(DatasetError) as error:
        label_folder(tmp_path, labels)[0]
    message = one_line(error.value)
    assert str(tmp_path / "masks" / "x.png") in message and words in message


def test_ignore_index_255_is_accepted(tmp_path):
    sample = label_folder(tmp_path, Image.fromarray(_ids(255)))[0]
    assert int(sample["mask"][2, 3]) == 255 and int(sample["mask"].max()) == 255


# ---- dataset layouts -----------------------------------------------------------------------------------


def _two_image_folder(root: Path) -> None:
    for stem in ("a", "b"):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "depth").mkdir(exist_ok=True)
        Image.fromarray(rgb(H, W)).save(root / "images" / f"{stem}.png")
        np.save(root / "depth" / f"{stem}.npy", np.ones((H, W), np.float32))


def _layout(arrange):
    def make(root: Path) -> Path:
        _two_image_folder(root)
        arrange(root)
        return root

    return make


DATASET_ERRORS = {
    "missing_root": (lambda r: r / "nowhere", "does not exist or is not a folder"),
    "root_is_a_file": (lambda r: (r / "f").write_text("") or r / "f", "does not exist or is not a folder"),
    "no_images_folder": (lambda r: r, "has no images"),
    "empty_images_folder": (
        _layout(lambda r: [p.unlink() for p in (r / "images").iterdir()]),
        "holds no images",
    ),
    "empty_split_file": (
        _layout(lambda r: (r / "train.txt").write_text("\n") or (r / "val.txt").write_text("a\n")),
        "the train split is empty",
    ),
    "split_names_missing_file": (
        _layout(lambda r: (r / "train.txt").write_text("a\nghost\n") or (r / "val.txt").write_text("a\n")),
        "names 1 stems with no image",
    ),
    "duplicate_stems": (
        _layout(lambda r: Image.fromarray(rgb(H, W)).save(r / "images" / "a.jpg")),
        "two images with stem 'a'",
    ),
    "missing_target": (_layout(lambda r: (r / "depth" / "b.npy").unlink()), "have no depth file"),
    "png_and_npy_for_one_stem": (
        _layout(lambda r: Image.fromarray(np.ones((H, W), np.uint16)).save(r / "depth" / "a.png")),
        "has both a.png and a.npy",
    ),
}


@pytest.mark.parametrize("case", DATASET_ERRORS)
def test_bad_dataset_layout_is_refused_at_construction(tmp_path, case):
    arrange, words = DATASET_ERRORS[case]
    root = arrange(tmp_path)
    with pytest.raises(DatasetError) as error:
        FolderDataset(root, "train")
    message = one_line(error.value)
    assert words in message and (
        "expected" in message or "add" in message or "keep" in message or str(root) in message
    )


def test_file_list_naming_missing_files(tmp_path):
    """BTS-style lists (NYU / KITTI file lists) naming files that are not there."""
    from dense.data.filelist import read_pair_list

    (tmp_path / "rgb").mkdir()
    Image.fromarray(rgb(H, W)).save(tmp_path / "rgb" / "a.png")
    listing = tmp_path / "list.txt"
    listing.write_text("a.png a_depth.png 518.8\n")
    with pytest.raises(DatasetError) as error:
        read_pair_list(listing, tmp_path / "rgb", tmp_path / "gt")
    message = one_line(error.value)
    assert "names 1 files that do not exist" in message and "a_depth.png" in message


def test_empty_synthetic_split_and_nyu_missing_root(tmp_path):
    from dense.data import DenseDataModule

    with pytest.raises(DatasetError) as error:
        DenseDataModule(name="nyu", root=str(tmp_path / "nyu_missing")).dataset("train")
    assert "nyu_missing" in one_line(error.value)
    with pytest.raises(DatasetError) as error:
        DenseDataModule(name="synthetic", num_train=0).dataset("train")
    one_line(error.value)
