"""Upstream's training protocol, exactly (issue 13, §3–§6): where the depth clamp is, what the losses
see, mmseg's PhotoMetricDistortion and Resize, the toolbox's ColorAug and GradientLoss, and three
dataset layouts. Every expected value comes from a reference written here from upstream's code
(paths in each reference's docstring), never from our own functions."""

from __future__ import annotations

import colorsys
import random
import shutil

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dense
from dense.cache import forward_cached
from dense.core.errors import BadInputError, DatasetError
from dense.data import DenseDataModule
from dense.data.kitti import KITTIEigen
from dense.data.nyu import NYUDepthV2
from dense.data.transforms import (
    GammaBrightnessColor,
    PhotoMetricDistortion,
    RecipeError,
    RescaleShortSide,
    compose,
    depth_train,
    kitti_train,
    nyu_train,
    photometric_distortion,
)
from dense.data.voc import PascalVOC
from dense.tasks import build_task
from dense.tasks.losses import DepthLoss, GradientLoss
from tests._fixtures_data import write_kitti, write_nyu_mat, write_voc
from tests._tiny_run import compose_config

pytestmark = pytest.mark.fidelity  # the fidelity audit: `python -m pytest -m fidelity`

# ==================================================================================================
# §3  Training sees the raw depth; only inference clamps
# ==================================================================================================


def overshooting_dpt(max_depth: float = 2.0):
    """A DPT model whose head answers ~5 m everywhere (its last bias set to 5): above max_depth."""
    torch.manual_seed(0)
    model = dense.build_model("tiny14", "depth_dpt", min_depth=0.001, max_depth=max_depth)
    with torch.no_grad():
        last = model.head.conv_depth.head[-1]
        last.weight.mul_(1e-3)
        last.bias.fill_(5.0)
    return model


def test_training_forward_returns_the_raw_depth_and_its_gradient():
    model = overshooting_dpt().train()
    images = torch.randn(2, 3, 28, 42)
    out = model(images)
    assert out.min() > model.max_depth  # not clamped
    out.mean().backward()
    # A clamped output would pass no gradient back (every pixel is above max_depth).
    bias_grad = model.head.conv_depth.head[-1].bias.grad
    assert bias_grad is not None and float(bias_grad.abs().sum()) > 0


def test_eval_and_no_grad_calls_clamp_as_upstreams_encode_decode():
    """dinov2/eval/depth/models/depther/encoder_decoder.py, encode_decode: the head output is
    clamped to [min_depth, max_depth], then resized to the image: written here as clamp → resize."""
    model = overshooting_dpt().train()
    images = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        raw = model.head(model.extract_features(images))
        reference = F.interpolate(raw.clamp(0.001, 2.0), size=(28, 42), mode="bilinear", align_corners=False)
        in_train_mode = model(images)  # no grad: inference, even in train mode
    torch.testing.assert_close(in_train_mode, reference)
    model.eval()
    torch.testing.assert_close(model(images), reference)  # eval mode
    assert float(model.predict(images).max()) <= 2.0 * (1 + 1e-6)


def test_the_cached_feature_path_follows_the_same_rule():
    model = overshooting_dpt().train()
    images = torch.randn(2, 3, 28, 28)
    features = model.extract_features(images)
    batch = {"patches": torch.stack(features.patches, 1), "cls": torch.stack(features.cls_tokens, 1)}
    trained = forward_cached(model, batch, (28, 28))
    assert trained.min() > model.max_depth and trained.requires_grad
    bound = model.max_depth * (1 + 1e-6)  # the bilinear resize after the clamp rounds in float32
    with torch.no_grad():
        assert forward_cached(model, batch, (28, 28)).max() <= bound
    model.eval()
    assert forward_cached(model, batch, (28, 28)).max() <= bound


