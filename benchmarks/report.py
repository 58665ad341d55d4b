"""The report: the machine a bench ran on, and one table per case."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

import torch


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
        # the clone's root: benchmarks/ sits there
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
    if case.get("loop"):
        lines += format_loop(case["loop"])
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


def format_loop(loop: dict) -> list[str]:
    """The loop work's lines: its img/s beside the training step's, and where a step's time goes."""
    ratio = "" if loop["loop_over_train"] is None else f"; loop ÷ train ours {loop['loop_over_train']:.2f}x"
    split = loop["split_s"]
    total = sum(split.values())
    parts = " | ".join(
        f"{phase} {seconds * 1000:.3g} ({seconds / total:.0%})" for phase, seconds in split.items()
    )
    return [
        f"loop      ours  {loop['images_per_s']:.3g} img/s over {loop['steps']} steps "
        f"({loop['data']} data, {loop['workers']} loader workers, pin_memory {loop['pin_memory']}{ratio})",
        f"  a step, ms (mean of {loop['steps']}, each phase synchronised): {parts} | total {total * 1000:.3g} "
        f"({loop['synced_images_per_s']:.3g} img/s)",
    ]
