"""predict.py's options, checked before anything is built, and the device they name."""

from __future__ import annotations

import matplotlib
import torch
from omegaconf import DictConfig

from dense.cli import runner
from dense.config import compile_mode
from dense.core.errors import ConfigError
from dense.model import check_inference_settings
from dense.tools import viz


def validate(cfg: DictConfig) -> None:
    """What the schema (dense/core/schema.py PredictConfig: keys and types, checked by Hydra) cannot
    say: required keys, ranges, names that need code (a colour map, a palette), before anything is built."""
    if cfg.input is None:
        raise ConfigError("input is not set: python predict.py ckpt=PATH input=IMAGE_OR_FOLDER output=DIR")
    if cfg.output is None:
        raise ConfigError("output is not set: python predict.py ckpt=PATH input=IMAGE_OR_FOLDER output=DIR")
    try:
        check_inference_settings(
            cfg.mode, *(runner.plain(cfg[k]) for k in ("crop_size", "stride", "scales", "flip"))
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if cfg.precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision={cfg.precision} is not one of fp32, bf16")
    compile_mode(cfg.compile)
    if not cfg.depth_scale or cfg.depth_scale <= 0:
        raise ConfigError(f"depth_scale={cfg.depth_scale} must be positive (1000: millimetres)")
    if int(cfg.batch_size) < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} must be at least 1")
    if cfg.palette not in viz.PALETTES:
        raise ConfigError(f"palette={cfg.palette} is not one of {', '.join(viz.PALETTES)}")
    if not 0.0 <= float(cfg.alpha) <= 1.0:
        raise ConfigError(f"alpha={cfg.alpha} must be between 0 and 1")
    if cfg.cmap not in matplotlib.colormaps:
        raise ConfigError(f"cmap={cfg.cmap} is not a matplotlib colour map (e.g. magma_r, turbo, viridis)")
    depth_range = runner.plain(cfg.depth_range)
    if depth_range not in ("model", "auto") and not (
        isinstance(depth_range, list)
        and len(depth_range) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in depth_range)
        and 0 <= depth_range[0] < depth_range[1]
    ):
        raise ConfigError(
            f"depth_range={depth_range} must be model (the model's depth range), auto (each image's own "
            "range) or [min,max] in metres with 0 <= min < max"
        )
    max_pixels = cfg.max_pixels
    if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1:
        raise ConfigError(
            f"max_pixels={max_pixels} must be a positive number of pixels (default 64000000: 8000×8000)"
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name} is not a device name (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name} but MPS is not available here; use device=cpu")
    return device