def toolbox_sigloss(pred: np.ndarray, gt: np.ndarray) -> float:
    """depth/models/losses/sigloss.py (and dinov2/eval/depth/models/losses/sigloss.py), as the DINOv2
    configs build it: SigLoss(valid_mask=True, loss_weight=1.0, warm_up=True) with no max_depth, so
    the mask is gt > 0 alone. After the warm-up: sqrt(var(g) + 0.15·mean(g)²), unbiased variance."""
    keep = gt > 0
    g = np.log(pred[keep] + 1e-3) - np.log(gt[keep] + 1e-3)
    return float(np.sqrt(np.var(g, ddof=1) + 0.15 * np.mean(g) ** 2))


def test_the_task_losses_get_upstreams_max_depth_none():
    datamodule = DenseDataModule(name="synthetic", num_train=2, num_val=2, num_test=2, image_size=[28, 28])
    task = build_task(dense.build_model("tiny14", "depth_linear"), datamodule, depth_loss={"warm_up": False})
    assert task.loss.sig.max_depth is None and task.loss.grad.max_depth is None
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 1, 12, 14, generator=gen, dtype=torch.float64) * 20  # half beyond the 10 m range
    gt[:, :, :3] = 0  # no measurement
    pred = torch.rand(2, 1, 12, 14, generator=gen, dtype=torch.float64) * 10 + 0.5
    expected = toolbox_sigloss(pred.numpy(), gt.numpy())
    assert float(task.loss.sig(pred, gt)) == pytest.approx(expected, rel=1e-10)
    # A cut-off is still one option away.
    capped = build_task(
        dense.build_model("tiny14", "depth_linear"), datamodule, depth_loss={"max_depth": 10.0}
    )
    assert capped.loss.sig.max_depth == 10.0


# ==================================================================================================
# §4  mmseg's PhotoMetricDistortion and Resize
# ==================================================================================================


def mmseg_photometric_bgr(img, brightness, mode, contrast, saturation, hue):
    """mmseg/datasets/pipelines/transforms.py PhotoMetricDistortion.__call__ on a uint8 BGR image with
    its random draws given (None = that step's coin said no; mode 1 = contrast first)."""

    def convert(x, alpha=1, beta=0):
        x = x.astype(np.float32) * alpha + beta
        return np.clip(x, 0, 255).astype(np.uint8)

    if brightness is not None:
        img = convert(img, beta=brightness)
    if mode == 1 and contrast is not None:
        img = convert(img, alpha=contrast)
    if saturation is not None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)  # mmcv.bgr2hsv
        img[:, :, 1] = convert(img[:, :, 1], alpha=saturation)
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if hue is not None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        img[:, :, 0] = (img[:, :, 0].astype(int) + hue) % 180
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if mode == 0 and contrast is not None:
        img = convert(img, alpha=contrast)
    return img


STEPS = [
    {"brightness": 23.7},
    {"brightness": -31.2},
    {"contrast": 1.43, "mode": 0},
    {"contrast": 0.61, "mode": 1},
    {"saturation": 0.5},
    {"saturation": 1.5},
    {"hue": -18},
    {"hue": 17},
    {"hue": 5},
    {"brightness": 12.5, "mode": 0, "contrast": 1.3, "saturation": 0.7, "hue": -9},
    {"brightness": -20.0, "mode": 1, "contrast": 0.55, "saturation": 1.4, "hue": 11},
]


@pytest.mark.parametrize("step", STEPS)
def test_photometric_distortion_matches_mmseg_pixel_for_pixel(step):
    draws = {"brightness": None, "mode": 0, "contrast": None, "saturation": None, "hue": None, **step}
    ours = PhotoMetricDistortion()
    for seed in range(3):
        rgb = np.random.default_rng(seed).integers(0, 256, (24, 30, 3), dtype=np.uint8)
        expected = mmseg_photometric_bgr(rgb[..., ::-1].copy(), **draws)[..., ::-1]
        params = {k: v for k, v in draws.items() if k != "mode"}
        out = ours.apply(rgb, contrast_first=draws["mode"] == 1, **params)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, expected)


