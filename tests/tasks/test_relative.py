"""Relative (affine-invariant) depth: the least-squares aligned metrics against DINOv3's and Marigold's
evaluation code, MiDaS' scale-and-shift-invariant loss against the authors' published code and the
paper's equations, a relative run that learns, and disparity ground truth in the folder format.

The references below are transcriptions, written here, of upstream's published code; the expected
values come from them, never from dense."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

import dense
from dense.cli import evaluate as eval_script
from dense.cli.predict import run as predict_script
from dense.core.errors import BadInputError, DatasetError, WeightsError
from dense.data import datamodule_from_config
from dense.tasks.losses import ScaleShiftInvariantLoss
from dense.tasks.metrics import DEPTH_METRIC_NAMES, DepthMetrics, align_least_squares
from dense.tools.export import load_onnx_model, to_onnx
from tests._fixtures_data import pattern_image, save_rgb
from tests._tiny_run import (
    LEARNING_RUN,
    QUIET_TINY_RUN,
    compose_config,
    metric_rows,
    one_line_exit,
    predict_config,
    series,
    train_in_process,
    write_checkpoint,
)

MIN_DEPTH, MAX_DEPTH = 0.1, 10.0


# ---- references: DINOv3's evaluation (facebookresearch/dinov3, dinov3/eval/depth/) -------------------


def dinov3_align_depth_least_square(gt_arr, pred_arr, valid_mask_arr):
    """dinov3/eval/depth/utils.py `align_depth_least_square` (max_resolution=None), tensors in."""
    ori_shape = pred_arr.shape
    dtype = pred_arr.dtype
    pred_arr = pred_arr.to(torch.float32)
    device = gt_arr.device
    gt_arr = gt_arr.detach().cpu().numpy()
    pred_arr = pred_arr.detach().cpu().numpy()
    valid_mask_arr = valid_mask_arr.detach().cpu().numpy()
    gt, pred, valid_mask = gt_arr.squeeze(), pred_arr.squeeze(), valid_mask_arr.squeeze()
    gt_masked = gt[valid_mask].reshape((-1, 1))
    pred_masked = pred[valid_mask].reshape((-1, 1))
    A = np.concatenate([pred_masked, np.ones_like(pred_masked)], axis=-1)
    try:
        X = np.linalg.lstsq(A, gt_masked, rcond=None)[0]
        scale, shift = X
    except np.linalg.LinAlgError:
        scale, shift = 1, 0
    aligned_pred = (pred_arr * scale + shift).reshape(ori_shape)
    return torch.as_tensor(aligned_pred, dtype=dtype, device=device), scale, shift


def dinov3_depth_metrics(gt, pred, valid_mask):
    """dinov3/eval/depth/metrics.py `calculate_depth_metrics` (every metric), as a dict."""
    valid_mask = torch.logical_and(valid_mask, gt > 0)
    gt, pred = gt[valid_mask], pred[valid_mask]
    thresh = torch.maximum((gt / pred), (pred / gt))
    error = gt - pred
    error_log = torch.log(gt) - torch.log(pred)
    silog = torch.sqrt(torch.mean(error_log**2) - torch.mean(error_log) ** 2) * 100
    return {
        "a1": (thresh < 1.25).float().mean(),
        "a2": (thresh < 1.25**2).float().mean(),
        "a3": (thresh < 1.25**3).float().mean(),
        "abs_rel": torch.mean(torch.abs(error) / gt),
        "sq_rel": torch.mean(error**2 / gt),
        "rmse": torch.sqrt((error**2).mean()),
        "rmse_log": torch.sqrt((error_log**2).mean()),
        "silog": torch.tensor(0) if torch.isnan(silog) else silog,
        "log10": (torch.abs(torch.log10(gt) - torch.log10(pred))).mean(),
    }


def dinov3_aligned_evaluation(gts, preds):
    """dinov3/eval/depth/eval.py `evaluate_depther_with_dataloader` with align_least_squares=True, eval
    mask FULL, batch size 1: per image, out-of-range gt → ignored 0, make_valid_mask, align, clamp to
    eval_range, calculate_depth_metrics; then nanmean over images."""
    per_image = []
    for gt_map, pred in zip(gts, preds, strict=True):
        gt_map = torch.where(torch.logical_or(gt_map >= MAX_DEPTH, gt_map <= MIN_DEPTH), 0.0, gt_map)
        valid_mask = gt_map != 0.0  # datasets_utils.make_valid_mask, _EvalCropType.FULL, ignored_value 0
        pred = torch.stack([dinov3_align_depth_least_square(gt_map, p, valid_mask)[0] for p in pred])
        pred = pred.clamp(min=MIN_DEPTH, max=MAX_DEPTH)
        per_image.append(dinov3_depth_metrics(gt_map, pred, valid_mask))
    return {k: float(torch.stack([m[k].float() for m in per_image]).nanmean()) for k in per_image[0]}


# ---- reference: Marigold's least_square_disparity (prs-eth/Marigold script/depth/eval.py) -----------


def marigold_align_depth_least_square(gt_arr, pred_arr, valid_mask_arr):
    """src/util/alignment.py `align_depth_least_square` (return_scale_shift, max_resolution=None)."""
    ori_shape = pred_arr.shape
    gt, pred, valid_mask = gt_arr.squeeze(), pred_arr.squeeze(), valid_mask_arr.squeeze()
    gt_masked = gt[valid_mask].reshape((-1, 1))
    pred_masked = pred[valid_mask].reshape((-1, 1))
    A = np.concatenate([pred_masked, np.ones_like(pred_masked)], axis=-1)
    X = np.linalg.lstsq(A, gt_masked, rcond=None)[0]
    scale, shift = X
    return (pred_arr * scale + shift).reshape(ori_shape), scale, shift


def marigold_depth2disparity(depth, return_mask=False):
    disparity = np.zeros_like(depth)
    non_negtive_mask = depth > 0
    disparity[non_negtive_mask] = 1.0 / depth[non_negtive_mask]
    return (disparity, non_negtive_mask) if return_mask else disparity


def marigold_disparity_evaluation(gts, preds):
    """script/depth/eval.py with --alignment least_square_disparity: per image, gt → disparity, fit
    on valid & gt > 0 & pred > 0, clip the aligned disparity at 1e-3, back to depth, clip to the
    dataset's range and at 1e-6; scored with the metric formulas above (the same as Marigold's)."""
    per_image = []
    for gt_t, pred_t in zip(gts, preds, strict=True):
        depth_raw, depth_pred = gt_t.numpy()[0, 0], pred_t.numpy()[0, 0].astype(np.float32)
        valid_mask = (depth_raw > MIN_DEPTH) & (depth_raw < MAX_DEPTH)
        gt_disparity, gt_non_neg_mask = marigold_depth2disparity(depth_raw, return_mask=True)
        valid_nonnegative_mask = valid_mask & gt_non_neg_mask & (depth_pred > 0)
        disparity_pred, _, _ = marigold_align_depth_least_square(
            gt_disparity, depth_pred, valid_nonnegative_mask
        )
        disparity_pred = np.clip(disparity_pred, a_min=1e-3, a_max=None)
        depth_pred = marigold_depth2disparity(disparity_pred)  # disparity2depth
        depth_pred = np.clip(depth_pred, a_min=MIN_DEPTH, a_max=MAX_DEPTH)
        depth_pred = np.clip(depth_pred, a_min=1e-6, a_max=None)
        metrics = dinov3_depth_metrics(
            torch.from_numpy(depth_raw), torch.from_numpy(depth_pred), torch.from_numpy(valid_mask)
        )
        per_image.append(metrics)
    return {k: float(torch.stack([m[k].float() for m in per_image]).nanmean()) for k in per_image[0]}


def crafted_images():
    """Four 1×1×7×9 images: a noisy fit with invalid pixels (gt 0, gt above the range, a prediction ≤ 0),
    a constant prediction (a fit that is not determined: the minimum-norm solution), an exact affine
    map with a negative scale, and a prediction that varies little (a large scale and shift)."""
    gen = torch.Generator().manual_seed(7)
    gt = 0.5 + 9 * torch.rand(4, 1, 7, 9, generator=gen)
    gt[0, 0, 0, :4] = 0.0  # no measurement
    gt[0, 0, 1, :3] = 12.0  # beyond max_depth
    pred = 0.3 * gt + 0.4 * torch.rand(4, 1, 7, 9, generator=gen)
    pred[0, 0, 2, :2] = -0.5  # a negative output: left out of a disparity fit
    pred[1] = 0.8
    pred[2] = -2.0 * gt[2] + 30.0
    pred[3] = 1.0 + 0.05 * torch.rand(1, 7, 9, generator=gen)
    return [g[None] for g in gt], [p[None] for p in pred]


# ---- aligned metrics ------------------------------------------------------------------------------


@pytest.mark.parametrize("space", ["depth", "disparity"])
def test_aligned_metrics_match_dinov3_and_marigold(space):
    gts, preds = crafted_images()
    reference = (
        dinov3_aligned_evaluation(gts, preds)
        if space == "depth"
        else marigold_disparity_evaluation(gts, preds)
    )
    metrics = DepthMetrics(MIN_DEPTH, MAX_DEPTH, metric=False, align=space)
    for gt, pred in zip(gts, preds, strict=True):  # one image per update, as upstream (batch size 1)
        metrics.update(pred, gt)
    ours = metrics.compute()
    assert set(ours) == {f"{name}_aligned" for name in DEPTH_METRIC_NAMES} | {"n_images", "n_skipped"}
    for name, value in reference.items():
        assert float(ours[f"{name}_aligned"]) == pytest.approx(value, rel=2e-5, abs=1e-6), name
    batched = DepthMetrics(MIN_DEPTH, MAX_DEPTH, metric=False, align=space)
    batched.update(torch.cat(preds), torch.cat(gts))  # the same, four images in one batch
    for name in reference:
        assert float(batched.compute()[f"{name}_aligned"]) == pytest.approx(float(ours[f"{name}_aligned"]))


def test_align_least_squares_values_and_degenerate_fits():
    assert dense.align_least_squares is align_least_squares  # the package face hands on dense.tasks.metrics'
    gts, preds = crafted_images()
    gt, pred = torch.cat(gts), torch.cat(preds)
    valid = (gt > MIN_DEPTH) & (gt < MAX_DEPTH)
    aligned, scale, shift = align_least_squares(pred, gt, valid)
    assert aligned.shape == pred.shape and scale.shape == shift.shape == (4,)
    for i in range(4):  # every pixel, valid or not, and the scale and shift themselves
        expected, s, t = dinov3_align_depth_least_square(gt[i : i + 1], pred[i : i + 1], valid[i : i + 1])
        torch.testing.assert_close(aligned[i : i + 1], expected.double(), rtol=1e-5, atol=1e-5)
        assert (float(scale[i]), float(shift[i])) == pytest.approx(
            (float(s[0]), float(t[0])), rel=1e-5, abs=1e-6
        )
    # The constant 0.8: minimum-norm (scale, shift) ∝ (0.8, 1), i.e. the mean of the valid gt everywhere.
    assert float(scale[1]) / float(shift[1]) == pytest.approx(0.8)
    assert torch.allclose(aligned[1], gt[1][valid[1]].double().mean().expand_as(aligned[1]))
    assert float(scale[2]) == pytest.approx(-0.5) and float(shift[2]) == pytest.approx(15.0)  # exact
    # H×W in, H×W out; no valid pixel: scale 0 and shift 0, as numpy's lstsq on an empty system.
    flat, s, t = align_least_squares(pred[0, 0], gt[0, 0], torch.zeros(7, 9, dtype=torch.bool))
    assert flat.shape == (7, 9) and float(s) == float(t) == 0.0 and not flat.any()
    with pytest.raises(BadInputError, match="space"):
        align_least_squares(pred, gt, valid, space="log")


def test_an_image_without_valid_pixels_is_skipped_for_every_metric():
    # DINOv3's calculate_depth_metrics gives such an image NaN, except silog, which its NaN → 0 rule
    # turns into a 0 that enters the average; here the image is skipped for all metrics (n_skipped).
    gts, preds = crafted_images()
    empty = torch.zeros_like(gts[0])
    metrics = DepthMetrics(MIN_DEPTH, MAX_DEPTH, align="depth")
    metrics.update(torch.cat([preds[0], preds[0]]), torch.cat([gts[0], empty]))
    alone = DepthMetrics(MIN_DEPTH, MAX_DEPTH, align="depth")
    alone.update(preds[0], gts[0])
    result, expected = metrics.compute(), alone.compute()
    assert int(result["n_skipped"]) == 1 and int(result["n_images"]) == 1
    assert all(float(result[k]) == pytest.approx(float(expected[k])) for k in metrics.names)


def test_disparity_ground_truth_is_fitted_and_scored_as_disparity():
    # Relative ground truth (a disparity, -1 = no value): the prediction is fitted to it directly on
    # valid pixels where the prediction is positive, clipped at 1e-6, and the metrics compare
    # disparities on gt > 0. Reference: Marigold's lstsq on those pixels, metrics as DINOv3's.
    gen = torch.Generator().manual_seed(3)
    gt = torch.rand(2, 1, 6, 8, generator=gen) * 50
    gt[0, 0, 0, :3] = -1.0  # no value
    gt[0, 0, 1, :2] = 0.0  # infinitely far: trained on, not scored
    pred = 0.02 * gt.clamp(min=0) + 0.3 * torch.rand(2, 1, 6, 8, generator=gen)
    metrics = DepthMetrics(metric=False, align="disparity", target="disparity")
    metrics.update(pred, gt)
    per_image = []
    for i in range(2):
        g, p = gt[i, 0].numpy(), pred[i, 0].numpy()
        fitted, _, _ = marigold_align_depth_least_square(g, p, (g >= 0) & (g > 0) & (p > 0))
        fitted = torch.from_numpy(np.clip(fitted, 1e-6, None))
        per_image.append(dinov3_depth_metrics(gt[i, 0], fitted, gt[i, 0] > 0))
    for name in per_image[0]:
        expected = (float(per_image[0][name]) + float(per_image[1][name])) / 2
        assert float(metrics.compute()[f"{name}_aligned"]) == pytest.approx(expected, rel=2e-5, abs=1e-6), (
            name
        )
    with pytest.raises(BadInputError, match="no unit"):
        DepthMetrics(target="disparity")


# ---- MiDaS' loss ----------------------------------------------------------------------------------


def gist_trimmed_procrustes_loss(prediction, target, mask, alpha=0.5, scales=4):
    """The authors' published loss (gist ranftlr/1d6194db2e1dffa0a50c9b0a9549cbd2, isl-org/MiDaS#33):
    TrimmedProcrustesLoss with trimmed_mae_loss, normalize_prediction_robust, GradientLoss(scales=4),
    reduction_batch_based, on B×H×W tensors. Written as published, including the trim line."""

    def reduction_batch_based(image_loss, M):
        divisor = torch.sum(M)
        return 0 if divisor == 0 else torch.sum(image_loss) / divisor

    def trimmed_mae_loss(prediction, target, mask, trim=0.2):
        M = torch.sum(mask, (1, 2))
        res = (prediction - target)[mask.bool()].abs()
        trimmed, _ = torch.sort(res.view(-1), descending=False)[: int(len(res) * (1.0 - trim))]
        return trimmed.sum() / (2 * M.sum())

    def normalize_prediction_robust(target, mask):
        ssum = torch.sum(mask, (1, 2))
        valid = ssum > 0
        m = torch.zeros_like(ssum)
        s = torch.ones_like(ssum)
        m[valid] = torch.median((mask[valid] * target[valid]).view(valid.sum(), -1), dim=1).values
        target = target - m.view(-1, 1, 1)
        sq = torch.sum(mask * target.abs(), (1, 2))
        s[valid] = torch.clamp((sq[valid] / ssum[valid]), min=1e-6)
        return target / (s.view(-1, 1, 1))

    def gradient_loss(prediction, target, mask):
        M = torch.sum(mask, (1, 2))
        diff = torch.mul(mask, prediction - target)
        grad_x = torch.mul(
            torch.mul(mask[:, :, 1:], mask[:, :, :-1]), torch.abs(diff[:, :, 1:] - diff[:, :, :-1])
        )
        grad_y = torch.mul(
            torch.mul(mask[:, 1:, :], mask[:, :-1, :]), torch.abs(diff[:, 1:, :] - diff[:, :-1, :])
        )
        return reduction_batch_based(torch.sum(grad_x, (1, 2)) + torch.sum(grad_y, (1, 2)), M)

    prediction_ssi = normalize_prediction_robust(prediction, mask)
    target_ = normalize_prediction_robust(target, mask)
    total = trimmed_mae_loss(prediction_ssi, target_, mask)
    regularization = 0
    for scale in range(scales):
        step = pow(2, scale)
        regularization += gradient_loss(
            prediction_ssi[:, ::step, ::step], target_[:, ::step, ::step], mask[:, ::step, ::step]
        )
    return total + alpha * regularization


def paper_ssi_loss(pred, target, mask, trim=0.2, alpha=0.5, scales=4):
    """Ranftl et al. TPAMI 2020, eqs. 5–7 and 11, per image in numpy: t = median of the valid pixels
    (the lower middle value, as torch.median), s = mean |d − t|, L_ssitrim over the (1 − trim)·M
    smallest residuals / 2M, gradient term normalised per scale by that scale's valid count (the
    gist's); the mean over images with a valid pixel."""
    losses = []
    for p, t, m in zip(
        pred[:, 0].double().numpy(), target[:, 0].double().numpy(), mask[:, 0].numpy(), strict=True
    ):
        count = int(m.sum())
        if count == 0:
            continue

        def normalise(d, m=m):
            values = np.sort(d[m])
            median = values[(len(values) - 1) // 2]
            return (d - median) / max(np.abs(d[m] - median).mean(), 1e-6)

        r = np.where(m, normalise(p) - normalise(t), 0.0)
        kept = np.sort(np.abs(r[m]))[: int(count * (1.0 - trim))]
        ssi = kept.sum() / (2 * count)
        grad = 0.0
        for k in range(scales):
            rk, mk = r[:: 2**k, :: 2**k], m[:: 2**k, :: 2**k]
            gx = np.abs(rk[:, 1:] - rk[:, :-1]) * (mk[:, 1:] & mk[:, :-1])
            gy = np.abs(rk[1:, :] - rk[:-1, :]) * (mk[1:, :] & mk[:-1, :])
            grad += (gx.sum() + gy.sum()) / mk.sum()
        losses.append(ssi + alpha * grad)
    return sum(losses) / len(losses)


def test_ssi_loss_equals_the_published_midas_code_on_fully_valid_images():
    # On images whose every pixel is valid, of equal size, the gist's batch-based reduction equals the
    # mean of per-image losses; its trim slices the (values, indices) pair from torch.sort, so it keeps
    # every residual: that is trim=0 here.
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 13, 17, generator=gen) + 0.05
    pred = 2 * target + 0.3 * torch.rand(2, 1, 13, 17, generator=gen)
    mask = torch.ones_like(target, dtype=torch.bool)
    expected = gist_trimmed_procrustes_loss(pred[:, 0].double(), target[:, 0].double(), mask[:, 0].double())
    out = ScaleShiftInvariantLoss(trim=0.0)(pred.double(), target.double(), mask)
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-10)
    assert float(out["loss"]) == pytest.approx(paper_ssi_loss(pred, target, mask, trim=0.0), rel=1e-10)
    assert float(out["loss_ssi"] + out["loss_grad"]) == pytest.approx(float(out["loss"]))


