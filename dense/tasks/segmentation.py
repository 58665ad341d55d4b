"""SegmentationTask: cross-entropy (+ optional Dice/Lovasz) training, mIoU/mAcc/aAcc evaluation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from dense._cli import plain
from dense.losses import SegLoss, check_labels
from dense.metrics import SegMetrics
from dense.model import DenseModel
from dense.tasks.base import DenseTask


class SegmentationTask(DenseTask):
    """Trains a segmentation head.

    loss: SegLoss weights (ce_weight, dice_weight, lovasz_weight); pixels equal to `ignore_index`
        (255) count for neither the loss nor the metrics. The loss is built with check_values=False
        (no host-device sync per step): the labels of each training batch are checked on the host
        instead (check_target). CE and Dice make no sync; smp's Lovasz does (dense/losses.py).
    class_names: for the per-class IoU table printed at the end of a test (and by eval.py).
    Logs train/loss, train/loss_ce (+ loss_dice, loss_lovasz); val/* and test/*: mIoU mAcc aAcc, as
    fractions, from a confusion matrix summed over the whole split (and over all processes).
    """

    task = "segmentation"
    main_metric = "val/mIoU"
    main_metric_mode = "max"
    default_decay = "poly"

    def __init__(
        self,
        model: DenseModel,
        *,
        loss: Mapping | None = None,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        **common,
    ):
        super().__init__(model, **common)
        num_classes = model.num_classes
        class_names = list(class_names) if class_names else None
        loss = dict(plain(loss) or {})
        self.ignore_index = ignore_index
        # check_values=False: no sync in the step (loss.check_values=true turns the in-loss checks on).
        self.loss = SegLoss(num_classes, ignore_index=ignore_index, **{"check_values": False, **loss})
        self.val_metrics = SegMetrics(num_classes, ignore_index, class_names)
        self.test_metrics = SegMetrics(num_classes, ignore_index, class_names)
        self.hparams.update(loss=loss, metrics={"ignore_index": ignore_index, "class_names": class_names})
        self.per_class_table: str | None = None  # of the last validation or test, for eval.py

    def target(self, batch: dict) -> torch.Tensor:
        return batch["mask"]

    def check_target(self, target: torch.Tensor, where: str) -> None:
        check_labels(target, self.model.num_classes, self.ignore_index, "labels", where)

    def compute_loss(self, prediction: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        return self.loss(prediction.float(), batch["mask"])

    def on_metrics_computed(self, metrics: SegMetrics, stage: str) -> None:
        # per_class() reads this process's confusion matrix; inside sync_context it reads the sum
        # over all processes, as compute() did (compute()'s cached result is reused, no second sync).
        with metrics.sync_context():
            self.per_class_table = metrics.per_class_table()
        if stage == "test" and self.trainer.is_global_zero:
            print(f"\nPer-class results ({stage}):\n{self.per_class_table}", flush=True)
