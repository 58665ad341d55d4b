"""The training progress bar: Lightning's tqdm bar, redrawn by time rather than every N batches, and plain
lines instead of a bar when the output is not a terminal (a log file)."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar


def is_terminal(stream) -> bool:
    """Whether `stream` is an interactive terminal (not a file, a pipe or a captured stream)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class TimedProgressBar(TQDMProgressBar):
    """Redraws a bar at its first and last batch and otherwise at most every `refresh_seconds`.

    A bar redrawn every 10 batches looks hung for ten minutes when a batch takes a minute (a ViT-g/14 on
    a CPU); one redrawn every batch spends its time drawing when batches take a millisecond.

    When standard output is not a terminal (`python train.py ... > run.txt`), a bar would fill the file
    with carriage-return redraws and escape codes. Then no bar is drawn; instead one plain line
    (`epoch 0 step 120/1000 (12%) 3.1 it/s train/loss=0.43 ...`) is printed at the first training step
    and then at most every `plain_seconds`, and one at the end of training."""

    def __init__(
        self,
        refresh_seconds: float = 1.0,
        plain_seconds: float = 30.0,
        process_position: int = 0,
        leave: bool = False,
    ):
        super().__init__(refresh_rate=1, process_position=process_position, leave=leave)
        self.refresh_seconds = float(refresh_seconds)
        self.plain_seconds = float(plain_seconds)
        self._last_draw = -math.inf
        self._plain: bool | None = None  # decided at first use: sys.stdout may be replaced before training
        self._last_line = -math.inf
        self._start: tuple[float, int] | None = None  # (time, global step) when training started
        self._epoch = 0  # of the last training batch

    @property
    def plain(self) -> bool:
        """Plain lines instead of a bar: standard output is not a terminal."""
        if self._plain is None:
            self._plain = not is_terminal(sys.stdout)
        return self._plain

    @property
    def is_enabled(self) -> bool:
        # Disabled tqdm bars draw nothing; LightningModule.print then prints plainly too.
        return super().is_enabled and not self.plain

    def _should_update(self, current: int, total: int | float | None) -> bool:
        if not self.is_enabled:
            return False
        now = time.monotonic()
        if current in (1, total) or now - self._last_draw >= self.refresh_seconds:
            self._last_draw = now
            return True
        return False

    # ---- plain lines (output not a terminal) -------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._start = (time.monotonic(), trainer.global_step)
        self._last_line = -math.inf

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._epoch = trainer.current_epoch  # at the end of training Lightning has counted one more
        if self.plain and self._enabled and time.monotonic() - self._last_line >= self.plain_seconds:
            self._print_line(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.plain and self._enabled:
            self._print_line(trainer, pl_module)

    def _print_line(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        now = time.monotonic()
        self._last_line = now
        step, total = trainer.global_step, trainer.max_steps
        where = f"epoch {self._epoch} step {step}"
        if total and total > 0:
            where += f"/{total} ({100 * step / total:.0f}%)"
        if self._start is not None and step > self._start[1] and now > self._start[0]:
            where += f" {(step - self._start[1]) / (now - self._start[0]):.3g} it/s"
        metrics = " ".join(
            f"{key}={value}" for key, value in self.get_metrics(trainer, pl_module).items() if key != "v_num"
        )
        print(f"{where} {metrics}".rstrip(), flush=True)