def test_ssi_loss_follows_the_paper_with_trim_masks_and_an_empty_image():
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(3, 1, 11, 14, generator=gen) + 0.05
    pred = torch.rand(3, 1, 11, 14, generator=gen) * 3 - 0.5  # negative outputs are fine: shift-invariant
    mask = torch.rand(3, 1, 11, 14, generator=gen) > 0.35
    mask[2] = False  # no valid pixel: left out of the mean
    for trim in (0.2, 0.0):
        out = ScaleShiftInvariantLoss(trim=trim)(pred, target, mask)
        assert float(out["loss"]) == pytest.approx(paper_ssi_loss(pred, target, mask, trim=trim), rel=1e-5)
    # Invariant to a positive scale and any shift of either map; garbage at invalid pixels is never read.
    loss = ScaleShiftInvariantLoss()
    base = float(loss(pred, target, mask)["loss"])
    assert float(loss(7 * pred - 3, 0.1 * target + 4, mask)["loss"]) == pytest.approx(base, rel=1e-4)
    garbage = torch.where(mask, pred, torch.full_like(pred, 1e6))
    assert float(loss(garbage, target, mask)["loss"]) == pytest.approx(base, rel=1e-6)
    none = loss(pred.requires_grad_(), target, torch.zeros_like(mask))
    assert float(none["loss"].detach()) == 0.0 and none["loss"].requires_grad
    with pytest.raises(BadInputError, match="trim"):
        ScaleShiftInvariantLoss(trim=1.0)
    with pytest.raises(BadInputError, match="mask"):
        loss(pred, target, mask.float())