def test_saturation_multiplies_hsv_s_unlike_colorjitter():
    """colorsys (float HSV) as an independent reference of "S × 0.5": ours stays within the uint8
    HSV round trip of it (3 levels); albumentations' ColorJitter, the old recipe, blends with the
    grey image and misses by ~100 levels and changes V (the max channel)."""
    import albumentations as A

    rgb = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)

    def colorsys_saturation(pixel, factor):
        h, s, v = colorsys.rgb_to_hsv(*(pixel / 255.0))
        return np.array(colorsys.hsv_to_rgb(h, min(s * factor, 1.0), v)) * 255

    reference = np.array([[colorsys_saturation(p, 0.5) for p in row] for row in rgb])
    ours = PhotoMetricDistortion().apply(rgb, saturation=0.5).astype(float)
    assert np.abs(ours - reference).max() <= 3.0 + 1e-9
    jitter = A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(0.5, 0.5), hue=0, p=1)
    assert np.abs(jitter(image=rgb)["image"] - reference).max() > 50


def test_hue_shift_is_in_opencv_half_degrees():
    """hue_delta=18 on uint8 images: OpenCV's H is degrees / 2, so +15 turns red (0°) to 30°."""
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    expected = np.array(colorsys.hsv_to_rgb(30 / 360, 1.0, 1.0)) * 255  # (255, 127.5, 0)
    assert np.abs(PhotoMetricDistortion().apply(red, hue=15)[0, 0] - expected).max() <= 0.5


def test_photometric_draws_have_mmsegs_structure():
    """brightness uniform(-32, 32), contrast/saturation uniform(0.5, 1.5), hue numpy randint(-18, 18)
    = -18…17, mode and every step's coin with probability 0.5 (randint(2))."""
    t = PhotoMetricDistortion()
    t.set_random_seed(0)
    draws = [t.get_params() for _ in range(4000)]
    for key in ("brightness", "contrast", "saturation", "hue"):
        on = sum(d[key] is not None for d in draws)
        assert abs(on - 2000) < 4 * np.sqrt(1000), key  # 4 sigma
    assert abs(sum(d["contrast_first"] for d in draws) - 2000) < 4 * np.sqrt(1000)
    assert {d["hue"] for d in draws if d["hue"] is not None} == set(range(-18, 18))
    assert all(-32 <= d["brightness"] <= 32 for d in draws if d["brightness"] is not None)
    for key in ("contrast", "saturation"):
        assert all(0.5 <= d[key] <= 1.5 for d in draws if d[key] is not None)
    assert [type(t) for t in photometric_distortion()] == [PhotoMetricDistortion]


def test_the_pipeline_applies_the_drawn_parameters(monkeypatch):
    drawn = []
    original = PhotoMetricDistortion.get_params

    def recording(self):
        drawn.append(original(self))
        return drawn[-1]

    monkeypatch.setattr(PhotoMetricDistortion, "get_params", recording)
    pipeline = compose([PhotoMetricDistortion()], seed=3)
    for seed in range(8):
        rgb = np.random.default_rng(seed).integers(0, 256, (16, 20, 3), dtype=np.uint8)
        out = pipeline(image=rgb)["image"]
        d = drawn[-1]
        mode = 1 if d["contrast_first"] else 0
        expected = mmseg_photometric_bgr(
            rgb[..., ::-1].copy(), d["brightness"], mode, d["contrast"], d["saturation"], d["hue"]
        )[..., ::-1]
        np.testing.assert_array_equal(out, expected)


def mmseg_resize_hw(h: int, w: int, ratio: float, img_scale=(2048, 512)) -> tuple[int, int]:
    """mmseg Resize.random_sample_ratio: scale = int(2048·r), int(512·r); mmcv.rescale_size: factor =
    min(max(scale)/max(h, w), min(scale)/min(h, w)); mmcv._scale_size: int(x·factor + 0.5)."""
    scale = int(img_scale[0] * ratio), int(img_scale[1] * ratio)
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


