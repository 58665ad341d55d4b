"""Segmentation inference speed at the unit EoMT and PMT publish: images per second at 512², per head
(seg_linear, seg_ms, seg_mask) on each backbone.

    python -m benchmarks.segmentation                                    # CPU: DINOv2 S/B/L/g, DINOv3 S/B/L/H+
    python -m benchmarks.segmentation --backbone vitl16 --device cuda --precision bf16 --compile on --batch 1

What is timed is DenseModel.forward on a batch of random 512×512 images (pad to the patch multiple: 518
for patch 14; backbone; head; resize; seg_mask's Mask2Former scores), in inference mode, with random
weights (no download) and 150 classes (ADE20K's): calls after --warmup untimed ones, each ended by a
device synchronisation. Reported per case: images/s of the median call and of the fastest ("best",
the one least slowed by other jobs on a shared machine), the head's share of a call (the head and
DenseModel's resize on features computed once), and the head's parameters. bf16 means the frozen
backbone's weights stored in bf16 and everything run under autocast (DenseModel.cast_backbone, as
predict.py does); --compile on is DenseModel.compile() (torch.compile of backbone and head; PMT's and
EoMT's FPS are measured compiled).

The heads of one backbone share one randomly initialised backbone (initialising ViT-g/14 takes most
of a minute on a CPU). ViT-7B/16 needs 27 GB in fp32: give it a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys

import torch

import heads
from benchmarks.measure import timed_call
from benchmarks.report import machine_info
from dense.model import DenseModel, build_model

HEADS = ("seg_linear", "seg_ms", "seg_mask")
CPU_BACKBONES = ("vits14", "vitb14", "vitl14", "vitg14", "vits16", "vitb16", "vitl16", "vith16plus")
NUM_CLASSES = 150


def models_sharing_a_backbone(backbone: str, head_names, device: torch.device):
    """DenseModels (eval mode, on `device`) of one random `backbone` under each head, built one at a
    time; the backbone is initialised once. Every head's model is described by build_model (layers,
    norm, class tokens), built on the meta device so that its own backbone is never allocated."""
    first = None
    for name in head_names:
        if first is None:
            model = first = build_model(backbone, name, num_classes=NUM_CLASSES)
        else:
            with torch.device("meta"):
                model = build_model(backbone, name, num_classes=NUM_CLASSES)
            model.backbone, model.renormalisation = first.backbone, first.renormalisation
            model.image_table = first.image_table  # a buffer: the meta one holds no values
            model.head = heads.build_head(
                name,
                first.backbone.embed_dim,
                num_layers=len(model.layers),
                use_cls_token=model.use_cls_token,
                num_classes=NUM_CLASSES,
            )
        yield model.to(device).eval()


def time_calls(fn, device: torch.device, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        timed_call(fn, device)
    return [timed_call(fn, device)[0] for _ in range(iters)]


def bench_model(model: DenseModel, images: torch.Tensor, args, device: torch.device) -> dict:
    bf16 = args.precision == "bf16"
    if bf16:
        model.cast_backbone(torch.bfloat16)
    if args.compile == "on":
        model.compile()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        times = time_calls(lambda: model(images), device, args.warmup, args.iters)
        features, padding = model.image_features(images)
        size = tuple(images.shape[-2:])
        head_times = time_calls(lambda: model.forward_head(features, padding, size), device, 1, args.iters)
    batch = images.shape[0]
    return {
        "backbone": model.config["backbone"],
        "head": model.config["head"],
        "times_s": times,
        "images_per_s": batch / statistics.median(times),
        "best_images_per_s": batch / min(times),
        "head_share": statistics.median(head_times) / statistics.median(times),
        "head_params_m": sum(p.numel() for p in model.head.parameters()) / 1e6,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.segmentation", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--backbone", default=",".join(CPU_BACKBONES), help="comma-separated backbones")
    parser.add_argument("--head", default=",".join(HEADS), help="comma-separated segmentation heads")
    parser.add_argument("--size", type=int, default=512, help="square image side (default 512)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--compile", choices=("off", "on"), default="off")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--json", help="write every result here")
    args = parser.parse_args(argv)
    args.backbone = [b for b in args.backbone.split(",") if b]
    args.head = [h for h in args.head.split(",") if h]
    for name in args.head:
        if heads.get_head_spec(name).task != "segmentation":
            parser.error(f"--head {name} is not a segmentation head")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    info = machine_info([args.device])
    print(f"{info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}, gpu {info['gpu']}")
    print(
        f"{args.size}², batch {args.batch}, {args.precision}, compile {args.compile}, {args.iters} timed calls"
    )
    print(f"{'backbone':<12} {'head':<11} {'img/s':>8} {'best':>8} {'head share':>10} {'head params':>12}")
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    results = []
    for backbone in args.backbone:
        for model in models_sharing_a_backbone(backbone, args.head, device):
            result = bench_model(model, images, args, device)
            results.append(result)
            print(
                f"{result['backbone']:<12} {result['head']:<11} {result['images_per_s']:8.3g} "
                f"{result['best_images_per_s']:8.3g} {result['head_share']:10.0%} {result['head_params_m']:10.1f} M",
                flush=True,
            )
            del model
        # Free this backbone before the next one: compiled code keeps its modules alive, and the large
        # backbones hold gigabytes each (ViT-g's fp32 weights alone are 4.5 GB).
        if args.compile == "on":
            torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