# ---- the relative model, end to end ------------------------------------------------------------------

# LEARNING_RUN's scenes (56×56, 4 steps an epoch) in task.depth_mode=relative: 32 steps, the linear4
# head at a learning rate its bins take without overshooting.
RELATIVE_RUN = [
    *LEARNING_RUN,
    "task.depth_mode=relative",
    "head=depth_linear4",
    "trainer.max_steps=32",
    "task.optimizer.lr=1e-3",
    "test=true",
]


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("relative_run")
    task, metrics = train_in_process(out, *RELATIVE_RUN)
    return out, task, metrics


def constant_prediction_abs_rel(split: str) -> float:
    """The aligned AbsRel of a constant prediction on the run's scenes: the best any input-blind model
    gets (in disparity space every constant aligns to the same map)."""
    datamodule = datamodule_from_config(compose_config("train", *RELATIVE_RUN).data)
    dataset = datamodule.dataset(split)
    metrics = DepthMetrics(datamodule.min_depth, datamodule.max_depth, metric=False, align="disparity")
    for index in range(len(dataset)):
        depth = dataset[index]["depth"][None]
        metrics.update(torch.ones_like(depth), depth)
    return float(metrics.compute()["abs_rel_aligned"])


def test_a_relative_run_learns(relative_run):
    out, task, metrics = relative_run
    assert type(task).__name__ == "RelativeDepthTask" and task.model.depth_mode == "relative"
    rows = metric_rows(out)
    loss, val = series(rows, "train/loss"), series(rows, "val/abs_rel_aligned")
    assert len(loss) == 32 and len(val) == 8
    assert not series(rows, "val/abs_rel"), "a relative model has no metric (unaligned) scores"
    # Measured (random tiny14, 32 steps): loss 1.497 over the first 3 steps → 1.263 over the last 3;
    # val AbsRel (aligned) 0.2583 after the first epoch → 0.2548 (the untrained head: 0.2668); test
    # 0.2582 against 0.3329 for a constant prediction.
    assert sum(loss[-3:]) < 0.9 * sum(loss[:3]), loss
    assert val[-1] < val[0], val
    constant = constant_prediction_abs_rel("test")
    assert metrics["test/abs_rel_aligned"] < 0.9 * constant, (metrics["test/abs_rel_aligned"], constant)
    assert metrics["best"] == pytest.approx(min(val))  # best.ckpt follows val/abs_rel_aligned


