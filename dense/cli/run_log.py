"""What a run's log file (train.log) keeps of training: the loss as it goes, the validation metrics, and
the final test table. The console has the progress bar and Lightning's table for these; a log file
read after the run (or a run whose output went to a file) needs them as lines."""

from __future__ import annotations

import logging
import math
import time

from lightning.pytorch.callbacks import Callback

LOGGER = "dense.run_log"  # the name train.log shows on its lines: the module was dense/run_log.py


def file_handlers() -> list[logging.Handler]:
    """The root logger's file handlers: Hydra's `<run folder>/<script>.log`."""
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def format_metrics(metrics: dict, prefix: str) -> str:
    return " ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()) if k.startswith(prefix))


class RunLog(Callback):
    """A line with the step, epoch and train/loss every `every_seconds` and after each validation (with
    the validation metrics), and the test metrics as a table at the end.

    While a progress bar shows the same on the console, the lines go to the log file only (Hydra's
    file handler), so that they do not break the bar; without a bar they go wherever logging goes."""

    def __init__(self, every_seconds: float = 60.0):
        self.every_seconds = float(every_seconds)
        self._last = -math.inf
        self.lines = logging.getLogger(LOGGER)

    def setup(self, trainer, pl_module, stage: str) -> None:
        bar_shows_it = trainer.progress_bar_callback is not None and trainer.progress_bar_callback.is_enabled
        files = file_handlers()
        self.lines.handlers = files if bar_shows_it and files else []
        self.lines.propagate = not self.lines.handlers
        self.lines.setLevel(logging.INFO)
        self._last = time.monotonic()

    def _training_line(self, trainer) -> str:
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        loss = trainer.callback_metrics.get("train/loss")
        loss_text = f" train/loss={float(loss):.4g}" if loss is not None else ""
        return f"step {trainer.global_step}{total} (epoch {trainer.current_epoch}){loss_text}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_seconds:
            self._last = now
            self.lines.info(self._training_line(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._last = time.monotonic()
        validation = format_metrics(trainer.callback_metrics, "val/")
        self.lines.info(f"{self._training_line(trainer)} {validation}".rstrip())

    def on_test_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        if not metrics:
            return
        width = max(len(k) for k in metrics)
        rows = "\n".join(f"  {k:<{width}}  {v:.6g}" for k, v in sorted(metrics.items()))
        self.lines.info(f"test metrics:\n{rows}")
