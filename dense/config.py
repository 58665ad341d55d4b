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


# ---- device and precision of the entry scripts' Trainer (trainer.precision=auto) --------------------

AUTO_PRECISION = "auto"
MATMUL_PRECISIONS = ("highest", "high", "medium")
CUDA_ACCELERATORS = ("auto", "gpu", "cuda")


def uses_cuda(accelerator) -> bool:
    """Whether a Trainer with this `accelerator` runs on a CUDA GPU (Lightning's "auto" and "gpu" take
    one when there is one)."""
    return str(accelerator) in CUDA_ACCELERATORS and torch.cuda.is_available()


def resolve_precision(precision, accelerator) -> str:
    """trainer.precision: "auto" is bf16-mixed on a CUDA GPU that computes in bf16 natively (Ampere and
    later: A100, H100, H200, RTX 30xx+; not emulated on older ones), else 32-true (CPU, older GPUs, Apple
    MPS). Any other value is Lightning's and passes unchanged (trainer.precision=32-true opts out)."""
    if precision != AUTO_PRECISION:
        return precision
    if uses_cuda(accelerator) and torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16-mixed"
    return "32-true"


def apply_matmul_precision(setting, accelerator) -> str | None:
    """float32_matmul_precision: on a CUDA run, torch.set_float32_matmul_precision(setting) ("high":
    TF32 tensor cores for float32 matmuls, what Lightning's start-up hint asks for; "highest": full
    float32), unless the program already chose one (a module of `imports=` called it: torch's setting is
    no longer its default "highest"). null, or a CPU run: torch's setting is left as it is. Returns the
    setting in force on a CUDA run, else None."""
    if setting is not None and setting not in MATMUL_PRECISIONS:
        raise ValueError(
            f"float32_matmul_precision={setting!r} is not one of {', '.join(MATMUL_PRECISIONS)} (or null)"
        )
    if not uses_cuda(accelerator):
        return None
    if setting is not None and torch.get_float32_matmul_precision() == "highest":
        torch.set_float32_matmul_precision(setting)
    return torch.get_float32_matmul_precision()


def describe_device(trainer, matmul_precision: str | None) -> str:
    """One line for the start of a run: where it runs, in which precision, and how to change that."""
    device = trainer.strategy.root_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type.upper()
    count = trainer.num_devices * trainer.num_nodes
    where = f"{count} × {name}" if count > 1 else name
    text = f"device: {where} ({device.type}), precision: {trainer.precision}"
    if matmul_precision is not None:
        text += f", float32 matmuls: {matmul_precision}"
    if trainer.precision != "32-true":
        text += " (trainer.precision=32-true: float32 throughout)"
    elif device.type == "cuda":
        text += " (trainer.precision=bf16-mixed: bf16 autocast, faster on tensor cores)"
    return text