def test_a_relative_checkpoint_evaluates_and_predicts_as_relative(relative_run, tmp_path, capsys):
    out, _, metrics = relative_run
    best = out / "checkpoints" / "best.ckpt"
    model = dense.load_model(best)
    assert model.depth_mode == "relative" and model.config["depth_mode"] == "relative"

    cfg = compose_config(
        "eval", f"ckpt_path={best}", f"paths.output_dir={tmp_path / 'eval'}", "trainer=cpu",
        "trainer.enable_progress_bar=false",
    )  # fmt: skip
    scores = eval_script.evaluate(cfg)
    assert "abs_rel" not in scores and scores["abs_rel_aligned"] == pytest.approx(
        metrics["test/abs_rel_aligned"]
    )
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["a1_aligned"] == pytest.approx(
        scores["a1_aligned"]
    )

    image = pattern_image(40, 52)
    save_rgb(tmp_path / "in" / "room.png", image)
    capsys.readouterr()
    status = predict_script.predict(
        predict_config(
            f"ckpt={best}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'maps'}", "device=cpu"
        )
    )
    said = capsys.readouterr().out
    assert status == 0
    assert "wrote relative depth results for 1 of 1 images" in said
    assert "normalised per image for viewing" in said
    png = np.asarray(Image.open(tmp_path / "maps" / "room_relative.png"))
    raw = np.load(tmp_path / "maps" / "room.npy").astype(np.float64)
    assert png.dtype == np.uint16 and png.min() == 0 and png.max() == 65535
    expected = np.rint((raw - raw.min()) / (raw.max() - raw.min()) * 65535)
    assert np.array_equal(png, expected.astype(np.uint16))  # the raw output, normalised per image
    assert not (tmp_path / "maps" / "colorbar.png").exists()  # no unit, no colour bar
    # Exported, the graph gives the same unclamped disparity, and predict.py reads it as relative depth.
    to_onnx(model, tmp_path / "model.onnx")
    assert load_onnx_model(str(tmp_path / "model.onnx")).depth_mode == "relative"
    status = predict_script.predict(
        predict_config(
            f"model={tmp_path / 'model.onnx'}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'onnx'}"
        )
    )
    assert status == 0 and "wrote relative depth results for 1 of 1 images" in capsys.readouterr().out
    from_onnx = np.load(tmp_path / "onnx" / "room.npy").astype(np.float64)
    assert np.allclose(from_onnx, raw, rtol=1e-4, atol=1e-5 * np.abs(raw).max())
    onnx_png = np.asarray(Image.open(tmp_path / "onnx" / "room_relative.png")).astype(np.int64)
    assert np.abs(onnx_png - png.astype(np.int64)).max() <= 2  # the same map, to rounding
    crafted = dense.build_model("tiny14", "depth_linear", depth_mode="relative")
    crafted.config["depth_mode"] = "absolute"  # a checkpoint is data: its mode is checked too
    with pytest.raises(WeightsError, match="depth_mode") as error:
        dense.load_model(write_checkpoint(crafted, tmp_path / "crafted.ckpt"))
    assert "\n" not in str(error.value)


