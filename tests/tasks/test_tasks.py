"""The LightningModules: frozen backbone, optimiser and schedule, evaluation modes, checkpoint hooks."""

import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch

import dense
from dense.core.errors import ConfigError
from dense.data import DenseDataModule
from dense.tasks import DepthTask, RunCheckpointIO, SegmentationTask, build_task, lr_schedule
from dense.tasks.multi import build_multi_task

SMALL_DATA = {
    "image_size": [42, 56],
    "num_train": 8,
    "num_val": 4,
    "num_test": 4,
    "batch_size": 4,
    "num_workers": 0,
}


def trainer(tmp_path, **options) -> L.Trainer:
    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 3,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": tmp_path,
        **options,
    }
    return L.Trainer(**settings)


# ---- schedule -------------------------------------------------------------------------------------


def test_warmup_then_cosine_as_mmcv():
    f = lr_schedule(100, warmup_steps=10, warmup_ratio=0.1, decay="cosine")
    cosine = lambda step: 0.5 * (1 + math.cos(math.pi * step / 100))  # noqa: E731
    assert f(0) == pytest.approx(0.1)  # the warm-up starts at warmup_ratio × the decayed lr
    assert f(5) == pytest.approx(cosine(5) * (1 - 0.5 * 0.9))
    assert f(10) == pytest.approx(cosine(10))  # warm-up over: the plain decay
    assert f(50) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0) and f(150) == pytest.approx(0.0)


def test_poly_and_floor():
    f = lr_schedule(200, decay="poly", power=0.9, min_lr_ratio=0.1)
    assert f(0) == pytest.approx(1.0)
    assert f(100) == pytest.approx(0.1 + 0.9 * 0.5**0.9)
    assert f(200) == pytest.approx(0.1)
    assert lr_schedule(10, decay="constant")(7) == 1.0


@pytest.mark.parametrize(
    "options", [{"decay": "linear"}, {"warmup_steps": -1}, {"warmup_ratio": 0}, {"min_lr_ratio": 2}]
)
def test_bad_schedules_are_refused(options):
    with pytest.raises(ConfigError, match="task.scheduler"):
        lr_schedule(10, **options)


# ---- training keeps the backbone frozen --------------------------------------------------------------


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_training_changes_the_head_and_never_the_backbone(tmp_path, precision):
    datamodule = DenseDataModule(name="synthetic", **SMALL_DATA)
    model = dense.build_model("tiny14", "depth_linear4")
    task = build_task(
        model, datamodule, optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-2}
    )
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}

    run = trainer(tmp_path, precision=precision, limit_val_batches=0)
    run.fit(task, datamodule=datamodule)

    optimised = {id(p) for group in run.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.head.parameters()}
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not model.backbone.training  # eval mode even while training
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key  # bit-identical
    assert any(not torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())
    assert math.isfinite(float(run.callback_metrics["train/loss"]))


def test_the_schedule_is_stepped_every_iteration_and_stores_no_code(tmp_path):
    datamodule = DenseDataModule(name="synthetic", **SMALL_DATA)
    task = build_task(
        dense.build_model("tiny14", "depth_linear"),
        datamodule,
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1.0},
        scheduler={"warmup_steps": 2, "warmup_ratio": 0.5},
    )
    run = trainer(tmp_path, max_steps=3, limit_val_batches=0)
    run.fit(task, datamodule=datamodule)
    scheduler = run.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 3
    assert run.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 3)))
    assert scheduler.state_dict()["lr_lambdas"] == [None]  # a plain function: nothing pickled


# ---- evaluation ----------------------------------------------------------------------------------------


def test_evaluation_uses_the_configured_prediction_mode():
    datamodule = DenseDataModule(name="synthetic", **SMALL_DATA)
    model = dense.build_model("tiny14", "depth_linear").eval()
    task = build_task(
        model, datamodule, test_flip=True, test_scales=[1.0, 1.5], test_mode="slide", test_crop_size=28
    )
    images = torch.randn(1, 3, 28, 42)
    expected = model.predict(images, mode="slide", crop_size=28, scales=(1.0, 1.5), flip=True)
    assert torch.equal(task.evaluate(images), expected)
    with pytest.raises(ConfigError, match="test_crop_size"):
        build_task(model, datamodule, test_mode="slide")
    with pytest.raises(ConfigError, match="trains depth heads"):
        DepthTask(dense.build_model("tiny14", "seg_linear", num_classes=3))


