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
held to the same rule; it is read only at the periodic checks (tests/test_learning.py).
"""

import pytest
import torch
import torch._dynamo
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from dense.losses import DepthLoss, ScaleShiftInvariantLoss, SegLoss
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
# with boolean masks), so only cross-entropy and Dice are held to this; dense/losses.py SegLoss says so.
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


@pytest.mark.parametrize("head", ["depth_linear4", "depth_dpt", "seg_ms"])
def test_the_whole_training_forward_is_sync_free(head):
    """What DenseTask.training_step computes: padding, frozen backbone, head, clamp, resize, crop, loss."""
    import dense

    torch.manual_seed(0)
    segmentation = head.startswith("seg")
    model = dense.build_model("tiny14", head, **({"num_classes": 5} if segmentation else {})).train()
    images = torch.randn(2, 3, 42, 56)  # not multiples of 14: the padding path is traced too
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
