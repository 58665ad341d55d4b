"""RelativeDepthTask: a depth head trained for relative (affine-invariant) depth, as MiDaS trains it:
disparity up to an unknown scale and shift per image, learnt with the scale-and-shift-invariant loss
and scored after a least-squares alignment (train.py task.depth_mode=relative).

What the head's output means here: a disparity (larger = nearer) without a unit. The heads are not
changed for it; DenseModel(depth_mode="relative") only stops clamping their output to the metric
range at inference. How the two depth heads' metric output forms behave under this loss:
  * DPT (heads/depth_dpt.py): relu(x) + min_depth, non-negative as MiDaS' own output (its ReLU). The
    + min_depth is a constant shift: the loss, which normalises each map by its median and mean
    absolute deviation, and the aligned metrics, which fit a shift, do not see it.
  * linear / linear4 (heads/depth_linear.py): the expectation over bins spread on [min_depth,
    max_depth], so the output stays inside that interval, which then only bounds the dynamic range
    of the relative map (10⁴ for 0.001–10), not its unit.
Metric-depth ground truth (NYU, KITTI, synthetic, folder depth/) is turned into disparity 1/depth
where depth > 0; relative ground truth (folder disparity/, sample key "disparity") is used as it is.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dense.core.errors import ConfigError
from dense.core.plain import plain
from dense.model import DenseModel
from dense.tasks.base import DenseTask
from dense.tasks.depth import at_min_depth, dead_depth_head_message
from dense.tasks.losses import ScaleShiftInvariantLoss, check_finite
from dense.tasks.metrics import DepthMetrics


def disparity_target(target: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(disparity, valid mask) of a ground-truth batch: `kind` "depth" (metres, 0 = none): 1/depth where
    depth > 0; "disparity" (relative, -1 = none): as it is where ≥ 0. 0 at invalid pixels. No sync."""
    if kind == "disparity":
        valid = target >= 0
        return torch.where(valid, target, torch.zeros_like(target)), valid
    valid = target > 0
    inverse = 1 / torch.where(valid, target, torch.ones_like(target))
    return torch.where(valid, inverse, torch.zeros_like(target)), valid


class RelativeDepthTask(DenseTask):
    """Trains a depth head of a relative DenseModel (depth_mode="relative").

    loss: ScaleShiftInvariantLoss options (trim, grad_weight, scales); built with check_values=False,
        the ground truth of each training batch being checked on the host (check_target).
    min_depth / max_depth / crop: the evaluation range and crop of metric ground truth (DepthMetrics).
    depth_target: "depth" (metric ground truth) or "disparity" (relative maps), from the datamodule.
    Logs train/loss, train/loss_ssi, train/loss_grad; val/* and test/*: only the aligned metrics
    (a1_aligned ... silog_aligned, n_images, n_skipped), aligned in disparity space; the output has
    no unit, so the metric ones would mean nothing. best.ckpt follows val/abs_rel_aligned.
    """

    task = "depth"
    main_metric = "val/abs_rel_aligned"
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
        depth_target: str = "depth",
        **common,
    ):
        super().__init__(model, **common)
        if model.depth_mode != "relative":
            raise ConfigError(
                f"RelativeDepthTask trains relative models (depth_mode=relative), got a {model.depth_mode} one"
            )
        loss = dict(plain(loss) or {})
        self.loss = ScaleShiftInvariantLoss(**{"check_values": False, **loss})
        self.depth_target = depth_target
        options = {"metric": False, "align": "disparity", "target": depth_target}
        self.val_metrics = DepthMetrics(min_depth, max_depth, crop, **options)
        self.test_metrics = DepthMetrics(min_depth, max_depth, crop, **options)
        self.hparams.update(
            loss=loss,
            depth_mode="relative",
            metrics={"min_depth": min_depth, "max_depth": max_depth, "crop": crop, **options},
        )

    def target(self, batch: dict) -> torch.Tensor:
        return batch[self.depth_target]

    def check_target(self, target: torch.Tensor, where: str) -> None:
        check_finite(target, self.depth_target, where)

    def compute_loss(self, prediction: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        disparity, valid = disparity_target(batch[self.depth_target].float(), self.depth_target)
        return self.loss(prediction.float(), disparity, valid)

    # A dead DPT head is the same here: relu(x) + min_depth at every pixel, a constant map.
    def is_dead(self, prediction: torch.Tensor) -> torch.Tensor:
        return at_min_depth(prediction, self.model.min_depth)

    def dead_head_message(self, steps: int, step: int) -> str:
        return dead_depth_head_message(steps, step, self.model.min_depth)
