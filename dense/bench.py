"""Speed and memory of the frozen-backbone pipeline, measured against reference implementations.

    python -m dense.bench --backbone vits14 --head depth_linear4 --size 224x224 --batch 4 \\
        --precision fp32,bf16 --compile off,on --device cpu --iters 10 --warmup 2 --json out.json

Every option takes a comma-separated list and the bench runs every combination (a "case"). Per case it
measures four kinds of work:

    backbone  the frozen backbone's forward on the head's layers (get_intermediate_layers)
    head      the head and DenseModel.decode, on features computed once (inference)
    predict   DenseModel.predict(images), mode "whole": pad, backbone, head, clamp, resize
    train     one training step: frozen backbone under no_grad, head forward/backward, AdamW on the head

each by `ours` and by reference paths run in the same process on the same input and the same weights:

    timm        timm's VisionTransformer (forward_intermediates), as backbone; under our head for
                predict/train when the head has no naive variant
    naive       our backbone + upstream's data flow for the linear depth heads: every layer's (patch,
                class token) map upsampled 4× and concatenated before the 1×1 conv (NaiveLinearDepthHead)
    timm+naive  timm's backbone + the naive head: what timm plus upstream's head gives
    upstream    Meta's own code (the hub depthers) from a local checkout: --upstream DIR (depth heads,
                plain backbones)

Headlines are ratios, ours ÷ reference: speed = ours img/s ÷ reference img/s (> 1: ours is faster),
memory = ours peak ÷ reference peak (< 1: ours needs less). "TFLOP/s" is the backbone's forward FLOPs
(`flops_per_image` of the padded size) × images/s, for every work that runs the backbone.

Timing: warm-up calls, then the paths of one work are timed round-robin (call i of every path, then
call i+1), each call ended by a device synchronisation. Speed is reported three ways: the median call
("img/s"), the fastest call ("best"), and "paired": the median over rounds of the ratio of the two
paths' calls in the same round. On an idle GPU the three should agree. On a CPU shared with other
jobs the load changes from second to second; calls of the same round ran seconds apart, so the paired
ratio is the steadiest there. Every call's time is in the JSON.

Memory, in a separate call after the timing: CUDA `max_memory_allocated` above what was allocated
before the call; CPU the growth of the resident set (VmHWM after resetting it through
/proc/self/clear_refs, from VmRSS after malloc_trim). The peak reported for a path is that growth plus
the bytes the path itself holds (its modules' parameters and buffers, its optimiser state): every path
of a case lives on the device at once, so the device-wide number would count the others' weights.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dense.backbone import BackboneSpec, get_spec
from dense.features import FeatureMaps
from dense.model import DenseModel, build_model, center_padding
from heads import LinearDepthHead, get_head_spec

WORKS = ("backbone", "head", "predict", "train")
REFERENCES = ("timm", "naive", "upstream")
PRECISIONS = ("fp32", "bf16")


# ---- reference paths --------------------------------------------------------------------------------


class NaiveLinearDepthHead(nn.Module):
    """Reference for LinearDepthHead: upstream's data flow (BNHead(classify=True)) with the same weights.

    Per layer concat(patch map, class token broadcast over the grid) → bilinear 4× → concatenate the
    layers → 1×1 conv → bin normalisation → expectation, written as upstream writes it. It builds the
    B×(2·D·layers)×4h×4w tensor that LinearDepthHead never builds; its output equals ours to about 1e-5
    relative in fp32 (the bench records the difference).
    """

    def __init__(self, head: LinearDepthHead):
        super().__init__()
        self.upsample = head.upsample
        self.use_cls_token = head.use_cls_token
        self.bin_weighting = head.bin_weighting
        self.conv_depth = copy.deepcopy(head.conv_depth)  # own parameters: trained by its own optimiser
        self.register_buffer("bins", head.bins.clone(), persistent=False)

    def forward(self, features: FeatureMaps) -> torch.Tensor:
        maps = []
        for i, patches in enumerate(features.patches):
            if self.use_cls_token:
                cls = features.cls_tokens[i][:, :, None, None].expand_as(patches)
                patches = torch.cat((patches, cls), dim=1)
            maps.append(patches)
        h, w = features.grid
        size = (h * self.upsample, w * self.upsample)
        x = torch.cat(
            [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], dim=1
        )
        logit = self.conv_depth(x)
        if self.bin_weighting == "linear":
            logit = torch.relu(logit) + 0.1
            logit = logit / logit.sum(dim=1, keepdim=True)
        elif self.bin_weighting == "softmax":
            logit = torch.softmax(logit, dim=1)
        else:
            logit = torch.sigmoid(logit)
            logit = logit / logit.sum(dim=1, keepdim=True)
        return torch.einsum("ikmn,k->imn", [logit, self.bins]).unsqueeze(1)


class TimmDenseModel(DenseModel):
    """Reference: a DenseModel whose frozen features come from timm's ViT instead of ours.

    Padding, head, clamp, resize and predict are DenseModel's own, so a difference to `ours` is the
    backbone's (and the head's, when the head is the naive one).
    """

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_embed.patch_size[0]

    @torch.no_grad()
    def extract_features(self, padded_images: torch.Tensor) -> FeatureMaps:
        outputs = timm_intermediates(self.backbone, padded_images, self.layers, self.norm, self.use_cls_token)
        if not self.use_cls_token:
            return FeatureMaps(outputs)
        return FeatureMaps([p for p, _ in outputs], [prefix[:, 0] for _, prefix in outputs])


def timm_intermediates(model: nn.Module, images: torch.Tensor, layers, norm: bool, with_cls: bool):
    """timm's equivalent of get_intermediate_layers(reshape=True, return_class_token=with_cls).

    stop_early: blocks after the last requested one are not run, as in ours. With prefix tokens each
    entry is (patch map, B×(1+registers)×D); the class token is prefix[:, 0].
    """
    return model.forward_intermediates(
        images,
        indices=list(layers),
        return_prefix_tokens=with_cls,
        norm=norm,
        stop_early=True,
        output_fmt="NCHW",
        intermediates_only=True,
    )


def build_timm_backbone(spec: BackboneSpec, ours: nn.Module) -> nn.Module:
    """timm's DINOv2 ViT holding our backbone's weights (converted by timm's own checkpoint filter)."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    name, overrides = spec.timm_name, {}
    if name is None:
        # The tiny test variants: timm's DINOv2 config of the same kind, shrunk to the same size.
        if spec.ffn == "swiglu":
            name = "vit_giant_patch14_dinov2"
        elif spec.num_register_tokens:
            name = "vit_small_patch14_reg4_dinov2"
        else:
            name = "vit_small_patch14_dinov2"
        overrides = dict(embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads)
    model = timm.create_model(name, pretrained=False, dynamic_img_size=True, num_classes=0, **overrides)
    state = {k: v.detach() for k, v in ours.state_dict().items()}
    model.load_state_dict(checkpoint_filter_fn(state, model))
    return model


# Our head name → (upstream hub entry suffix, its kwargs). Upstream's segmentation heads need mmseg.
UPSTREAM_DEPTHERS = {
    "depth_linear": ("ld", {"layers": 1}),
    "depth_linear4": ("ld", {"layers": 4}),
    "depth_dpt": ("dd", {}),
}


class Unavailable(Exception):
    """A reference path that does not apply to this case; the message says why (recorded in the JSON)."""


def build_upstream(repo_dir: str, spec: BackboneSpec, ours: DenseModel) -> nn.Module:
    """Upstream's hub depther (DepthEncoderDecoder) from a local DINOv2 checkout, with our weights."""
    head = ours.config.get("head")
    if head not in UPSTREAM_DEPTHERS:
        raise Unavailable(f"upstream's hub has no {head} model (only depth_linear, depth_linear4, depth_dpt)")
    if spec.hub_name is None or spec.num_register_tokens:
        raise Unavailable(f"upstream's hub depthers exist for the plain ViT-S/B/L/g only, not {spec.name}")
    suffix, kwargs = UPSTREAM_DEPTHERS[head]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "xFormers is not available": upstream then uses SDPA, as we do
        model = torch.hub.load(
            repo_dir, f"{spec.hub_name}_{suffix}", source="local", pretrained=False, trust_repo=True, **kwargs
        )
    model.backbone.load_state_dict(ours.backbone.state_dict())
    model.decode_head.load_state_dict(ours.head.state_dict())
    # Upstream's linear hub heads hard-code max_depth 80; give it our range so the outputs compare.
    model.decode_head.min_depth, model.decode_head.max_depth = ours.min_depth, ours.max_depth
    model.backbone.requires_grad_(False)
    return model


# ---- measuring -------------------------------------------------------------------------------------


@dataclass
class Case:
    backbone: str
    head: str
    size: tuple[int, int]
    batch: int
    precision: str
    compile: bool
    device: str

    def label(self) -> str:
        h, w = self.size
        return (
            f"{self.backbone} {self.head} {h}x{w} batch {self.batch} {self.precision} "
            f"compile {'on' if self.compile else 'off'} {self.device}"
        )


@dataclass
class Path:
    """One way of doing one work: `fn()` processes one batch."""

    work: str
    name: str
    fn: Callable[[], Any]
    modules: list[nn.Module]
    optimizer: torch.optim.Optimizer | None = None
    times: list[float] = field(default_factory=list)
    first_call_s: float | None = None
    memory: dict | None = None
    output: Any = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)  # kernels are asynchronous: the call is done when the device is
    return time.perf_counter() - start, out


