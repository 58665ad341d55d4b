"""From the `backbone` and `head` config groups (configs/backbone, configs/head) to a DenseModel, and
the speed switches (`compile`, bf16) applied to it.

Used by train.py, eval.py and predict.py alike, so the same keys mean the same thing everywhere: the
fields of BackboneConfig, HeadConfig and MultiHeadConfig (dense/core/schema.py), and compile.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dense.core import schema
from dense.core.plain import plain
from dense.model import DenseModel, build_model
from dense.multi_head import MultiHeadModel, check_head_names
from dense.multi_head import build_model as build_multi_model

# The groups' keys are their schemas' fields (dense/core/schema.py): Hydra checks the configs composed
# from the YAML files; these sets check the same groups when they come another way (a user's own YAML
# file without a schema, a test's dict).
BACKBONE_KEYS = set(schema.field_names(schema.BackboneConfig))
HEAD_KEYS = set(schema.field_names(schema.HeadConfig))
# The head keys that are build_model's options (the others: which head, its weights, its own options).
HEAD_BUILD_KEYS = tuple(
    k for k in schema.field_names(schema.HeadConfig) if k not in ("name", "weights", "options")
)


# head=multi (configs/head/multi.yaml): several heads on one backbone pass. The group holds
# `heads: {name: {name: <registered head>, loss_weight: 1.0, <HEAD_KEYS>}}`.
MULTI = "multi"
MULTI_KEYS = set(schema.field_names(schema.MultiHeadConfig))
MULTI_ENTRY_KEYS = set(schema.field_names(schema.MultiHeadEntry))


def is_multi(head: Mapping) -> bool:
    """Whether the `head` group is head=multi (several heads)."""
    return head.get("name") == MULTI


def multi_head_entries(head: Mapping) -> dict[str, dict]:
    """The heads of a head=multi group, {name: its keys}, checked (one-line ValueError)."""
    head = dict(plain(head))
    unknown = sorted(set(head) - MULTI_KEYS)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(f'head.{k}' for k in unknown)} of head=multi; valid: {sorted(MULTI_KEYS)}"
        )
    entries = head.get("heads")
    if not isinstance(entries, dict) or not entries:
        raise ValueError(
            "head=multi needs head.heads: {name: {name: <head>, ...}}, e.g. head.heads.depth.name=depth_dpt"
        )
    check_head_names(list(entries), "head.heads")
    out = {}
    for name, entry in entries.items():
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(
                f"head.heads.{name} must name a registered head: head.heads.{name}.name=depth_dpt"
            )
        unknown = sorted(set(entry) - MULTI_ENTRY_KEYS)
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(f'head.heads.{name}.{k}' for k in unknown)}; valid: {sorted(MULTI_ENTRY_KEYS)}"
            )
        problem = schema.type_problem(entry, schema.MultiHeadEntry, f"head.heads.{name}.")
        if problem:
            raise ValueError(problem)
        weight = entry.get("loss_weight", 1.0)  # a number: type_problem checked it
        if not weight >= 0:
            raise ValueError(f"head.heads.{name}.loss_weight={weight!r} must be a number >= 0")
        out[name] = entry
    return out


def multi_head_tasks(head: Mapping) -> dict[str, str]:
    """{name: "depth" | "segmentation"} of the heads of a head=multi group (checked, ValueError)."""
    import heads as head_registry

    return {name: head_registry.get_head_spec(e["name"]).task for name, e in multi_head_entries(head).items()}


def model_from_config(backbone: Mapping, head: Mapping, depth_mode: str = "metric"):
    """The DenseModel of the two groups (a MultiHeadModel for head=multi); depth_mode: "metric" or
    "relative" (task.depth_mode of train.py; with head=multi, for its depth heads)."""
    if is_multi(head):
        return multi_model_from_config(backbone, head, depth_mode)
    backbone, head = dict(plain(backbone)), dict(plain(head))
    for group, config, known in (("backbone", backbone, BACKBONE_KEYS), ("head", head, HEAD_KEYS)):
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(f'{group}.{k}' for k in unknown)}; valid: {sorted(known)}"
            )
    options = dict(head.get("options") or {})
    for key in HEAD_BUILD_KEYS:
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


def multi_model_from_config(backbone: Mapping, head: Mapping, depth_mode: str = "metric") -> MultiHeadModel:
    """The MultiHeadModel of the backbone group and a head=multi group."""
    import heads as head_registry

    backbone = dict(plain(backbone))
    unknown = sorted(set(backbone) - BACKBONE_KEYS)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(f'backbone.{k}' for k in unknown)}; valid: {sorted(BACKBONE_KEYS)}"
        )
    heads = {}
    for name, entry in multi_head_entries(head).items():
        options = dict(entry.get("options") or {})
        for key in HEAD_BUILD_KEYS:
            if entry.get(key) is not None:
                options[key] = entry[key]
        if entry.get("weights"):
            options["head_weights"] = entry["weights"]
        if head_registry.get_head_spec(entry["name"]).task == "depth":
            options["depth_mode"] = depth_mode
        heads[name] = {"head": entry["name"], **options}
    return build_multi_model(
        backbone["name"],
        heads=heads,
        pretrained=bool(backbone.get("pretrained", False)) and not backbone.get("weights"),
        backbone_weights=backbone.get("weights"),
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


def apply_speed_options(
    model: DenseModel | MultiHeadModel, *, compile=False, bf16_autocast: bool = False
) -> DenseModel:
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
