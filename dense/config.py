"""From the `backbone` and `head` config groups (configs/backbone, configs/head) to a DenseModel, and
the speed switches (`compile`, bf16) applied to it.

Used by train.py, eval.py and predict.py alike, so the same keys mean the same thing everywhere:
backbone.{name, pretrained, weights}, head.{name, weights, layers, norm, use_cls_token, min_depth,
max_depth, num_classes, options}, compile.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dense.model import DenseModel, build_model
from dense.plain import plain

BACKBONE_KEYS = {"name", "pretrained", "weights"}
HEAD_KEYS = {
    "name",
    "weights",
    "layers",
    "norm",
    "use_cls_token",
    "min_depth",
    "max_depth",
    "num_classes",
    "options",
}


def model_from_config(backbone: Mapping, head: Mapping, depth_mode: str = "metric") -> DenseModel:
    """The DenseModel of the two groups; depth_mode: "metric" or "relative" (task.depth_mode of train.py)."""
    backbone, head = dict(plain(backbone)), dict(plain(head))
    for group, config, known in (("backbone", backbone, BACKBONE_KEYS), ("head", head, HEAD_KEYS)):
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(f'{group}.{k}' for k in unknown)}; valid: {sorted(known)}"
            )
    options = dict(head.get("options") or {})
    for key in ("layers", "norm", "use_cls_token", "min_depth", "max_depth", "num_classes"):
        if head.get(key) is not None:
            options[key] = head[key]
    return build_model(
        backbone["name"],
        head["name"],
        pretrained=bool(backbone.get("pretrained", False)) and not backbone.get("weights"),
        backbone_weights=backbone.get("weights"),
        head_weights=head.get("weights"),
        depth_mode=depth_mode,
        **options,
    )


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(value) -> str | None:
    """The `compile` key: false (eager), true (torch.compile's default mode) or a torch.compile mode."""
    if value is False or value is None:
        return None
    if value is True:
        return "default"
    if value in COMPILE_MODES:
        return value
    raise ValueError(f"compile={value!r} is not one of true, false, {', '.join(COMPILE_MODES)}")


def apply_speed_options(model: DenseModel, *, compile=False, bf16_autocast: bool = False) -> DenseModel:
    """The speed switches of the entry scripts, applied to a built model (after its weights are loaded).

    bf16_autocast: the run executes the model under bf16 autocast (train/eval with
        trainer.precision=bf16-mixed, predict.py precision=bf16); the frozen backbone's matrix weights
        are then stored in bf16 once, which is bit-identical and halves their memory (cast_backbone).
    compile: see compile_mode; DenseModel.compile compiles the backbone's token extraction, and the head
        for inference.
    """
    mode = compile_mode(compile)
    if bf16_autocast:
        model.cast_backbone(torch.bfloat16)
    if mode is not None:
        model.compile(mode=mode)
    return model
