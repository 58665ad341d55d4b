"""Evaluation metrics as torchmetrics `Metric`s, so their states are summed across DDP processes.

DepthMetrics follows the Monocular-Depth-Estimation-Toolbox (the evaluation the DINOv2 depth numbers
come from: depth/core/evaluation/metrics.py and depth/datasets/{nyu,kitti}.py); SegMetrics follows
mmseg's mean_iou (a confusion matrix over the whole split). Both `compute()` return plain dicts of
scalar tensors, ready for `LightningModule.log_dict`.
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric

from dense.constants import IGNORE_INDEX
from dense.errors import BadInputError
from dense.losses import as_label_map, check_finite, check_labels

DEPTH_METRIC_NAMES = ("a1", "a2", "a3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")

# Eigen crop of the NYU test set, in pixels of the 480×640 ground truth (toolbox nyu.py eval_mask).
EIGEN_CROP_HW = (480, 640)
EIGEN_CROP = (slice(45, 471), slice(41, 601))
# Garg crop (KITTI), as fractions of the ground-truth size, truncated with int() (toolbox kitti.py).
GARG_CROP_FRACTIONS = (0.40810811, 0.99189189, 0.03594771, 0.96405229)


def crop_mask(crop: str | None, height: int, width: int, device=None) -> torch.Tensor:
    """H×W boolean mask of the evaluation crop (all True for crop=None)."""
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    if crop is None:
        mask[:] = True
    elif crop == "eigen":
        # The toolbox writes these pixel indices for 480×640 NYU maps. Rescaling them to another size
        # would be an invention of ours, so other sizes are refused: evaluate at full resolution.
        if (height, width) != EIGEN_CROP_HW:
            raise BadInputError(
                f"DepthMetrics: the eigen crop is defined on 480×640 ground truth, got {height}×{width}; "
                "evaluate at the original NYU resolution or use crop=None"
            )
        mask[EIGEN_CROP] = True
    elif crop == "garg":
        top, bottom, left, right = GARG_CROP_FRACTIONS
        mask[int(top * height) : int(bottom * height), int(left * width) : int(right * width)] = True
    else:
        raise BadInputError(f"DepthMetrics: unknown crop {crop!r}; use None, 'eigen' or 'garg'")
    return mask


class DepthMetrics(Metric):
    """Standard monocular depth metrics, per image then averaged over images.

    update(pred, target): B×1×H×W or B×H×W depth in metres, same shape. Valid pixels:
    min_depth < gt < max_depth (both strict, as the toolbox) and inside the crop.
    compute() -> {"a1", "a2", "a3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog",
                  "n_images", "n_skipped"}
    n_images counts the images that entered the averages, n_skipped those with no valid pixel (the
    toolbox gives them NaN and drops them with nanmean: same averages). With no image at all the
    metrics are NaN.

    Per image, over its valid pixels (toolbox `calculate`, cited formula by formula):
        a_k      = mean(max(gt/pred, pred/gt) < 1.25**k)
        abs_rel  = mean(|gt - pred| / gt)             sq_rel   = mean((gt - pred)**2 / gt)
        rmse     = sqrt(mean((gt - pred)**2))         rmse_log = sqrt(mean((log gt - log pred)**2))
        log10    = mean(|log10 gt - log10 pred|)
        silog    = 100 * sqrt(mean(err**2) - mean(err)**2),  err = log pred - log gt
                   (population variance, natural log, times 100; the toolbox turns a NaN from a
                   slightly negative difference into 0, here the difference is clamped at 0: same)
    Prediction clamping: the toolbox clamps the network output to [min_depth, max_depth] in the
    model (DepthEncoderDecoder.encode_decode) before resizing; the metric itself does not. Here the
    prediction is clamped to [min_depth, max_depth] on entry, which is a no-op for outputs already
    clamped that way and keeps log/division defined for heads that are not.
    Everything is computed in float64 (the toolbox works in numpy float32/64).
    """

    is_differentiable = False
    higher_is_better = None  # a1..a3 higher, the errors lower
    full_state_update = False

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, crop: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0 < min_depth < max_depth:
            raise BadInputError(f"DepthMetrics: need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        if crop not in (None, "eigen", "garg"):
            raise BadInputError(f"DepthMetrics: unknown crop {crop!r}; use None, 'eigen' or 'garg'")
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.crop = crop
        # Sums of the per-image values and the image counts: summing is the right DDP reduction.
        for name in DEPTH_METRIC_NAMES:
            self.add_state(f"sum_{name}", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_images", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_skipped", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        where = "DepthMetrics"
        for name, tensor in (("prediction", pred), ("target", target)):
            if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (3, 4):
                raise BadInputError(f"{where}: the {name} must be B×1×H×W or B×H×W")
            if tensor.dim() == 4 and tensor.shape[1] != 1:
                raise BadInputError(
                    f"{where}: the {name} must have one channel, got shape {tuple(tensor.shape)}"
                )
        if pred.dim() == 4:
            pred = pred[:, 0]
        if target.dim() == 4:
            target = target[:, 0]
        if pred.shape != target.shape:
            raise BadInputError(
                f"{where}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
            )
        check_finite(pred, "prediction", where)
        check_finite(target, "target", where)

        # Validity is decided in the ground truth's own dtype, before the float64 cast: the toolbox
        # compares a float32 numpy map with Python floats, i.e. in float32, so a gt of exactly
        # float32(0.1) is NOT > min_depth 0.1 (in float64 it would be).
        valid = (target > self.min_depth) & (target < self.max_depth)
        valid &= crop_mask(self.crop, target.shape[-2], target.shape[-1], target.device)
        gt = target.detach().to(torch.float64)
        pred = pred.detach().to(torch.float64).clamp(self.min_depth, self.max_depth)
        # Put harmless values at invalid pixels, so that no log(0) or x/0 can appear; those pixels
        # are then excluded from every mean by `valid`.
        gt = torch.where(valid, gt, torch.ones_like(gt))
        pred = torch.where(valid, pred, torch.ones_like(pred))

        count = valid.sum(dim=(1, 2))  # valid pixels per image
        has_pixels = count > 0
        n = count.clamp(min=1).to(torch.float64)

        def image_mean(values: torch.Tensor) -> torch.Tensor:
            return torch.where(valid, values, torch.zeros_like(values)).sum(dim=(1, 2)) / n

        thresh = torch.maximum(gt / pred, pred / gt)
        err = torch.log(pred) - torch.log(gt)
        per_image = {
            "a1": image_mean((thresh < 1.25).to(torch.float64)),
            "a2": image_mean((thresh < 1.25**2).to(torch.float64)),
            "a3": image_mean((thresh < 1.25**3).to(torch.float64)),
            "abs_rel": image_mean((gt - pred).abs() / gt),
            "sq_rel": image_mean((gt - pred) ** 2 / gt),
            "rmse": image_mean((gt - pred) ** 2).sqrt(),
            "rmse_log": image_mean(err**2).sqrt(),
            "log10": image_mean((torch.log10(gt) - torch.log10(pred)).abs()),
            "silog": (image_mean(err**2) - image_mean(err) ** 2).clamp(min=0).sqrt() * 100,
        }
        for name, values in per_image.items():
            state = getattr(self, f"sum_{name}")
            setattr(self, f"sum_{name}", state + values[has_pixels].sum())
        self.n_images += has_pixels.sum()
        self.n_skipped += (~has_pixels).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n_images.to(torch.float64)
        nan = torch.tensor(math.nan, dtype=torch.float64, device=n.device)
        result = {
            name: getattr(self, f"sum_{name}") / n if self.n_images > 0 else nan.clone()
            for name in DEPTH_METRIC_NAMES
        }
        result["n_images"] = self.n_images.clone()
        result["n_skipped"] = self.n_skipped.clone()
        return result


class SegMetrics(Metric):
    """mIoU / mAcc / aAcc from a confusion matrix accumulated over the whole split (mmseg semantics).

    update(pred, target): pred is B×C×H×W scores (argmax over C is taken) or B×H×W labels; target is
    B×H×W (or B×1×H×W) labels in [0, num_classes) or ignore_index. Ignored pixels are dropped.
    compute() -> {"mIoU", "mAcc", "aAcc"} as fractions in [0, 1] (mmseg also returns fractions).
    As mmseg's mean_iou (total_area_to_metrics):
        IoU_c = |pred=c ∧ gt=c| / |pred=c ∨ gt=c|   NaN when the union is empty (c absent from both)
        Acc_c = |pred=c ∧ gt=c| / |gt=c|            NaN when c is absent from the ground truth
        mIoU = nanmean(IoU), mAcc = nanmean(Acc), aAcc = sum_c |pred=c ∧ gt=c| / #non-ignored pixels
    A class predicted but absent from the ground truth has IoU 0 (it counts against mIoU).
    per_class() gives the IoU/Acc vectors; per_class_table() a printable table.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = IGNORE_INDEX,
        class_names: list[str] | tuple[str, ...] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_classes < 1:
            raise BadInputError(f"SegMetrics: num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise BadInputError(f"SegMetrics: {len(class_names)} class names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = (
            list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        )
        # Rows: ground-truth class, columns: predicted class. Counts add up across batches and processes.
        self.add_state(
            "confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        where = "SegMetrics"
        if not isinstance(pred, torch.Tensor) or pred.dim() not in (3, 4):
            raise BadInputError(f"{where}: the prediction must be B×C×H×W scores or B×H×W labels")
        if pred.dim() == 4:
            if pred.shape[1] != self.num_classes:
                raise BadInputError(
                    f"{where}: the prediction has {pred.shape[1]} channels but num_classes is {self.num_classes}"
                )
            if pred.dtype.is_floating_point:
                check_finite(pred, "prediction", where)
            pred = pred.argmax(dim=1)
        target = as_label_map(target, tuple(pred.shape), where)
        check_labels(target, self.num_classes, self.ignore_index, "target", where)
        check_labels(pred, self.num_classes, None, "prediction", where)

        keep = (
            target != self.ignore_index
            if self.ignore_index is not None
            else torch.ones_like(target, dtype=torch.bool)
        )
        index = target[keep].long() * self.num_classes + pred[keep].long()
        counts = torch.bincount(index, minlength=self.num_classes**2)
        self.confmat += counts.reshape(self.num_classes, self.num_classes)

    def per_class(self) -> dict[str, torch.Tensor]:
        """{"IoU": C, "Acc": C} float64 tensors (NaN as explained in the class docstring)."""
        confmat = self.confmat.to(torch.float64)
        intersect = confmat.diag()
        area_label = confmat.sum(dim=1)
        area_pred = confmat.sum(dim=0)
        union = area_label + area_pred - intersect
        nan = torch.full_like(intersect, math.nan)
        iou = torch.where(union > 0, intersect / union.clamp(min=1), nan)
        acc = torch.where(area_label > 0, intersect / area_label.clamp(min=1), nan)
        return {"IoU": iou, "Acc": acc}

    def compute(self) -> dict[str, torch.Tensor]:
        per_class = self.per_class()
        confmat = self.confmat.to(torch.float64)
        total = confmat.sum()
        a_acc = confmat.diag().sum() / total if total > 0 else torch.tensor(math.nan, dtype=torch.float64)
        return {
            "mIoU": torch.nanmean(per_class["IoU"]),
            "mAcc": torch.nanmean(per_class["Acc"]),
            "aAcc": a_acc,
        }

    def per_class_table(self) -> str:
        """Printable per-class IoU / Acc table in percent (nan: class absent, excluded from the means)."""
        per_class = self.per_class()
        summary = self.compute()
        width = max(len("Class"), max(len(name) for name in self.class_names))
        lines = [f"{'Class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]
        for name, iou, acc in zip(
            self.class_names, per_class["IoU"].tolist(), per_class["Acc"].tolist(), strict=True
        ):
            lines.append(f"{name:<{width}}  {iou * 100:6.2f}  {acc * 100:6.2f}")
        lines.append("-" * (width + 16))
        lines.append(
            f"mIoU {float(summary['mIoU']) * 100:.2f}  mAcc {float(summary['mAcc']) * 100:.2f}  "
            f"aAcc {float(summary['aAcc']) * 100:.2f}"
        )
        return "\n".join(lines)
