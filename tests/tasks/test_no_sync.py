"""The training-path losses make no host-device sync (issue #6), proven on the CPU.

A sync is any point where the host must wait for a tensor's value: a Python `if` on tensor data,
`.item()`/`int()`/`bool()` on a tensor, or an op whose output SIZE depends on the data (boolean-mask
indexing, nonzero, masked_select, unique). The losses are traced with
torch.compile(fullgraph=True, backend="eager") (tracing only, no code generation: fast) and:
  * a data-dependent branch cannot be traced: fullgraph raises;
  * .item() and data-dependent sizes ARE traced under fullgraph by recent torch versions (fullgraph
    turns capture_scalar_outputs on), but only as "unbacked" symbols, values known only at run time:
    the test refuses any node carrying one.
test_the_harness_catches_each_kind_of_sync shows each route failing. The old losses (value checks,
`pred[mask]`, `if g.numel() == 0`, `int(counter)`, `bool(has_valid.any())`) fail these tests.
The dead-head check's per-step counting (DenseTask: the task's `is_dead` and `next_dead_streak`) is
held to the same rule; it is read only at the periodic checks (tests/tasks/test_learning.py).
"""

import pytest
import torch
import torch._dynamo
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from dense.core.features import FeatureMaps
from dense.tasks.losses import DepthLoss, ScaleShiftInvariantLoss, SegLoss
from dense.tasks.relative_depth import disparity_target


@pytest.fixture(autouse=True)
def strict_dynamo():
    # The defaults, spelled out, so that an environment variable cannot loosen the check.
    with torch._dynamo.config.patch(capture_scalar_outputs=False, capture_dynamic_output_shape_ops=False):
        torch._dynamo.reset()
        yield
    torch._dynamo.reset()


class SyncFree:
    """Call `fn` compiled with fullgraph=True; after each call, no captured graph may hold a
    data-dependent (unbacked) value, and nothing may have been recompiled."""

    def __init__(self, fn):
        self.graphs = []

        def record(graph_module, example_inputs):
            self.graphs.append(graph_module)
            return graph_module.forward

        self.compiled = torch.compile(fn, fullgraph=True, backend=record)

    def __call__(self, *args):
        out = self.compiled(*args)
        assert len(self.graphs) == 1, f"{len(self.graphs)} graphs: recompiled"
        data_dependent = [
            node.format_node()
            for node in self.graphs[0].graph.nodes
            if any(_unbacked(value) for value in _values(node.meta.get("example_value")))
        ]
        assert not data_dependent, "values the host must wait for:\n" + "\n".join(data_dependent)
        return out


def _values(value):
    return value if isinstance(value, tuple | list) else [value]


def _unbacked(value) -> bool:
    symbolic = (torch.Tensor, torch.SymInt, torch.SymFloat, torch.SymBool)
    return isinstance(value, symbolic) and bool(free_unbacked_symbols(value))


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, m: x.sum() if m.any() else x.mean(),  # data-dependent branch
        lambda x, m: x.sum() * x.max().item(),  # .item()
        lambda x, m: x.sum() * bool(m.any()),  # bool() on a tensor
        lambda x, m: x[m].sum(),  # boolean-mask indexing (nonzero)
        lambda x, m: x.sum() / m.nonzero().shape[0],
    ],
    ids=["if", "item", "bool", "mask_index", "nonzero"],
)
def test_the_harness_catches_each_kind_of_sync(fn):
    x = torch.rand(4, 5)
    with pytest.raises(Exception):  # noqa: B017  (dynamo's errors, or the harness's AssertionError)
        SyncFree(fn)(x, x > 0.5)
    SyncFree(lambda x, m: torch.where(m, x, 0.0).sum())(x, x > 0.5)  # the sync-free form passes


def _depth_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.rand(2, 1, 9, 8, generator=gen) * 4 + 0.2
    gt = torch.rand(2, 1, 9, 8, generator=gen) * 12  # some beyond max_depth=10
    gt[torch.rand(gt.shape, generator=gen) < 0.3] = 0.0  # some invalid
    gt[1, 0, :, :5] = 0.0
    return pred, gt


def test_value_checks_are_syncs():
    """The standalone default (check_values=True) does sync; that is why the tasks turn it off."""
    pred, gt = _depth_inputs()
    with pytest.raises(Exception):  # noqa: B017
        SyncFree(DepthLoss(max_depth=10.0))(pred, gt)


