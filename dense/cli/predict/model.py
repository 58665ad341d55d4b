"""predict.py's model: as dense.cli.model builds it for inference (a train.py checkpoint, Meta's
released heads), or from an ONNX file; with the speed options, and the range of its depth colours."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from dense.cli.model import for_inference
from dense.config import apply_speed_options
from dense.core.errors import ExportError
from dense.model import DenseModel
from dense.tools.export import DEFAULT_TIME_LIMIT, OnnxDenseModel, load_onnx_model


def prepare_model(cfg: DictConfig, device: torch.device) -> tuple[DenseModel | OnnxDenseModel, dict]:
    """predict.py's model, on `device` with the speed options (precision, compile), and what it stores
    of its classes (stored_classes; a multi-head model: per head)."""
    if cfg.get("model") is not None:  # a file written by export.py, run by ONNX Runtime
        model = onnx_model(cfg)
        stored = {
            "class_names": model.class_names,
            "palette": model.palette,
        }  # export.py's, from the checkpoint
        return model, {key: value for key, value in stored.items() if value is not None}
    model, stored_names = for_inference(cfg)
    model = apply_speed_options(model.to(device), compile=cfg.compile, bf16_autocast=cfg.precision == "bf16")
    return model, stored_names


def depth_colour_range(cfg: DictConfig, model: DenseModel) -> tuple[float, float] | None:
    """The depth range of the colours of every image (None: each image's own, depth_range=auto)."""
    if cfg.depth_range == "auto":
        return None
    if cfg.depth_range == "model":
        return float(model.min_depth), float(model.max_depth)
    return float(cfg.depth_range[0]), float(cfg.depth_range[1])


def onnx_model(cfg: DictConfig) -> OnnxDenseModel:
    """model=FILE.onnx: the file's model, the options that cannot apply to it refused."""
    path = str(cfg.model)
    if cfg.ckpt is not None or cfg.head.get("weights"):
        raise ExportError("give either model=FILE.onnx (export.py) or ckpt=/head.weights=, not both")
    if not path.endswith(".onnx"):
        raise ExportError(
            f"model={path}: predict.py runs .onnx files written by export.py (ckpt=PATH for checkpoints)"
        )
    if cfg.precision != "fp32" or cfg.compile not in (False, None, "false"):
        raise ExportError(
            f"model={path} runs in ONNX Runtime as exported: leave precision=fp32 and compile=false "
            "(fp16=true at export stores half-precision weights)"
        )
    limit = cfg.get("onnx_time_limit", DEFAULT_TIME_LIMIT)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0):
        raise ExportError(f"onnx_time_limit={limit} must be a positive number of seconds per image, or null")
    model = load_onnx_model(path, time_limit=None if limit is None else float(limit))
    if model.uint8_input and any(float(s) != 1.0 for s in cfg.scales):
        raise ExportError(
            f"model={path} takes uint8 images (exported with normalise=true), which resized views are not: "
            "export with normalise=false for scales other than [1.0]"
        )
    return model