def test_rescale_follows_mmsegs_size_rule_over_2000_draws():
    t = RescaleShortSide(512, 2048, (0.5, 2.0))
    t.set_random_seed(0)
    sizes = random.Random(1)
    untruncated_differs = 0
    for _ in range(2000):
        h, w = sizes.randint(60, 1600), sizes.randint(60, 1600)
        params = t.get_params_dependent_on_data({"shape": (h, w, 3)}, {})
        r = params["ratio"]
        assert 0.5 <= r <= 2.0
        assert params["size"] == mmseg_resize_hw(h, w, r), (h, w, r)
        # Without the truncation of 2048·r and 512·r the sizes differ often: the test can tell.
        f = min(512 * r / min(h, w), 2048 * r / max(h, w))
        untruncated_differs += (int(h * f + 0.5), int(w * f + 0.5)) != params["size"]
    assert untruncated_differs > 500


def test_rescale_resizes_the_image_to_that_size():
    t = compose([RescaleShortSide(512, 2048, (0.5, 2.0))], seed=5)
    for h, w in ((375, 500), (512, 683)):
        out = t(image=np.zeros((h, w, 3), np.uint8), mask=np.zeros((h, w), np.uint8))
        # the ratio is not visible here; the output must be one mmseg could give for some r in range
        candidates = {mmseg_resize_hw(h, w, r) for r in np.linspace(0.5, 2.0, 20001)}
        assert out["image"].shape[:2] in candidates and out["mask"].shape == out["image"].shape[:2]


# ==================================================================================================
# §5  The toolbox's quirks, reproduced by the paper recipes, corrected one switch away
# ==================================================================================================


def toolbox_color_aug_bgr(img_bgr, gamma, brightness, colors_bgr):
    """depth/datasets/pipelines/transforms.py ColorAug: the uint8 0–255 image ** gamma (numpy makes it
    float64), × brightness, × colors[i] on channel i (BGR), clipped to 0–255."""
    aug = img_bgr**gamma
    aug = aug * brightness
    aug *= np.stack([np.ones(img_bgr.shape[:2]) * colors_bgr[i] for i in range(3)], axis=2)
    return np.clip(aug, 0, 255)


def bts_color_aug_rgb(img, gamma, brightness, colors):
    """BTS augment_image: on the image / 255, ** gamma, × brightness, × colors, clip to 0–1."""
    return np.clip((img / 255.0) ** gamma * brightness * np.asarray(colors), 0, 1) * 255


@pytest.mark.parametrize(("gamma", "brightness"), [(0.9, 1.0), (1.1, 1.0), (0.95, 1.2), (1.07, 0.8)])
def test_color_aug_toolbox_and_bts_forms(gamma, brightness):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    colors = np.array([0.93, 1.04, 1.08], np.float32)
    toolbox = GammaBrightnessColor(form="toolbox").apply(
        rgb, gamma=gamma, brightness=brightness, colors=colors
    )
    expected = toolbox_color_aug_bgr(rgb[..., ::-1], gamma, brightness, colors.astype(np.float64)[::-1])[
        ..., ::-1
    ]
    assert toolbox.dtype == np.uint8 and np.abs(toolbox - expected).max() <= 0.5 + 1e-9  # rounded to uint8
    bts = GammaBrightnessColor(form="bts").apply(rgb, gamma=gamma, brightness=brightness, colors=colors)
    assert np.abs(bts - bts_color_aug_rgb(rgb, gamma, brightness, colors)).max() <= 0.5 + 1e-4
    assert np.abs(toolbox.astype(int) - bts).max() > 20  # the two forms are far apart


def test_toolbox_gamma_caps_an_image_at_147():
    white = np.full((4, 4, 3), 255, np.uint8)
    out = GammaBrightnessColor(form="toolbox").apply(
        white, gamma=0.9, brightness=1.0, colors=np.ones(3, np.float32)
    )
    assert (out == 147).all()  # 255 ** 0.9 = 146.5, rounded


