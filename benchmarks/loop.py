"""The `loop` work: what train.py delivers, as against the training step alone (the `train` work).

The real DenseDataModule (--data: synthetic scenes at the case's size, or NYU / ADE20K in their on-disk
formats generated into a temporary folder, benchmarks.generated, cropped to the case's size; --workers:
the datamodule's default when not given), the real LightningModule (dense.tasks.build_task) and a
Lightning Trainer with what train.py's default configs give it (a CSV logger, the learning-rate monitor,
the timed progress bar, logging every 50 steps; no validation, no checkpoints) for
warm-up + 2 × --loop-steps steps, one epoch.

A LoopTimer (a Lightning profiler) times the phases of every step as Lightning runs them:

    loader wait     `[_TrainingEpochLoop].train_dataloader_next`: waiting for the DataLoader's next batch
    host checks     the task's on_before_batch_transfer: the ground truth checked on the host
    host→device     the strategy's batch_to_device (pinned memory and non-blocking copies on CUDA)
    step            `run_training_batch`: forward, loss, backward, optimiser
    other           the rest of the step: callbacks (progress bar, LR monitor), logging, Lightning's loop

A step runs from one `train_dataloader_next` to the next. The first --loop-steps timed steps give the
throughput (img/s), with a device synchronisation only at their two ends, as a run has none in between;
the next --loop-steps give the split, with a synchronisation around every phase, so that each phase's
device work is counted in it (that run is slower on a GPU: its steps cannot overlap). On the CPU the two
halves measure the same thing.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.profilers import Profiler

from benchmarks.case import Case
from benchmarks.generated import generated_data
from dense.config import apply_speed_options
from dense.data import DenseDataModule
from dense.model import DenseModel
from dense.tasks import build_task
from dense.tasks.progress import TimedProgressBar

PHASES = ("loader wait", "host checks", "host→device", "step")
OTHER = "other"


def phase_of(action: str) -> str | None:
    if action == "[_TrainingEpochLoop].train_dataloader_next":
        return "loader wait"
    if action.startswith("[LightningModule]") and action.endswith(".on_before_batch_transfer"):
        return "host checks"
    if action.startswith("[Strategy]") and action.endswith(".batch_to_device"):
        return "host→device"
    if action == "run_training_batch":
        return "step"
    return None


class LoopTimer(Profiler):
    """Times Lightning's phases of each training step (module docstring); `result()` sums them up."""

    def __init__(self, device: torch.device, warmup: int, steps: int):
        super().__init__()
        self.device, self.warmup, self.steps = device, warmup, steps
        self.step_starts: list[float] = []  # perf_counter at the start of each step
        self.phases: list[dict[str, float]] = []  # per step, seconds per phase
        self.open: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def syncing(self) -> bool:
        """In the split half (every phase synchronised)."""
        return len(self.step_starts) > self.warmup + self.steps

    def start(self, action_name: str) -> None:
        phase = phase_of(action_name)
        if phase is None:
            return
        if phase == "loader wait":  # a new step
            step = len(self.step_starts)
            if self.syncing() or step in (self.warmup, self.warmup + self.steps):
                self.sync()  # the throughput half is synchronised only at its two ends
            self.step_starts.append(time.perf_counter())
            self.phases.append(dict.fromkeys(PHASES, 0.0))
        elif self.syncing():
            self.sync()
        self.open[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        phase = phase_of(action_name)
        if phase is None or action_name not in self.open:
            return
        if self.syncing():
            self.sync()
        self.phases[-1][phase] += time.perf_counter() - self.open.pop(action_name)

    def summary(self) -> str:
        return ""  # nothing for Lightning to print: result() reports

    def result(self, batch_size: int) -> dict:
        first, middle, last = self.warmup, self.warmup + self.steps, self.warmup + 2 * self.steps
        if len(self.step_starts) <= last:
            raise RuntimeError(
                f"the loop ran {len(self.step_starts)} steps, fewer than the {last + 1} needed"
            )
        throughput_s = self.step_starts[middle] - self.step_starts[first]
        step_s = [
            b - a for a, b in zip(self.step_starts[middle:last], self.step_starts[middle + 1 : last + 1])
        ]
        split = {phase: statistics.mean(p[phase] for p in self.phases[middle:last]) for phase in PHASES}
        split[OTHER] = statistics.mean(step_s) - sum(split.values())
        return {
            "images_per_s": self.steps * batch_size / throughput_s,
            "median_step_s": statistics.median(step_s),
            "synced_images_per_s": batch_size / statistics.mean(step_s),
            "split_s": split,
            "step_times_s": step_s,
        }


def loop_data(case: Case, args, folder: Path, samples: int) -> dict:
    """The DenseDataModule options of --data at the case's size, with at least `samples` training samples."""
    if args.data == "synthetic":
        return {"name": "synthetic", "image_size": list(case.size), "num_train": samples}
    return {**generated_data(args.data, folder / args.data, samples=samples), "crop_size": list(case.size)}


def run_loop(case: Case, args, model: DenseModel) -> dict:
    """Train `model`'s head for warm-up + 2 × loop_steps steps in a Lightning Trainer; the timings."""
    device = torch.device(case.device)
    bf16 = case.precision == "bf16"
    steps, warmup = args.loop_steps, args.loop_warmup
    total = warmup + 2 * steps + 1  # + 1: the start of the step after the last one timed ends it
    timer = LoopTimer(device, warmup, steps)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        for note in (
            "does not have many workers",  # --workers is the bench's choice
            r"Found \d+ module\(s\) in eval mode",  # the frozen backbone, on purpose
            "You have overridden `on_before_batch_transfer`",  # our host-side checks, on purpose
            "smaller than the logging interval",  # a short run
        ):
            warnings.filterwarnings("ignore", message=f".*{note}")
        options = loop_data(case, args, Path(tmp), samples=total * case.batch)
        datamodule = DenseDataModule(
            **options, batch_size=case.batch, num_workers=args.workers, seed=args.seed
        )
        task = build_task(model, datamodule)
        apply_speed_options(model, compile=case.compile, bf16_autocast=bf16)
        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else device.type,
            devices=[device.index or 0] if device.type == "cuda" else 1,
            precision="bf16-mixed" if bf16 else "32-true",
            max_steps=total,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=CSVLogger(tmp, name="csv"),
            callbacks=[LearningRateMonitor(logging_interval="step"), TimedProgressBar()],
            log_every_n_steps=50,
            enable_checkpointing=False,
            enable_model_summary=False,
            profiler=timer,
            default_root_dir=tmp,
        )
        # Lightning's progress bar writes to stdout: send it to stderr, so that stdout holds the tables.
        with contextlib.redirect_stdout(sys.stderr):
            trainer.fit(task, datamodule=datamodule)
    return {
        "work": "loop",
        "path": "ours",
        "data": args.data,
        "workers": datamodule.num_workers,
        "pin_memory": datamodule.pin_memory,
        "steps": steps,
        "warmup": warmup,
        **timer.result(case.batch),
    }
