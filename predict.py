"""Depth or segmentation maps for an image or a folder of images (options: configs/predict.yaml).

    python predict.py ckpt=PATH input=IMAGE_OR_FOLDER output=DIR
    python predict.py backbone=vitl14 head=depth_dpt backbone.weights=B.pth head.weights=H.pth \
        input=IMAGE_OR_FOLDER output=DIR

Depth: <stem>.png (16-bit, metres × depth_scale), <stem>.npy (float32 metres), <stem>_color.png.
Segmentation: <stem>.png (class ids), <stem>_color.png, <stem>_overlay.png.

Exit status: 0 when every image was written; 2 when nothing could run (a bad option, a missing input
or checkpoint: one line on stderr says which, as for train.py and eval.py); 3 when some images were
skipped (each is named with its reason, the others are written).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import hydra
import matplotlib
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from dense import _cli, viz
from dense.checkpoint import load_model
from dense.config import apply_speed_options, compile_mode, model_from_config
from dense.data.transforms import normalize_image
from dense.io import INPUT_SUFFIXES, ImageReadError, list_images, read_image, save_npy, save_png
from dense.model import DenseModel

EXIT_SKIPPED = 3
UINT16_MAX = 65535
UsageError = _cli.ConfigError


# --------------------------------------------------------------------------- set-up


def check_options(cfg: DictConfig) -> None:
    if cfg.input is None:
        raise UsageError("input is not set: python predict.py ckpt=PATH input=IMAGE_OR_FOLDER output=DIR")
    if cfg.output is None:
        raise UsageError("output is not set: python predict.py ckpt=PATH input=IMAGE_OR_FOLDER output=DIR")
    if cfg.mode not in ("whole", "slide"):
        raise UsageError(f"mode={cfg.mode} is not one of whole, slide")
    if cfg.mode == "slide" and cfg.crop_size is None:
        raise UsageError("mode=slide needs crop_size (e.g. crop_size=518; stride defaults to 2/3 of it)")
    if cfg.precision not in ("fp32", "bf16"):
        raise UsageError(f"precision={cfg.precision} is not one of fp32, bf16")
    compile_mode(cfg.compile)
    if not cfg.depth_scale or cfg.depth_scale <= 0:
        raise UsageError(f"depth_scale={cfg.depth_scale} must be positive (1000: millimetres)")
    if int(cfg.batch_size) < 1:
        raise UsageError(f"batch_size={cfg.batch_size} must be at least 1")
    if cfg.palette not in viz.PALETTES:
        raise UsageError(f"palette={cfg.palette} is not one of {', '.join(viz.PALETTES)}")
    if not 0.0 <= float(cfg.alpha) <= 1.0:
        raise UsageError(f"alpha={cfg.alpha} must be between 0 and 1")
    if cfg.cmap not in matplotlib.colormaps:
        raise UsageError(f"cmap={cfg.cmap} is not a matplotlib colour map (e.g. magma_r, turbo, viridis)")
    if cfg.depth_range is not None and (
        len(cfg.depth_range) != 2 or cfg.depth_range[0] >= cfg.depth_range[1]
    ):
        raise UsageError(f"depth_range={list(cfg.depth_range)} must be [min,max] in metres with min < max")
    if not cfg.scales or any(float(s) <= 0 for s in cfg.scales):
        raise UsageError(f"scales={list(cfg.scales or [])} must be a non-empty list of positive ratios")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"device={name} is not a device name (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device={name} but CUDA is not available here; use device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device={name} but MPS is not available here; use device=cpu")
    return device


def build(cfg: DictConfig) -> DenseModel:
    """From a train.py checkpoint (ckpt=) or from the backbone/head groups (Meta's released heads)."""
    if cfg.ckpt is not None:
        if cfg.head.get("weights"):
            raise UsageError(
                "give either ckpt=PATH (train.py) or head.weights=PATH (a released head), not both"
            )
        if not os.path.isfile(cfg.ckpt):
            raise UsageError(f"checkpoint not found: {cfg.ckpt}")
        return load_model(cfg.ckpt, backbone_weights=cfg.backbone.get("weights"))
    if not cfg.head.get("weights"):
        # A head without weights is random: its maps would look like results and mean nothing.
        raise UsageError(
            "no trained head: give ckpt=PATH (a train.py checkpoint) or head.weights=PATH (one of Meta's "
            "released heads, with backbone=... and backbone.weights=PATH)"
        )
    if not os.path.isfile(cfg.head.weights):
        raise UsageError(f"head weights not found: {cfg.head.weights}")
    if cfg.backbone.get("weights") and not os.path.isfile(cfg.backbone.weights):
        raise UsageError(f"backbone weights not found: {cfg.backbone.weights}")
    return model_from_config(cfg.backbone, cfg.head).eval()


def output_stems(paths: list[Path]) -> list[str]:
    """Each input's output name: its stem, or its full name (a.jpg → a_jpg) when two inputs share a
    stem (a.jpg and a.png would otherwise overwrite each other's results)."""
    stems = [p.stem for p in paths]
    return [p.name.replace(".", "_") if stems.count(p.stem) > 1 else p.stem for p in paths]


def output_names(stem: str, task: str, save_npy_file: bool) -> list[str]:
    if task == "depth":
        return [f"{stem}.png", *([f"{stem}.npy"] if save_npy_file else []), f"{stem}_color.png"]
    return [f"{stem}.png", f"{stem}_color.png", f"{stem}_overlay.png"]


def check_no_overwrite(paths: list[Path], stems: list[str], output: Path, task: str, npy: bool) -> None:
    inputs = {p.resolve() for p in paths}
    for stem in stems:
        for name in output_names(stem, task, npy):
            if (output / name).resolve() in inputs:
                raise UsageError(
                    f"writing {output / name} would overwrite an input image; choose another output folder"
                )


def num_classes(model: DenseModel) -> int:
    # DenseModel.num_classes reads the head's attribute, which the linear heads do not set; the
    # build_model config always records it.
    return int(model.num_classes or model.config["num_classes"])


# --------------------------------------------------------------------------- reading and inference


def skip(path: Path, reason: str, skipped: list[str], progress: tqdm) -> None:
    """Report a file that gets no results, now (above the progress bar) and in the final summary."""
    skipped.append(path.name)
    progress.write(f"skipped {reason}", file=sys.stderr)


def batches(
    paths: list[Path], stems: list[str], batch_size: int, skipped: list[str], progress: tqdm
) -> Iterator[list[tuple[Path, str, np.ndarray]]]:
    """Runs of consecutive images of equal size, at most batch_size long, as [(path, stem, uint8
    H×W×3)]. Images are read lazily (a folder never sits in memory); unreadable ones are skipped."""
    batch: list[tuple[Path, str, np.ndarray]] = []
    for path, stem in zip(paths, stems):
        try:
            image = read_image(path)
        except ImageReadError as e:
            skip(path, str(e), skipped, progress)
            progress.update(1)
            continue
        if batch and (len(batch) == batch_size or batch[0][2].shape != image.shape):
            yield batch
            batch = []
        batch.append((path, stem, image))
    if batch:
        yield batch


def infer(model: DenseModel, images: list[np.ndarray], cfg: DictConfig, device: torch.device) -> np.ndarray:
    """Depth B×H×W float32 metres, or class ids B×H×W int64."""
    x = torch.stack([normalize_image(image) for image in images]).to(device)
    bf16 = cfg.precision == "bf16"
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model.predict(
            x,
            cfg.mode,
            crop_size=_cli.plain(cfg.crop_size),  # an int or [h, w]
            stride=_cli.plain(cfg.stride),
            scales=[float(s) for s in cfg.scales],
            flip=bool(cfg.flip),
        )
    if model.task == "depth":
        return out[:, 0].float().cpu().numpy()
    return out.argmax(dim=1).cpu().numpy()


def infer_or_skip(model, batch, cfg, device, skipped, progress) -> list[np.ndarray | None]:
    """infer(), retrying a batch that runs out of accelerator memory one image at a time; an image that
    does not fit even alone is reported and skipped (None) so the rest of the folder still runs."""
    try:
        return list(infer(model, [image for _, _, image in batch], cfg, device))
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if len(batch) > 1:
            return [r for item in batch for r in infer_or_skip(model, [item], cfg, device, skipped, progress)]
        path, _, image = batch[0]
        reason = (
            f"{path}: out of memory on {device} at {image.shape[1]}×{image.shape[0]}; try mode=slide "
            "crop_size=518, precision=bf16 or device=cpu"
        )
        skip(path, reason, skipped, progress)
        return [None]


# --------------------------------------------------------------------------- writing


def write_depth(output: Path, stem: str, depth: np.ndarray, cfg: DictConfig) -> None:
    scaled = np.clip(np.rint(depth.astype(np.float64) * float(cfg.depth_scale)), 0, UINT16_MAX)
    save_png(scaled.astype(np.uint16), output / f"{stem}.png")
    if cfg.save_npy:
        save_npy(depth.astype(np.float32), output / f"{stem}.npy")
    vmin, vmax = cfg.depth_range if cfg.depth_range is not None else viz.depth_range(depth)
    color = viz.colorize_depth(depth, vmin, vmax, cfg.cmap)
    if cfg.colorbar:
        color = viz.add_colorbar(color, vmin, vmax, cfg.cmap, label="depth (m)")
    save_png(color, output / f"{stem}_color.png")


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


# --------------------------------------------------------------------------- main


def predict(cfg: DictConfig) -> int:
    """Everything predict.py does; returns the exit status (0, or EXIT_SKIPPED). Set-up mistakes exit
    with status 2 and one line (dense._cli), before any image is processed."""
    with _cli.setup_errors():
        check_options(cfg)
        paths = list_images(cfg.input)
        if not paths:
            raise UsageError(f"input folder {cfg.input} holds no image files ({' '.join(INPUT_SUFFIXES)})")
        device = resolve_device(cfg.device)
        model = apply_speed_options(build(cfg).to(device), compile=cfg.compile, bf16_autocast=cfg.precision == "bf16")
        output = Path(cfg.output).expanduser()
        stems = output_stems(paths)
        check_no_overwrite(paths, stems, output, model.task, bool(cfg.save_npy))
        palette = viz.get_palette(num_classes(model), cfg.palette) if model.task == "segmentation" else None
        output.mkdir(parents=True, exist_ok=True)

    if model.task == "depth" and model.max_depth * cfg.depth_scale > UINT16_MAX:
        print(
            f"note: depths above {UINT16_MAX / cfg.depth_scale:g} m are clipped in the 16-bit PNGs (the model "
            f"reaches {model.max_depth:g} m; the .npy files keep them); depth_scale=256 fits up to 256 m",
            file=sys.stderr,
        )
    skipped: list[str] = []
    written = 0
    with tqdm(total=len(paths), unit="image", disable=not cfg.progress, file=sys.stderr) as progress:
        for batch in batches(paths, stems, int(cfg.batch_size), skipped, progress):
            results = infer_or_skip(model, batch, cfg, device, skipped, progress)
            for (_, stem, image), result in zip(batch, results):
                if result is None:
                    continue
                if model.task == "depth":
                    write_depth(output, stem, result, cfg)
                else:
                    write_segmentation(output, stem, image, result, palette, cfg)
                written += 1
            progress.update(len(batch))

    print(f"wrote {model.task} results for {written} of {len(paths)} images to {output}")
    if skipped:
        print(f"skipped {len(skipped)} image(s), see above: {', '.join(skipped)}", file=sys.stderr)
        return EXIT_SKIPPED
    return 0


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    status = _cli.run(predict, cfg)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    _cli.main(main, __file__)
