"""predict.py's model (export.py's too): from a train.py checkpoint, from the backbone/head groups
(Meta's released heads) or from an ONNX file; the names of its classes and the range of its depth colours."""

from __future__ import annotations

import os

import numpy as np
import torch
from omegaconf import DictConfig

from dense.backbones import check_official_weights, get_spec
from dense.checkpoint import model_from_checkpoint, read_model_config, stored_classes
from dense.config import apply_speed_options, model_from_config
from dense.core.errors import ConfigError, ExportError
from dense.data import ADE20K_CLASSES, VOC_CLASSES
from dense.model import DenseModel
from dense.multi_head import MultiHeadModel
from dense.tools import viz
from dense.tools.export import DEFAULT_TIME_LIMIT, OnnxDenseModel, load_onnx_model


def prepare_model(cfg: DictConfig, device: torch.device) -> tuple[DenseModel | OnnxDenseModel, dict]:
    """predict.py's model, on `device` with the speed options (precision, compile), and what it stores
    of its classes (stored_classes; a multi-head model: per head)."""
    if cfg.get("model") is not None:  # a file written by export.py, run by ONNX Runtime
        model = onnx_model(cfg)
        return model, {"class_names": model.class_names} if model.class_names else {}
    model, stored_names = build(cfg)
    model = apply_speed_options(model.to(device), compile=cfg.compile, bf16_autocast=cfg.precision == "bf16")
    return model, stored_names


def build(cfg: DictConfig) -> tuple[DenseModel, dict]:
    """From a train.py checkpoint (ckpt=) or from the backbone/head groups (Meta's released heads); with
    what a checkpoint stores of its classes (stored_classes; {}: nothing)."""
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
            return model, {name: stored_classes(checkpoint, name) for name in model.names}
        return model, stored_classes(checkpoint)
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
    return model_from_config(cfg.backbone, cfg.head).eval(), {}


# The datasets whose names predict.py assumes for a checkpoint that stores none, by class count.
KNOWN_CLASSES = {len(ADE20K_CLASSES): ("ADE20K", ADE20K_CLASSES), len(VOC_CLASSES): ("VOC", VOC_CLASSES)}


def segmentation_classes(
    model: DenseModel, stored: dict, palette: str = "auto"
) -> tuple[list[str], np.ndarray, str]:
    """The names and palette (K×3 uint8) of the model's classes, and where they come from (for the log).
    Names: the checkpoint's, else ADE20K's for 150 classes and VOC's for 21, else "class N". Palette:
    palette=auto the checkpoint's, else as viz.get_palette(palette=...) chooses."""
    count = num_classes(model)
    names = stored.get("class_names")
    if names is not None and len(names) == count:
        names_from = "the checkpoint's names"
    elif count in KNOWN_CLASSES:
        dataset, names = KNOWN_CLASSES[count]
        names_from = f"{dataset}'s names ({count} classes; the model stores none)"
    else:
        names = [f"class {i}" for i in range(count)]
        names_from = "names 'class N' (the model stores none)"
    colours = stored.get("palette")
    if palette == "auto" and colours is not None and len(colours) == count:
        table, palette_from = np.array(colours, dtype=np.uint8), "the checkpoint's palette"
    else:
        table = viz.get_palette(count, palette)
        chosen = {150: "ade20k", 21: "voc"}.get(count, "generic") if palette == "auto" else palette
        palette_from = f"the {chosen} palette (palette={palette})"
    return list(names), table, f"classes: {names_from}, {palette_from}"


def class_names(model: DenseModel, stored: dict) -> list[str]:
    """The names of the model's classes (segmentation_classes)."""
    return segmentation_classes(model, stored)[0]


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