def test_a_relative_model_is_not_clamped_to_the_metric_range():
    torch.manual_seed(0)
    images = torch.randn(1, 3, 28, 28)
    outputs = {}
    for mode in ("metric", "relative"):
        torch.manual_seed(0)
        model = dense.build_model("tiny14", "depth_dpt", max_depth=2.0, depth_mode=mode).eval()
        torch.nn.init.constant_(model.head.conv_depth.head[4].bias, 5.0)  # every output near 5 m
        outputs[mode] = model.predict(images)
    assert float(outputs["metric"].max()) == pytest.approx(2.0)
    assert float(outputs["relative"].min()) > 2.0  # the head's own relu(x) + min_depth, unclamped
    with pytest.raises(ValueError, match="depth_mode"):
        dense.build_model("tiny14", "seg_linear", num_classes=3, depth_mode="relative")


def test_the_relative_recipe_is_the_dinov3_dpt_recipe_in_relative_mode():
    relative = compose_config("train", "experiment=dinov3_nyu_dpt_relative")
    metric = compose_config("train", "experiment=dinov3_nyu_dpt")
    assert relative.task.depth_mode == "relative" and metric.task.depth_mode == "metric"
    loss = relative.task.relative_loss
    assert (loss.trim, loss.grad_weight, loss.scales) == (0.2, 0.5, 4)  # MiDaS: U = 0.8 M, alpha 0.5, K = 4
    relative.task.depth_mode = "metric"
    assert relative == metric  # everything else: dinov3_nyu_dpt's values


