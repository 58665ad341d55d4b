"""How many training samples per second the data pipeline delivers, per number of loader workers.

    python -m benchmarks.loader [--data synthetic,nyu,ade20k] [--workers 0,1,2] [--batches 24]
        [--repeat 3] [--batch-size 8] [--size 416x544] [--json out.json]

Each dataset at its training size, through DenseDataModule's train loader (its recipe, its worker set-up,
persistent workers): synthetic scenes rendered at --size (default 416×544, the NYU recipe's crop); NYU
and ADE20K in their on-disk formats, written into a temporary folder first (benchmarks.generated:
480×640 frames cropped to 416×544; 512×683 images rescaled and cropped to 512×512). With 0 workers the
main process loads: the cost of one core.

Timing: per (dataset, workers) a fresh loader; its first workers + 1 batches are not timed (workers
start, prefetch), then --batches batches are. The worker counts take turns (call 1 of every count, then
call 2, --repeat rounds), so that a load that changes on shared cores hits them alike. Reported:
samples/s of every round, their median, each median ÷ that of 1 worker, and the CPU time per sample of
the processes that load (the workers, all their threads; with 0 workers this process), which other jobs
on shared cores hardly change: flat from 1 to N workers means N idle cores would load N times as fast.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.cli import _list, _size
from benchmarks.generated import FORMATS, generated_data
from benchmarks.report import format_machine, machine_info
from dense.data import DenseDataModule

DATA = ("synthetic", *FORMATS)


def data_options(name: str, folder: Path, size: tuple[int, int], samples: int) -> dict:
    """The DenseDataModule options of dataset `name` at its training size (generated into `folder`)."""
    if name == "synthetic":
        return {"name": "synthetic", "image_size": list(size), "num_train": samples}
    return generated_data(name, folder / name, samples=samples)


def process_cpu_clocks(pids: list[int]) -> list[int]:
    """The CPU-time clocks of the processes `pids` (all their threads, nanosecond resolution), for
    time.clock_gettime. glibc's clock_getcpuclockid(3); /proc's counters tick only every 10 ms, too
    coarse for a few short batches."""
    libc = ctypes.CDLL(None, use_errno=True)
    clocks = []
    for pid in pids:
        clock = ctypes.c_int()
        error = libc.clock_getcpuclockid(pid, ctypes.byref(clock))
        if error:
            raise OSError(error, f"clock_getcpuclockid({pid}): {os.strerror(error)}")
        clocks.append(clock.value)
    return clocks


def measure(options: dict, workers: int, batch_size: int, batches: int) -> tuple[float, float | None]:
    """(samples/s, CPU milliseconds per sample of the processes that load) of one loader."""
    datamodule = DenseDataModule(
        **options, batch_size=batch_size, num_workers=workers, persistent_workers=True
    )
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    for _ in range(workers + 1):  # workers starting, first batches in flight
        next(loader)
    # Who loads: the workers (the DataLoader iterator's own list of them), or this process. Their CPU time
    # per sample hardly depends on other jobs' load, unlike samples/s: if it stays flat from 1 to N
    # workers, they do not get in each other's way, and N idle cores load N times as fast.
    if workers == 0:
        clock = time.process_time
    elif sys.platform.startswith("linux"):
        clocks = process_cpu_clocks([w.pid for w in loader._workers])

        def clock() -> float:
            return sum(time.clock_gettime(c) for c in clocks)
    else:
        clock = None  # no portable way to read another process's CPU time
    start, cpu_start, count = time.perf_counter(), clock() if clock else 0.0, 0
    for _ in range(batches):
        count += len(next(loader)["name"])
    seconds = time.perf_counter() - start
    cpu_ms = None if clock is None else (clock() - cpu_start) * 1000 / count
    del loader  # stops its workers
    return count / seconds, cpu_ms


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.splitlines()[0])
    option = parser.add_argument
    option("--data", type=_list(str, DATA), default=list(DATA), help=f"{', '.join(DATA)} (default: all)")
    option("--workers", type=_list(int), default=[0, 1, 2], help="loader worker counts (default: 0,1,2)")
    option("--batches", type=int, default=24, help="timed batches per measurement (default: 24)")
    option("--repeat", type=int, default=3, help="rounds over the worker counts (default: 3)")
    option("--batch-size", type=int, default=8, help="samples per batch (default: 8)")
    option("--size", type=_size, default=(416, 544), help="synthetic scenes' size HxW (default: 416x544)")
    option("--json", default=None, help="write every number to this file")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.repeat < 1 or min(args.workers) < 0:
        parser.error("--batches and --repeat must be >= 1, --workers >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    info = machine_info(["cpu"])
    print(format_machine(info), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data:
            needed = (max(args.workers) + 1 + args.batches) * args.batch_size
            options = data_options(name, Path(tmp), args.size, samples=needed)
            rates: dict[int, list[float]] = {w: [] for w in args.workers}
            cpu: dict[int, list[float]] = {w: [] for w in args.workers}
            for _ in range(args.repeat):
                for workers in args.workers:
                    rate, cpu_ms = measure(options, workers, args.batch_size, args.batches)
                    rates[workers].append(rate)
                    if cpu_ms is not None:
                        cpu[workers].append(cpu_ms)
            medians = {w: statistics.median(r) for w, r in rates.items()}
            print(
                f"== {name} (batch {args.batch_size}; samples/s, rounds in order; median; ÷ 1 worker; "
                "CPU ms per sample of the loading processes, median)"
            )
            for workers, values in rates.items():
                ratio = f"{medians[workers] / medians[1]:.2f}x" if 1 in medians else "-"
                rounds = " ".join(f"{v:.1f}" for v in values)
                cpu_text = f"{statistics.median(cpu[workers]):.1f}" if cpu[workers] else "-"
                print(
                    f"  workers {workers}: {rounds}   median {medians[workers]:.1f}   {ratio}   CPU {cpu_text}",
                    flush=True,
                )
                rows.append(
                    {
                        "data": name,
                        "workers": workers,
                        "samples_per_s": values,
                        "median": medians[workers],
                        "cpu_ms_per_sample": cpu[workers],
                    }
                )
    if args.json:
        report = {"machine": info, "argv": sys.argv[1:] if argv is None else list(argv), "rows": rows}
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
