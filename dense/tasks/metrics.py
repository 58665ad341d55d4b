"""Evaluation metrics as torchmetrics `Metric`s, so their states are summed across DDP processes.

DepthMetrics follows the Monocular-Depth-Estimation-Toolbox (the evaluation the DINOv2 depth numbers
come from: depth/core/evaluation/metrics.py and depth/datasets/{nyu,kitti}.py), and scores relative
(affine-invariant) depth after `align_least_squares`, as DINOv3's and Marigold's evaluations; SegMetrics follows
mmseg's mean_iou (a confusion matrix over the whole split). Both `compute()` return plain dicts of
scalar tensors, ready for `LightningModule.log_dict`.
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric

from dense.core.constants import IGNORE_INDEX
from dense.core.errors import BadInputError
from dense.tasks.losses import as_label_map, check_finite, check_labels

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


# ---- least-squares alignment (relative depth) -------------------------------------------------------

ALIGN_SPACES = ("depth", "disparity")
DEPTH_TARGETS = ("depth", "disparity")
# Marigold's floors (script/depth/eval.py): an aligned disparity is clipped at 1e-3 before it is
# inverted (a depth of at most 1000 m), and a prediction at 1e-6 "for evaluation" (d > 0).
ALIGNED_DISPARITY_FLOOR = 1e-3
EVALUATION_FLOOR = 1e-6


def _image_planes(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """H×W, B×H×W or B×1×H×W → B×H×W (a view)."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (2, 3, 4):
        raise BadInputError(f"align_least_squares: the {name} must be H×W, B×H×W or B×1×H×W")
    if tensor.dim() == 4:
        if tensor.shape[1] != 1:
            raise BadInputError(
                f"align_least_squares: the {name} must have one channel, got shape {tuple(tensor.shape)}"
            )
        return tensor[:, 0]
    return tensor[None] if tensor.dim() == 2 else tensor


