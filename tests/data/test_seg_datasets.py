"""ADE20K and Pascal VOC read back from tiny fixtures: label encodings, recipes, padding, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from dense.core.constants import MEAN_FILL
from dense.core.ops import imagenet_normalised
from dense.data import ADE20K, ADE20K_CLASSES, VOC_CLASSES, DatasetError, DenseDataModule, PascalVOC
from dense.data.ade20k import reduce_zero_label
from tests._fixtures_data import write_ade20k, write_voc

SMALL = {"crop_size": 48, "short_side": 40}  # the mmseg recipe at toy scale, to keep tests fast


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    return root, write_ade20k(root)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    return root, write_voc(root, with_aug=True)


def test_reduce_zero_label_mapping():
    labels = np.array([[0, 1, 2], [150, 37, 0]], np.uint8)
    assert reduce_zero_label(labels).tolist() == [[255, 0, 1], [149, 36, 255]]


def test_ade20k_labels_and_names(ade):
    root, truth = ade
    assert len(ADE20K_CLASSES) == 150 and ADE20K_CLASSES[:3] == ("wall", "building", "sky")
    ds = ADE20K(root, "val", eval_short_side=None)  # original size: compare label by label
    assert len(ds) == 2
    s = ds[0]
    assert s["mask"].dtype == torch.uint8  # the smallest exact dtype: 150 classes and 255
    assert np.array_equal(s["mask"].numpy(), reduce_zero_label(truth[s["name"]]))
    assert (s["mask"] == 255).any() and s["mask"][s["mask"] != 255].max() < 150


def test_ade20k_eval_keeps_the_original_annotation(ade):
    root, truth = ade
    s = ADE20K(root, "val")[0]  # eval_short_side 512: the views are made by the task, not here
    assert s["image"].shape == (3, 40, 70)
    assert np.array_equal(s["mask"].numpy(), reduce_zero_label(truth[s["name"]]))
    assert ADE20K.describe(root).eval_scale == (2048, 512)
    assert ADE20K.describe(root, eval_short_side=None).eval_scale is None
    # An un-augmented train split (the feature cache reads it) is still resized to short side 512.
    unaugmented = ADE20K(root, "train")[0]
    assert unaugmented["image"].shape[1] == 512 and unaugmented["mask"].shape[0] == 512


def test_ade20k_train_recipe_pads_with_ignore(ade):
    root, _ = ade
    ds = ADE20K(root, "train", augment=True, seed=0, crop_size=96, short_side=40, ratio_range=(1, 1))
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 96, 96) and s["mask"].shape == (96, 96)
        # images are ≤ 40×72 after the rescale: everything below/right of them is padding
        assert (s["mask"][56:] == 255).all() and (s["mask"][:, 80:] == 255).all()
        padding = s["image"][:, 60:, 90:]
        assert (padding == torch.tensor(MEAN_FILL, dtype=torch.uint8)[:, None, None]).all()  # the mean colour
        assert imagenet_normalised(padding[None]).abs().max() < 0.03  # ≈ 0 once normalised


def test_ade20k_missing_annotation_and_bad_labels(tmp_path):
    write_ade20k(tmp_path)
    ann = tmp_path / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_valid_00000001.png"
    Image.fromarray(np.full((56, 42), 200, np.uint8)).save(ann)
    with pytest.raises(
        DatasetError, match=r"ADE_valid_00000001\.png: label values \[199\] are outside \[0, 150\)"
    ):
        ADE20K(tmp_path, "val")[1]
    ann.unlink()
    with pytest.raises(DatasetError, match="1 of 2 images .* have no annotation"):
        ADE20K(tmp_path, "val")


def test_ade20k_label_size_mismatch(tmp_path):
    write_ade20k(tmp_path)
    ann = tmp_path / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000000.png"
    Image.fromarray(np.ones((10, 10), np.uint8)).save(ann)
    with pytest.raises(DatasetError, match="label map is 10×10 but the image is 60×80"):
        ADE20K(tmp_path, "train")[0]


def test_voc_palette_indices_and_border(voc):
    root, truth = voc
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"
    ds = PascalVOC(root, "val", eval_short_side=None)
    s = ds[0]
    assert s["name"] == "2007_000063"
    assert np.array_equal(s["mask"].numpy(), truth["2007_000063"])  # palette indices, 255 border kept
    assert (s["mask"][25] == 255).all()


def test_voc_aug_labels_and_split_errors(voc, tmp_path):
    root, _ = voc
    assert len(PascalVOC(root, "train", use_aug=True)) == 2
    write_voc(tmp_path)
    with pytest.raises(DatasetError, match="train_aug.txt"):
        PascalVOC(tmp_path, "train", use_aug=True)
    (tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DatasetError, match=r"val\.txt is missing"):
        PascalVOC(tmp_path, "val")


def test_voc_rgb_colour_mask_is_refused(tmp_path):
    write_voc(tmp_path)
    label = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000032.png"
    Image.open(label).convert("RGB").save(label)
    with pytest.raises(DatasetError, match="is a RGB image; expected a single-channel PNG"):
        PascalVOC(tmp_path, "train")[0]


def test_voc_corrupt_image(tmp_path):
    write_voc(tmp_path)
    (tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2007_000039.jpg").write_bytes(
        b"\xff\xd8 not a jpeg"
    )
    with pytest.raises(DatasetError, match=r"cannot read image .*2007_000039\.jpg"):
        PascalVOC(tmp_path, "train")[1]


def test_seg_datamodule_batches_and_pad_collate(ade):
    root, _ = ade
    dm = DenseDataModule(name="ade20k", root=str(root), batch_size=2, val_batch_size=2, **SMALL)
    assert (dm.task, dm.num_classes, dm.ignore_index, dm.eval_crop) == ("segmentation", 150, 255, None)
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (2, 3, 48, 48) and train["mask"].shape == (2, 48, 48)
    val = next(iter(dm.val_dataloader()))  # the originals, 40×70 and 56×42: padded to one size
    assert val["image"].shape == (2, 3, 56, 70) and val["image_size"].tolist() == [[40, 70], [56, 42]]
    assert (val["mask"][0, 40:] == 255).all() and (val["mask"][1, :, 42:] == 255).all()
    assert dm.eval_scale == (2048, 512)
