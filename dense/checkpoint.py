"""Checkpoints written by train.py: what they hold, how a model is rebuilt from one, atomic writes.

A checkpoint is a Lightning checkpoint (a plain dict, loadable with weights_only=True) with:
- "state_dict": the LightningModule's weights, i.e. `model.head.*` — and `model.backbone.*` only when
  the backbone cannot be rebuilt from a file: a frozen ViT-g from its weights file is not copied into
  every checkpoint, so checkpoints stay megabytes, not gigabytes. (train.py writes a random-initialised
  backbone once to `checkpoints/backbone_init.pth` and points its checkpoints at it, so it never takes
  the stored path; a LightningModule used outside train.py does.)
- "dense_model": the build_model arguments (backbone, head, weights source, layers, head options),
  so a checkpoint always rebuilds the exact model that wrote it.
"""

from __future__ import annotations

import os

import torch

from dense.errors import WeightsError, load_weights_file
from dense.model import DenseModel, build_model

MODEL_KEY = "dense_model"
BACKBONE_PREFIX = "model.backbone."
HEAD_PREFIX = "model.head."


def backbone_is_stored(config: dict) -> bool:
    """The backbone goes into the checkpoint only when nothing else can rebuild it."""
    return not config.get("pretrained") and not config.get("backbone_weights")


def strip_frozen_backbone(checkpoint: dict, config: dict) -> None:
    """Drop the frozen backbone's weights from a checkpoint when a file or the hub can rebuild them."""
    checkpoint[MODEL_KEY] = dict(config)
    if not backbone_is_stored(config):
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(BACKBONE_PREFIX)]:
            del state[key]


def restore_frozen_backbone(checkpoint: dict, model: DenseModel) -> None:
    """Put the (rebuilt) backbone's weights back before Lightning's strict load_state_dict."""
    state = checkpoint["state_dict"]
    if not any(k.startswith(BACKBONE_PREFIX) for k in state):
        for key, value in model.backbone.state_dict().items():
            state[BACKBONE_PREFIX + key] = value


def read_model_config(path: str | os.PathLike) -> tuple[dict, dict]:
    """(checkpoint, its dense_model config); a clear error for files train.py did not write."""
    checkpoint = load_weights_file(path)
    if not isinstance(checkpoint, dict) or MODEL_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise WeightsError(
            f"{os.fspath(path)} is not a checkpoint written by train.py (no '{MODEL_KEY}' entry); "
            "for Meta's released head files use build_model(..., head_weights=PATH)"
        )
    return checkpoint, checkpoint[MODEL_KEY]


def load_model(path: str | os.PathLike, backbone_weights: str | os.PathLike | None = None) -> DenseModel:
    """Rebuild the exact DenseModel that wrote checkpoint `path` (eval mode).

    backbone_weights: where the backbone weights file lies now, when it has moved since training.
    """
    checkpoint, config = read_model_config(path)
    config = dict(config)
    state = checkpoint["state_dict"]
    stored = any(k.startswith(BACKBONE_PREFIX) for k in state)
    if backbone_weights is not None:
        config["backbone_weights"] = os.fspath(backbone_weights)
    elif config.get("backbone_weights") and not stored and not os.path.isfile(config["backbone_weights"]):
        raise WeightsError(
            f"{os.fspath(path)} was trained on the backbone weights {config['backbone_weights']}, which are not "
            "there any more: pass their new location (backbone_weights=PATH, config: backbone.weights=PATH)"
        )
    backbone, head = config.pop("backbone"), config.pop("head")
    if stored:  # random-initialised backbone: its weights are in the checkpoint
        config["pretrained"], config["backbone_weights"] = False, None
    model = build_model(
        backbone,
        head,
        pretrained=config.pop("pretrained", False),
        backbone_weights=config.pop("backbone_weights", None),
        **config,
    )
    if stored:
        model.backbone.load_state_dict(
            {k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
        )
    import heads

    heads.load_released_head(model.head, checkpoint, prefix=HEAD_PREFIX, name=path)
    return model.eval()


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save through a temporary file renamed into place (fsync'd first): a crash never leaves
    half a checkpoint under the final name."""
    from dense.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
