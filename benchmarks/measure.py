"""Timing and memory: one call, one path, one case's results, ratios and checks."""

from __future__ import annotations

import ctypes
import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks.case import LOOP, WORKS, Case, Path
from benchmarks.loop import run_loop
from benchmarks.paths import build_ours, build_paths
from dense.model import center_padding


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


def median_ms(fn: Callable[[], Any], device: torch.device, repeat: int, warmup: int = 1) -> float:
    """Milliseconds of the median of `repeat` calls after `warmup` untimed ones (the single-question benches)."""
    for _ in range(warmup):
        timed_call(fn, device)
    return statistics.median(timed_call(fn, device)[0] for _ in range(repeat)) * 1000


# ---- one case ----------------------------------------------------------------------------------------


def time_round_robin(group: list[Path], device: torch.device, warmup: int, iters: int) -> None:
    """Warm-up calls, then call i of every path, then call i+1: a changing load hits all paths alike."""
    for i in range(warmup):
        for path in group:
            seconds, _ = timed_call(path.fn, device)
            if i == 0:
                path.first_call_s = seconds
    for _ in range(iters):
        for path in group:
            seconds, _ = timed_call(path.fn, device)
            path.times.append(seconds)


def path_result(path: Path, case: Case, flops: float) -> dict:
    median = statistics.median(path.times)
    images_per_s = case.batch / median
    held = held_bytes(path.modules, path.optimizer)
    return {
        "work": path.work,
        "path": path.name,
        "times_s": path.times,
        "median_s": median,
        "min_s": min(path.times),
        "first_call_s": path.first_call_s,
        "images_per_s": images_per_s,
        "best_images_per_s": case.batch / min(path.times),
        # the backbone's FLOPs per image × images/s, for every work that runs the backbone
        "backbone_tflops": None if path.work == "head" else flops * images_per_s / 1e12,
        "held_bytes": held,
        "added_bytes": path.memory["added_bytes"],
        "peak_bytes": held + path.memory["added_bytes"],
        "memory_method": path.memory["method"],
    }


def ratio(mine: dict, reference: dict, ours: Path, theirs: Path) -> dict:
    return {
        "work": mine["work"],
        "reference": reference["path"],
        "speed": mine["images_per_s"] / reference["images_per_s"],
        # the fastest call of each: on a shared machine, the one least slowed by other jobs
        "speed_best": mine["best_images_per_s"] / reference["best_images_per_s"],
        # round i of both ran back to back: their ratio cancels a load that changes between rounds
        "speed_paired": statistics.median(ref / own for own, ref in zip(ours.times, theirs.times)),
        "memory": mine["peak_bytes"] / reference["peak_bytes"] if reference["peak_bytes"] else None,
    }


def output_check(work: str, ours: Path, theirs: Path) -> dict:
    ours_out, ref_out = ours.output, theirs.output
    if work == "backbone":
        ours_out, ref_out = patch_maps(ours_out), patch_maps(ref_out)
    return {"work": work, "reference": theirs.name, **compare(ours_out, ref_out)}


def measure_work(group: list[Path], case: Case, args, warmup: int, flops: float) -> tuple[list, list, list]:
    """The results of one work's paths, ours ÷ each reference, and the outputs compared."""
    device = torch.device(case.device)
    print(f"  {group[0].work}: {', '.join(p.name for p in group)}", file=sys.stderr, flush=True)
    time_round_robin(group, device, warmup, args.iters)
    gc.collect()  # once per work, not per path: a full collection takes ~0.5 s with timm and torch loaded
    for path in group:
        path.memory, path.output = measure_memory(path.fn, device)
    results = [path_result(path, case, flops) for path in group]
    by_name = {path.name: (path, result) for path, result in zip(group, results)}
    ours, mine = by_name.pop("ours")
    references = list(by_name.values())
    ratios = [ratio(mine, r, ours, p) for p, r in references]
    # training outputs are losses of diverging heads: nothing to compare
    checks = [] if ours.work == "train" else [output_check(ours.work, ours, p) for p, _ in references]
    for path in group:
        path.output = None
    return results, ratios, checks


def run_case(case: Case, args) -> dict:
    skipped: list[dict] = []
    paths, ours = build_paths(case, args, skipped)
    left, right, top, bottom = center_padding(*case.size, ours.patch_size)
    padded_h, padded_w = case.size[0] + top + bottom, case.size[1] + left + right
    flops = ours.backbone.flops_per_image(padded_h, padded_w)
    warmup = max(args.warmup, 1) if case.compile else args.warmup  # the first compiled call compiles

    results, ratios, checks = [], [], []
    for work in WORKS:
        group = [p for p in paths if p.work == work]
        if group:
            for into, new in zip((results, ratios, checks), measure_work(group, case, args, warmup, flops)):
                into.extend(new)
    loop = None
    if LOOP in args.work:
        del paths  # the loop trains a model of its own
        print(f"  {LOOP}: ours ({args.data} data)", file=sys.stderr, flush=True)
        loop = run_loop(case, args, build_ours(case, args))
        train = next((r for r in results if (r["work"], r["path"]) == ("train", "ours")), None)
        loop["loop_over_train"] = None if train is None else loop["images_per_s"] / train["images_per_s"]
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
        "loop": loop,
    }


def release(case: Case) -> None:
    """Free a finished case's models before the next case (device memory, dynamo's compiled code)."""
    if case.compile:
        torch._dynamo.reset()
    gc.collect()
    if case.device.startswith("cuda"):
        torch.cuda.empty_cache()
