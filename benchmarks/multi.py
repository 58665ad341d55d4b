"""`python -m benchmarks.multi`: one backbone pass feeding several heads (MultiHeadModel) against the
single-head models run one after the other (each its own backbone pass), same weights, same input.

    python -m benchmarks.multi --backbone vits14 --heads depth=depth_dpt,seg=seg_linear \\
        --size 224x224 --batch 4 --work predict,train --device cpu --iters 10 --warmup 2 --json out.json

Works:
    predict  inference (torch.inference_mode): MultiHeadModel(images) against part(images) for each
             head's DenseModel in turn (`model.parts[name]`, the same backbone and head modules)
    train    one training step: forward, a loss per head (the mean of its output, a stand-in with the
             real step's shape of work), backward through the heads, AdamW on the heads; the
             sequential path does the same per head, each with its own backbone pass

Timing: warm-up calls, then the two paths are timed round-robin (call i of each, then call i+1), each
call ended by a device synchronisation; img/s = batch ÷ the median call. Memory: the peak a call adds
on top of what is allocated before it (benchmarks.measure.measure_memory: CUDA max_memory_allocated,
on the CPU the peak RSS growth). The model weights are held by both paths and not counted. Random
weights: the speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable

import torch

from benchmarks.cli import _list, _size
from benchmarks.measure import measure_memory, timed_call
from benchmarks.report import machine_info
from dense.multi_head import MultiHeadModel, build_model

WORKS = ("predict", "train")
PRECISIONS = ("fp32", "bf16")


def _heads(text: str) -> dict[str, str]:
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    heads = {}
    for pair in pairs:
        name, _, head = pair.partition("=")
        if not name or not head:
            raise argparse.ArgumentTypeError(
                f"{pair!r}: write NAME=HEAD, e.g. depth=depth_dpt,seg=seg_linear"
            )
        heads[name] = head
    if len(heads) < 2:
        raise argparse.ArgumentTypeError("give at least two heads, e.g. depth=depth_dpt,seg=seg_linear")
    return heads


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.multi",
        description="img/s and peak memory of one multi-head model (one backbone pass for all heads) against "
        "its single-head models run one after the other (one backbone pass each).",
        epilog="Example: python -m benchmarks.multi --backbone vitl14 --heads depth=depth_dpt,seg=seg_linear "
        "--size 480x640 --batch 16 --precision bf16 --device cuda --json multi.json",
    )
    option = parser.add_argument
    option("--backbone", default="vits14", help="backbone (default: vits14)")
    option(
        "--heads",
        type=_heads,
        default={"depth": "depth_dpt", "seg": "seg_linear"},
        help="NAME=HEAD,... (default: depth=depth_dpt,seg=seg_linear)",
    )
    option("--num-classes", type=int, default=150, help="classes of the segmentation heads (default: 150)")
    option("--size", type=_size, default=(224, 224), help="image size HxW (default: 224x224)")
    option("--batch", type=int, default=4, help="images per call (default: 4)")
    option("--work", type=_list(str, WORKS), default=list(WORKS), help="predict, train (default: both)")
    option("--precision", choices=PRECISIONS, default="fp32", help="fp32 | bf16 autocast (default: fp32)")
    option("--device", default="cpu", help="cpu | cuda (default: cpu)")
    option("--iters", type=int, default=10, help="timed calls per path (default: 10)")
    option("--warmup", type=int, default=2, help="untimed calls per path first (default: 2)")
    option("--seed", type=int, default=0)
    option("--json", help="also write the results to this file")
    return parser.parse_args(argv)


def build(args) -> MultiHeadModel:
    torch.manual_seed(args.seed)
    model = build_model(args.backbone, heads=args.heads, num_classes=args.num_classes)
    return model.to(args.device)


def paths(model: MultiHeadModel, work: str, images: torch.Tensor) -> dict[str, Callable[[], object]]:
    """{"multi": one call of the multi-head model, "sequential": the single-head models one after the other}."""
    parts = list(model.parts.values())
    if work == "predict":
        model.eval()

        def multi():
            with torch.inference_mode():
                return model(images)

        def sequential():
            with torch.inference_mode():
                return [part(images) for part in parts]

        return {"multi": multi, "sequential": sequential}

    model.train()
    optimizer = torch.optim.AdamW(model.heads.parameters(), lr=1e-4)

    def multi_step():
        optimizer.zero_grad(set_to_none=True)
        loss = sum(out.float().mean() for out in model(images).values())
        loss.backward()
        optimizer.step()

    def sequential_step():
        optimizer.zero_grad(set_to_none=True)
        for part in parts:  # each head as a single-head run would train it: its own backbone pass
            part(images).float().mean().backward()
        optimizer.step()

    return {"multi": multi_step, "sequential": sequential_step}


def run_work(model: MultiHeadModel, work: str, args) -> dict:
    device = torch.device(args.device)
    height, width = args.size
    images = torch.randn(args.batch, 3, height, width, device=device)
    bf16 = args.precision == "bf16"
    calls = paths(model, work, images)

    def under_precision(fn):
        def call():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return fn()

        return call

    calls = {name: under_precision(fn) for name, fn in calls.items()}
    for _ in range(args.warmup):
        for fn in calls.values():
            timed_call(fn, device)
    times = {name: [] for name in calls}
    for _ in range(args.iters):  # round-robin: shared cores slow both paths alike
        for name, fn in calls.items():
            times[name].append(timed_call(fn, device)[0])
    result = {}
    for name, fn in calls.items():
        memory, _ = measure_memory(fn, device)
        median = statistics.median(times[name])
        result[name] = {
            "median_ms": median * 1000,
            "img_per_s": args.batch / median,
            "peak_added_mib": memory["added_bytes"] / 2**20,
            "memory_method": memory["method"],
        }
    result["speed_ratio"] = result["multi"]["img_per_s"] / result["sequential"]["img_per_s"]
    return result


def format_work(work: str, result: dict, args) -> str:
    lines = [
        f"{work}: {args.backbone} + {', '.join(f'{n}={h}' for n, h in args.heads.items())}, "
        f"{args.size[0]}x{args.size[1]}, batch {args.batch}, {args.precision}, {args.device}",
        f"{'path':<12} {'ms/call':>9} {'img/s':>9} {'peak MiB':>9}",
    ]
    for name in ("multi", "sequential"):
        r = result[name]
        lines.append(f"{name:<12} {r['median_ms']:9.1f} {r['img_per_s']:9.2f} {r['peak_added_mib']:9.1f}")
    lines.append(f"multi ÷ sequential img/s: {result['speed_ratio']:.2f}×")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    model = build(args)
    results = {}
    for work in args.work:
        results[work] = run_work(model, work, args)
        print(format_work(work, results[work], args), flush=True)
    if args.json:
        report = {
            "machine": machine_info([args.device]),
            "options": {**vars(args), "size": list(args.size)},
            "works": results,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
