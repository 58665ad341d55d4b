"""DenseModel: parity with upstream's depth models, every head on every backbone, padding, inference modes."""

import os

import pytest
import torch

import dense
from dense.backbones import get_spec
from dense.core.errors import WeightsError
from dense.model import MS_SCALES, build_model, center_padding
from tests._random_weights import REFERENCE, seeded_state_dict
from tests.testers import small_options, tensor_heads

HEAD_NAMES = tensor_heads()  # every registered head with a tensor output, at its registered test sizes
TINY = ["tiny14", "tiny14_reg", "tiny14_swiglu"]


def shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def upstream_outputs():
    return torch.load(os.path.join(REFERENCE, "model_depth.pt"), weights_only=True)


# ViT-L is a full-size check (minutes on 2 cores): `pytest -m slow`; S and B run every time.
@pytest.mark.parametrize("arch", ["vits14", "vitb14", pytest.param("vitl14", marks=pytest.mark.slow)])
def test_depth_models_match_upstream(arch, upstream_outputs, tmp_path):
    """Same seeded weights as tests/reference/make_model_reference.py fed to upstream's
    dinov2_{arch}_ld (layers 1 and 4) and dinov2_{arch}_dd; outputs within 1e-4 relative."""
    height, width = upstream_outputs["size"]
    image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(13))
    backbone_file = tmp_path / "backbone.pth"
    with torch.device("meta"):
        backbone_shapes = shapes(get_spec(arch).create())
    torch.save(seeded_state_dict(backbone_shapes, seed=11), backbone_file)
    for head in ["depth_linear", "depth_linear4", "depth_dpt"]:
        expected = upstream_outputs[f"{arch}/{head}"]
        model = build_model(
            arch,
            head,
            backbone_weights=backbone_file,
            min_depth=expected["min_depth"],
            max_depth=expected["max_depth"],
        ).eval()
        # Head weights in the released files' format: mmcv checkpoint with decode_head.* keys.
        head_state = seeded_state_dict(shapes(model.head), seed=12)
        torch.save(
            {"state_dict": {f"decode_head.{k}": v for k, v in head_state.items()}}, tmp_path / "head.pth"
        )
        dense.model.load_head_weights(model, tmp_path / "head.pth")
        with torch.no_grad():
            out = model(image)
        reference = expected["output"]
        assert out.shape == reference.shape
        error = ((out - reference).abs().max() / reference.abs().max()).item()
        assert error < 1e-4, (arch, head, error)
        assert reference.std() > 0  # the reference is not a constant map


def test_segmentation_equals_batchnorm_conv_on_normed_features():
    """Upstream-style seg: BatchNorm(eval) + conv_seg on norm=True features, bilinear resize to the input."""
    model = build_model("tiny14", "seg_ms", num_classes=5).eval()
    model.head.load_state_dict(seeded_state_dict(shapes(model.head), seed=3))
    image = torch.randn(2, 3, 70, 98)
    with torch.no_grad():
        feats = model.backbone.get_intermediate_layers(image, n=4, reshape=True, norm=True)
        x = torch.cat(feats, dim=1)
        bn = model.head.bn
        x = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        x = x * bn.weight[:, None, None] + bn.bias[:, None, None]
        logits = torch.nn.functional.conv2d(x, model.head.conv_seg.weight, model.head.conv_seg.bias)
        expected = torch.nn.functional.interpolate(
            logits, size=(70, 98), mode="bilinear", align_corners=False
        )
        actual = model(image)
    assert torch.allclose(actual, expected, atol=1e-5, rtol=1e-5)
    assert model.layers == [0, 1, 2, 3] and model.norm and not model.use_cls_token


def test_default_layers_follow_upstream():
    with torch.device("meta"):
        assert build_model("vitl14", "depth_linear4").layers == [4, 11, 17, 23]
        assert build_model("vitg14", "depth").layers == [9, 19, 29, 39]
        assert build_model("vitb14", "depth_linear").layers == [11]
        assert build_model("vitl14_reg", "seg", num_classes=150).layers == [20, 21, 22, 23]
        assert build_model("vits14", "seg_linear", num_classes=21).layers == [11]


def test_dinov3_default_layers_are_its_eval_codes():
    # dinov3/eval/depth/models/encoder.py, BackboneLayersSet: FOUR_EVEN_INTERVALS = i·depth/4 − 1, except
    # ViT-L's [4, 11, 17, 23] (kept by upstream for compatibility); LAST and FOUR_LAST as their names say.
    expected = {
        "vits16": [2, 5, 8, 11],
        "vitb16": [2, 5, 8, 11],
        "vitl16": [4, 11, 17, 23],
        "vitl16plus": [4, 11, 17, 23],
        "vith16plus": [7, 15, 23, 31],
        "vit7b16": [9, 19, 29, 39],
        "vitl16_sat": [4, 11, 17, 23],
    }
    with torch.device("meta"):
        for backbone, four in expected.items():
            assert build_model(backbone, "depth_dpt").layers == four, backbone
        assert build_model("vit7b16", "seg", num_classes=150).layers == [36, 37, 38, 39]
        assert build_model("vits16plus", "depth_linear").layers == [11]
        assert build_model("dinov3_vitl16", "depth").config["backbone"] == "vitl16"