# ---- relative ground truth in the folder format --------------------------------------------------------


def write_disparity_folder(root, h=28, w=28):
    """Four images with disparity as a 16-bit PNG, an 8-bit PNG and two .npy files, and validity masks;
    returns the disparity each sample must carry (-1 where not valid)."""
    y, x = np.mgrid[0:h, 0:w]
    expected = {}
    for k, stem in enumerate(("a", "b", "c", "d")):
        save_rgb(root / "images" / f"{stem}.png", pattern_image(h, w, seed=k))
        disparity = (x + 2 * y + 5 * k).astype(np.float64)  # 0 at a's top-left corner: a real value
        valid = (x + y + k) % 7 != 3
        (root / "disparity").mkdir(parents=True, exist_ok=True)
        (root / "valid").mkdir(exist_ok=True)
        if stem == "a":
            Image.fromarray((disparity * 300).astype(np.uint16)).save(root / "disparity" / "a.png")
            disparity = disparity * 300
        elif stem == "b":
            Image.fromarray(disparity.astype(np.uint8)).save(root / "disparity" / "b.png")
        else:
            disparity = disparity / 10
            disparity[~valid] = np.nan  # never read: the mask says there is no value
            np.save(root / "disparity" / f"{stem}.npy", disparity.astype(np.float32))
        Image.fromarray((valid * 255).astype(np.uint8)).save(root / "valid" / f"{stem}.png")
        expected[stem] = np.where(valid, disparity, -1.0).astype(np.float32)
    (root / "train.txt").write_text("a\nb\nc\n")
    (root / "val.txt").write_text("d\n")
    return expected


