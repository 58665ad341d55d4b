"""predict.py's model (export.py's too): from a train.py checkpoint, from the backbone/head groups
(Meta's released heads) or from an ONNX file; the names of its classes and the range of its depth colours."""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig

from dense.backbones import check_official_weights, get_spec
from dense.checkpoint import model_from_checkpoint, read_model_config
from dense.config import apply_speed_options, model_from_config
from dense.core.errors import ConfigError, ExportError
from dense.data import ADE20K_CLASSES, VOC_CLASSES
from dense.model import DenseModel
from dense.multi_head import MultiHeadModel
from dense.tools.export import DEFAULT_TIME_LIMIT, OnnxDenseModel, load_onnx_model


def prepare_model(
    cfg: DictConfig, device: torch.device
) -> tuple[DenseModel | OnnxDenseModel, list[str] | dict | None]:
    """predict.py's model, on `device` with the speed options (precision, compile), and the class
    names it stores (None: none; a multi-head model: per head)."""
    if cfg.get("model") is not None:  # a file written by export.py, run by ONNX Runtime
        model = onnx_model(cfg)
        return model, model.class_names
    model, stored_names = build(cfg)
    model = apply_speed_options(model.to(device), compile=cfg.compile, bf16_autocast=cfg.precision == "bf16")
    return model, stored_names


def build(cfg: DictConfig) -> tuple[DenseModel, list[str] | None]:
    """From a train.py checkpoint (ckpt=) or from the backbone/head groups (Meta's released heads); with
    the class names a checkpoint stores (None: none stored)."""
    if cfg.ckpt is not None:
        if cfg.head.get("weights"):
            raise ConfigError(
                "give either ckpt=PATH (train.py) or head.weights=PATH (a released head), not both"
            )
        if not os.path.isfile(cfg.ckpt):
            raise ConfigError(f"checkpoint not found: {cfg.ckpt}")
        checkpoint, _ = read_model_config(cfg.ckpt)
        model = model_from_checkpoint(checkpoint, cfg.ckpt, backbone_weights=cfg.backbone.get("weights"))
        if isinstance(model, MultiHeadModel):
            return model, {name: stored_class_names(checkpoint, name) for name in model.names}
        return model, stored_class_names(checkpoint)
    if not cfg.head.get("weights"):
        # A head without weights is random: its maps would look like results and mean nothing.
        raise ConfigError(
            "no trained head: give ckpt=PATH (a train.py checkpoint) or head.weights=PATH (one of Meta's "
            "released heads, with backbone=... and backbone.weights=PATH)"
        )
    if not os.path.isfile(cfg.head.weights):
        raise ConfigError(f"head weights not found: {cfg.head.weights}")
    if cfg.backbone.get("weights") and not os.path.isfile(cfg.backbone.weights):
        raise ConfigError(f"backbone weights not found: {cfg.backbone.weights}")
    if cfg.backbone.get("pretrained") and not cfg.backbone.get("weights"):
        check_official_weights(get_spec(cfg.backbone.name))  # in a second, before the backbone is built
    return model_from_config(cfg.backbone, cfg.head).eval(), None


def stored_class_names(checkpoint: dict, head: str | None = None) -> list[str] | None:
    """The class names train.py stored with a segmentation checkpoint (hyper_parameters.metrics; of a
    multi-head checkpoint, hyper_parameters.heads.<head>.metrics), when they are what it writes: a list
    of short strings. The checkpoint is data: anything else is ignored."""
    stored = checkpoint.get("hyper_parameters") or {}
    if head is not None:
        entries = stored.get("heads") if isinstance(stored, dict) else None
        stored = entries.get(head) if isinstance(entries, dict) else None
    metrics = stored.get("metrics") if isinstance(stored, dict) else None
    names = metrics.get("class_names") if isinstance(metrics, dict) else None
    if isinstance(names, list) and names and all(isinstance(n, str) and len(n) <= 200 for n in names):
        return names
    return None


def class_names(model: DenseModel, stored: list[str] | None) -> list[str]:
    """The names of the model's classes: the checkpoint's, else ADE20K's for 150 classes and VOC's for 21
    (as palette=auto), else "class N"."""
    count = num_classes(model)
    if stored is not None and len(stored) == count:
        return stored
    known = {len(ADE20K_CLASSES): ADE20K_CLASSES, len(VOC_CLASSES): VOC_CLASSES}.get(count)
    return list(known) if known else [f"class {i}" for i in range(count)]


def depth_colour_range(cfg: DictConfig, model: DenseModel) -> tuple[float, float] | None:
    """The depth range of the colours of every image (None: each image's own, depth_range=auto)."""
    if cfg.depth_range == "auto":
        return None
    if cfg.depth_range == "model":
        return float(model.min_depth), float(model.max_depth)
    return float(cfg.depth_range[0]), float(cfg.depth_range[1])


def num_classes(model: DenseModel) -> int:
    # DenseModel.num_classes reads the head's attribute, which the linear heads do not set; the
    # build_model config always records it.
    return int(model.num_classes or model.config["num_classes"])


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