def test_segmentation_test_logs_miou_and_prints_the_per_class_table(tmp_path, capsys):
    datamodule = DenseDataModule(name="synthetic", task="segmentation", **SMALL_DATA)
    model = dense.build_model("tiny14", "seg_linear", num_classes=datamodule.num_classes)
    task = build_task(model, datamodule, seg_loss={"ce_weight": 1.0, "dice_weight": 0.5})
    assert isinstance(task, SegmentationTask) and task.loss.dice is not None
    results = trainer(tmp_path).test(task, datamodule=datamodule, verbose=False)[0]
    assert {"test/mIoU", "test/mAcc", "test/aAcc"} <= set(results)
    printed = capsys.readouterr().out
    assert "Per-class results (test)" in printed
    for name in datamodule.class_names:
        assert name in printed


def test_depth_metrics_use_the_datamodule_range_and_crop():
    datamodule = DenseDataModule(name="synthetic", **SMALL_DATA)
    task = build_task(dense.build_model("tiny14", "depth_linear"), datamodule)
    metrics = task.val_metrics
    assert (metrics.min_depth, metrics.max_depth, metrics.crop) == (
        datamodule.min_depth,
        datamodule.max_depth,
        datamodule.eval_crop,
    )
    # The losses count every gt > 0, as upstream's recipes (no max_depth passed to SigLoss/GradientLoss).
    assert task.loss.sig.max_depth is None and task.loss.grad.max_depth is None


# ---- checkpoints -------------------------------------------------------------------------------------


def test_atomic_checkpoint_io_leaves_no_partial_file(tmp_path, monkeypatch):
    io = RunCheckpointIO(tmp_path)
    io.save_checkpoint({"a": torch.ones(3)}, tmp_path / "last.ckpt")
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["a"], torch.ones(3))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a run killed while writing

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"a": torch.zeros(3)}, tmp_path / "last.ckpt")
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# ---- no sync in the training step: host-side target checks, periodic divergence check ------------------


def _train_batch(datamodule) -> dict:
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader()))


def _loader(*batches: dict) -> torch.utils.data.DataLoader:
    """These ready-made batches, in this order (batch_size=None: no collation)."""
    return torch.utils.data.DataLoader(list(batches), batch_size=None)


def _single_line(error) -> str:
    text = str(error)
    assert "\n" not in text
    return text


def test_tasks_build_their_losses_without_value_checks():
    datamodule = DenseDataModule(name="synthetic", **SMALL_DATA)
    depth = build_task(dense.build_model("tiny14", "depth_linear"), datamodule)
    assert (
        not depth.loss.check_values and not depth.loss.sig.check_values and not depth.loss.grad.check_values
    )
    seg_data = DenseDataModule(name="synthetic", task="segmentation", **SMALL_DATA)
    seg = build_task(dense.build_model("tiny14", "seg_linear", num_classes=seg_data.num_classes), seg_data)
    assert not seg.loss.check_values
    # Still available, for debugging: task.depth_loss.check_values=true.
    checked = build_task(
        dense.build_model("tiny14", "depth_linear"), datamodule, depth_loss={"check_values": True}
    )
    assert checked.loss.check_values


