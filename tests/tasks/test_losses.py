"""Losses against independent numpy computations written out in the tests."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dense.core.errors import BadInputError
from dense.tasks.losses import DepthLoss, GradientLoss, SegLoss, SigLoss

EPS = 1e-3  # upstream's eps, added inside both logs


def _depth_batch(seed=0, shape=(2, 1, 13, 11)):
    """Positive predictions; ground truth with some invalid (0) pixels."""
    gen = torch.Generator().manual_seed(seed)
    pred = torch.rand(shape, generator=gen, dtype=torch.float64) * 5 + 0.5
    gt = torch.rand(shape, generator=gen, dtype=torch.float64) * 5 + 0.5
    gt[torch.rand(shape, generator=gen) < 0.2] = 0.0
    return pred, gt


# ----------------------------------------------------------------------------------------------------
# SigLoss
# ----------------------------------------------------------------------------------------------------


def _np_sig(pred, gt, warm, max_depth=None):
    """Upstream formula in numpy: whole-batch pooling, unbiased variance (ddof=1)."""
    p, t = pred.numpy().ravel(), gt.numpy().ravel()
    keep = t > 0 if max_depth is None else (t > 0) & (t <= max_depth)
    g = np.log(p[keep] + EPS) - np.log(t[keep] + EPS)
    if warm:
        return math.sqrt(0.15 * g.mean() ** 2)
    return math.sqrt(np.var(g, ddof=1) + 0.15 * g.mean() ** 2)


def test_sigloss_matches_numpy_and_warm_up_switches():
    pred, gt = _depth_batch()
    loss = SigLoss(warm_up=True, warm_iter=3)
    values = [float(loss(pred, gt)) for _ in range(5)]
    warm, full = _np_sig(pred, gt, True), _np_sig(pred, gt, False)
    assert values[:3] == pytest.approx([warm] * 3, rel=1e-12)  # the first warm_iter calls
    assert values[3:] == pytest.approx([full] * 2, rel=1e-12)
    assert warm != pytest.approx(full)
    assert int(loss.warm_up_counter) == 3


def test_sigloss_weight_max_depth_and_no_warm_up():
    pred, gt = _depth_batch(1)
    loss = SigLoss(warm_up=False, loss_weight=2.0, max_depth=4.0)
    assert float(loss(pred, gt)) == pytest.approx(2 * _np_sig(pred, gt, False, max_depth=4.0), rel=1e-12)


def test_sigloss_counter_state_dict_round_trip_and_eval_mode():
    pred, gt = _depth_batch(2)
    original = SigLoss(warm_iter=4)
    original(pred, gt)
    original(pred, gt)
    state = original.state_dict()
    assert "warm_up_counter" in state and int(state["warm_up_counter"]) == 2

    resumed = SigLoss(warm_iter=4)
    resumed.load_state_dict(state)
    # Both continue identically: 2 more warm-up calls, then the full loss.
    for _ in range(4):
        assert float(resumed(pred, gt)) == float(original(pred, gt))
    assert float(resumed(pred, gt)) == pytest.approx(_np_sig(pred, gt, False), rel=1e-12)

    # Validation calls (module in eval mode) do not use up warm-up steps.
    fresh = SigLoss(warm_iter=4).eval()
    fresh(pred, gt)
    assert int(fresh.warm_up_counter) == 0


def test_sigloss_no_valid_pixel_is_zero_with_graph():
    pred = torch.full((1, 1, 4, 4), 2.0, requires_grad=True)
    value = SigLoss(warm_up=False)(pred, torch.zeros(1, 1, 4, 4))
    value.backward()
    assert float(value.detach()) == 0.0 and torch.all(pred.grad == 0)


# ----------------------------------------------------------------------------------------------------
# GradientLoss
# ----------------------------------------------------------------------------------------------------


def _np_grad_2d(pred, gt):
    """Upstream's 2-D formula as explicit pixel loops: scales with strides 1, 2, 4, 6; differences two
    pixels apart; each scale's sum divided by that scale's valid-pixel count."""
    total = 0.0
    for s in (1, 2, 4, 6):
        p, t = pred[::s, ::s], gt[::s, ::s]
        m = t > 0
        h, w = t.shape
        d = np.where(m, np.log(p + EPS) - np.log(t + EPS), 0.0)
        num = 0.0
        for y in range(h):
            for x in range(w):
                if y + 2 < h and m[y, x] and m[y + 2, x]:
                    num += abs(d[y, x] - d[y + 2, x])
                if x + 2 < w and m[y, x] and m[y, x + 2]:
                    num += abs(d[y, x] - d[y, x + 2])
        if m.sum() > 0:
            total += num / m.sum()
    return total


def test_gradient_loss_batched_matches_per_image_loop():
    pred, gt = _depth_batch(3, shape=(3, 1, 13, 11))
    gt[2] = 0.0  # an image without any valid pixel is left out of the mean
    loss = GradientLoss(loss_weight=0.5)
    batched = float(loss(pred, gt))
    per_image = [_np_grad_2d(pred[i, 0].numpy(), gt[i, 0].numpy()) for i in range(2)]
    assert batched == pytest.approx(0.5 * np.mean(per_image), rel=1e-12)
    assert batched > 0.05  # the upstream indexing bug gives ~0 here
    # One image at a time gives that image's value: the batch is the mean of per-image losses.
    assert float(loss(pred[:1], gt[:1])) == pytest.approx(0.5 * per_image[0], rel=1e-12)


def test_gradient_loss_zero_for_scaled_prediction():
    # Scale invariance: pred = 3 * gt gives a constant log difference, hence zero gradients.
    # (eps breaks exact invariance slightly, so compare with a tolerance.)
    _, gt = _depth_batch(4)
    value = GradientLoss()(3 * gt, gt)
    assert abs(float(value)) < 1e-3


# ----------------------------------------------------------------------------------------------------
# DepthLoss
# ----------------------------------------------------------------------------------------------------


def test_depth_loss_is_sum_of_parts():
    pred, gt = _depth_batch(5)
    pred.requires_grad_(True)
    out = DepthLoss(warm_iter=0)(pred, gt)  # warm_iter 0: the full SigLoss from the first call
    assert set(out) == {"loss", "loss_sig", "loss_grad"}
    parts = {name: float(value.detach()) for name, value in out.items()}
    assert parts["loss_sig"] == pytest.approx(_np_sig(pred.detach(), gt, False), rel=1e-12)
    assert parts["loss_grad"] == pytest.approx(
        float(GradientLoss(loss_weight=0.5)(pred.detach(), gt)), rel=1e-12
    )
    assert parts["loss"] == pytest.approx(parts["loss_sig"] + parts["loss_grad"])
    out["loss"].backward()
    assert torch.isfinite(pred.grad).all()
    assert set(DepthLoss(grad_weight=0)(pred, gt)) == {"loss", "loss_sig"}


# ----------------------------------------------------------------------------------------------------
# SegLoss
# ----------------------------------------------------------------------------------------------------


def _seg_batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=gen)
    target = torch.randint(0, 4, (2, 5, 6), generator=gen)
    target[0, 0, :3] = 255
    return logits, target


def test_seg_loss_ce_by_hand():
    logits, target = _seg_batch()
    out = SegLoss(num_classes=4)(logits, target)
    assert set(out) == {"loss", "loss_ce"}
    # Mean over non-ignored pixels of -log softmax(logits)[label], as an explicit loop.
    logp = torch.log_softmax(logits.double(), dim=1)
    terms = [
        -float(logp[b, target[b, y, x], y, x])
        for b in range(2)
        for y in range(5)
        for x in range(6)
        if target[b, y, x] != 255
    ]
    assert float(out["loss"]) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_seg_loss_with_dice_and_lovasz():
    import segmentation_models_pytorch as smp

    logits, target = _seg_batch()
    out = SegLoss(num_classes=4, ce_weight=1.0, dice_weight=0.5, lovasz_weight=0.25)(logits, target)
    assert set(out) == {"loss", "loss_ce", "loss_dice", "loss_lovasz"}
    dice = smp.losses.DiceLoss(mode="multiclass", ignore_index=255)(logits, target)
    lovasz = smp.losses.LovaszLoss(mode="multiclass", ignore_index=255)(logits, target)
    ce = F.cross_entropy(logits, target, ignore_index=255)
    assert float(out["loss"]) == pytest.approx(float(ce + 0.5 * dice + 0.25 * lovasz), rel=1e-6)


def test_seg_loss_all_ignored_is_zero_not_nan():
    logits = torch.randn(1, 4, 3, 3, requires_grad=True)
    out = SegLoss(num_classes=4)(logits, torch.full((1, 3, 3), 255))
    out["loss"].backward()
    assert float(out["loss"].detach()) == 0.0


# ----------------------------------------------------------------------------------------------------
# One-line errors
# ----------------------------------------------------------------------------------------------------


def _message(exc_info):
    text = str(exc_info.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("loss_cls", [SigLoss, GradientLoss, DepthLoss])
def test_depth_loss_errors(loss_cls):
    pred, gt = _depth_batch()
    bad_pred = pred.clone()
    bad_pred[0, 0, 0, 0] = float("nan")
    with pytest.raises(BadInputError, match="prediction contains NaN") as info:
        loss_cls()(bad_pred, gt)
    _message(info)
    bad_gt = gt.clone()
    bad_gt[1, 0, 2, 2] = float("inf")
    with pytest.raises(BadInputError, match="target contains inf"):
        loss_cls()(pred, bad_gt)
    with pytest.raises(BadInputError, match="prediction shape .* != target shape"):
        loss_cls()(pred, gt[..., :5])
    with pytest.raises(BadInputError, match="B×1×H×W"):
        loss_cls()(pred[:, 0], gt[:, 0])


def test_seg_loss_errors():
    logits, target = _seg_batch()
    bad = target.clone()
    bad[1, 2, 2] = 4
    with pytest.raises(BadInputError, match=r"target has labels \[4\] outside \[0, 3\]") as info:
        SegLoss(num_classes=4)(logits, bad)
    _message(info)
    with pytest.raises(BadInputError, match="4 channels but num_classes is 5"):
        SegLoss(num_classes=5)(logits, target)
    with pytest.raises(BadInputError, match="does not match"):
        SegLoss(num_classes=4)(logits, target[:, :4])
    with pytest.raises(BadInputError, match="integer"):
        SegLoss(num_classes=4)(logits, target.float())
    nan_logits = logits.clone()
    nan_logits[0, 0, 0, 0] = float("inf")
    with pytest.raises(BadInputError, match="prediction contains inf"):
        SegLoss(num_classes=4)(nan_logits, target)
    with pytest.raises(BadInputError, match="all loss weights are 0"):
        SegLoss(num_classes=4, ce_weight=0)


# ----------------------------------------------------------------------------------------------------
# Sync-free forms (issue #6): edge cases of the weighted-sum statistics and the device-side warm-up
# ----------------------------------------------------------------------------------------------------


def test_sigloss_one_valid_pixel_has_zero_variance():
    pred = torch.full((1, 1, 3, 3), 2.0, dtype=torch.float64, requires_grad=True)
    gt = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    gt[0, 0, 1, 2] = 5.0
    value = SigLoss(warm_up=False, loss_weight=3.0)(pred, gt)
    g = math.log(2.0 + EPS) - math.log(5.0 + EPS)
    assert float(value.detach()) == pytest.approx(3.0 * math.sqrt(0.15 * g**2), rel=1e-12)
    value.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[0, 0, 1, 2] != 0
    assert int((pred.grad != 0).sum()) == 1  # only the valid pixel gets a gradient


@pytest.mark.parametrize("loss_cls", [SigLoss, GradientLoss, DepthLoss])
def test_no_valid_pixel_is_zero_even_with_garbage_predictions(loss_cls):
    # Unchecked (check_values=False, as in training): NaN, inf, negative predictions at pixels that do
    # not count must not reach the value or the gradient.
    pred = torch.tensor([float("nan"), float("inf"), -5.0, 0.0, 2.0, -1e-3]).reshape(1, 1, 2, 3)
    pred = pred.expand(2, 1, 2, 3).clone().requires_grad_(True)
    out = loss_cls(check_values=False)(pred, torch.zeros(2, 1, 2, 3))
    value = out["loss"] if isinstance(out, dict) else out
    value.backward()
    assert float(value.detach()) == 0.0
    assert torch.equal(pred.grad, torch.zeros_like(pred))


@pytest.mark.parametrize("loss_cls", [SigLoss, GradientLoss])
def test_garbage_at_invalid_pixels_does_not_leak(loss_cls):
    pred, gt = _depth_batch(6)
    invalid = gt == 0
    index = torch.arange(gt.numel()).reshape(gt.shape) % 3
    garbage = pred.clone()
    garbage[invalid] = float("nan")
    garbage[invalid & (index == 1)] = float("-inf")
    garbage[invalid & (index == 2)] = -3.0
    clean_pred = pred.clone().requires_grad_(True)
    garbage = garbage.requires_grad_(True)
    loss = loss_cls(check_values=False, **({"warm_up": False} if loss_cls is SigLoss else {}))
    clean, dirty = loss(clean_pred, gt), loss(garbage, gt)
    assert float(dirty.detach()) == pytest.approx(float(clean.detach()), rel=1e-12)
    clean.backward()
    dirty.backward()
    assert torch.equal(garbage.grad[invalid], torch.zeros(int(invalid.sum()), dtype=garbage.dtype))
    torch.testing.assert_close(garbage.grad, clean_pred.grad, rtol=1e-12, atol=0)


def test_sigloss_warm_up_switches_exactly_at_warm_iter():
    pred, gt = _depth_batch(7)
    warm, full = _np_sig(pred, gt, True), _np_sig(pred, gt, False)
    loss = SigLoss(warm_iter=2, check_values=False)
    counters = []
    for expected in (warm, warm, full, full):
        assert float(loss(pred, gt)) == pytest.approx(expected, rel=1e-12)
        counters.append(int(loss.warm_up_counter))
    assert counters == [1, 2, 2, 2]  # saturates at warm_iter
    assert not loss.in_warm_up

    # Calls in eval mode use the current phase but do not advance it.
    loss = SigLoss(warm_iter=1, check_values=False).eval()
    assert float(loss(pred, gt)) == pytest.approx(warm, rel=1e-12)
    assert int(loss.warm_up_counter) == 0 and loss.in_warm_up
    loss.train()
    assert float(loss(pred, gt)) == pytest.approx(warm, rel=1e-12)  # the one warm-up call
    assert float(loss(pred, gt)) == pytest.approx(full, rel=1e-12)

    # warm_up=False: the full loss from the first call; warm_iter=0: the same.
    assert float(SigLoss(warm_up=False)(pred, gt)) == pytest.approx(full, rel=1e-12)
    assert float(SigLoss(warm_iter=0)(pred, gt)) == pytest.approx(full, rel=1e-12)


def test_depth_loss_counter_is_checkpointed_and_resumes_at_the_switch():
    pred, gt = _depth_batch(8)
    original = DepthLoss(warm_iter=3, check_values=False)
    for _ in range(2):
        original(pred, gt)
    state = original.state_dict()
    assert int(state["sig.warm_up_counter"]) == 2

    resumed = DepthLoss(warm_iter=3, check_values=False)
    resumed.load_state_dict(state)
    for expected_warm in (True, False, False):  # one warm-up call left, then the full loss
        a, b = original(pred, gt)["loss_sig"], resumed(pred, gt)["loss_sig"]
        assert float(a) == float(b) == pytest.approx(_np_sig(pred, gt, expected_warm), rel=1e-12)
    assert int(resumed.sig.warm_up_counter) == 3


def test_gradient_loss_without_valid_image_is_zero_with_graph():
    pred = torch.rand(2, 1, 8, 8, requires_grad=True)
    value = GradientLoss(loss_weight=0.5)(pred, torch.zeros(2, 1, 8, 8))
    value.backward()
    assert float(value.detach()) == 0.0 and value.requires_grad and torch.all(pred.grad == 0)


def test_check_values_false_skips_only_the_value_checks():
    """check_values=False (what the training tasks use): NaN/inf and bad labels are not looked for
    (no sync; the tasks check the ground truth on the host). A NaN at a valid pixel gives a NaN loss,
    which the task's divergence check reports. Shape and dtype checks still run."""
    pred, gt = _depth_batch()
    bad_pred = pred.clone()
    bad_pred[tuple((gt > 0).nonzero()[0])] = float("nan")  # at a valid pixel
    for loss in (
        SigLoss(check_values=False),
        GradientLoss(check_values=False),
        DepthLoss(check_values=False),
    ):
        out = loss(bad_pred, gt)
        assert math.isnan(float(out["loss"] if isinstance(out, dict) else out))
        with pytest.raises(BadInputError, match="prediction shape .* != target shape"):
            loss(pred, gt[..., :5])
        with pytest.raises(BadInputError, match="B×1×H×W"):
            loss(pred[:, 0], gt[:, 0])

    logits, target = _seg_batch()
    nan_logits = logits.clone()
    nan_logits[1, 0, 0, 0] = float("nan")  # at a pixel that is not ignored
    unchecked = SegLoss(num_classes=4, check_values=False)
    assert not math.isfinite(float(unchecked(nan_logits, target)["loss"]))
    with pytest.raises(BadInputError, match="integer"):
        unchecked(logits, target.float())
    with pytest.raises(BadInputError, match="4 channels but num_classes is 5"):
        SegLoss(num_classes=5, check_values=False)(logits, target)
