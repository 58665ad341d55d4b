"""DepthTask: SigLoss + GradientLoss training, the depth metrics of the literature for evaluation."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dense.losses import DepthLoss, check_finite
from dense.metrics import DepthMetrics
from dense.model import DenseModel
from dense.plain import plain
from dense.tasks.base import DenseTask


class DepthTask(DenseTask):
    """Trains a depth head (metres).

    loss: DepthLoss options (sig_weight, grad_weight, warm_up, warm_iter, valid_mask, max_depth, eps,
        gradient). As upstream's recipes (SigLoss and GradientLoss are configured there without
        max_depth), every ground-truth pixel > 0 counts, also beyond the evaluation range, unless
        `loss.max_depth` sets a cut-off. It is built with check_values=False (no host-device sync
        per step): the depth of each training batch is checked for NaN/inf on the host instead
        (check_target), and a NaN loss stops the run at the next periodic check (DenseTask).
    min_depth / max_depth / crop: the evaluation range and crop ("eigen" NYU, "garg" KITTI, None) of
        DepthMetrics; the datamodule knows them for its dataset.
    Logs train/loss, train/loss_sig, train/loss_grad; val/* and test/*: a1 a2 a3 abs_rel sq_rel rmse
    rmse_log log10 silog, the same after a least-squares scale and shift per image (abs_rel_aligned,
    a1_aligned, ...: DINOv3's align_least_squares evaluation, in depth space), n_images n_skipped.
    """

    task = "depth"
    main_metric = "val/rmse"
    main_metric_mode = "min"
    default_decay = "cosine"

    def __init__(
        self,
        model: DenseModel,
        *,
        loss: Mapping | None = None,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        crop: str | None = None,
        **common,
    ):
        super().__init__(model, **common)
        loss = dict(plain(loss) or {})
        # A submodule, so the SigLoss warm-up counter is saved with the checkpoint and resumes exactly.
        # check_values=False: no sync in the step (loss.check_values=true turns the in-loss checks on).
        self.loss = DepthLoss(**{"check_values": False, **loss})
        self.val_metrics = DepthMetrics(min_depth, max_depth, crop, align="depth")
        self.test_metrics = DepthMetrics(min_depth, max_depth, crop, align="depth")
        self.hparams.update(
            loss=loss,
            metrics={"min_depth": min_depth, "max_depth": max_depth, "crop": crop, "align": "depth"},
        )

    def target(self, batch: dict) -> torch.Tensor:
        return batch["depth"]

    def check_target(self, target: torch.Tensor, where: str) -> None:
        check_finite(target, "depth", where)

    def compute_loss(self, prediction: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        # Under bf16 autocast the head answers in bf16; logs and ratios of depths want fp32.
        return self.loss(prediction.float(), batch["depth"].float())
