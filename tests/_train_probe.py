"""A callback the training tests add through the config (+callbacks.probe=...): each process writes
the validation metrics it logged, so a test can compare what the DDP ranks saw."""

import json
from pathlib import Path

import lightning as L


class RecordValidationMetrics(L.Callback):
    def __init__(self, path: str):
        self.path = Path(path)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        out = self.path / f"rank{trainer.global_rank}_step{trainer.global_step}.json"
        out.write_text(json.dumps({"world_size": trainer.world_size, **metrics}))


class StopAt(L.Callback):
    """Stops training at the end of the epoch that reaches `step`, as if the run had been killed just
    after writing last.ckpt."""

    def __init__(self, step: int):
        self.step = step

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True
