"""NYU-Depth v2 (official .mat and BTS file lists) and KITTI Eigen, read back from tiny fixtures."""

import numpy as np
import pytest
import torch

from dense.data import DatasetError, DenseDataModule, DepthScaleWarning, KITTIEigen, NYUDepthV2
from dense.data.transforms import denormalize_image
from tests._fixtures_data import write_kitti, write_nyu_filelist, write_nyu_mat


@pytest.fixture(scope="module")
def nyu_mat(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyu_mat")
    images, depths = write_nyu_mat(root)
    return root, images, depths


@pytest.fixture(scope="module")
def nyu_list(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyu_list")
    return root, write_nyu_filelist(root)


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti")
    return root, write_kitti(root)


# --------------------------------------------------------------------------- NYU .mat


def test_nyu_mat_axis_order_split_and_values(nyu_mat):
    root, images, depths = nyu_mat
    train, test = NYUDepthV2(root, "train"), NYUDepthV2(root, "test")
    assert train.layout == "mat" and len(train) == 3 and len(test) == 1
    s = test[0]  # testNdxs = [3] (1-based) → the third image
    assert s["name"] == "0003"
    assert s["image"].shape == (3, 480, 640) and s["depth"].shape == (1, 480, 640)
    assert np.array_equal(denormalize_image(s["image"]), images[2])
    assert np.array_equal(s["depth"][0].numpy(), depths[2])
    assert [train[i]["name"] for i in range(3)] == ["0001", "0002", "0004"]


def test_nyu_train_recipe_shapes_and_nearest_depth(nyu_mat):
    root, _, depths = nyu_mat
    ds = NYUDepthV2(root, "train", augment=True, seed=0)
    s = ds[0]
    assert s["image"].shape == (3, 416, 544) and s["depth"].shape == (1, 416, 544)
    d = s["depth"][0].numpy()
    assert np.isin(d[d > 0], depths[0]).all()  # cropped/rotated/flipped, never interpolated


def test_nyu_mat_without_splits_names_the_file(tmp_path):
    write_nyu_mat(tmp_path, n=2, train=(1,), test=(2,), with_splits=False)
    with pytest.raises(DatasetError, match="splits.mat"):
        NYUDepthV2(tmp_path, "train")


def test_nyu_split_beyond_the_mat_is_an_error(tmp_path):
    write_nyu_mat(tmp_path, n=2, train=(1, 5), test=(2,))
    with pytest.raises(DatasetError, match="do not belong together"):
        NYUDepthV2(tmp_path, "train")


# --------------------------------------------------------------------------- NYU file lists


def test_nyu_filelist_depth_in_metres(nyu_list):
    root, truth = nyu_list
    ds = NYUDepthV2(root, "val")
    assert ds.layout == "filelist" and len(ds) == 2
    s = ds[1]
    assert s["name"] == "bathroom/rgb_00001"
    assert np.array_equal(s["depth"][0].numpy(), truth["bathroom/rgb_00001"])
    assert s["depth"][0, :10, :10].eq(0).all()  # holes stay 0
    assert 0.4 < s["depth"].max() < 9.1


def test_nyu_filelist_missing_file(tmp_path):
    write_nyu_filelist(tmp_path, n_train=2, n_test=1)
    (tmp_path / "kitchen_0001a" / "sync_depth_00001.png").unlink()
    with pytest.raises(
        DatasetError, match=r"nyu_train\.txt names 1 files that do not exist.*sync_depth_00001"
    ):
        NYUDepthV2(tmp_path, "train")


def test_nyu_png_holding_metres_warns(tmp_path):
    write_nyu_filelist(tmp_path, n_train=1, n_test=1, metres_in_png=True)
    with pytest.warns(DepthScaleWarning, match="looks stored in metres"):
        NYUDepthV2(tmp_path, "val")[0]


def test_nyu_missing_root_and_empty_root(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        NYUDepthV2(tmp_path / "nope", "train")
    with pytest.raises(DatasetError, match="nyu_depth_v2_labeled.mat"):
        NYUDepthV2(tmp_path, "train")


def test_nyu_through_the_datamodule(nyu_list):
    root, _ = nyu_list
    dm = DenseDataModule(name="nyu", root=str(root), batch_size=2, seed=0)
    assert (dm.task, dm.eval_crop, dm.max_depth, dm.num_classes) == ("depth", "eigen", 10.0, 0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 416, 544) and batch["depth"].shape == (2, 1, 416, 544)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (2, 3, 480, 640) and val["name"] == [
        "bathroom/rgb_00000",
        "bathroom/rgb_00001",
    ]


# --------------------------------------------------------------------------- KITTI


def test_kitti_eval_is_the_kb_crop_and_skips_none(kitti):
    root, truth = kitti
    ds = KITTIEigen(root, "test")
    assert len(ds) == 2 and ds.skipped == 1
    s = ds[0]
    image, depth = truth[s["name"]]
    top, left = 375 - 352, (1242 - 1216) // 2
    assert s["image"].shape == (3, 352, 1216)
    assert np.array_equal(denormalize_image(s["image"]), image[top:, left : left + 1216])
    assert np.array_equal(s["depth"][0].numpy(), depth[top:, left : left + 1216])
    assert s["depth"].max() > 10  # /256 gives metres up to ~70


def test_kitti_train_crop_and_datamodule(kitti):
    root, _ = kitti
    dm = DenseDataModule(name="kitti", root=str(root), batch_size=2)
    assert (dm.eval_crop, dm.max_depth) == ("garg", 80.0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 352, 704) and batch["depth"].shape == (2, 1, 352, 704)
    assert torch.isfinite(batch["depth"]).all() and (batch["depth"] >= 0).all()


def test_kitti_missing_image_folder(tmp_path):
    write_kitti(tmp_path, n_train=1, n_test=1)
    (tmp_path / "input").rename(tmp_path / "rgb")
    with pytest.raises(DatasetError, match="KITTI image folder .*input does not exist"):
        KITTIEigen(tmp_path, "train")


def test_kitti_small_image_fails_naming_the_file(tmp_path):
    write_kitti(tmp_path, n_train=1, n_test=1, h=300, w=1000)
    with pytest.raises(DatasetError, match=r"0000000100\.png: the augmentation recipe failed"):
        KITTIEigen(tmp_path, "test")[0]
