"""DepthMetrics / SegMetrics against values worked out by hand (written as explicit formulas)."""

import math

import pytest
import torch

from dense.core.errors import BadInputError
from dense.tasks.metrics import DepthMetrics, SegMetrics, crop_mask

ln = math.log
log10 = math.log10


# ---------------------------------------------------------------------------------------------------
# Depth: 3 images of 2×2, min_depth 0.1, max_depth 10.
#   image 0: gt [[1, 2], [0, 4]]     pred [[1, 1], [5, 5]]     the gt 0 pixel is invalid
#   image 1: gt [[0.5, 20], [3, 3]]  pred [[0.05, 1], [3, 6]]  gt 20 > max is invalid; pred 0.05 is
#                                                              clamped to min_depth 0.1
#   image 2: gt [[0.1, 10], [0.05, 12]]                        nothing valid (bounds are strict): skipped
# Valid (gt, pred) pairs: image 0: (1, 1), (2, 1), (4, 5);  image 1: (0.5, 0.1), (3, 3), (3, 6).
# ---------------------------------------------------------------------------------------------------

GT = torch.tensor([[[1.0, 2.0], [0.0, 4.0]], [[0.5, 20.0], [3.0, 3.0]], [[0.1, 10.0], [0.05, 12.0]]])
PRED = torch.tensor([[[1.0, 1.0], [5.0, 5.0]], [[0.05, 1.0], [3.0, 6.0]], [[1.0, 1.0], [1.0, 1.0]]])


def _silog(errs):
    n = len(errs)
    return 100 * math.sqrt(sum(e * e for e in errs) / n - (sum(errs) / n) ** 2)


# Per image, by hand. thresh = max(gt/pred, pred/gt): image 0 -> 1, 2, 1.25 (1.25 is NOT < 1.25);
# image 1 -> 5, 1, 2.
IMAGE0 = {
    "a1": 1 / 3,
    "a2": 2 / 3,
    "a3": 2 / 3,  # 2 >= 1.25**3 = 1.953125
    "abs_rel": (0 + 1 / 2 + 1 / 4) / 3,
    "sq_rel": (0 + 1 / 2 + 1 / 4) / 3,
    "rmse": math.sqrt((0 + 1 + 1) / 3),
    "rmse_log": math.sqrt((ln(2) ** 2 + ln(4 / 5) ** 2) / 3),
    "log10": (log10(2) + log10(5 / 4)) / 3,
    "silog": _silog([0.0, ln(1 / 2), ln(5 / 4)]),  # err = log pred - log gt
}
IMAGE1 = {
    "a1": 1 / 3,
    "a2": 1 / 3,
    "a3": 1 / 3,
    "abs_rel": (0.4 / 0.5 + 0 + 3 / 3) / 3,
    "sq_rel": (0.16 / 0.5 + 0 + 9 / 3) / 3,
    "rmse": math.sqrt((0.16 + 0 + 9) / 3),
    "rmse_log": math.sqrt((ln(5) ** 2 + ln(1 / 2) ** 2) / 3),
    "log10": (log10(5) + 0 + log10(2)) / 3,
    "silog": _silog([ln(0.1 / 0.5), 0.0, ln(2)]),
}


def test_depth_metrics_hand_values():
    metric = DepthMetrics(min_depth=0.1, max_depth=10.0)
    metric.update(PRED.unsqueeze(1), GT.unsqueeze(1))  # B×1×H×W
    result = metric.compute()
    for name in IMAGE0:
        expected = (IMAGE0[name] + IMAGE1[name]) / 2  # mean over the two images with valid pixels
        assert float(result[name]) == pytest.approx(expected, rel=1e-6, abs=1e-9), name
    assert int(result["n_images"]) == 2
    assert int(result["n_skipped"]) == 1


def test_depth_metrics_accumulate_across_updates():
    whole = DepthMetrics(min_depth=0.1, max_depth=10.0)
    whole.update(PRED, GT)  # B×H×W is accepted too
    split = DepthMetrics(min_depth=0.1, max_depth=10.0)
    split.update(PRED[:1], GT[:1])
    split.update(PRED[1:], GT[1:])
    a, b = whole.compute(), split.compute()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].double(), b[name].double()), name


def test_depth_metrics_no_image_gives_nan():
    metric = DepthMetrics(min_depth=0.1, max_depth=10.0)
    metric.update(PRED[2:], GT[2:])
    result = metric.compute()
    assert math.isnan(float(result["rmse"])) and int(result["n_skipped"]) == 1


def test_garg_crop_indices():
    # H=10, W=20: rows int(4.08)=4 .. int(9.92)=9, cols int(0.72)=0 .. int(19.28)=19 (end exclusive).
    mask = crop_mask("garg", 10, 20)
    expected = torch.zeros(10, 20, dtype=torch.bool)
    expected[4:9, 0:19] = True
    assert torch.equal(mask, expected)
    # KITTI size 375×1242: rows int(153.04)=153 .. int(371.96)=371, cols int(44.64)=44 .. int(1197.35)=1197.
    mask = crop_mask("garg", 375, 1242)
    rows = mask.any(dim=1).nonzero().flatten()
    cols = mask.any(dim=0).nonzero().flatten()
    assert (rows.min().item(), rows.max().item() + 1) == (153, 371)
    assert (cols.min().item(), cols.max().item() + 1) == (44, 1197)