def least_squares_fit(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """Per image (B×H×W), the scale and shift minimising sum over `mask` of (scale·pred + shift − target)²,
    as float64 tensors of shape B.

    Solved as DINOv3 and Marigold solve it, with LAPACK's SVD least squares (numpy's lstsq there,
    torch.linalg.lstsq with the same driver, gelsd, here, in float64 on the CPU): a fit that is not
    determined gets the minimum-norm solution, as theirs. A constant prediction c gives
    (scale, shift) = mean(target)·(c, 1)/(c² + 1), i.e. the mean of the target everywhere; an image
    without a pixel in `mask` gives 0 and 0. One small copy to the host per image: an evaluation step."""
    scales, shifts = [], []
    for p, t, m in zip(pred, target, mask, strict=True):
        p, t = p[m].detach().to("cpu", torch.float64), t[m].detach().to("cpu", torch.float64)
        system = torch.stack([p, torch.ones_like(p)], dim=1)
        solution = torch.linalg.lstsq(system, t[:, None], driver="gelsd").solution[:, 0]
        scales.append(solution[0])
        shifts.append(solution[1])
    device = pred.device
    return torch.stack(scales).to(device), torch.stack(shifts).to(device)


def align_least_squares(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, space: str = "depth"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prediction aligned to the ground truth per image by the least-squares scale and shift over
    the valid pixels: what affine-invariant ("relative") depth is scored on.

    pred, target, mask: H×W, B×H×W or B×1×H×W (the same shape); mask: the valid ground-truth pixels.
    Returns (aligned, scale, shift): `aligned` has pred's shape (float64) and is a DEPTH map in both
    spaces; scale and shift have one value per image.

    space "depth": scale·pred + shift fitted to the target as it is. DINOv3's evaluation with
        `align_least_squares: true` (dinov3/eval/depth/utils.py align_depth_least_square, called by
        eval.py evaluate_depther_with_dataloader on each prediction, with the valid mask).
    space "disparity": the prediction is a disparity (larger = nearer, what relative models such as
        MiDaS predict), fitted to 1/target over the pixels of `mask` where target > 0 and pred > 0;
        the aligned disparity is clipped at 1e-3 and inverted. Marigold's least_square_disparity
        (prs-eth/Marigold script/depth/eval.py, src/util/alignment.py), the protocol Depth Anything
        and MiDaS results are compared under, and the one DINOv3's function is adapted from.
    Neither clamps to a depth range: the metrics do that next (DepthMetrics, as DINOv3 and Marigold).
    """
    if space not in ALIGN_SPACES:
        raise BadInputError(f"align_least_squares: space={space!r} is not one of {ALIGN_SPACES}")
    p, t, m = (_image_planes(x, n) for x, n in ((pred, "prediction"), (target, "target"), (mask, "mask")))
    if not (p.shape == t.shape == m.shape):
        raise BadInputError(
            f"align_least_squares: prediction {tuple(pred.shape)}, target {tuple(target.shape)} and "
            f"mask {tuple(mask.shape)} must have the same shape"
        )
    p, t, m = p.to(torch.float64), t.to(torch.float64), m.bool()
    if space == "disparity":
        positive = m & (t > 0) & (p > 0)
        inverse = 1 / torch.where(positive, t, torch.ones_like(t))
        scale, shift = least_squares_fit(p, inverse, positive)
        disparity = (scale[:, None, None] * p + shift[:, None, None]).clamp(min=ALIGNED_DISPARITY_FLOOR)
        aligned = 1 / disparity
    else:
        scale, shift = least_squares_fit(p, t, m)
        aligned = scale[:, None, None] * p + shift[:, None, None]
    if pred.dim() == 2:
        return aligned[0], scale[0], shift[0]
    return aligned.reshape(pred.shape), scale, shift


# ---- the metrics ---------------------------------------------------------------------------------


def per_image_metrics(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric of DEPTH_METRIC_NAMES per image (B values each) over the `valid` pixels of B×H×W
    float64 maps; `pred` and `gt` must be positive there (the callers clamp). Formulas: DepthMetrics."""
    # Harmless values at invalid pixels, so that no log(0) or x/0 can appear; those pixels are then
    # excluded from every mean by `valid`.
    gt = torch.where(valid, gt, torch.ones_like(gt))
    pred = torch.where(valid, pred, torch.ones_like(pred))
    n = valid.sum(dim=(1, 2)).clamp(min=1).to(torch.float64)

    def image_mean(values: torch.Tensor) -> torch.Tensor:
        return torch.where(valid, values, torch.zeros_like(values)).sum(dim=(1, 2)) / n

    thresh = torch.maximum(gt / pred, pred / gt)
    err = torch.log(pred) - torch.log(gt)
    return {
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


class DepthMetrics(Metric):
    """Standard monocular depth metrics, per image then averaged over images: on the prediction as it
    is, and/or on the prediction aligned to the ground truth by least squares (relative depth).

    update(pred, target): B×1×H×W or B×H×W, same shape. Valid pixels: min_depth < gt < max_depth (both
    strict, as the toolbox) and inside the crop; for target="disparity", gt > 0 (see below).
    compute() -> {"a1", "a2", "a3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"
                  (with metric=True), the same names + "_aligned" (with align), "n_images", "n_skipped"}
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

    metric: compute the metrics on the prediction as it is (False for relative models: their output
        has no unit, only the aligned metrics mean something).
    align: None, or the space of `align_least_squares` for the "_aligned" metrics: per image, the
        prediction is fitted to the ground truth over the valid pixels, then clamped to [min_depth,
        max_depth] and scored, as DINOv3's evaluation (eval.py: align, clamp to eval_range, then
        calculate_depth_metrics) and Marigold's (least_square_disparity: align, clip, score).
        "depth": the prediction is a depth (DINOv3); "disparity": a disparity (relative models).
    target: "depth" (metres) or "disparity": the ground truth is itself a relative disparity (larger =
        nearer, any scale and shift; negative = no value, as the folder dataset's -1). Then only the
        aligned metrics exist (metric=False, align="disparity"): the prediction is fitted to the
        ground-truth disparity directly, clipped at 1e-6 (Marigold's floor), and the metrics compare
        disparities; valid pixels are gt > 0 (a disparity of 0, the sky, divides AbsRel and δ by 0,
        so it trains but is not scored), no depth range. δ is the same in depth and disparity (the
        ratio is inverted); AbsRel, RMSE are in disparity units.
    """

    is_differentiable = False
    higher_is_better = None  # a1..a3 higher, the errors lower
    full_state_update = False

    def __init__(
        self,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        crop: str | None = None,
        *,
        metric: bool = True,
        align: str | None = None,
        target: str = "depth",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0 < min_depth < max_depth:
            raise BadInputError(f"DepthMetrics: need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        if crop not in (None, "eigen", "garg"):
            raise BadInputError(f"DepthMetrics: unknown crop {crop!r}; use None, 'eigen' or 'garg'")
        if align not in (None, *ALIGN_SPACES):
            raise BadInputError(
                f"DepthMetrics: align={align!r} is not one of None, {', '.join(ALIGN_SPACES)}"
            )
        if target not in DEPTH_TARGETS:
            raise BadInputError(f"DepthMetrics: target={target!r} is not one of {', '.join(DEPTH_TARGETS)}")
        if target == "disparity" and (metric or align != "disparity"):
            raise BadInputError(
                "DepthMetrics: a disparity ground truth has no unit: use metric=False, align='disparity'"
            )
        if not (metric or align):
            raise BadInputError("DepthMetrics: nothing to compute (metric=False and align=None)")
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.crop = crop
        self.metric, self.align, self.target = bool(metric), align, target
        self.names = [
            *(DEPTH_METRIC_NAMES if metric else ()),
            *(f"{name}_aligned" for name in (DEPTH_METRIC_NAMES if align else ())),
        ]
        # Sums of the per-image values and the image counts: summing is the right DDP reduction.
        for name in self.names:
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
        if self.target == "disparity":
            valid = target > 0
        else:
            valid = (target > self.min_depth) & (target < self.max_depth)
        valid &= crop_mask(self.crop, target.shape[-2], target.shape[-1], target.device)
        gt = target.detach().to(torch.float64)
        pred = pred.detach().to(torch.float64)

        values = {}
        if self.metric:
            values.update(per_image_metrics(pred.clamp(self.min_depth, self.max_depth), gt, valid))
        if self.align == "disparity" and self.target == "disparity":
            # Both are disparities: fitted to each other as they are, on the pixels where the prediction
            # is positive too (Marigold's fit mask in disparity space).
            scale, shift = least_squares_fit(pred, gt, valid & (pred > 0))
            aligned = (scale[:, None, None] * pred + shift[:, None, None]).clamp(min=EVALUATION_FLOOR)
            values.update({f"{k}_aligned": v for k, v in per_image_metrics(aligned, gt, valid).items()})
        elif self.align is not None:
            aligned, _, _ = align_least_squares(pred, gt, valid, self.align)
            aligned = aligned.clamp(self.min_depth, self.max_depth)
            values.update({f"{k}_aligned": v for k, v in per_image_metrics(aligned, gt, valid).items()})

        has_pixels = valid.flatten(1).any(dim=1)
        for name, per_image in values.items():
            state = getattr(self, f"sum_{name}")
            setattr(self, f"sum_{name}", state + per_image[has_pixels].sum())
        self.n_images += has_pixels.sum()
        self.n_skipped += (~has_pixels).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n_images.to(torch.float64)
        nan = torch.tensor(math.nan, dtype=torch.float64, device=n.device)
        result = {
            name: getattr(self, f"sum_{name}") / n if self.n_images > 0 else nan.clone()
            for name in self.names
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