def test_nan_depth_in_a_training_batch_stops_the_run_with_one_line(tmp_path):
    datamodule = DenseDataModule(name="synthetic", **SMALL_DATA)
    task = build_task(dense.build_model("tiny14", "depth_linear"), datamodule)
    batch = _train_batch(datamodule)
    bad = {**batch, "depth": batch["depth"].clone()}
    bad["depth"][2, 0, 5, 7] = float("nan")

    # Lightning hands the hook the CPU batch (before the transfer), in a real fit.
    with pytest.raises(dense.core.errors.BadInputError) as info:
        trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(task, train_dataloaders=_loader(batch, bad))
    message = _single_line(info.value)
    assert "DepthTask training batch: the depth contains NaN values" in message
    assert f"(sample {batch['name'][2]})" in message

    # Only training batches are checked (validation and test batches go through the metrics' checks),
    # and the hook hands the batch back untouched.
    task.trainer = SimpleNamespace(training=False)
    assert task.on_before_batch_transfer(bad, 0) is bad
    task.trainer = SimpleNamespace(training=True)
    assert task.on_before_batch_transfer(batch, 0) is batch
    bad["depth"][0, 0, 0, 0] = float("inf")
    with pytest.raises(dense.core.errors.BadInputError, match=r"NaN and inf values \(sample .*, .*\)"):
        task.on_before_batch_transfer(bad, 0)


def test_out_of_range_labels_in_a_training_batch_stop_the_run(tmp_path):
    datamodule = DenseDataModule(name="synthetic", task="segmentation", **SMALL_DATA)
    model = dense.build_model("tiny14", "seg_linear", num_classes=datamodule.num_classes)
    task = build_task(model, datamodule)
    batch = _train_batch(datamodule)
    batch["mask"][1, 3, 3] = 255  # the ignore index is fine
    task.trainer = SimpleNamespace(training=True)
    assert task.on_before_batch_transfer(batch, 0) is batch

    bad = {**batch, "mask": batch["mask"].clone()}
    bad["mask"][1, 4, 4] = datamodule.num_classes
    with pytest.raises(dense.core.errors.BadInputError) as info:
        trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(task, train_dataloaders=_loader(bad))
    message = _single_line(info.value)
    assert f"labels [{datamodule.num_classes}] outside [0, {datamodule.num_classes - 1}]" in message
    assert f"(sample {batch['name'][1]})" in message


class PoisonHead(L.Callback):
    """Sets the head's weights to NaN after `after` optimiser steps: a diverged head."""

    def __init__(self, after: int):
        self.after = after

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.after:
            with torch.no_grad():
                for p in module.model.head.parameters():
                    p.fill_(float("nan"))


def _depth_task():
    datamodule = DenseDataModule(name="synthetic", **SMALL_DATA)  # 2 training batches per epoch
    return build_task(dense.build_model("tiny14", "depth_linear"), datamodule), datamodule


def test_a_nan_loss_stops_the_run_at_the_next_periodic_check(tmp_path):
    task, datamodule = _depth_task()
    # NaN loss from step 3 on; checks every 2 steps: step 2 (finite), step 4 (NaN since step 3).
    run = trainer(tmp_path, max_steps=8, limit_val_batches=0, log_every_n_steps=2, callbacks=[PoisonHead(2)])
    with pytest.raises(dense.core.errors.TrainingDivergedError) as info:
        run.fit(task, datamodule=datamodule)
    assert isinstance(info.value, dense.core.errors.DenseError)  # train.py prints it as one line
    assert _single_line(info.value) == (
        "training diverged: the loss became NaN or inf at or before step 4 (it was finite up to step 2); "
        "lower task.optimizer.lr, or check the data"
    )
    assert run.global_step == 4  # stopped at the check, not at the end of the run


def test_divergence_is_not_checked_every_step_but_at_the_epoch_end(tmp_path):
    task, datamodule = _depth_task()
    # NaN from step 1 on; log_every_n_steps=50 > the 2 steps of an epoch: the epoch-end check finds it.
    run = trainer(tmp_path, max_steps=8, limit_val_batches=0, log_every_n_steps=50, callbacks=[PoisonHead(0)])
    with pytest.raises(dense.core.errors.TrainingDivergedError, match="at or before step 2; lower"):
        run.fit(task, datamodule=datamodule)
    assert run.global_step == 2


