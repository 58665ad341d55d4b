"""The image-folder dataset: depth as 16-bit PNG (mm) or .npy (m), masks, splits, and every error case."""

import numpy as np
import pytest
from PIL import Image

from dense.data import DatasetError, DenseDataModule, DepthScaleWarning, FolderDataset
from dense.data.folder import hash_split
from tests._fixtures_data import write_folder


def test_png_mm_and_npy_metres(tmp_path):
    truth = write_folder(tmp_path, stems=("a", "b"), npy=("b",))
    (tmp_path / "train.txt").write_text("a\nb\n")
    (tmp_path / "val.txt").write_text("b\n")
    ds = FolderDataset(tmp_path, "train")
    a, b = ds[0], ds[1]
    assert (a["name"], b["name"]) == ("a", "b")
    assert np.array_equal(a["depth"][0].numpy(), truth["a"])  # PNG / 1000
    assert np.array_equal(b["depth"][0].numpy(), truth["b"])  # .npy as is
    assert len(FolderDataset(tmp_path, "val")) == 1 and len(FolderDataset(tmp_path, "test")) == 1


def test_hash_split_is_deterministic_and_stable():
    stems = [f"img{i:03d}" for i in range(200)]
    split = hash_split(stems, 0.1)
    assert split == hash_split(list(stems), 0.1)
    assert 8 <= len(split["val"]) <= 35 and set(split["val"]).isdisjoint(split["train"])
    assert set(hash_split(stems + ["new"], 0.1)["val"]) - {"new"} == set(split["val"])  # adding moves nothing
    assert len(hash_split(["x", "y"], 0.1)["val"]) == 1  # val never empty when possible


def test_segmentation_folder_with_classes_file(tmp_path):
    truth = write_folder(tmp_path, task="segmentation", num_classes=5)
    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\ntree\nperson\n")
    dm = DenseDataModule(
        name="folder", root=str(tmp_path), task="segmentation", batch_size=2, eval_short_side=None
    )
    assert dm.num_classes == 5 and dm.class_names[0] == "sky"
    val = dm.dataset("val")
    s = val[0]
    assert np.array_equal(s["mask"].numpy(), truth[s["name"]])


def test_segmentation_folder_needs_classes(tmp_path):
    write_folder(tmp_path, task="segmentation")
    with pytest.raises(DatasetError, match="num_classes, data.class_names or <root>/classes.txt"):
        DenseDataModule(name="folder", root=str(tmp_path), task="segmentation")
    ds = FolderDataset(tmp_path, "train", task="segmentation", num_classes=3)  # labels go up to 4
    with pytest.raises(DatasetError, match=r"label values \[3, 4\] are outside \[0, 3\)"):
        [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (
            lambda r: np.save(r / "depth" / "b.npy", np.full((40, 52), np.nan, np.float32)),
            r"b\.npy: depth has 2080 NaN/inf",
        ),
        (
            lambda r: np.save(r / "depth" / "b.npy", -np.ones((40, 52), np.float32)),
            r"b\.npy: depth has negative values",
        ),
        (
            lambda r: np.save(r / "depth" / "b.npy", np.ones((20, 52), np.float32)),
            r"b\.npy: depth is 20×52 but the image is 40×52",
        ),
        (lambda r: (r / "images" / "b.png").write_bytes(b"not a png"), r"cannot read image .*b\.png"),
        (lambda r: (r / "depth" / "b.npy").write_bytes(b"garbage"), r"cannot read depth .*b\.npy"),
    ],
)
def test_bad_file_content_fails_at_read_naming_the_file(tmp_path, corrupt, match):
    write_folder(tmp_path, stems=("a", "b"), npy=("b",))
    (tmp_path / "train.txt").write_text("a\nb\n")
    (tmp_path / "val.txt").write_text("a\n")
    corrupt(tmp_path)
    ds = FolderDataset(tmp_path, "train")
    ds[0]
    with pytest.raises(DatasetError, match=match):
        ds[1]


@pytest.mark.parametrize(
    ("arrange", "match"),
    [
        (lambda r: (r / "depth" / "c.png").unlink(), r"1 images have no depth file .* e\.g\. 'c'"),
        (lambda r: (r / "images" / "a.jpg").write_bytes(b""), r"two images with stem 'a'"),
        (
            lambda r: (r / "train.txt").write_text("a\nzzz\n"),
            r"train\.txt names 1 stems with no image .*'zzz'",
        ),
        (lambda r: (r / "val.txt").write_text("a\n"), r"train\.txt is missing"),
        (lambda r: (r / "train.txt").write_text("\n"), r"the train split is empty"),
        (lambda r: __import__("shutil").rmtree(r / "depth"), r"depth does not exist"),
    ],
)
def test_layout_problems_fail_at_construction(tmp_path, arrange, match):
    write_folder(tmp_path)
    arrange(tmp_path)
    with pytest.raises(DatasetError, match=match):
        FolderDataset(tmp_path, "train")


def test_missing_root_fails_in_the_datamodule(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        DenseDataModule(name="folder", root=str(tmp_path / "missing"))


def test_npy_in_millimetres_warns(tmp_path):
    write_folder(tmp_path, stems=("a",), npy=("a",))
    np.save(tmp_path / "depth" / "a.npy", np.full((40, 52), 2500.0, np.float32))
    (tmp_path / "train.txt").write_text("a\n")
    with pytest.warns(DepthScaleWarning, match="looks stored in millimetres"):
        FolderDataset(tmp_path, "train")[0]


def test_depth_crop_pads_with_no_depth(tmp_path):
    write_folder(tmp_path, stems=("a", "b"), npy=())
    Image.new("RGB", (52, 40)).save(tmp_path / "images" / "a.png")
    ds = FolderDataset(tmp_path, "train", augment=True, crop_size=(64, 64), val_fraction=0.0, seed=0)
    s = ds[0]
    assert (
        s["depth"].shape == (1, 64, 64)
        and (s["depth"][0, 40:] == 0).all()
        and (s["depth"][0, :, 52:] == 0).all()
    )
