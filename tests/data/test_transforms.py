"""The augmentation building blocks: joint geometry, padding values, normalisation, custom transforms."""

import albumentations as A
import numpy as np
import pytest
import torch

from dense.data.transforms import (
    IGNORE_INDEX,
    BottomCenterCrop,
    CatMaxRatioCrop,
    GammaBrightnessColor,
    RescaleShortSide,
    compose,
    denormalize_image,
    depth_train,
    kitti_train,
    normalize_image,
    nyu_train,
    seg_train,
    to_sample,
)
from tests._fixtures_data import pattern_image, ramp_depth


def test_normalize_matches_imagenet_formula_and_inverts():
    image = pattern_image(30, 40, seed=3)
    expected = (
        torch.from_numpy(image).permute(2, 0, 1).float() / 255
        - torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    ) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    out = normalize_image(image)
    assert out.dtype == torch.float32 and out.shape == (3, 30, 40)
    assert torch.allclose(out, expected, atol=1e-6)
    assert np.array_equal(denormalize_image(out), image)


def test_flip_moves_image_depth_and_mask_together():
    image, depth = pattern_image(20, 30), ramp_depth(20, 30)
    mask = (np.arange(30)[None].repeat(20, 0) % 7).astype(np.uint8)
    s = to_sample(compose([A.HorizontalFlip(p=1.0)]), image, depth, mask)
    assert np.array_equal(denormalize_image(s["image"]), image[:, ::-1])
    assert np.array_equal(s["depth"][0].numpy(), depth[:, ::-1])
    assert np.array_equal(s["mask"].numpy(), mask[:, ::-1])


def test_padding_gives_depth_zero_and_mask_ignore_in_one_pipeline():
    # The fill_mask trap: one pipeline carrying both targets must still pad depth 0 and labels 255.
    image = pattern_image(10, 12)
    depth = np.full((10, 12), 5.0, np.float32)
    mask = np.full((10, 12), 3, np.uint8)
    pad = A.PadIfNeeded(16, 20, position="top_left", border_mode=0, fill=0, fill_mask=0)
    s = to_sample(compose([pad]), image, depth, mask)
    d, m = s["depth"][0].numpy(), s["mask"].numpy()
    assert d.shape == m.shape == (16, 20)
    assert (d[:10, :12] == 5.0).all() and (d[10:] == 0).all() and (d[:, 12:] == 0).all()
    assert (m[:10, :12] == 3).all() and (m[10:] == IGNORE_INDEX).all() and (m[:, 12:] == IGNORE_INDEX).all()
    assert s["mask"].dtype == torch.uint8 and s["depth"].dtype == torch.float32  # smallest exact dtypes


def test_rotation_corners_are_invalid_not_zero_class():
    image = pattern_image(60, 60)
    mask = np.zeros((60, 60), np.uint8)  # class 0 everywhere: a 0 fill must not pass for class 0
    depth = np.full((60, 60), 2.0, np.float32)
    rot = A.Rotate(limit=(30, 30), border_mode=0, fill=0, fill_mask=0, p=1.0)
    s = to_sample(compose([rot]), image, depth, mask)
    m, d = s["mask"].numpy(), s["depth"][0].numpy()
    assert m[0, 0] == IGNORE_INDEX and d[0, 0] == 0
    assert m[30, 30] == 0 and d[30, 30] == 2.0
    assert np.array_equal(m == IGNORE_INDEX, d == 0)


def test_bottom_center_crop_is_the_kb_crop():
    image = pattern_image(375, 1242)
    out = compose([BottomCenterCrop(352, 1216)])(image=image)["image"]
    assert np.array_equal(out, image[375 - 352 :, 13 : 13 + 1216])


@pytest.mark.parametrize(
    ("shape", "ratio", "expected"),
    [((100, 200), 1.0, (512, 1024)), ((300, 150), 0.5, (512, 256)), ((100, 1000), 1.0, (205, 2048))],
)
def test_rescale_short_side_follows_mmseg_keep_ratio(shape, ratio, expected):
    t = compose([RescaleShortSide(512, 2048, (ratio, ratio))])
    out = t(image=np.zeros((*shape, 3), np.uint8), mask=np.zeros(shape, np.uint8))
    assert out["image"].shape[:2] == expected and out["mask"].shape == expected


def test_cat_max_ratio_prefers_crops_with_several_classes():
    mask = np.zeros((100, 100), np.uint8)
    mask[:, 80:] = 1  # only crops reaching x ≥ 80 hold two classes (uniform chance: 35 %)
    t = compose([CatMaxRatioCrop(40, 40, cat_max_ratio=0.75)], seed=0)
    mixed = sum(
        len(np.unique(t(image=np.zeros((100, 100, 3), np.uint8), mask=mask)["mask"])) > 1 for _ in range(40)
    )
    assert mixed >= 30


def test_gamma_brightness_color_identity_and_range():
    image = pattern_image(200, 200)
    identity = GammaBrightnessColor((1, 1), (1, 1), (1, 1), p=1.0)
    assert np.array_equal(compose([identity])(image=image)["image"], image)
    bright = compose([GammaBrightnessColor((1, 1), (2, 2), (1, 1), p=1.0)])(image=image)["image"]
    assert bright.dtype == np.uint8
    assert np.array_equal(bright, np.clip(image.astype(int) * 2, 0, 255))  # ×2 brightness, clipped


def test_compose_seed_makes_augmentation_reproducible():
    image, depth = pattern_image(480, 640), ramp_depth(480, 640)
    a = to_sample(compose(nyu_train(), seed=7), image, depth)
    b = to_sample(compose(nyu_train(), seed=7), image, depth)
    c = to_sample(compose(nyu_train(), seed=8), image, depth)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["depth"], b["depth"])
    assert not torch.equal(a["image"], c["image"])


def test_depth_recipes_use_nearest_values_only():
    # depth must never be interpolated: every output value is an input value or 0 (invalid)
    depth = ramp_depth(375, 1242)
    t = compose(kitti_train(), seed=1)
    for _ in range(3):
        out = to_sample(t, pattern_image(375, 1242), depth)["depth"][0].numpy()
        assert out.shape == (352, 704)
        assert np.isin(out[out > 0], depth).all()


def test_seg_and_depth_train_pad_small_images():
    image, mask = pattern_image(20, 30), np.ones((20, 30), np.uint8)
    seg = to_sample(compose(seg_train(64, short_side=20, ratio_range=(1, 1))), image, mask=mask)
    assert seg["image"].shape == (3, 64, 64)
    assert (seg["mask"][20:] == IGNORE_INDEX).all() and (seg["mask"][:20, :30] == 1).all()
    dep = to_sample(compose(depth_train((32, 40))), image, depth=np.ones((20, 30), np.float32))
    assert dep["depth"].shape == (1, 32, 40) and (dep["depth"][0, 20:] == 0).all()
