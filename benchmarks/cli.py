"""`python -m benchmarks`: the options, and every combination of them run as a case."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.case import LOOP, PRECISIONS, REFERENCES, WORKS, Case
from benchmarks.generated import FORMATS
from benchmarks.measure import release, run_case
from benchmarks.report import format_case, format_machine, machine_info
from dense.backbones import get_spec
from heads import get_head_spec


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
        prog="python -m benchmarks",
        description="Throughput, TFLOP/s and peak memory of ours against timm, a naive head and upstream. "
        "Each option takes a comma-separated list; every combination is run.",
        epilog="Example: python -m benchmarks --backbone vitl14 --head depth_dpt --size 480x640 --batch 16 "
        "--precision fp32,bf16 --compile off,on --device cuda --json bench.json",
    )
    option = parser.add_argument
    option(
        "--backbone",
        type=_list(str),
        default=["vits14"],
        help="backbone(s): vits14 ... vitg14_reg, tiny14 (default: vits14)",
    )
    option(
        "--head",
        type=_list(str),
        default=["depth_linear4"],
        help="head(s): depth_linear, depth_linear4, depth_dpt, seg_linear, seg_ms (default: depth_linear4)",
    )
    option(
        "--size",
        type=_list(_size),
        default=[(224, 224)],
        help="image size(s) HxW, e.g. 224x224,480x640 (default: 224x224)",
    )
    option("--batch", type=_list(int), default=[4], help="images per call (default: 4)")
    option(
        "--precision",
        type=_list(str, PRECISIONS),
        default=["fp32"],
        help=f"{', '.join(PRECISIONS)} (default: fp32)",
    )
    option(
        "--compile",
        type=_list(_on_off),
        default=[False],
        help="torch.compile: off, on or off,on (default: off)",
    )
    option("--device", type=_list(str), default=None, help="cpu, cuda (default: cuda if available, else cpu)")
    option(
        "--work",
        type=_list(str, (*WORKS, LOOP)),
        default=list(WORKS),
        help=f"what to time: {', '.join(WORKS)}, and {LOOP}: train.py's loop in a Lightning Trainer, with "
        f"where each step's time goes (default: {','.join(WORKS)})",
    )
    option(
        "--reference",
        type=_list(str, (*REFERENCES, "none")),
        default=list(REFERENCES),
        help="compared with: timm, naive, upstream (needs --upstream DIR), or none: ours alone "
        "(default: timm,naive,upstream)",
    )
    option(
        "--upstream",
        default=None,
        help="a local checkout of the backbones' family: facebookresearch/dinov2 for *14, facebookresearch/dinov3 "
        "for *16 (default: none, upstream skipped)",
    )
    option("--iters", type=int, default=10, help="timed calls per path (default: 10)")
    option("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    option("--num-classes", type=int, default=150, help="classes of the segmentation heads (default: 150)")
    option(
        "--threads", type=int, default=None, help="torch.set_num_threads on the CPU (default: torch's own)"
    )
    option("--seed", type=int, default=0, help="seed of the random weights and images (default: 0)")
    option(
        "--data",
        choices=("synthetic", *FORMATS),
        default="synthetic",
        help="the loop work's dataset at the case's size: synthetic scenes, or NYU / ADE20K files generated "
        "in their formats and cropped by their recipes (default: synthetic)",
    )
    option(
        "--workers",
        type=int,
        default=None,
        help="the loop work's loader workers (default: the datamodule's, one per core less one per device)",
    )
    option("--loop-steps", type=int, default=20, help="the loop work's timed steps, twice (default: 20)")
    option("--loop-warmup", type=int, default=5, help="the loop work's untimed first steps (default: 5)")
    option("--json", default=None, help="write every raw number to this file (default: none)")
    args = parser.parse_args(argv)
    args.reference = [r for r in args.reference if r != "none"]
    if args.device is None:
        args.device = ["cuda" if torch.cuda.is_available() else "cpu"]
    if any(d.startswith("cuda") for d in args.device) and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.iters < 1 or args.warmup < 0 or args.loop_steps < 1 or args.loop_warmup < 0:
        parser.error("--iters and --loop-steps must be >= 1, --warmup and --loop-warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Our training step is the task's training_step outside a Trainer, where its self.log does nothing.
    warnings.filterwarnings("ignore", message=r"You are trying to `self.log\(\)` but the `self.trainer`")
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