def colour_forms(recipe) -> list[str]:
    return [t.form for t in recipe if isinstance(t, GammaBrightnessColor)]


def test_recipes_choose_the_colour_form(tmp_path):
    assert colour_forms(nyu_train()) == colour_forms(kitti_train()) == ["toolbox"]
    assert colour_forms(nyu_train(color_aug="bts")) == colour_forms(kitti_train(color_aug="bts")) == ["bts"]
    assert colour_forms(depth_train()) == ["bts"]  # synthetic scenes and folders: the form that was meant
    write_nyu_mat(tmp_path / "nyu", n=2, train=(1,), test=(2,))
    assert colour_forms(NYUDepthV2(tmp_path / "nyu", augment=True).transform.transforms) == ["toolbox"]
    bts = NYUDepthV2(tmp_path / "nyu", augment=True, color_aug="bts")
    assert colour_forms(bts.transform.transforms) == ["bts"]
    with pytest.raises(DatasetError, match=r"data.color_aug='gamma' is not one of \('toolbox', 'bts'\)"):
        NYUDepthV2(tmp_path / "nyu", color_aug="gamma")
    with pytest.raises(RecipeError, match="data.color_aug="):
        GammaBrightnessColor(form="0-255")


def toolbox_gradient_loss(pred: torch.Tensor, gt: torch.Tensor, loss_weight: float = 0.5) -> torch.Tensor:
    """dinov2/eval/depth/models/losses/gradientloss.py on the B×1×H×W tensor its decode head passes
    (decode_head.py losses()): the 2-D indexing `[::2i, ::2i]`, `[0:-2, :]`, `[:, 0:-2]` lands on
    the batch and channel axes. valid_mask=True, no max_depth, eps 1e-3."""
    inputs = [pred] + [pred[:: 2 * i, :: 2 * i] for i in range(1, 4)]
    targets = [gt] + [gt[:: 2 * i, :: 2 * i] for i in range(1, 4)]
    total = 0
    for x, t in zip(inputs, targets, strict=True):
        mask = t > 0
        n = torch.sum(mask)
        d = torch.mul(torch.log(x + 1e-3) - torch.log(t + 1e-3), mask)
        v = torch.mul(torch.abs(d[0:-2, :] - d[2:, :]), torch.mul(mask[0:-2, :], mask[2:, :]))
        h = torch.mul(torch.abs(d[:, 0:-2] - d[:, 2:]), torch.mul(mask[:, 0:-2], mask[:, 2:]))
        total += (torch.sum(h) + torch.sum(v)) / n
    return loss_weight * total


def depth_pair(batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    gt = torch.rand(batch, 1, 10, 13, generator=gen, dtype=torch.float64) * 9 + 0.5
    gt[gt < 2.0] = 0  # holes
    pred = torch.rand(batch, 1, 10, 13, generator=gen, dtype=torch.float64) * 9 + 0.5
    return pred, gt


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 7, 13])
def test_gradient_loss_toolbox_form_is_upstreams_batched_computation(batch):
    pred, gt = depth_pair(batch, seed=batch)
    ours = GradientLoss(form="toolbox")(pred, gt)
    expected = toolbox_gradient_loss(pred, gt)
    torch.testing.assert_close(ours, expected.to(ours.dtype), rtol=1e-12, atol=0)
    if batch <= 2:
        assert float(ours) == 0.0  # the recipe's 2 images per GPU: trained without it
    else:
        assert float(ours) > 0


def test_gradient_loss_correct_form_is_upstreams_on_each_image():
    """The per-image form: upstream's function on each H×W map, averaged over the images."""
    pred, gt = depth_pair(3)
    per_image = [toolbox_gradient_loss(pred[i, 0], gt[i, 0]) for i in range(3)]
    expected = sum(per_image) / 3
    torch.testing.assert_close(GradientLoss(form="correct")(pred, gt), expected, rtol=1e-12, atol=0)
    assert float(GradientLoss(form="toolbox")(pred, gt)) != pytest.approx(float(expected))


