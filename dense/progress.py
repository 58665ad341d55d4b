"""The training progress bar: Lightning's tqdm bar, redrawn by time rather than every N batches."""

from __future__ import annotations

import math
import time

from lightning.pytorch.callbacks import TQDMProgressBar


class TimedProgressBar(TQDMProgressBar):
    """Redraws a bar at its first and last batch and otherwise at most every `refresh_seconds`.

    A bar redrawn every 10 batches looks hung for ten minutes when a batch takes a minute (a ViT-g/14 on
    a CPU); one redrawn every batch spends its time drawing when batches take a millisecond."""

    def __init__(self, refresh_seconds: float = 1.0, process_position: int = 0, leave: bool = False):
        super().__init__(refresh_rate=1, process_position=process_position, leave=leave)
        self.refresh_seconds = float(refresh_seconds)
        self._last_draw = -math.inf

    def _should_update(self, current: int, total: int | float | None) -> bool:
        if not self.is_enabled:
            return False
        now = time.monotonic()
        if current in (1, total) or now - self._last_draw >= self.refresh_seconds:
            self._last_draw = now
            return True
        return False