def test_dinov3_pads_to_16_and_crops_back():
    model = build_model("tiny16", "seg_linear", num_classes=3).eval()
    model.head.load_state_dict(seeded_state_dict(shapes(model.head), seed=2))
    assert model.patch_size == 16 and center_padding(45, 61, 16) == (1, 2, 1, 2)  # 61→64, 45→48
    image = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        cropped = model(image)
        full = model(torch.nn.functional.pad(image, (1, 2, 1, 2)))
    assert cropped.shape == (1, 3, 45, 61)
    assert torch.allclose(cropped, full[..., 1:46, 1:62], atol=1e-6)


def test_satellite_backbones_see_their_own_normalisation():
    sat_mean, sat_std = (0.430, 0.411, 0.296), (0.213, 0.156, 0.143)  # upstream's README, SAT-493M
    with torch.device("meta"):
        sat = build_model("vitl16_sat", "depth_dpt")
        web = build_model("vitl16", "depth_dpt")
    assert (sat.image_mean, sat.image_std) == (sat_mean, sat_std)
    assert web.renormalisation is None
    # The data pipeline normalises with ImageNet's statistics; the model must hand the backbone
    # (pixel − sat_mean) / sat_std. Checked on a tiny backbone given the satellite statistics.
    torch.manual_seed(0)
    plain = build_model("tiny16", "depth_linear").eval()
    renormed = dense.DenseModel(
        plain.backbone,
        plain.head,
        task="depth",
        layers=plain.layers,
        norm=False,
        use_cls_token=True,
        min_depth=1e-3,
        max_depth=10.0,
        image_mean=sat_mean,
        image_std=sat_std,
    ).eval()
    pixels = torch.rand(1, 3, 32, 48)
    imagenet = (pixels - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
        [0.229, 0.224, 0.225]
    )[:, None, None]
    satellite = (pixels - torch.tensor(sat_mean)[:, None, None]) / torch.tensor(sat_std)[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(renormed(imagenet), plain(satellite), rtol=1e-5, atol=1e-5)
    # uint8 images (what the datasets give) are normalised straight to the satellite statistics.
    levels = torch.randint(0, 256, (1, 3, 32, 48), dtype=torch.uint8)
    pixels64 = levels.double() / 255
    satellite = (pixels64 - torch.tensor(sat_mean, dtype=torch.float64)[:, None, None]) / torch.tensor(
        sat_std, dtype=torch.float64
    )[:, None, None]
    assert torch.equal(renormed.normalise(levels), satellite.float())  # rounded once, from float64
    with torch.no_grad():
        torch.testing.assert_close(renormed(levels), plain(satellite.float()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head", ["depth_linear4", "seg_ms"])
def test_uint8_images_give_what_their_imagenet_normalised_copy_gives(head):
    """The datasets hand the model uint8 RGB, normalised on the device; the float contract (ImageNet-
    normalised images, dense.data.normalize_image) stays, and both give the same numbers, bit for bit."""
    torch.manual_seed(0)
    model = build_model("tiny14", head, **({"num_classes": 4} if head.startswith("seg") else {})).eval()
    images = torch.randint(0, 256, (2, 3, 30, 44), dtype=torch.uint8)
    floats = torch.stack([dense.data.normalize_image(image.permute(1, 2, 0).numpy()) for image in images])
    assert torch.equal(model.normalise(images), floats)
    with torch.no_grad():
        assert torch.equal(model(images), model(floats))
        assert torch.equal(model.predict(images, scales=(1.0, 1.5)), model.predict(floats, scales=(1.0, 1.5)))
    assert not any("table" in key for key in model.state_dict())  # checkpoints unchanged
    with pytest.raises(ValueError, match="normalise uint8 images first"):
        model.extract_features(model.pad(images)[0])
    with pytest.raises(ValueError, match="uint8 RGB or ImageNet-normalised floats"):
        model(images.long())


@pytest.mark.parametrize("backbone", TINY)
@pytest.mark.parametrize("head", HEAD_NAMES)
@pytest.mark.parametrize("size", [(56, 56), (42, 70), (45, 61)])
def test_every_head_on_every_backbone(backbone, head, size):
    model = build_model(backbone, head, **small_options(head, num_classes=4))
    model.train()
    image = torch.randn(2, 3, *size)
    out = model(image)
    channels = 4 if head.startswith("seg") else 1
    assert out.shape == (2, channels, *size)
    out.float().mean().backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())
    assert not model.backbone.training
    if head.startswith("depth"):
        # Training output is raw (upstream clamps only at inference): only the heads' own floor holds.
        # fp32 rounding of the bilinear resize may land a hair outside the range.
        assert out.min() >= model.min_depth * (1 - 1e-5)
        with torch.no_grad():
            clamped = model(image)
        assert clamped.min() >= model.min_depth * (1 - 1e-5) and clamped.max() <= model.max_depth * (1 + 1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model(image)
    assert half.shape == out.shape and torch.isfinite(half.float()).all()
    half.float().mean().backward()


def test_padding_is_centred_and_cropped_away():
    assert center_padding(45, 61, 14) == (4, 5, 5, 6)  # 61→70, 45→56; the odd pixel right/bottom
    assert center_padding(56, 42, 14) == (0, 0, 0, 0)
    model = build_model("tiny14", "seg_linear", num_classes=3).eval()
    model.head.load_state_dict(seeded_state_dict(shapes(model.head), seed=1))
    image = torch.randn(1, 3, 45, 61)
    padded = torch.nn.functional.pad(image, (4, 5, 5, 6))
    with torch.no_grad():
        cropped = model(image)
        full = model(padded)  # a multiple of 14: no padding inside
    # Our output is the padded image's prediction with the padding cut off: aligned with the image.
    assert torch.allclose(cropped, full[..., 5:50, 4:65], atol=1e-6)


def test_flip_tta_is_the_mean_of_the_two_halves():
    model = build_model("tiny14", "depth_linear4").eval()
    model.head.load_state_dict(seeded_state_dict(shapes(model.head), seed=5))
    image = torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        plain = model(image)
        flipped_back = model(image.flip(-1)).flip(-1)
        tta = model.predict(image, flip=True)
    assert not torch.allclose(plain, flipped_back)
    assert torch.allclose(tta, (plain + flipped_back) / 2, atol=1e-6)


def test_sliding_window_no_larger_than_the_window_equals_whole():
    for head, options in [("depth_dpt", {}), ("seg_linear", {"num_classes": 3})]:
        model = build_model("tiny14_reg", head, **options).eval()
        image = torch.randn(2, 3, 70, 84)
        with torch.no_grad():
            whole = model.predict(image)
            slide = model.predict(image, mode="slide", crop_size=(98, 98), stride=(64, 64))
        assert torch.allclose(whole, slide, atol=1e-6)


def test_sliding_window_averages_overlaps():
    model = build_model("tiny14", "depth_linear").eval()
    image = torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        slide = model.predict(image, mode="slide", crop_size=56, stride=28)
        left = model(image[..., :56])
        right = model(image[..., 28:])
    expected = torch.zeros(1, 1, 56, 84)
    expected[..., :28] = left[..., :28]
    expected[..., 28:56] = (left[..., 28:] + right[..., :28]) / 2
    expected[..., 56:] = right[..., 28:]
    assert torch.allclose(slide, expected, atol=1e-6)


def test_multiscale_segmentation_gives_probabilities():
    model = build_model("tiny14", "seg_ms", num_classes=4).eval()
    image = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        probs = model.predict(image, scales=MS_SCALES, flip=True)
        single = model.predict(image, scales=(1.0,))
    assert probs.shape == (1, 4, 42, 56)
    assert torch.allclose(probs.sum(1), torch.ones(1, 42, 56), atol=1e-5)
    assert torch.allclose(single, model(image).softmax(1), atol=1e-6)
    assert not torch.allclose(probs, single)


def test_overrides_and_option_errors():
    model = build_model("tiny14", "depth_linear", layers=[1, 3], norm=True, use_cls_token=False, max_depth=20)
    assert model.layers == [1, 3] and model.norm and not model.use_cls_token
    assert model.head.conv_depth.in_channels == 2 * 48
    assert model(torch.randn(1, 3, 28, 28)).max() <= 20
    with pytest.raises(ValueError, match="no option"):
        build_model("tiny14", "depth_dpt", n_bins=3)
    with pytest.raises(ValueError, match="exactly 4"):
        build_model("tiny14", "depth_dpt", layers=[1, 2, 3])
    with pytest.raises(ValueError, match="does not use class tokens"):
        build_model("tiny14", "seg_linear", num_classes=3, use_cls_token=True)
    with pytest.raises(ValueError, match="unknown head"):
        build_model("tiny14", "depth_unet")
    with pytest.raises(ValueError, match="blocks 0 to 3"):
        build_model("tiny14", "seg_linear", num_classes=3, layers=[7])(torch.randn(1, 3, 28, 28))


def test_released_head_for_another_backbone_is_one_line(tmp_path):
    small = build_model("tiny14", "depth_linear4")
    torch.save(
        {"state_dict": {f"decode_head.{k}": v for k, v in small.head.state_dict().items()}},
        tmp_path / "head.pth",
    )
    other = build_model("tiny14", "depth_linear")
    with pytest.raises(WeightsError) as error:
        dense.model.load_head_weights(other, tmp_path / "head.pth")
    assert "\n" not in str(error.value) and "does not fit" in str(error.value)


def test_released_head_on_register_backbone_warns(tmp_path):
    plain = build_model("tiny14", "depth_linear")
    torch.save(
        {"state_dict": {f"decode_head.{k}": v for k, v in plain.head.state_dict().items()}},
        tmp_path / "head.pth",
    )
    with pytest.warns(UserWarning, match="without registers"):
        build_model("tiny14_reg", "depth_linear", head_weights=tmp_path / "head.pth")
