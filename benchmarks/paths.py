"""The timed calls of one case: ours and the references that apply, one function per work.

Every path of a case gets the same input and the same weights (the references copy ours). A reference
that does not apply to the case is left out with its reason in `skipped` (recorded in the JSON).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.case import WORKS, Case, Path
from benchmarks.references import (
    NaiveLinearDepthHead,
    TimmDenseModel,
    Unavailable,
    build_timm_backbone,
    build_upstream,
    build_upstream_dinov3,
    timm_intermediates,
)
from dense.backbones import BackboneSpec, get_spec
from dense.backbones.dinov3.specs import Dinov3Spec
from dense.core.ops import imagenet_normalised
from dense.model import DenseModel, build_model
from dense.tasks import TASKS, DenseTask
from heads import LinearDepthHead, get_head_spec


def autocast(device: torch.device, precision: str):
    # bf16: autocast over fp32 weights (what upstream's numbers were taken with); fp32: a no-op context.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def maybe_compile(fn: Callable, on: bool) -> Callable:
    return torch.compile(fn) if on else fn


def _like(ours: DenseModel, backbone: nn.Module, head: nn.Module, model_class=DenseModel) -> DenseModel:
    """A model like `ours` (layers, norm, task, depth range) with another backbone and/or head."""
    model = model_class(
        backbone,
        head,
        task=ours.task,
        layers=ours.layers,
        norm=ours.norm,
        use_cls_token=ours.use_cls_token,
        min_depth=ours.min_depth,
        max_depth=ours.max_depth,
        config=ours.config,
    )
    if backbone is ours.backbone:
        model.backbone_dtype = ours.backbone_dtype
    return model


# ---- what every path of a case shares ----------------------------------------------------------------


@dataclass
class Inputs:
    images: torch.Tensor  # uint8 RGB, what the datasets give and our model takes
    normalised: torch.Tensor  # the same, ImageNet-normalised: what the references take
    padded: torch.Tensor  # the same as the backbone sees it (its own normalisation, padded)
    padding: tuple[int, int, int, int]
    target: torch.Tensor  # depth in metres (float32) or class ids (uint8), at the images' size

    def batch(self, task: str) -> dict:
        """A training batch as the datamodule makes it, already on the device."""
        key = "depth" if task == "depth" else "mask"
        return {"image": self.images, key: self.target, "name": [str(i) for i in range(len(self.images))]}


def build_ours(case: Case, args) -> DenseModel:
    options = {"num_classes": args.num_classes} if get_head_spec(case.head).task == "segmentation" else {}
    # Models are built under the device context: ViT-g's random initialisation then runs on the GPU
    # rather than on the CPU (about 10 s per ViT-g copy on two cores; a case holds up to three copies).
    device = torch.device(case.device)
    with device:
        return build_model(case.backbone, case.head, **options).to(device).eval()


def make_inputs(case: Case, ours: DenseModel, seed: int) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (case.batch, 3, *case.size), dtype=torch.uint8, generator=generator)
    images = images.to(case.device)
    padded, padding = ours.pad(ours.normalise(images))
    if ours.task == "depth":
        target = torch.rand(case.batch, 1, *case.size, generator=generator) * (
            ours.max_depth - ours.min_depth
        )
        target = target + ours.min_depth
    else:
        target = torch.randint(0, ours.num_classes, (case.batch, *case.size), generator=generator)
        target = target.to(torch.uint8)
    return Inputs(images, imagenet_normalised(images), padded, padding, target.to(case.device))


@dataclass
class References:
    """The reference models of a case; None where one does not apply."""

    timm_backbone: nn.Module | None = None
    naive_head: NaiveLinearDepthHead | None = None
    upstream: nn.Module | None = None  # DINOv2's whole hub depther
    upstream_backbone: nn.Module | None = None  # its backbone, or DINOv3's hub backbone


def dinov3_spec(backbone: str) -> Dinov3Spec | None:
    """The DINOv3 variant a backbone name is, or None for a DINOv2 one."""
    spec = get_spec(backbone)
    return spec if isinstance(spec, Dinov3Spec) else None


def build_timm_reference(
    spec: BackboneSpec, ours: DenseModel, device: torch.device, skipped: list
) -> nn.Module | None:
    try:
        with device:
            return build_timm_backbone(spec, ours.backbone).to(device).eval().requires_grad_(False)
    except Exception as error:  # a timm without this model or API: measure the rest
        skipped.append({"path": "timm", "reason": f"{type(error).__name__}: {error}"})
        return None


def build_naive_reference(case: Case, ours: DenseModel, skipped: list) -> NaiveLinearDepthHead | None:
    if isinstance(ours.head, LinearDepthHead):
        return NaiveLinearDepthHead(ours.head).to(case.device)
    skipped.append({"path": "naive", "reason": f"{case.head} has no naive variant (linear depth heads only)"})
    return None


def build_upstream_reference(
    spec: BackboneSpec, ours: DenseModel, upstream_dir: str | None, device: torch.device, skipped: list
) -> nn.Module | None:
    if upstream_dir is None:
        skipped.append({"path": "upstream", "reason": "no --upstream DIR given"})
        return None
    try:
        with device:
            return build_upstream(upstream_dir, spec, ours).to(device).eval()
    except Unavailable as error:
        skipped.append({"path": "upstream", "reason": str(error)})
        return None


def build_upstream_dinov3_reference(
    spec: Dinov3Spec, ours: DenseModel, upstream_dir: str | None, works, device: torch.device, skipped: list
) -> nn.Module | None:
    if upstream_dir is None:
        skipped.append({"path": "upstream", "reason": "no --upstream DIR given"})
        return None
    try:
        with device:
            backbone = build_upstream_dinov3(upstream_dir, spec, ours).to(device)
    except Unavailable as error:
        skipped.append({"path": "upstream", "reason": str(error)})
        return None
    if {"predict", "train"} & set(works):
        reason = (
            "predict, train: upstream DINOv3 has dense heads for the 7B alone; timed on the backbone only"
        )
        skipped.append({"path": "upstream", "reason": reason})
    return backbone


def build_dinov2_references(case: Case, args, ours: DenseModel, skipped: list) -> References:
    spec, device, references = get_spec(case.backbone), torch.device(case.device), References()
    if "timm" in args.reference:
        references.timm_backbone = build_timm_reference(spec, ours, device, skipped)
    if "naive" in args.reference:
        references.naive_head = build_naive_reference(case, ours, skipped)
    if "upstream" in args.reference:
        references.upstream = build_upstream_reference(spec, ours, args.upstream, device, skipped)
        references.upstream_backbone = None if references.upstream is None else references.upstream.backbone
    return references


def build_dinov3_references(
    case: Case, args, ours: DenseModel, spec: Dinov3Spec, skipped: list
) -> References:
    references = References()
    if "timm" in args.reference:
        skipped.append({"path": "timm", "reason": "DINOv3 backbones are compared with upstream's code only"})
    if "naive" in args.reference:
        references.naive_head = build_naive_reference(case, ours, skipped)
    if "upstream" in args.reference:
        references.upstream_backbone = build_upstream_dinov3_reference(
            spec, ours, args.upstream, args.work, torch.device(case.device), skipped
        )
    return references


def build_references(case: Case, args, ours: DenseModel, skipped: list) -> References:
    spec = dinov3_spec(case.backbone)
    if spec is None:
        return build_dinov2_references(case, args, ours, skipped)
    return build_dinov3_references(case, args, ours, spec, skipped)


class Calls:
    """Turns a forward into a timed call of the case: inference under no_grad, or a training step.

    Every training step computes the task's own loss (SigLoss + GradientLoss, or the segmentation loss:
    `task.compute_loss`, each path with its own copy of the loss module) on the same batch.
    With --compile on, a reference path compiles its whole call; our model paths (predict, train) use
    DenseModel.compile instead, which is what train.py/eval.py/predict.py do with compile=true.
    """

    def __init__(self, case: Case, batch: dict, task: DenseTask):
        self.device, self.precision, self.compile = torch.device(case.device), case.precision, case.compile
        self.batch, self.task = batch, task

    def inference(self, call: Callable[[], Any], compile_call: bool | None = None) -> Callable[[], Any]:
        def run():
            with torch.no_grad(), autocast(self.device, self.precision):
                return call()

        return maybe_compile(run, self.compile if compile_call is None else compile_call)

    def training(
        self, forward: Callable[[], torch.Tensor], params, compile_call: bool | None = None
    ) -> tuple[Callable[[], Any], torch.optim.Optimizer]:
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        loss, target = copy.deepcopy(self.task.loss), self.task.target(self.batch)

        def loss_fn():
            with autocast(self.device, self.precision):
                out = forward()
            return loss(out.float(), target)["loss"]

        loss_fn = maybe_compile(loss_fn, self.compile if compile_call is None else compile_call)

        def step():
            loss = loss_fn()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()  # no .item(): the step stays free of host-device syncs

        return step, optimizer


def model_makers(case: Case, ours: DenseModel, references: References) -> dict[str, Callable[[], DenseModel]]:
    """Fresh whole models for the predict and train paths: a train path trains its own copy of the head
    (with its own optimiser, in train mode) while the predict paths keep theirs in eval mode. Backbones
    are shared."""
    naive_head, timm_backbone = references.naive_head, references.timm_backbone

    def ours_model():
        model = _like(ours, ours.backbone, copy.deepcopy(ours.head))
        if case.compile:
            model.compile()  # what compile=true does in train/eval/predict: no whole-call compile below
        return model.to(case.device)  # (its normalisation table)

    makers: dict[str, Callable[[], DenseModel]] = {"ours": ours_model}
    if naive_head is not None:
        makers["naive"] = lambda: _like(ours, ours.backbone, NaiveLinearDepthHead(ours.head).to(case.device))
    if timm_backbone is not None:

        def timm_model():
            head = NaiveLinearDepthHead(ours.head) if naive_head is not None else copy.deepcopy(ours.head)
            return _like(ours, timm_backbone, head.to(case.device), TimmDenseModel)

        makers["timm+naive" if naive_head is not None else "timm"] = timm_model
    return makers


# ---- the paths of each work ----------------------------------------------------------------------------


def backbone_paths(
    case: Case, ours: DenseModel, references: References, inputs: Inputs, calls: Calls
) -> list[Path]:
    layers, norm, use_cls, padded = ours.layers, ours.norm, ours.use_cls_token, inputs.padded

    def intermediate_layers(backbone: nn.Module) -> Callable[[], Any]:
        # ours and upstream share upstream's get_intermediate_layers API
        return lambda: backbone.get_intermediate_layers(
            padded, n=layers, reshape=True, return_class_token=use_cls, norm=norm
        )

    paths = [Path("backbone", "ours", calls.inference(intermediate_layers(ours.backbone)), [ours.backbone])]
    if (timm_backbone := references.timm_backbone) is not None:
        timm_call = calls.inference(lambda: timm_intermediates(timm_backbone, padded, layers, norm, use_cls))
        paths.append(Path("backbone", "timm", timm_call, [timm_backbone]))
    if (upstream := references.upstream_backbone) is not None:
        upstream_call = calls.inference(intermediate_layers(upstream))
        paths.append(Path("backbone", "upstream", upstream_call, [upstream]))
    return paths


def head_paths(
    case: Case, ours: DenseModel, references: References, inputs: Inputs, calls: Calls
) -> list[Path]:
    with torch.no_grad(), autocast(calls.device, case.precision):
        features = ours.extract_features(inputs.padded)  # computed once: this work is the head alone
    size, padding = tuple(case.size), inputs.padding
    paths = [
        Path("head", "ours", calls.inference(lambda: ours.forward_head(features, padding, size)), [ours.head])
    ]
    if (naive_head := references.naive_head) is not None:
        naive = _like(ours, ours.backbone, naive_head)
        paths.append(
            Path(
                "head",
                "naive",
                calls.inference(lambda: naive.forward_head(features, padding, size)),
                [naive_head],
            )
        )
    return paths


def predict_paths(
    case: Case, ours: DenseModel, references: References, inputs: Inputs, calls: Calls
) -> list[Path]:
    paths = []
    for name, make in model_makers(case, ours, references).items():
        model = make().eval()
        images = inputs.images if name == "ours" else inputs.normalised  # uint8 as predict.py hands it
        call = calls.inference(
            lambda m=model, x=images: m.predict(x), compile_call=case.compile and name != "ours"
        )
        paths.append(Path("predict", name, call, [model.backbone, model.head]))
    if (upstream := references.upstream) is not None:
        normalised = inputs.normalised
        call = calls.inference(lambda: upstream.whole_inference(normalised, img_meta=None, rescale=True))
        paths.append(Path("predict", "upstream", call, [upstream]))
    return paths


def train_paths(
    case: Case, ours: DenseModel, references: References, inputs: Inputs, calls: Calls
) -> list[Path]:
    paths = []
    for name, make in model_makers(case, ours, references).items():
        model = make().train()
        if name == "ours":
            paths.append(task_train_path(model, calls))
            continue
        step, optimizer = calls.training(
            lambda m=model, x=inputs.normalised: m(x), list(model.head.parameters()), case.compile
        )
        paths.append(Path("train", name, step, [model.backbone, model.head], optimizer))
    if references.upstream is not None:
        paths.append(upstream_train_path(references.upstream, inputs.normalised, calls))
    return paths


def task_train_path(model: DenseModel, calls: Calls) -> Path:
    """Our training step as train.py runs it, without the Trainer around it: the task's training_step
    (the model on uint8 images, the task's loss, its NaN flag; its self.log calls do nothing outside a
    Trainer) under autocast as Lightning's bf16-mixed precision runs it, the backward, and the task's
    optimiser and per-step schedule. The loop work measures the same inside a Trainer."""
    task = TASKS[model.task](model)
    optimizer, schedule = task.optimizer_and_schedule(total_steps=10**6)
    batch = calls.batch

    def step():
        with autocast(calls.device, calls.precision):
            loss = task.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        return loss.detach()  # no .item(): the step stays free of host-device syncs

    return Path("train", "ours", step, [model.backbone, model.head], optimizer)


def upstream_train_path(upstream: nn.Module, images: torch.Tensor, calls: Calls) -> Path:
    """Upstream's training forward: features of the frozen backbone, decode_head, resize to the input."""
    train_head = copy.deepcopy(upstream.decode_head).train()

    def forward():
        with torch.no_grad():  # its backbone is frozen (requires_grad False): no graph either way
            features = upstream.extract_feat(images)
        out = train_head(features, None)
        return F.interpolate(
            out, size=images.shape[-2:], mode="bilinear", align_corners=upstream.align_corners
        )

    step, optimizer = calls.training(forward, list(train_head.parameters()))
    return Path("train", "upstream", step, [upstream.backbone, train_head], optimizer)


WORK_PATHS = {"backbone": backbone_paths, "head": head_paths, "predict": predict_paths, "train": train_paths}


def build_paths(case: Case, args, skipped: list[dict]) -> tuple[list[Path], DenseModel]:
    """Every path of the works asked for (in WORKS order, ours first in each), and our model."""
    torch.manual_seed(args.seed)
    ours = build_ours(case, args)
    inputs = make_inputs(case, ours, args.seed)
    references = build_references(case, args, ours, skipped)
    if case.precision == "bf16":
        # Our bf16 path stores the frozen backbone's matrix weights in bf16 (DenseModel.cast_backbone),
        # as train/eval/predict do under bf16; the references above copied the fp32 weights first and
        # run under autocast over fp32 weights, as upstream's numbers were taken.
        ours.cast_backbone(torch.bfloat16)
    # The LightningModule train.py trains: its loss (and its defaults) for every training path.
    calls = Calls(case, inputs.batch(ours.task), TASKS[ours.task](ours))
    paths: list[Path] = []
    for work in WORKS:
        if work in args.work:
            paths += WORK_PATHS[work](case, ours, references, inputs, calls)
    return paths, ours
