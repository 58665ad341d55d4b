"""predict.py's result files: depth (metric or relative), segmentation, the files written once per
run (legend, class names), and the line that says how to read the colours."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from dense.cli.predict.outputs import RELATIVE_SUFFIX, Layout, MultiLayout, depth_png_suffix, is_plain_file
from dense.core.io import atomic_path, save_npy, save_png
from dense.model import DenseModel
from dense.tools import viz

UINT16_MAX = 65535


def write_depth(
    output: Path, stem: str, depth: np.ndarray, cfg: DictConfig, colours, relative: bool = False
) -> None:
    """colours: the fixed (min, max) of the colour map, or None for this image's own range. relative:
    `depth` is a disparity up to scale and shift (write_relative_depth)."""
    if relative:
        write_relative_depth(output, stem, depth, cfg)
        return
    vmin, vmax = colours if colours is not None else viz.depth_range(depth)
    picture = viz.colorize_depth(depth, vmin, vmax, cfg.cmap)
    if cfg.colorbar:  # the scale beside the picture, so that the file can be read on its own
        picture = viz.add_colorbar(picture, vmin, vmax, cfg.cmap, label="depth (m)")
    save_png(picture, output / f"{stem}_color.png")
    scaled = np.clip(np.rint(depth.astype(np.float64) * float(cfg.depth_scale)), 0, UINT16_MAX)
    save_png(scaled.astype(np.uint16), output / f"{stem}{depth_png_suffix(cfg.depth_scale)}")
    if cfg.save_npy:
        save_npy(depth.astype(np.float32), output / f"{stem}.npy")


def write_relative_depth(output: Path, stem: str, disparity: np.ndarray, cfg: DictConfig) -> None:
    """A relative model's map, for viewing: normalised to this image's own range (0 farthest, 1 nearest),
    as 16 bits and in colours (nearest in the colour nearest depths get in metric pictures); the raw
    output in the .npy."""
    low, high = float(disparity.min()), float(disparity.max())
    unit = (disparity.astype(np.float64) - low) / (high - low) if high > low else np.zeros(disparity.shape)
    save_png(np.rint(unit * UINT16_MAX).astype(np.uint16), output / f"{stem}{RELATIVE_SUFFIX}")
    if cfg.save_npy:
        save_npy(disparity.astype(np.float32), output / f"{stem}.npy")
    save_png(viz.colorize(1 - unit, 0.0, 1.0, cfg.cmap), output / f"{stem}_color.png")


def write_run_files(output: Path, names: dict[str, str], cfg: DictConfig, colours, palette, classes) -> None:
    """The files written once per run: the segmentation legend (legend.png) and the class names and
    colours (classes.json)."""
    if "legend.png" in names:
        save_png(viz.legend(classes, palette), output / names["legend.png"])
    if "classes.json" in names:
        entries = [
            {"id": i, "name": name, "color": [int(c) for c in palette[i]]} for i, name in enumerate(classes)
        ]
        with atomic_path(output / names["classes.json"]) as tmp:
            Path(tmp).write_text(json.dumps({"classes": entries}, indent=1) + "\n")


def write_segmentation(
    output: Path, stem: str, image: np.ndarray, labels: np.ndarray, palette: np.ndarray, cfg: DictConfig
) -> None:
    # 8 bits hold ids 0–254 (255 stays free for "ignore", as in the datasets); more classes need 16.
    dtype = np.uint8 if len(palette) <= 255 else np.uint16
    save_png(labels.astype(dtype), output / f"{stem}.png")
    save_png(viz.colorize_labels(labels, palette, ignore_index=None), output / f"{stem}_color.png")
    save_png(
        viz.overlay_labels(image, labels, palette, float(cfg.alpha), ignore_index=None),
        output / f"{stem}_overlay.png",
    )


def write_results(
    output: Path, stem: str, image: np.ndarray, result: np.ndarray, layout: Layout, palette, cfg, colours
) -> list[str]:
    """One image's result files, all of them or none: when one cannot be written (OSError, raised), those
    already written for it are removed. Returns their names."""
    names = layout.names(stem)
    try:
        if isinstance(layout, MultiLayout):  # result, palette, colours: {head: ...}
            for name, own in layout.parts:
                write_results(
                    output, f"{stem}_{name}", image, result[name], own, palette[name], cfg, colours[name]
                )
        elif layout.task == "depth":
            write_depth(output, stem, result, cfg, colours, layout.relative)
        else:
            write_segmentation(output, stem, image, result, palette, cfg)
    except OSError:
        for name in names:
            if is_plain_file(output / name):
                with contextlib.suppress(OSError):
                    os.remove(output / name)
        raise
    return names


def describe_colours(
    cfg: DictConfig, model: DenseModel, output: Path, run_names: dict[str, str], colours, relative=False
) -> str:
    """One line that says how to read the colour pictures."""
    if relative:
        return (
            f"relative depth (disparity up to an unknown scale and shift, no unit): <stem>{RELATIVE_SUFFIX} and "
            f"<stem>_color.png ({cfg.cmap}) are normalised per image for viewing (0 = farthest, 65535 = "
            "nearest), not comparable across images; <stem>.npy holds the raw output"
        )
    if model.task == "segmentation":
        return f"class colours: {output / run_names['legend.png']}, names and colours: {output / run_names['classes.json']}"
    bar = ", colour bar beside each" if cfg.colorbar else ""
    files = (
        f"<stem>_color.png the pictures{bar}; <stem>{depth_png_suffix(cfg.depth_scale)} 16-bit integers = "
        f"metres × {float(cfg.depth_scale):g} (0 = none), for programs"
        + ("; <stem>.npy float32 metres" if cfg.save_npy else "")
    )
    if colours is None:
        return f"depth colours ({cfg.cmap}): each image from its own nearest to its farthest depth (depth_range=auto); {files}"
    source = "the model's depth range" if cfg.depth_range == "model" else "depth_range"
    return (
        f"depth colours ({cfg.cmap}): {colours[0]:g} to {colours[1]:g} m in every image ({source}); {files}"
    )