def test_depth_loss_training_path_is_sync_free_during_and_after_warm_up():
    pred, gt = _depth_inputs()
    traced_loss = DepthLoss(max_depth=10.0, warm_iter=2, check_values=False).train()
    eager_loss = DepthLoss(max_depth=10.0, warm_iter=2, check_values=False).train()
    step = SyncFree(traced_loss)
    values = []
    for call in range(4):  # calls 1-2: warm-up; 3-4: the full loss (switched on the device, one graph)
        p_traced = pred.clone().requires_grad_(True)
        p_eager = pred.clone().requires_grad_(True)
        out = step(p_traced, gt)
        expected = eager_loss(p_eager, gt)
        assert set(out) == set(expected) == {"loss", "loss_sig", "loss_grad"}
        for key in out:
            torch.testing.assert_close(out[key], expected[key], rtol=1e-6, atol=0)
        out["loss"].backward()
        expected["loss"].backward()
        torch.testing.assert_close(p_traced.grad, p_eager.grad, rtol=1e-5, atol=1e-8)
        # The traced call advances the counter buffer too, and it saturates at warm_iter.
        assert int(traced_loss.sig.warm_up_counter) == int(eager_loss.sig.warm_up_counter) == min(call + 1, 2)
        values.append(float(out["loss_sig"].detach()))
    assert values[0] == pytest.approx(values[1]) and values[2] == pytest.approx(values[3])
    assert values[1] != pytest.approx(values[2])  # warm-up and full loss differ: both branches ran


@pytest.mark.parametrize(
    "options",
    [
        {"warm_up": False},
        {"warm_iter": 0},
        {"grad_weight": 0},
        {"valid_mask": False},
        {"gradient": "toolbox"},
    ],
)
def test_depth_loss_variants_are_sync_free(options):
    pred, gt = _depth_inputs(1)
    out = SyncFree(DepthLoss(check_values=False, **options).train())(pred, gt)
    expected = DepthLoss(check_values=False, **options).train()(pred, gt)
    torch.testing.assert_close(out["loss"], expected["loss"])


def test_depth_loss_without_any_valid_pixel_is_sync_free():
    pred, _ = _depth_inputs()
    pred.requires_grad_(True)
    out = SyncFree(DepthLoss(check_values=False).train())(pred, torch.zeros_like(pred))
    out["loss"].backward()
    assert float(out["loss"].detach()) == 0.0 and torch.all(pred.grad == 0)


# smp's LovaszLoss is NOT sync-free (it skips absent classes with `if fg.sum() == 0` and selects pixels
# with boolean masks), so only cross-entropy and Dice are held to this; dense/tasks/losses.py SegLoss says so.
@pytest.mark.parametrize("weights", [{}, {"dice_weight": 0.5}, {"ce_weight": 0.0, "dice_weight": 1.0}])
def test_seg_loss_training_path_is_sync_free(weights):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=gen)
    target = torch.randint(0, 4, (2, 5, 6), generator=gen)
    target[0, 0, :3] = 255
    loss = SegLoss(num_classes=4, check_values=False, **weights)
    out = SyncFree(loss)(logits, target)
    expected = loss(logits, target)
    assert set(out) == set(expected)
    for key in out:
        torch.testing.assert_close(out[key], expected[key])


@pytest.mark.parametrize(
    ("head", "image_dtype"),
    [("depth_linear4", torch.float32), ("depth_dpt", torch.uint8), ("seg_ms", torch.float32)],
)
def test_the_whole_training_forward_is_sync_free(head, image_dtype):
    """What DenseTask.training_step computes: normalisation (uint8 batches: the table lookup on the
    device), padding, frozen backbone, head, clamp, resize, crop, loss."""
    import dense

    torch.manual_seed(0)
    segmentation = head.startswith("seg")
    model = dense.build_model("tiny14", head, **({"num_classes": 5} if segmentation else {})).train()
    images = torch.randn(2, 3, 42, 56)  # not multiples of 14: the padding path is traced too
    if image_dtype == torch.uint8:  # what the datasets give
        images = torch.randint(0, 256, (2, 3, 42, 56), dtype=torch.uint8)
    if segmentation:
        loss, target = SegLoss(5, check_values=False), torch.randint(0, 5, (2, 42, 56))
    else:
        loss, target = DepthLoss(check_values=False).train(), torch.rand(2, 1, 42, 56) * 5 + 0.1
    expected = loss(model(images), target)["loss"]
    if not segmentation:
        loss.sig.warm_up_counter.zero_()  # the eager call above advanced it
    traced = SyncFree(lambda x, t: loss(model(x), t)["loss"])(images, target)
    assert torch.allclose(traced, expected, rtol=1e-5)


@pytest.mark.parametrize("head", ["depth_dpt", "seg_linear"])
def test_the_dead_head_count_is_sync_free(head):
    """What DenseTask.training_step adds for the dead-head check, per step: is the prediction dead
    (depth at min_depth nearly everywhere, one class everywhere), and the streak of dead steps."""
    import dense
    from dense.data import DenseDataModule
    from dense.tasks import build_task
    from dense.tasks.base import next_dead_streak

    torch.manual_seed(0)
    segmentation = head.startswith("seg")
    model = dense.build_model("tiny14", head, **({"num_classes": 7} if segmentation else {}))
    data = DenseDataModule(name="synthetic", task=model.task, image_size=[28, 28], num_workers=0)
    task = build_task(model, data)

    def count(prediction, streak):
        return next_dead_streak(streak, task.is_dead(prediction))

    step = SyncFree(count)
    alive = torch.rand(2, 7, 28, 28) if segmentation else torch.rand(2, 1, 28, 28) * 5 + 1
    dead = torch.zeros(2, 7, 28, 28) if segmentation else torch.full((2, 1, 28, 28), model.min_depth)
    if segmentation:
        dead[:, 3] = 1.0
    streak = torch.zeros((), dtype=torch.long)
    for prediction, expected in ((dead, 1), (dead, 2), (alive, 0), (dead, 1)):
        streak = step(prediction, streak)
        assert int(streak) == expected