def folder_data(root, **options):
    return datamodule_from_config(
        {"name": "folder", "root": str(root), "task": "depth", "depth_target": "disparity", "augment": False,
         "batch_size": 2, **options}
    )  # fmt: skip


def test_folder_disparity_ground_truth_is_read_with_its_mask(tmp_path):
    expected = write_disparity_folder(tmp_path)
    datamodule = folder_data(tmp_path)
    assert datamodule.depth_target == "disparity"
    for split, stems in (("train", "abc"), ("val", "d")):
        dataset = datamodule.dataset(split)
        for index, stem in enumerate(stems):
            sample = dataset[index]
            assert "depth" not in sample and sample["disparity"].shape == (1, 28, 28)
            np.testing.assert_array_equal(sample["disparity"][0].numpy(), expected[stem])
    assert float(datamodule.dataset("train")[0]["disparity"][0, 0, 0]) == 0.0  # a's 0: kept, valid
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["disparity"].shape == (2, 1, 28, 28)


def test_a_relative_run_trains_on_folder_disparity_and_metric_mode_refuses_it(tmp_path, capsys):
    write_disparity_folder(tmp_path / "data")
    data = [
        f"data.root={tmp_path / 'data'}",
        "data=folder",
        "data.depth_target=disparity",
        "data.batch_size=2",
    ]
    common = [*QUIET_TINY_RUN, "head=depth_linear", "trainer.max_steps=2", *data]
    _, metrics = train_in_process(tmp_path / "run", *common, "task.depth_mode=relative")
    assert math.isfinite(metrics["val/abs_rel_aligned"]) and metrics["val/n_images"] == 1
    capsys.readouterr()
    err = one_line_exit(lambda: train_in_process(tmp_path / "metric", *common), capsys)
    assert "data.depth_target=disparity holds relative maps" in err and "task.depth_mode=relative" in err
    seg = [*QUIET_TINY_RUN, "head=seg_linear", "data.task=segmentation", "task.depth_mode=relative"]
    assert "trains depth heads" in one_line_exit(lambda: train_in_process(tmp_path / "seg", *seg), capsys)
    assert "is not one of" in one_line_exit(
        lambda: train_in_process(tmp_path / "typo", *QUIET_TINY_RUN, "task.depth_mode=relativ"), capsys
    )


@pytest.mark.parametrize(
    ("spoil", "match"),
    [
        (
            lambda root: np.save(root / "disparity" / "c.npy", -np.ones((28, 28), np.float32)),
            r"c\.npy: .*negative",
        ),
        (
            lambda root: Image.fromarray(np.ones((5, 5), np.uint8)).save(root / "valid" / "b.png"),
            r"b\.png: the validity mask is 5×5",
        ),
        (lambda root: (root / "valid" / "a.png").unlink(), r"no validity mask in .*valid, e\.g\. a\.png"),
        (
            lambda root: Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(root / "disparity" / "a.png"),
            r"disparity .*a\.png is a RGB image",
        ),
    ],
    ids=["negative", "mask_size", "mask_missing", "colour_png"],
)
def test_bad_disparity_files_fail_in_one_line(tmp_path, spoil, match):
    write_disparity_folder(tmp_path)
    spoil(tmp_path)
    with pytest.raises(DatasetError, match=match) as error:
        dataset = folder_data(tmp_path).dataset("train")
        for index in range(len(dataset)):
            dataset[index]
    assert "\n" not in str(error.value)
    with pytest.raises(DatasetError, match=re.escape("data.depth_target='inverse'")):
        folder_data(tmp_path, depth_target="inverse")
