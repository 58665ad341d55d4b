"""dense.tools.viz: depth colouring, palettes, overlays, figures and the PCA picture."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from dense.data.transforms import normalize_image
from dense.tools import viz


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])


# --------------------------------------------------------------------------- depth


def test_depth_colours_are_monotonic_in_lightness():
    """magma_r: nearer is brighter over the whole range (64 steps: finer ones meet uint8 rounding)."""
    ramp = np.linspace(0.5, 10.0, 64).reshape(8, 8)
    rgb = viz.colorize_depth(ramp, 0.5, 10.0).reshape(-1, 3)
    assert (np.diff(luminance(rgb)) < 0).all()


def test_depth_colours_follow_the_colour_map():
    ramp = np.linspace(1.0, 3.0, 11)[None]
    rgb = viz.colorize_depth(ramp, 1.0, 3.0, cmap="turbo")[0]
    expected = matplotlib.colormaps["turbo"](np.linspace(0, 1, 11))[:, :3] * 255
    assert np.abs(rgb - expected).max() <= 3  # the 256-entry table's quantisation


def test_invalid_depth_is_drawn_in_its_own_colour():
    depth = np.array([[0.0, np.nan, np.inf, -1.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
    rgb = viz.colorize_depth(depth)
    assert (rgb[0] == viz.INVALID_COLOR).all()
    assert not (rgb[1] == viz.INVALID_COLOR).all(axis=-1).any()
    # the per-image range comes from the valid pixels only
    assert viz.depth_range(depth) == (1.0, 4.0)


def test_fixed_range_compares_images_and_clips():
    a = viz.colorize_depth(np.array([[2.0, 5.0]]), vmin=1.0, vmax=10.0)
    b = viz.colorize_depth(np.array([[5.0, 9.0]]), vmin=1.0, vmax=10.0)
    assert (a[0, 1] == b[0, 0]).all()  # 5 m has one colour whatever else is in the image
    clipped = viz.colorize_depth(np.array([[0.5, 20.0]]), vmin=1.0, vmax=10.0)
    ends = viz.colorize_depth(np.array([[1.0, 10.0]]), vmin=1.0, vmax=10.0)
    assert (clipped == ends).all()


def test_depth_accepts_tensors_and_constant_maps():
    rgb = viz.colorize_depth(torch.full((1, 1, 5, 7), 3.0))
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8


def test_colorbar_keeps_the_picture_and_adds_a_strip():
    picture = viz.colorize_depth(np.random.default_rng(0).uniform(1, 5, (120, 90)))
    with_bar = viz.add_colorbar(picture, 1.0, 5.0)
    assert with_bar.shape[0] == 120 and with_bar.shape[1] > 90
    assert (with_bar[:, :90] == picture).all()
    tiny = picture[:1, :2]  # a 1×2 picture: the bar keeps a legible height, the picture is padded below
    with_bar = viz.add_colorbar(tiny, 1.0, 5.0)
    assert with_bar.shape[0] == viz.MIN_COLORBAR_HEIGHT and (with_bar[:1, :2] == tiny).all()
    assert (with_bar[1:, :2] == 255).all()


# --------------------------------------------------------------------------- labels


def test_voc_palette_is_the_bit_shift_palette():
    palette = viz.voc_palette()
    assert palette.shape == (256, 3)
    assert tuple(palette[0]) == (0, 0, 0)
    assert tuple(palette[1]) == (128, 0, 0)  # aeroplane
    assert tuple(palette[2]) == (0, 128, 0)  # bicycle
    assert tuple(palette[15]) == (192, 128, 128)  # person
    assert tuple(palette[20]) == (0, 64, 128)  # tvmonitor
    assert tuple(palette[255]) == (224, 224, 192)  # the void border
    assert (viz.get_palette(21) == palette[:21]).all()


def test_ade20k_palette_is_mmsegs():
    palette = viz.get_palette(150)
    assert palette.shape == (150, 3)
    assert tuple(palette[0]) == (120, 120, 120)  # wall
    assert tuple(palette[2]) == (6, 230, 230)  # sky
    assert tuple(palette[12]) == (150, 5, 61)  # person
    assert tuple(palette[149]) == (92, 0, 255)  # flag
    assert len(np.unique(palette, axis=0)) == 149  # mmseg's table repeats one colour (140, 140, 140)


def test_generic_palette_for_any_number_of_classes():
    palette = viz.get_palette(7)
    assert palette.shape == (7, 3)
    assert len(np.unique(palette, axis=0)) == 7
    assert viz.get_palette(1000).shape == (1000, 3)
    with pytest.raises(ValueError, match="ADE20K palette has 150"):
        viz.get_palette(151, "ade20k")


def test_labels_and_ignore_colour():
    palette = viz.voc_palette(21)
    labels = np.array([[0, 1, 15], [255, 20, 1]])
    rgb = viz.colorize_labels(labels, palette)
    assert tuple(rgb[0, 1]) == (128, 0, 0) and tuple(rgb[0, 2]) == (192, 128, 128)
    assert tuple(rgb[1, 0]) == viz.IGNORE_COLOR
    with pytest.raises(ValueError, match="palette has 21 colours"):
        viz.colorize_labels(np.array([[21]]), palette)


def test_overlay_blends_and_leaves_ignored_pixels():
    image = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[1, 1], [255, 1]])
    palette = viz.voc_palette(21)
    assert (viz.overlay_labels(image, labels, palette, alpha=0.0) == image).all()
    full = viz.overlay_labels(image, labels, palette, alpha=1.0)
    assert tuple(full[0, 0]) == (128, 0, 0)
    assert tuple(full[1, 0]) == (100, 100, 100)
    half = viz.overlay_labels(image, labels, palette, alpha=0.5)
    assert tuple(half[0, 0]) == (114, 50, 50)


def test_label_error_map_marks_wrong_pixels():
    image = np.zeros((1, 3, 3), np.uint8)
    picture, accuracy = viz.label_error_map(image, np.array([[0, 1, 2]]), np.array([[0, 2, 255]]))
    assert tuple(picture[0, 1]) == viz.WRONG_COLOR and tuple(picture[0, 2]) == viz.INVALID_COLOR
    assert accuracy == pytest.approx(0.5)


def test_denormalise_round_trip():
    image = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert np.abs(viz.to_rgb_image(normalize_image(image)).astype(int) - image).max() <= 1
    assert viz.to_rgb_image(image) is image


# --------------------------------------------------------------------------- figures and PCA


@pytest.mark.parametrize("task", ["depth", "segmentation"])
def test_compare_figure_panels(task):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(2)]
    if task == "depth":
        preds = [rng.uniform(1, 5, (20, 30)) for _ in range(2)]
        targets = [np.where(rng.random((20, 30)) < 0.2, 0.0, rng.uniform(1, 5, (20, 30))) for _ in range(2)]
    else:
        preds = [rng.integers(0, 7, (20, 30)) for _ in range(2)]
        targets = [np.where(rng.random((20, 30)) < 0.2, 255, rng.integers(0, 7, (20, 30))) for _ in range(2)]
    fig = viz.compare_figure(images, preds, targets, task=task)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 8  # 2 rows × image | prediction | ground truth | error
    assert "error" in panels[3].get_title()
    plt.close(fig)
    fig = viz.compare_figure(images[0], preds[0], task=task)
    assert len([ax for ax in fig.axes if ax.images]) == 2
    plt.close(fig)


def test_segmentation_figure_names_the_class_colours():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (20, 30))
    palette = viz.get_palette(3)
    names = ["floor", "wall", "box"]
    fig = viz.compare_figure(image, labels, labels, task="segmentation", palette=palette, class_names=names)
    (legend,) = fig.legends
    assert [text.get_text() for text in legend.get_texts()] == names
    colours = [np.round(np.asarray(patch.get_facecolor()[:3]) * 255) for patch in legend.get_patches()]
    assert np.array_equal(np.stack(colours), palette[:3].astype(float))  # the colours of the maps
    plt.close(fig)
    fig = viz.compare_figure(image, np.full((20, 30), 2), task="segmentation", palette=palette)
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["class 2"]  # ids that occur
    plt.close(fig)


def test_pca_shapes_and_structure():
    # Two kinds of patch (left half, right half) that differ along one feature direction.
    g = torch.Generator().manual_seed(0)
    features = 0.01 * torch.randn(2, 16, 6, 8, generator=g)
    features[:, 3, :, :4] += 1.0
    rgb = viz.pca_rgb(features)
    assert rgb.shape == (2, 6, 8, 3) and rgb.dtype == np.uint8
    left, right = rgb[:, :, :4, 0].astype(int), rgb[:, :, 4:, 0].astype(int)
    assert abs(left.mean() - right.mean()) > 150  # the first component separates the halves
    assert (viz.pca_rgb(features) == rgb).all()  # deterministic, sign included
    assert viz.pca_rgb(features[0]).shape == (6, 8, 3)
    assert viz.pca_rgb(features[0], size=(84, 112)).shape == (84, 112, 3)