@pytest.mark.parametrize("kind", ["depth", "disparity"])
def test_relative_loss_training_path_is_sync_free(kind):
    """What RelativeDepthTask.compute_loss runs: the ground truth to disparity, then MiDaS' loss
    (nanmedian over masked rows, the trim as a rank test)."""
    pred, gt = _depth_inputs(2)
    if kind == "disparity":
        gt = torch.where(gt > 0, gt, torch.full_like(gt, -1.0))  # relative maps: -1 = no value
    loss = ScaleShiftInvariantLoss(check_values=False)

    def step(p, g):
        return loss(p, *disparity_target(g, kind))

    p_traced, p_eager = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    out, expected = SyncFree(step)(p_traced, gt), step(p_eager, gt)
    torch.testing.assert_close(out["loss"], expected["loss"])
    out["loss"].backward()
    expected["loss"].backward()
    torch.testing.assert_close(p_traced.grad, p_eager.grad)


# ---- seg_mask: one sync per step, for the Hungarian matching -----------------------------------------
# The matching runs on the host (scipy's linear_sum_assignment, as Mask2Former's), so MaskClassificationLoss
# makes one device → host transfer per call, for every layer and image at once (its `to_host`). The
# whole-forward test above cannot trace it; these hold the rest to the same standard: the head's training
# forward and the costs before the matching, and the losses after it, trace as one graph each, and a whole
# call converts a tensor to host values exactly once.


def _mask_setup(seed=0):
    import dense
    from dense.tasks.mask_loss import MaskClassificationLoss

    torch.manual_seed(seed)
    options = {
        "num_classes": 5,
        "layers": [2, 3],
        "num_queries": 6,
        "num_blocks": 1,
    }  # small: tracing takes seconds
    model = dense.build_model("tiny14", "seg_mask", **options).train()
    loss = MaskClassificationLoss(5, num_points=64, check_values=False)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 42, 53, generator=gen)  # not multiples of 14: padded, so the image box matters
    labels = torch.randint(0, 5, (2, 42, 53), generator=gen)
    labels[0, :3] = 255
    return model, loss, images, labels


def test_the_mask_heads_forward_and_matching_costs_are_sync_free():
    """From the frozen backbone's features (its forward is traced above): the head, DenseModel's
    training output (the image box in the padded frame), and the matching costs."""
    model, loss, images, labels = _mask_setup()
    features, padding = model.image_features(images)

    def costs(patches, t):
        predictions = model.forward_head(FeatureMaps(patches, features.cls_tokens), padding, (42, 53))
        prepared = loss.prepare_labels(t)
        return loss.matching_costs(predictions.float(), prepared), loss.presence(prepared)

    torch.manual_seed(1)
    traced, present = SyncFree(costs)(features.patches, labels)
    torch.manual_seed(1)  # the same points drawn
    expected, expected_present = costs(features.patches, labels)
    assert traced.shape == (2, 2, 6, 5)  # predictions (1 block + the final one) × images × queries × classes
    torch.testing.assert_close(traced, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(present, expected_present)


def test_the_mask_loss_after_the_matching_is_sync_free():
    model, loss, images, labels = _mask_setup()
    predictions = model(images).float()
    prepared = loss.prepare_labels(labels)
    present = loss.presence(prepared)
    image, query, cls = (
        torch.from_numpy(a) for a in loss.match(loss.matching_costs(predictions, prepared), present)[-1]
    )
    assert len(image) == int(present.sum())  # every present class matched to one query
    count = loss.mask_count(present)

    def layer(class_logits, mask_logits, t, image, query, cls, count):
        terms = loss.layer_losses(
            class_logits, mask_logits, t, (image, query, cls), count, predictions.image_box
        )
        return torch.stack(terms)

    inputs = (predictions.class_logits[-1], predictions.mask_logits[-1], prepared, image, query, cls, count)
    torch.manual_seed(2)
    traced = SyncFree(layer)(*inputs)
    torch.manual_seed(2)
    torch.testing.assert_close(traced, layer(*inputs), rtol=1e-5, atol=1e-6)


def test_a_whole_mask_loss_call_reads_the_device_once(monkeypatch):
    """Every way Python code turns a tensor into host values, counted over one call of the loss on a
    2-prediction head: one numpy() (the matching's costs), nothing else."""
    model, loss, images, labels = _mask_setup()
    predictions = model(images)
    reads = []
    for name in ("numpy", "item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *a, _n=name, _r=real, **k: reads.append(_n) or _r(self, *a, **k)
        )
    out = loss(predictions, labels)
    monkeypatch.undo()
    assert reads == ["numpy"], reads
    out["loss"].backward()