def held_bytes(modules: list[nn.Module], optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes a path keeps on the device between calls: parameters, buffers, optimiser state."""
    tensors = {}
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            tensors[t.data_ptr()] = t
    if optimizer is not None:
        for state in optimizer.state.values():
            for t in state.values():
                if torch.is_tensor(t):
                    tensors[t.data_ptr()] = t
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_free_memory() -> None:
    """Give freed heap memory back to the OS, so that the next call's growth of the RSS is its peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the RSS growth is then a lower bound


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: resets VmHWM (the peak RSS) to the current RSS
        return True
    except OSError:
        return False


def measure_memory(fn: Callable[[], Any], device: torch.device) -> tuple[dict, Any]:
    """Peak memory one call adds on top of what is allocated before it (bytes), and the call's output."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"added_bytes": peak - before, "method": "torch.cuda.max_memory_allocated"}, out
    _release_free_memory()
    if _reset_peak_rss() and _proc_status_kib("VmRSS") is not None:
        before = _proc_status_kib("VmRSS")
        out = fn()
        added = max(_proc_status_kib("VmHWM") - before, 0) * 1024
        return {"added_bytes": added, "method": "peak RSS (VmHWM after clear_refs) - RSS before"}, out
    # Elsewhere only the lifetime high-water mark exists: its growth is a lower bound.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"added_bytes": (after - before) * scale, "method": "ru_maxrss growth (lower bound)"}, out


def autocast(device: torch.device, precision: str):
    # bf16: autocast over fp32 weights (what upstream's numbers were taken with); fp32: a no-op context.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def maybe_compile(fn: Callable, on: bool) -> Callable:
    return torch.compile(fn) if on else fn


def patch_maps(output) -> list[torch.Tensor]:
    """The patch maps of a backbone output: (patches, cls) pairs or bare maps, ours/timm/upstream alike."""
    return [o[0] if isinstance(o, tuple | list) else o for o in output]


def compare(ours, reference) -> dict:
    """Largest absolute difference of two outputs, and that relative to the largest |ours|."""
    if isinstance(ours, torch.Tensor):
        ours, reference = [ours], [reference]
    diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(ours, reference))
    scale = max(a.float().abs().max().item() for a in ours)
    return {"max_abs_diff": diff, "max_rel_diff": diff / scale if scale else diff}


def task_loss(out: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    # Not dense.losses: their input checks read values on the host, a sync per step that would hide
    # the device's speed; the loss itself is a negligible part of a step.
    if task == "depth":
        return (out.float() - target).abs().mean()
    return F.cross_entropy(out.float(), target)


# ---- one case ----------------------------------------------------------------------------------------


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


def build_paths(case: Case, args, skipped: list[dict]) -> tuple[list[Path], DenseModel]:
    device = torch.device(case.device)
    torch.manual_seed(args.seed)
    spec = get_spec(case.backbone)
    task = get_head_spec(case.head).task
    options = {"num_classes": args.num_classes} if task == "segmentation" else {}
    # Models are built under the device context: ViT-g's random initialisation then runs on the GPU
    # rather than on the CPU (about 10 s per ViT-g copy on two cores; a case holds up to three copies).
    with device:
        ours = build_model(case.backbone, case.head, **options).to(device).eval()
    layers, norm, use_cls = ours.layers, ours.norm, ours.use_cls_token

    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(case.batch, 3, *case.size, generator=generator).to(device)
    padded, padding = ours.pad(images)
    if task == "depth":
        target = torch.rand(case.batch, 1, *case.size, generator=generator) * (
            ours.max_depth - ours.min_depth
        )
        target = (target + ours.min_depth).to(device)
    else:
        target = torch.randint(0, ours.num_classes, (case.batch, *case.size), generator=generator).to(device)

    # The reference models. Each may not apply to this case: then it is skipped with a reason.
    timm_backbone = naive_head = upstream = None
    if "timm" in args.reference:
        try:
            with device:
                timm_backbone = (
                    build_timm_backbone(spec, ours.backbone).to(device).eval().requires_grad_(False)
                )
        except Exception as error:  # a timm without this model or API: measure the rest
            skipped.append({"path": "timm", "reason": f"{type(error).__name__}: {error}"})
    if "naive" in args.reference:
        if isinstance(ours.head, LinearDepthHead):
            naive_head = NaiveLinearDepthHead(ours.head).to(device)
        else:
            skipped.append(
                {"path": "naive", "reason": f"{case.head} has no naive variant (linear depth heads only)"}
            )
    if "upstream" in args.reference:
        if args.upstream is None:
            skipped.append({"path": "upstream", "reason": "no --upstream DIR given"})
        else:
            try:
                with device:
                    upstream = build_upstream(args.upstream, spec, ours).to(device).eval()
            except Unavailable as error:
                skipped.append({"path": "upstream", "reason": str(error)})

    if case.precision == "bf16":
        # Our bf16 path stores the frozen backbone's matrix weights in bf16 (DenseModel.cast_backbone),
        # as train/eval/predict do under bf16; the references above copied the fp32 weights first and
        # run under autocast over fp32 weights, as upstream's numbers were taken.
        ours.cast_backbone(torch.bfloat16)

    # With --compile on, a reference path compiles its whole call; our model paths (predict, train) use
    # DenseModel.compile instead, which is what train.py/eval.py/predict.py do with compile=true.
    def inference(call: Callable[[], Any], compile_call: bool = case.compile) -> Callable[[], Any]:
        def run():
            with torch.no_grad(), autocast(device, case.precision):
                return call()

        return maybe_compile(run, compile_call)

    def training(
        forward: Callable[[], torch.Tensor], params, compile_call: bool = case.compile
    ) -> tuple[Callable[[], Any], torch.optim.Optimizer]:
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

        def loss_fn():
            with autocast(device, case.precision):
                out = forward()
            return task_loss(out, target, task)

        loss_fn = maybe_compile(loss_fn, compile_call)

        def step():
            loss = loss_fn()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()  # no .item(): the step stays free of host-device syncs

        return step, optimizer

    # Fresh models for the predict and train paths: a train path trains its own copy of the head (with its
    # own optimiser, in train mode) while the predict paths keep theirs in eval mode. Backbones are shared.
    def ours_model():
        model = _like(ours, ours.backbone, copy.deepcopy(ours.head))
        if case.compile:
            model.compile()  # what compile=true does in train/eval/predict: no whole-call compile below
        return model

    models: dict[str, Callable[[], DenseModel]] = {"ours": ours_model}
    if naive_head is not None:
        models["naive"] = lambda: _like(ours, ours.backbone, NaiveLinearDepthHead(ours.head).to(device))
    if timm_backbone is not None:

        def timm_model():
            head = NaiveLinearDepthHead(ours.head) if naive_head is not None else copy.deepcopy(ours.head)
            return _like(ours, timm_backbone, head.to(device), TimmDenseModel)

        models["timm+naive" if naive_head is not None else "timm"] = timm_model

    paths: list[Path] = []
    works = args.work
    if "backbone" in works:

        def intermediate_layers(backbone: nn.Module) -> Callable[[], Any]:
            # ours and upstream share upstream's get_intermediate_layers API
            return lambda: backbone.get_intermediate_layers(
                padded, n=layers, reshape=True, return_class_token=use_cls, norm=norm
            )

        paths.append(Path("backbone", "ours", inference(intermediate_layers(ours.backbone)), [ours.backbone]))
        if timm_backbone is not None:
            timm_call = inference(lambda: timm_intermediates(timm_backbone, padded, layers, norm, use_cls))
            paths.append(Path("backbone", "timm", timm_call, [timm_backbone]))
        if upstream is not None:
            upstream_call = inference(intermediate_layers(upstream.backbone))
            paths.append(Path("backbone", "upstream", upstream_call, [upstream.backbone]))
    if "head" in works:
        with torch.no_grad(), autocast(device, case.precision):
            features = ours.extract_features(padded)  # computed once: this work is the head alone
        size = tuple(case.size)
        paths.append(
            Path("head", "ours", inference(lambda: ours.forward_head(features, padding, size)), [ours.head])
        )
        if naive_head is not None:
            naive = _like(ours, ours.backbone, naive_head)
            call = inference(lambda: naive.forward_head(features, padding, size))
            paths.append(Path("head", "naive", call, [naive_head]))
    if "predict" in works:
        for name, make in models.items():
            model = make().eval()
            call = inference(lambda m=model: m.predict(images), compile_call=case.compile and name != "ours")
            paths.append(Path("predict", name, call, [model.backbone, model.head]))
        if upstream is not None:
            call = inference(lambda: upstream.whole_inference(images, img_meta=None, rescale=True))
            paths.append(Path("predict", "upstream", call, [upstream]))
    if "train" in works:
        for name, make in models.items():
            model = make().train()
            step, optimizer = training(
                lambda m=model: m(images), list(model.head.parameters()), case.compile and name != "ours"
            )
            paths.append(Path("train", name, step, [model.backbone, model.head], optimizer))
        if upstream is not None:
            paths.append(_upstream_train_path(upstream, images, training))
    return paths, ours


def _upstream_train_path(upstream: nn.Module, images: torch.Tensor, training) -> Path:
    """Upstream's training forward: features of the frozen backbone, decode_head, resize to the input."""
    train_head = copy.deepcopy(upstream.decode_head).train()

    def forward():
        with torch.no_grad():  # its backbone is frozen (requires_grad False): no graph either way
            features = upstream.extract_feat(images)
        out = train_head(features, None)
        return F.interpolate(
            out, size=images.shape[-2:], mode="bilinear", align_corners=upstream.align_corners
        )

    step, optimizer = training(forward, list(train_head.parameters()))
    return Path("train", "upstream", step, [upstream.backbone, train_head], optimizer)


def run_case(case: Case, args) -> dict:
    device = torch.device(case.device)
    skipped: list[dict] = []
    paths, ours = build_paths(case, args, skipped)
    left, right, top, bottom = center_padding(*case.size, ours.patch_size)
    padded_h, padded_w = case.size[0] + top + bottom, case.size[1] + left + right
    flops = ours.backbone.flops_per_image(padded_h, padded_w)
    warmup = max(args.warmup, 1) if case.compile else args.warmup  # the first compiled call compiles

    results, checks, ratios = [], [], []
    for work in WORKS:
        group = [p for p in paths if p.work == work]
        if not group:
            continue
        print(f"  {work}: {', '.join(p.name for p in group)}", file=sys.stderr, flush=True)
        for i in range(warmup):
            for path in group:
                seconds, _ = timed_call(path.fn, device)
                if i == 0:
                    path.first_call_s = seconds
        for _ in range(args.iters):
            for path in group:
                seconds, _ = timed_call(path.fn, device)
                path.times.append(seconds)
        gc.collect()  # once per work, not per path: a full collection takes ~0.5 s with timm and torch loaded
        for path in group:
            path.memory, path.output = measure_memory(path.fn, device)
        by_name = {p.name: p for p in group}
        for path in group:
            median = statistics.median(path.times)
            images_per_s = case.batch / median
            held = held_bytes(path.modules, path.optimizer)
            results.append(
                {
                    "work": work,
                    "path": path.name,
                    "times_s": path.times,
                    "median_s": median,
                    "min_s": min(path.times),
                    "first_call_s": path.first_call_s,
                    "images_per_s": images_per_s,
                    "best_images_per_s": case.batch / min(path.times),
                    # the backbone's FLOPs per image × images/s, for every work that runs the backbone
                    "backbone_tflops": None if work == "head" else flops * images_per_s / 1e12,
                    "held_bytes": held,
                    "added_bytes": path.memory["added_bytes"],
                    "peak_bytes": held + path.memory["added_bytes"],
                    "memory_method": path.memory["method"],
                }
            )
        mine = next(r for r in results if r["work"] == work and r["path"] == "ours")
        for r in results:
            if r["work"] != work or r["path"] == "ours":
                continue
            ratios.append(
                {
                    "work": work,
                    "reference": r["path"],
                    "speed": mine["images_per_s"] / r["images_per_s"],
                    # the fastest call of each: on a shared machine, the one least slowed by other jobs
                    "speed_best": mine["best_images_per_s"] / r["best_images_per_s"],
                    # round i of both ran back to back: their ratio cancels a load that changes between rounds
                    "speed_paired": statistics.median(
                        ref / own for own, ref in zip(by_name["ours"].times, by_name[r["path"]].times)
                    ),
                    "memory": mine["peak_bytes"] / r["peak_bytes"] if r["peak_bytes"] else None,
                }
            )
            if work != "train":  # training outputs are losses of diverging heads: nothing to compare
                ours_out, ref_out = by_name["ours"].output, by_name[r["path"]].output
                if work == "backbone":
                    ours_out, ref_out = patch_maps(ours_out), patch_maps(ref_out)
                checks.append({"work": work, "reference": r["path"], **compare(ours_out, ref_out)})
        for path in group:
            path.output = None
    return {
        "backbone": case.backbone,
        "head": case.head,
        "size": list(case.size),
        "padded_size": [padded_h, padded_w],
        "batch": case.batch,
        "precision": case.precision,
        "compile": case.compile,
        "device": case.device,
        "layers": ours.layers,
        "backbone_flops_per_image": flops,
        "warmup": warmup,
        "iters": args.iters,
        "results": results,
        "ratios": ratios,
        "checks": checks,
        "skipped": skipped,
    }


def release(case: Case) -> None:
    """Free a finished case's models before the next case (device memory, dynamo's compiled code)."""
    if case.compile:
        torch._dynamo.reset()
    gc.collect()
    if case.device.startswith("cuda"):
        torch.cuda.empty_cache()


# ---- report -------------------------------------------------------------------------------------------


def machine_info(devices: list[str]) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": None,
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        info["timm"] = None
    if any(d.startswith("cuda") for d in devices) and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain"], capture_output=True, text=True)
        if commit.returncode == 0:
            info["git"] = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        pass
    return info


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.3g}" if n < 10 * 2**20 else f"{n / 2**20:.0f}"