def test_divergence_is_reported_before_validation_and_at_max_steps(tmp_path):
    task, datamodule = _depth_task()
    # Validation after step 1 (val_check_interval=1) would fail in the metrics on NaN predictions:
    # the divergence is reported instead.
    run = trainer(
        tmp_path, max_steps=8, val_check_interval=1, log_every_n_steps=50, callbacks=[PoisonHead(0)]
    )
    with pytest.raises(dense.core.errors.TrainingDivergedError, match="at or before step 1; lower"):
        run.fit(task, datamodule=datamodule)

    task, datamodule = _depth_task()
    # max_steps=1 ends the run in the middle of the first epoch: still checked.
    run = trainer(tmp_path, max_steps=1, limit_val_batches=0, log_every_n_steps=50, callbacks=[PoisonHead(0)])
    with pytest.raises(dense.core.errors.TrainingDivergedError, match="at or before step 1; lower"):
        run.fit(task, datamodule=datamodule)


def test_train_py_prints_the_divergence_as_one_line(tmp_path, capsys):
    from dense.cli import runner

    task, datamodule = _depth_task()
    run = trainer(tmp_path, max_steps=2, limit_val_batches=0, log_every_n_steps=1, callbacks=[PoisonHead(0)])
    with pytest.raises(SystemExit) as stop:
        runner.run(lambda cfg: run.fit(task, datamodule=datamodule), None)
    assert stop.value.code == runner.EXIT_TRAINING_FAILED == 3  # a run that failed, not a config mistake (2)
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: training diverged: the loss became NaN or inf at or before step 1; "
        "lower task.optimizer.lr, or check the data"
    )


def test_each_head_trains_at_its_registered_lr_unless_the_run_sets_one():
    """task.optimizer.lr=null (train.yaml): the DPT at upstream's 1e-4 (dinov2's DPT depth configs), the
    small heads at 1e-3; a head=multi run gives each head its own in a group of its own; a set lr wins."""

    def initial_lrs(task) -> list[float]:
        optimizer, _ = task.optimizer_and_schedule(10)
        return [group["initial_lr"] for group in optimizer.param_groups]

    assert initial_lrs(DepthTask(dense.build_model("tiny14", "depth_dpt"))) == [1e-4]
    assert initial_lrs(DepthTask(dense.build_model("tiny14", "depth_linear"))) == [1e-3]
    assert initial_lrs(SegmentationTask(dense.build_model("tiny14", "seg_linear", num_classes=3))) == [1e-3]
    chosen = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 5e-4}
    assert initial_lrs(DepthTask(dense.build_model("tiny14", "depth_dpt"), optimizer=chosen)) == [5e-4]

    datamodule = DenseDataModule(name="synthetic", task="multi", **SMALL_DATA)
    model = dense.build_model("tiny14", heads={"depth": "depth_dpt", "seg": "seg_linear"}, num_classes=7)
    task = build_multi_task(model, datamodule)
    assert initial_lrs(task) == [1e-4, 1e-3]
    optimizer, _ = task.optimizer_and_schedule(10)
    heads = [set(map(id, model.heads[name].parameters())) for name in ("depth", "seg")]
    assert [set(map(id, group["params"])) for group in optimizer.param_groups] == heads
    assert initial_lrs(build_multi_task(model, datamodule, optimizer=chosen)) == [5e-4, 5e-4]
    assert [group["name"] for group in optimizer.param_groups] == ["depth", "seg"]  # lr-AdamW/depth, ...


@pytest.mark.parametrize("lr", [-1e-3, float("nan"), float("inf"), True, "1e-2"])
def test_a_learning_rate_that_cannot_train_is_refused(lr):
    optimizer = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": lr}
    with pytest.raises(ConfigError, match="task.optimizer.lr: .* not a"):
        DepthTask(dense.build_model("tiny14", "depth_linear"), optimizer=optimizer)
    with pytest.raises(ValueError, match="head my_head_lr: default_lr .* not a"):
        dense.register_head(
            "my_head_lr",
            task="depth",
            layer_set=dense.LayerSet.LAST,
            norm=False,
            use_cls_token=False,
            default_lr=lr,
        )(torch.nn.Identity)
