"""ONNX Runtime (CPU) against PyTorch (CPU) for the same model and input: images per second and peak memory.

    python -m benchmarks.onnx                                      # vits14 + depth_dpt, 1×3×224×308
    python -m benchmarks.onnx --backbone vitb14 --head seg_linear --batch 4 --height 518 --width 518

Random weights (seeded: both runtimes get the same model); no download. The model is exported once,
then each runtime is timed in its own process so that its peak resident memory (VmHWM: the
libraries, the model's weights and its working memory) is its own. Both use every core (torch.get_num_threads() threads).
`tensorrt_command` gives the trtexec line that builds a TensorRT engine from the same file, for a
machine with a GPU (not run here).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def build(args):
    import torch

    from dense.model import build_model

    torch.manual_seed(0)
    options = {"num_classes": 150} if args.head.startswith("seg") else {}
    return build_model(args.backbone, args.head, **options).eval()


def images(args):
    import torch

    return torch.randn(args.batch, 3, args.height, args.width, generator=torch.Generator().manual_seed(1))


def time_calls(call, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        call()
    start = time.perf_counter()
    for _ in range(iters):
        call()
    return (time.perf_counter() - start) / iters


def peak_resident_mb() -> float:
    """This process's peak resident memory (VmHWM: reset by exec, unlike ru_maxrss, which a child
    started by subprocess inherits from its parent on Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(args) -> dict:
    """In a child process: one runtime's seconds per batch and this process's peak memory."""
    import torch

    x = images(args)
    if args.run == "torch":
        model = build(args)
        with torch.inference_mode():
            seconds = time_calls(lambda: model(x), args.warmup, args.iters)
    else:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        seconds = time_calls(lambda: session.run(None, feed), args.warmup, args.iters)
    peak_mb = peak_resident_mb()
    return {
        "runtime": args.run,
        "seconds_per_batch": seconds,
        "images_per_s": args.batch / seconds,
        "peak_mb": peak_mb,
    }


def tensorrt_command(onnx_path: str, min_shape, opt_shape, max_shape, fp16: bool = True) -> list[str]:
    """trtexec arguments that build an engine from our ONNX file with a shape profile (B, 3, H, W each)."""

    def shape(s) -> str:
        return "images:" + "x".join(str(int(v)) for v in s)

    command = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--minShapes={shape(min_shape)}",
        f"--optShapes={shape(opt_shape)}",
        f"--maxShapes={shape(max_shape)}",
        f"--shapes={shape(opt_shape)}",  # the shape it is timed at
        f"--saveEngine={os.path.splitext(onnx_path)[0]}.plan",
    ]
    return command + (["--fp16"] if fp16 else [])


def run_tensorrt(args, onnx_path: str) -> int:
    """Build a TensorRT engine from the ONNX file (profile: 1×3×224×224 up to the benchmark's batch at
    the larger of its sizes and 640×640; timed at the benchmark's shape) and print trtexec's summary."""
    if shutil.which("trtexec") is None:
        print(
            "FAILED: trtexec is not on PATH (TensorRT's command-line tool); install TensorRT to run this step"
        )
        return 1
    opt = (args.batch, 3, args.height, args.width)
    top = (args.batch, 3, max(args.height, 640), max(args.width, 640))
    command = tensorrt_command(onnx_path, (1, 3, 224, 224), opt, top)
    print(" ".join(command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():  # trtexec's performance summary: throughput and GPU latency
        if "Throughput" in line or "GPU Compute Time" in line or "Latency" in line:
            print(line.strip())
    if done.returncode:
        print(f"FAILED (trtexec exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vits14")
    parser.add_argument("--head", default="depth_dpt")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument("--width", type=int, default=308)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument(
        "--tensorrt",
        metavar="FILE.onnx",
        help="export to FILE.onnx, then build and time a TensorRT engine from it (a GPU machine with trtexec)",
    )
    parser.add_argument("--run", choices=["torch", "onnx"], help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(args)))
        return

    from dense.tools.export import to_onnx

    if args.tensorrt:
        if shutil.which("trtexec") is None:  # before the export, which takes minutes for a big model
            raise SystemExit(
                "FAILED: trtexec (TensorRT's command-line tool) is not on PATH; install TensorRT"
            )
        to_onnx(build(args), args.tensorrt)
        raise SystemExit(run_tensorrt(args, args.tensorrt))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        start = time.perf_counter()
        to_onnx(build(args), path)
        export_s = time.perf_counter() - start
        results = []
        for runtime in ("torch", "onnx"):
            command = [sys.executable, "-m", "benchmarks.onnx", "--run", runtime, "--onnx", path]
            for key in ("backbone", "head", "batch", "height", "width", "warmup", "iters"):
                command += [f"--{key}", str(getattr(args, key))]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
        size_mb = os.path.getsize(path) / 2**20
    print(
        f"{args.backbone} + {args.head}, {args.batch}×3×{args.height}×{args.width}, {os.cpu_count()} CPUs, "
        f"export {export_s:.0f} s, file {size_mb:.0f} MB"
    )
    print(f"{'runtime':<22} {'img/s':>8} {'ms/batch':>9} {'peak MB':>8}")
    for r in results:
        name = "PyTorch CPU (eager)" if r["runtime"] == "torch" else "ONNX Runtime CPU"
        print(
            f"{name:<22} {r['images_per_s']:>8.2f} {r['seconds_per_batch'] * 1000:>9.0f} {r['peak_mb']:>8.0f}"
        )


if __name__ == "__main__":
    main()