def format_case(case: dict) -> str:
    header = (
        "work",
        "path",
        "img/s",
        "best img/s",
        "TFLOP/s",
        "peak MiB",
        "speed ours÷ref",
        "paired",
        "best",
        "mem ours÷ref",
    )
    ratio = {(r["work"], r["reference"]): r for r in case["ratios"]}
    rows = []
    for r in case["results"]:
        q = ratio.get((r["work"], r["path"]))
        rows.append(
            (
                r["work"],
                r["path"],
                f"{r['images_per_s']:.3g}",
                f"{r['best_images_per_s']:.3g}",
                "-" if r["backbone_tflops"] is None else f"{r['backbone_tflops']:.3g}",
                _mib(r["peak_bytes"]),
                "" if q is None else f"{q['speed']:.2f}x",
                "" if q is None else f"{q['speed_paired']:.2f}x",
                "" if q is None else f"{q['speed_best']:.2f}x",
                "" if q is None or q["memory"] is None else f"{q['memory']:.2f}x",
            )
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        f"== {case['backbone']} {case['head']} {case['size'][0]}x{case['size'][1]} batch {case['batch']} "
        f"{case['precision']} compile {'on' if case['compile'] else 'off'} {case['device']} "
        f"(img/s: median of {case['iters']} calls, best: the fastest; {case['warmup']} warm-up)",
        "  ".join(h.ljust(w) for h, w in zip(header, widths)),
    ]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    for c in case["checks"]:
        lines.append(f"check {c['work']} ours vs {c['reference']}: max rel diff {c['max_rel_diff']:.2e}")
    for s in case["skipped"]:
        lines.append(f"skipped {s['path']}: {s['reason']}")
    return "\n".join(lines)


