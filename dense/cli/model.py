"""Where the entry scripts get their model, in one place: a train.py checkpoint read, checked and
rebuilt the same way for train.py's resume, eval.py, predict.py and export.py; a model from the
backbone/head groups (train.py's new runs, Meta's released heads); and what a model says of its classes."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from omegaconf import DictConfig

from dense.backbones import check_official_weights, get_spec
from dense.checkpoint import model_from_checkpoint, read_model_config, stored_classes
from dense.config import model_from_config
from dense.core.errors import ConfigError
from dense.data import ADE20K_CLASSES, VOC_CLASSES
from dense.model import DenseModel
from dense.multi_head import MultiHeadModel
from dense.tools import viz


def from_checkpoint(path, backbone_weights: str | None = None) -> tuple[dict, DenseModel | MultiHeadModel]:
    """A train.py checkpoint (read once, checked: dense.checkpoint.read_model_config) and the model it
    holds; backbone_weights: where its backbone file lies now, if it moved."""
    checkpoint, _ = read_model_config(path)
    return checkpoint, model_from_checkpoint(checkpoint, path, backbone_weights=backbone_weights)


def from_groups(backbone: Mapping, head: Mapping, depth_mode: str = "metric") -> DenseModel | MultiHeadModel:
    """The model of the backbone and head groups (dense.config.model_from_config)."""
    return model_from_config(backbone, head, depth_mode=depth_mode)


def for_inference(cfg: DictConfig) -> tuple[DenseModel, dict]:
    """From a train.py checkpoint (ckpt=) or from the backbone/head groups (Meta's released heads); with
    what a checkpoint stores of its classes (stored_classes; {}: nothing)."""
    if cfg.ckpt is not None:
        if cfg.head.get("weights"):
            raise ConfigError(
                "give either ckpt=PATH (train.py) or head.weights=PATH (a released head), not both"
            )
        if not os.path.isfile(cfg.ckpt):
            raise ConfigError(f"checkpoint not found: {cfg.ckpt}")
        checkpoint, model = from_checkpoint(cfg.ckpt, backbone_weights=cfg.backbone.get("weights"))
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
    return from_groups(cfg.backbone, cfg.head).eval(), {}


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
    colours = stored_palette(model, stored)
    if palette == "auto" and colours is not None:
        table, palette_from = np.array(colours, dtype=np.uint8), "the checkpoint's palette"
    else:
        table = viz.get_palette(count, palette)
        chosen = {150: "ade20k", 21: "voc"}.get(count, "generic") if palette == "auto" else palette
        palette_from = f"the {chosen} palette (palette={palette})"
    return list(names), table, f"classes: {names_from}, {palette_from}"


def stored_palette(model: DenseModel, stored: dict) -> list | None:
    """The palette a checkpoint stores for the model's classes (one [r, g, b] per class), else None:
    predict.py's colours with palette=auto, and what export.py writes into an ONNX file."""
    colours = stored.get("palette")
    return colours if colours is not None and len(colours) == num_classes(model) else None


def class_names(model: DenseModel, stored: dict) -> list[str]:
    """The names of the model's classes (segmentation_classes)."""
    return segmentation_classes(model, stored)[0]


def num_classes(model: DenseModel) -> int:
    # DenseModel.num_classes reads the head's attribute, which the linear heads do not set; the
    # build_model config always records it.
    return int(model.num_classes or model.config["num_classes"])