def test_gradient_switch_is_validated_and_reaches_the_task():
    with pytest.raises(BadInputError, match=r"form='batched' is not one of \('correct', 'toolbox'\)"):
        DepthLoss(gradient="batched")
    datamodule = DenseDataModule(name="synthetic", num_train=2, num_val=2, num_test=2, image_size=[28, 28])
    task = build_task(
        dense.build_model("tiny14", "depth_linear"), datamodule, depth_loss={"gradient": "toolbox"}
    )
    assert task.loss.grad.form == "toolbox"
    pred, gt = depth_pair(2)
    assert float(task.loss(pred, gt)["loss_grad"]) == 0.0


@pytest.mark.parametrize("experiment", ["nyu_dpt", "nyu_linear", "nyu_linear4", "kitti_dpt"])
def test_paper_recipes_reproduce_upstream_and_the_default_is_the_corrected_form(experiment):
    cfg = compose_config("train", f"experiment={experiment}", "paths.data_dir=/datasets")
    assert cfg.task.depth_loss.gradient == "toolbox" and cfg.data.color_aug == "toolbox"
    assert cfg.task.depth_loss.max_depth is None
    plain = compose_config("train")
    assert plain.task.depth_loss.gradient == "correct" and plain.task.depth_loss.max_depth is None


# ==================================================================================================
# §6  Dataset layouts
# ==================================================================================================


def test_nyu_mat_stored_height_by_width_is_refused(tmp_path):
    import h5py

    images, depths = write_nyu_mat(tmp_path, n=2, train=(1,), test=(2,))
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "w") as f:  # re-saved in H×W order
        f["images"] = np.stack([im.transpose(2, 0, 1) for im in images])  # N×3×480×640
        f["depths"] = np.stack(depths).astype(np.float64)  # N×480×640
    with pytest.raises(
        DatasetError, match=r"nyu_depth_v2_labeled\.mat: images \(2, 3, 480, 640\) are stored H×W"
    ):
        NYUDepthV2(tmp_path)


def test_voc_train_aug_in_deeplabs_two_path_form(tmp_path):
    truth = write_voc(tmp_path, with_aug=True)
    sets = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    ids = ("2007_000032", "2007_000039")
    (sets / "train_aug.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids) + "\n"
    )
    dataset = PascalVOC(tmp_path, split="train", use_aug=True)
    assert dataset.sample_names() == list(ids)
    np.testing.assert_array_equal(dataset.read(1).mask, truth[ids[1]])
    (sets / "train_aug.txt").write_text(
        f"{ids[0]}\n/JPEGImages/{ids[0]}.jpg /SegmentationClassAug/{ids[1]}.png\n"
    )
    with pytest.raises(
        DatasetError, match=r"train_aug\.txt:2: expected an image id or 'image_path label_path'"
    ):
        PascalVOC(tmp_path, split="train", use_aug=True)


def test_kitti_official_depth_annotated_layout_with_train_and_val_folders(tmp_path):
    truth = write_kitti(tmp_path, n_train=2, n_test=2, h=40, w=60)
    # KITTI's data_depth_annotated: the same drive-relative paths, under train/ or val/.
    official = tmp_path / "data_depth_annotated"
    for split_file, half in (("kitti_eigen_train.txt", "train"), ("kitti_eigen_test.txt", "val")):
        for line in (tmp_path / split_file).read_text().splitlines():
            depth = line.split()[1]
            if depth != "None":
                (official / half / depth).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(tmp_path / "gt_depth" / depth, official / half / depth)
    for split in ("train", "test"):
        dataset = KITTIEigen(tmp_path, split=split, depth_dir="data_depth_annotated")
        assert len(dataset) == 2
        for i in range(2):
            raw = dataset.read(i)
            np.testing.assert_array_equal(raw.depth, truth[raw.name][1])
            np.testing.assert_array_equal(raw.image, truth[raw.name][0])