def format_machine(info: dict) -> str:
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return (
        f"machine: {info['cpu']} ({info['cpu_count']} CPUs, {info['torch_threads']} torch threads){gpu}; "
        f"torch {info['torch']}, timm {info.get('timm')}, Python {info['python']}"
    )


# ---- command line ---------------------------------------------------------------------------------


def _list(kind: Callable[[str], Any], choices=None):
    def parse(text: str) -> list:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        bad = [v for v in values if choices is not None and v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(map(str, choices or []))}")
        return values

    return parse


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    try:
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: write HxW, e.g. 224x224") from None


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"compile {text!r}: write on, off or on,off")
    return text == "on"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dense.bench",
        description="Throughput, TFLOP/s and peak memory of ours against timm, a naive head and upstream. "
        "Each option takes a comma-separated list; every combination is run.",
        epilog="Example: python -m dense.bench --backbone vitl14 --head depth_dpt --size 480x640 --batch 16 "
        "--precision fp32,bf16 --compile off,on --device cuda --json bench.json",
    )
    option = parser.add_argument
    option("--backbone", type=_list(str), default=["vits14"], help="backbone(s): vits14 ... vitg14_reg, tiny14 (default: vits14)")
    option("--head", type=_list(str), default=["depth_linear4"], help="head(s): depth_linear, depth_linear4, depth_dpt, seg_linear, seg_ms (default: depth_linear4)")
    option("--size", type=_list(_size), default=[(224, 224)], help="image size(s) HxW, e.g. 224x224,480x640 (default: 224x224)")
    option("--batch", type=_list(int), default=[4], help="images per call (default: 4)")
    option("--precision", type=_list(str, PRECISIONS), default=["fp32"], help=f"{', '.join(PRECISIONS)} (default: fp32)")
    option("--compile", type=_list(_on_off), default=[False], help="torch.compile: off, on or off,on (default: off)")
    option("--device", type=_list(str), default=None, help="cpu, cuda (default: cuda if available, else cpu)")
    option("--work", type=_list(str, WORKS), default=list(WORKS), help=f"what to time: {', '.join(WORKS)} (default: all)")
    option(
        "--reference",
        type=_list(str, (*REFERENCES, "none")),
        default=list(REFERENCES),
        help="compared with: timm, naive, upstream (needs --upstream DIR), or none: ours alone (default: timm,naive,upstream)",
    )
    option("--upstream", default=None, help="a local checkout of facebookresearch/dinov2 (default: none, upstream skipped)")
    option("--iters", type=int, default=10, help="timed calls per path (default: 10)")
    option("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    option("--num-classes", type=int, default=150, help="classes of the segmentation heads (default: 150)")
    option("--threads", type=int, default=None, help="torch.set_num_threads on the CPU (default: torch's own)")
    option("--seed", type=int, default=0, help="seed of the random weights and images (default: 0)")
    option("--json", default=None, help="write every raw number to this file (default: none)")
    args = parser.parse_args(argv)
    args.reference = [r for r in args.reference if r != "none"]
    if args.device is None:
        args.device = ["cuda" if torch.cuda.is_available() else "cpu"]
    if any(d.startswith("cuda") for d in args.device) and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.backbone:
        get_spec(name)  # unknown names fail here, in one line, before anything runs
    for name in args.head:
        get_head_spec(name)
    if any(args.compile):
        # Every path's step function is a closure of the same code: dynamo's per-code cache must hold them all.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 1024
        )
    info = machine_info(args.device)
    print(format_machine(info), flush=True)
    cases = []
    for device in args.device:
        for backbone in args.backbone:
            for head in args.head:
                for size in args.size:
                    for batch in args.batch:
                        for precision in args.precision:
                            for compiled in args.compile:
                                case = Case(backbone, head, size, batch, precision, compiled, device)
                                print(f"running {case.label()}", file=sys.stderr, flush=True)
                                cases.append(run_case(case, args))
                                print(format_case(cases[-1]), flush=True)
                                release(case)
    report = {"machine": info, "argv": sys.argv[1:] if argv is None else list(argv), "cases": cases}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