def test_eigen_crop_in_metric_and_refusal():
    mask = crop_mask("eigen", 480, 640)
    assert int(mask.sum()) == (471 - 45) * (601 - 41)
    assert mask[45, 41] and mask[470, 600] and not mask[44, 41] and not mask[45, 601]
    # Errors outside the crop do not count: pred is exact inside, 3x off outside.
    gt = torch.full((1, 1, 480, 640), 2.0)
    pred = torch.full_like(gt, 6.0)
    pred[..., 45:471, 41:601] = 2.0
    metric = DepthMetrics(min_depth=1e-3, max_depth=10.0, crop="eigen")
    metric.update(pred, gt)
    assert float(metric.compute()["rmse"]) == 0.0  # without the crop: sqrt(0.223 * 4**2) ~ 1.9
    with pytest.raises(BadInputError, match="480×640"):
        metric.update(torch.ones(1, 1, 240, 320), torch.ones(1, 1, 240, 320))


def test_depth_metrics_errors():
    metric = DepthMetrics(min_depth=0.1, max_depth=10.0)
    bad = PRED.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(BadInputError, match="prediction contains NaN"):
        metric.update(bad, GT)
    with pytest.raises(BadInputError, match="shape"):
        metric.update(PRED[:, :1], GT)
    with pytest.raises(BadInputError, match="unknown crop"):
        DepthMetrics(crop="nyu")


# ---------------------------------------------------------------------------------------------------
# Segmentation: 4 classes, ignore 255.
#   gt   [[0, 0, 1, 1],      pred [[0, 1, 1, 2],
#         [0, 255, 1, 255]]        [0, 0, 1, 3]]
# Counted (gt, pred): (0,0) (0,1) (1,1) (1,2) (0,0) (1,1); the two ignored pixels (incl. pred 3) drop.
#   class 0: inter 2, gt 3, pred 2, union 3 -> IoU 2/3, Acc 2/3
#   class 1: inter 2, gt 3, pred 3, union 4 -> IoU 1/2, Acc 2/3
#   class 2: inter 0, gt 0, pred 1, union 1 -> IoU 0,   Acc NaN (absent from gt)
#   class 3: absent from both              -> IoU NaN, Acc NaN
# mIoU = (2/3 + 1/2 + 0) / 3 = 7/18, mAcc = 2/3, aAcc = 4/6.
# ---------------------------------------------------------------------------------------------------

SEG_GT = torch.tensor([[[0, 0, 1, 1], [0, 255, 1, 255]]])
SEG_PRED = torch.tensor([[[0, 1, 1, 2], [0, 0, 1, 3]]])


def _check_seg(metric):
    result = metric.compute()
    assert float(result["mIoU"]) == pytest.approx(7 / 18)
    assert float(result["mAcc"]) == pytest.approx(2 / 3)
    assert float(result["aAcc"]) == pytest.approx(4 / 6)
    per_class = metric.per_class()
    iou, acc = per_class["IoU"].tolist(), per_class["Acc"].tolist()
    assert iou[:3] == pytest.approx([2 / 3, 1 / 2, 0.0]) and math.isnan(iou[3])
    assert acc[:2] == pytest.approx([2 / 3, 2 / 3]) and math.isnan(acc[2]) and math.isnan(acc[3])


def test_seg_metrics_hand_values_labels_and_logits():
    metric = SegMetrics(num_classes=4, class_names=["wall", "floor", "chair", "lamp"])
    metric.update(SEG_PRED, SEG_GT)
    _check_seg(metric)
    table = metric.per_class_table()
    assert "chair" in table and "nan" in table and "66.67" in table and "mIoU 38.89" in table

    logits = torch.nn.functional.one_hot(SEG_PRED, 4).permute(0, 3, 1, 2).float() * 5.0
    from_logits = SegMetrics(num_classes=4)
    from_logits.update(logits, SEG_GT.unsqueeze(1))  # B×C×H×W scores, B×1×H×W labels
    _check_seg(from_logits)


def test_seg_metrics_accumulate_across_updates():
    metric = SegMetrics(num_classes=4)
    metric.update(SEG_PRED[..., :2], SEG_GT[..., :2])
    metric.update(SEG_PRED[..., 2:], SEG_GT[..., 2:])
    _check_seg(metric)


def test_seg_metrics_errors():
    metric = SegMetrics(num_classes=4)
    with pytest.raises(BadInputError, match=r"target has labels \[7\]"):
        metric.update(SEG_PRED, torch.tensor([[[0, 0, 1, 7], [0, 255, 1, 255]]]))
    with pytest.raises(BadInputError, match="does not match"):
        metric.update(SEG_PRED, SEG_GT[..., :3])
    with pytest.raises(BadInputError, match="3 channels"):
        metric.update(torch.zeros(1, 3, 2, 4), SEG_GT)
