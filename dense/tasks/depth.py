"""DepthTask: SigLoss + GradientLoss training, the depth metrics of the literature for evaluation."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from dense.core.plain import plain
from dense.model import DenseModel
from dense.tasks.base import DenseTask
from dense.tasks.losses import DepthLoss, check_finite
from dense.tasks.metrics import DepthMetrics

log = logging.getLogger(__name__)
# A depth prediction is dead when at least this share of its pixels sits at min_depth (relu(x) = 0 there:
# no gradient). Interpolation at the edges of a dead region can leave a few pixels just above it.
DEAD_PIXEL_FRACTION = 0.99


def median_valid_depth(depth: torch.Tensor) -> torch.Tensor:
    """Median of the valid (> 0, finite) ground-truth depths of a batch, NaN when there is none; computed
    without a boolean index (no sync)."""
    depth = depth.detach().float()
    return torch.nanmedian(torch.where((depth > 0) & torch.isfinite(depth), depth, torch.nan))


def at_min_depth(prediction: torch.Tensor, min_depth: float) -> torch.Tensor:
    """A 0-d bool tensor, no sync: whether nearly every pixel of a depth head's training prediction sits
    at min_depth, where the head's output ReLU passes no gradient (a dead head)."""
    at_min = prediction <= min_depth * (1 + 1e-3)
    return at_min.float().mean() >= DEAD_PIXEL_FRACTION


def dead_depth_head_message(steps: int, step: int, min_depth: float) -> str:
    return (
        f"the depth head is dead: for the last {steps} training steps (up to step {step}) it predicted "
        f"min_depth ({min_depth:g}) at nearly every pixel, where its output ReLU passes no gradient, so it "
        "cannot learn any more; start a new run with a lower task.optimizer.lr, a longer "
        "task.scheduler.warmup_steps, trainer.gradient_clip_val set and the output initialised from the data "
        "(task.init_depth_from_data=true, the default) (task.dead_head_steps=0: no check)"
    )


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
    init_depth_from_data: before the first training step of a fresh run, start the head's output at the
        median valid depth of that first batch (averaged over the processes), for heads that have an
        `init_output(depth)` method (depth_dpt). train.py turns it off for a head loaded from
        head.weights; a resumed run (global step > 0) never does it.
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
        init_depth_from_data: bool = False,
        **common,
    ):
        super().__init__(model, **common)
        self.init_depth_from_data = bool(init_depth_from_data) and hasattr(model.head, "init_output")
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

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.init_depth_from_data and self.global_step == 0:
            self.init_output_from(self.target(batch))
        self.init_depth_from_data = False  # once, and never after a resume

    def init_output_from(self, depth: torch.Tensor) -> None:
        """Start the head at the median valid depth of `depth` (one sync, once per run); every process
        takes the mean of their medians, so the replicas stay equal."""
        median = median_valid_depth(depth)
        found = torch.isfinite(median)
        total = torch.stack([torch.where(found, median, 0.0), found.float()])
        total = self.trainer.strategy.reduce(total, reduce_op="sum")
        value, count = total.tolist()
        if count == 0:
            return  # no valid depth in the first batch: the head keeps its own starting depth
        self.model.head.init_output(value / count)
        log.info(
            f"the depth head starts at {value / count:.3g} m everywhere: the first training batch's median depth"
        )

    def is_dead(self, prediction: torch.Tensor) -> torch.Tensor:
        return at_min_depth(prediction, self.model.min_depth)

    def dead_head_message(self, steps: int, step: int) -> str:
        return dead_depth_head_message(steps, step, self.model.min_depth)
