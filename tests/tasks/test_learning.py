"""Every head learns from train.py's defaults, and a head that stops learning is caught (issue #21).

- A freshly built depth head starts with every pixel alive (above min_depth, where the DPT head's
  output ReLU passes a gradient) near one typical depth, for every registered depth head, every tiny
  backbone family and several seeds; train.py moves that depth to the first batch's median.
- A few dozen steps of train.py's defaults (only sizes, steps and the tiny backbone chosen) learn, for
  every registered head on both backbone families, each case with its own seed.
- A dead head (depth at min_depth, one class everywhere) stops the run with one line and exit status 3,
  read from device-side counters at the periodic checks (tests/tasks/test_no_sync.py shows the counting makes
  no sync).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

import dense
import heads
from dense.cli import runner
from dense.core.errors import ConfigError, DeadHeadError, TrainingFailedError
from dense.data import DenseDataModule, datamodule_from_config
from dense.tasks import build_task
from dense.tasks.metrics import DepthMetrics, SegMetrics
from tests._tiny_run import QUIET_TINY_RUN, train_in_process

# The frozen backbone is in eval mode on purpose (train.py silences Lightning's note; these tests build
# their Trainer themselves).
pytestmark = pytest.mark.filterwarnings(r"ignore:Found \d+ module\(s\) in eval mode")

DEPTH_HEADS = [name for name in heads.list_heads() if heads.get_head_spec(name).task == "depth"]
TINY_FAMILIES = [name for name in dense.list_backbones() if name.startswith("tiny")]


def synthetic_images(size: int, count: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` synthetic training scenes of size×size: normalised images and their depth."""
    data = datamodule_from_config(
        {
            "name": "synthetic",
            "image_size": [size, size],
            "num_train": count,
            "num_workers": 0,
            "augment": False,
        }
    )
    samples = [data.dataset("train")[i] for i in range(count)]
    return torch.stack([s["image"] for s in samples]), torch.stack([s["depth"] for s in samples])


# ---- 1. a fresh depth head starts alive, near one typical depth ---------------------------------------


@pytest.mark.parametrize("head", DEPTH_HEADS)
def test_a_fresh_depth_head_starts_alive_near_a_typical_depth(head):
    """On main the DPT head starts with 0–100 % of its pixels above min_depth, depending on the seed
    (tiny14 seeds 1 and 3, tiny16 seeds 5–7: none); every pixel must be alive, whatever the family and
    seed. (The DPT with 64 fusion channels, 13× cheaper to build than 256: the output layer that decides
    this is the same 1×1 conv from 32 channels.)"""
    images, _ = synthetic_images(28)
    options = {"channels": 64} if head == "depth_dpt" else {}
    for family in TINY_FAMILIES:
        for seed in range(4):
            torch.manual_seed(seed)
            model = dense.build_model(family, head, max_depth=10.0, **options).train()
            with torch.no_grad():
                depth = model(images)
            alive = float((depth > model.min_depth * 1.001).float().mean())
            assert alive == 1.0, (family, seed, alive)
            # Near a quarter of max_depth (2.5 m); the linear heads' features move it a little.
            assert 2.0 < float(depth.median()) < 3.2, (family, seed, float(depth.median()))


@pytest.mark.parametrize("head", DEPTH_HEADS)
def test_init_output_moves_the_prediction_to_the_given_depth(head):
    """The DPT head predicts exactly that depth everywhere; a linear head's features add their own
    (random) logits, which pull its prediction towards the middle of the range by up to a quarter."""
    images, _ = synthetic_images(28, count=2)
    torch.manual_seed(0)
    model = dense.build_model(
        "tiny16", head, max_depth=10.0, **({"channels": 64} if head == "depth_dpt" else {})
    )
    medians = []
    for depth in (1.5, 4.0, 7.0):
        model.head.init_output(depth)
        with torch.no_grad():
            prediction = model.train()(images)
        assert bool((prediction > model.min_depth * 1.001).all())
        medians.append(float(prediction.median()))
        tolerance = 1e-5 if head == "depth_dpt" else 0.3
        assert medians[-1] == pytest.approx(depth, rel=tolerance), depth
    assert medians == sorted(medians)


def test_a_dpt_head_driven_below_min_depth_comes_back():
    """A DPT head whose output fell below zero everywhere (min_depth at every pixel, as the random ViT-S/14
    of issue #21 after one full-lr step) still gets a gradient in training, and a few steps bring it back
    above min_depth; its training output is the same relu(x) + min_depth value as in eval mode. On main
    the ReLU blocked every gradient: the head stayed at min_depth."""
    torch.manual_seed(0)
    model = dense.build_model("tiny14", "depth_dpt", channels=32)
    images, depth = synthetic_images(28, count=2)
    with torch.no_grad():
        model.head.conv_depth.head[-1].bias.fill_(-1.0)  # every pixel dead
    model.eval()
    with torch.no_grad():
        dead = model.head(model.image_features(images)[0])
    assert (dead == model.min_depth).all()
    model.train()
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=0.2)
    for step in range(8):
        prediction = model.head(model.image_features(images)[0])
        if step == 0:
            assert torch.equal(prediction, dead)  # the value is relu's, bit for bit
        loss = (prediction.log() - depth.mean().log()).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        assert model.head.conv_depth.head[-1].bias.grad.abs() > 0
        optimizer.step()
    model.eval()
    with torch.no_grad():
        revived = model.head(model.image_features(images)[0])
    assert (revived > model.min_depth).float().mean() > 0.9


def test_released_heads_keep_their_own_output():
    """Initialisation is for fresh heads: loading weights (a released file or a checkpoint) replaces
    the output layer entirely (the forward pass is upstream's; test_model.py compares it with saved
    upstream outputs)."""
    torch.manual_seed(0)
    source = dense.build_model("tiny14", "depth_dpt")
    with torch.no_grad():
        for parameter in source.head.parameters():
            parameter.normal_()
    fresh = dense.build_model("tiny14", "depth_dpt")
    heads.load_released_head(fresh.head, {"state_dict": source.head.state_dict()}, prefix="")
    for (name, a), b in zip(source.head.state_dict().items(), fresh.head.state_dict().values()):
        assert torch.equal(a, b), name


def first_batch_start(run_dir, *overrides):
    """A fresh train.py run of one step at learning rate 0 on 4 scenes (one batch: the first): what its
    head predicts on them afterwards, and their median valid depth."""
    task, _ = train_in_process(
        run_dir, *QUIET_TINY_RUN, "data.image_size=[28,28]", "data.num_train=4", "data.num_val=4",
        "data.batch_size=4", "data.augment=false", "trainer.max_steps=1", "task.optimizer.lr=0",
        *overrides,
    )  # fmt: skip
    scenes = [task.trainer.datamodule.dataset("train")[i] for i in range(4)]
    depth = torch.stack([s["depth"] for s in scenes])
    with torch.no_grad():
        prediction = task.model.eval()(torch.stack([s["image"] for s in scenes]))
    return prediction, float(depth[depth > 0].median())


def test_train_py_starts_the_head_at_the_first_batchs_median_depth(tmp_path):
    prediction, median = first_batch_start(tmp_path / "fresh", "head=depth_dpt")
    torch.testing.assert_close(prediction, torch.full_like(prediction, median), rtol=1e-5, atol=1e-5)


def test_a_head_loaded_with_head_weights_keeps_its_output(tmp_path):
    torch.manual_seed(0)
    model = dense.build_model("tiny14", "depth_dpt")
    model.head.init_output(6.0)  # far from the data's median (about 3.5 m)
    weights = tmp_path / "head.pth"
    torch.save({f"decode_head.{k}": v for k, v in model.head.state_dict().items()}, weights)
    prediction, median = first_batch_start(tmp_path / "loaded", "head=depth_dpt", f"head.weights={weights}")
    torch.testing.assert_close(prediction, torch.full_like(prediction, 6.0), rtol=1e-5, atol=1e-5)
    assert abs(median - 6.0) > 1


# ---- 2. every head learns from train.py's defaults -------------------------------------------------------

# head × family, each case its own seed (seeds 1 and 5: the DPT seeds that start dead on main).
LEARNING_CASES = [
    ("depth_dpt", "tiny14", 1),
    ("depth_dpt", "tiny16", 5),
    ("depth_linear", "tiny14", 2),
    ("depth_linear", "tiny16", 3),
    ("depth_linear4", "tiny14", 4),
    ("depth_linear4", "tiny16", 6),
    ("seg_linear", "tiny14", 7),
    ("seg_linear", "tiny16", 8),
    ("seg_ms", "tiny14", 9),
    ("seg_ms", "tiny16", 10),
    ("seg_mask", "tiny14", 11),
    ("seg_mask", "tiny16", 12),
]
# Sizes only: 84×84 scenes, 48 steps of 4 images (one epoch, one validation), 8 test scenes; the DPT
# with 32 fusion channels instead of 256 (25× less compute; its structure and initialisation unchanged).
LEARNING_SIZES = [
    *QUIET_TINY_RUN,
    "test=true",
    "data.image_size=[84,84]",
    "data.batch_size=4",
    "data.num_train=192",
    "data.num_val=4",
    "data.num_test=8",
    "trainer.max_steps=48",
    "task.mask_loss.num_points=784",  # a mask-classification head's loss on 784 sampled points per mask
]


def test_the_learning_cases_cover_every_head_and_both_families():
    assert {head for head, _, _ in LEARNING_CASES} == set(heads.list_heads())
    for head in heads.list_heads():
        assert {family for h, family, _ in LEARNING_CASES if h == head} == {"tiny14", "tiny16"}
    assert len({seed for _, _, seed in LEARNING_CASES}) == len(LEARNING_CASES)


def constant_depth_metrics(datamodule, depth: float) -> dict:
    """The test metrics of a head that predicts `depth` everywhere (a dead head: min_depth)."""
    metrics = DepthMetrics(datamodule.min_depth, datamodule.max_depth, datamodule.eval_crop)
    for sample in datamodule.dataset("test"):
        gt = sample["depth"][None]
        metrics.update(torch.full_like(gt, depth), gt)
    return {k: float(v) for k, v in metrics.compute().items()}


def majority_class_miou(datamodule) -> float:
    """mIoU of predicting the test split's most frequent class at every pixel."""
    labels = [sample["mask"] for sample in datamodule.dataset("test")]
    valid = torch.cat([m.flatten() for m in labels])
    majority = int(torch.bincount(valid[valid != datamodule.ignore_index]).argmax())
    metrics = SegMetrics(datamodule.num_classes, datamodule.ignore_index)
    for mask in labels:
        scores = torch.zeros(1, datamodule.num_classes, *mask.shape)
        scores[:, majority] = 1
        metrics.update(scores, mask[None])
    return float(metrics.compute()["mIoU"])


@pytest.mark.parametrize("head,family,seed", LEARNING_CASES)
def test_every_head_learns_from_the_defaults(tmp_path, caplog, head, family, seed):
    # The head's registered test sizes (HeadSpec.test_options): the DPT with 32 fusion channels, seg_mask
    # with 16 queries and 2 decoder blocks instead of 100 and 6.
    options = [f"++head.options.{k}={v}" for k, v in heads.get_head_spec(head).test_options.items()]
    task_name = heads.get_head_spec(head).task
    caplog.set_level("INFO")
    task, metrics = train_in_process(
        tmp_path, *LEARNING_SIZES, f"head={head}", f"backbone={family}", f"seed={seed}",
        f"data.task={task_name}", *options,
    )  # fmt: skip
    # The run's first lines say where it runs and in which precision (here: the CPU, trainer=cpu).
    assert "device: CPU (cpu), precision: 32-true" in caplog.text
    datamodule = task.trainer.datamodule
    if task_name == "depth":
        dead = constant_depth_metrics(datamodule, datamodule.min_depth)
        assert (dead["a1"], round(dead["abs_rel"], 3)) == (0.0, 1.0)
        assert metrics["test/a1"] >= 0.2 and metrics["test/abs_rel"] <= 0.6, metrics
        # Better than where the head started (one depth everywhere: the training data's median).
        train_depth = torch.cat([s["depth"].flatten() for s in datamodule.dataset("train")])
        start = constant_depth_metrics(datamodule, float(train_depth[train_depth > 0].median()))
        assert metrics["test/a1"] > start["a1"] + 0.02, (metrics, start)
    else:
        assert metrics["test/mIoU"] > majority_class_miou(datamodule) + 0.05, metrics


# ---- 3. a dead head stops the run: one line, exit status 3 ----------------------------------------------

SMALL_DATA = {
    "image_size": [28, 28],
    "num_train": 8,
    "num_val": 4,
    "num_test": 4,
    "batch_size": 4,
    "num_workers": 0,
}


def small_trainer(tmp_path, **options) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
        **options,
    )  # fmt: skip


def dead_task(kind: str, **task_options):
    """A tiny task whose head answers as a dead one: the DPT's output bias far below zero (every pixel
    at min_depth), or the segmentation head's bias favouring class 2 everywhere."""
    torch.manual_seed(0)
    if kind == "depth":
        model = dense.build_model("tiny14", "depth_dpt", channels=32)
        with torch.no_grad():
            model.head.conv_depth.head[-1].bias.fill_(-1e4)
        data = DenseDataModule(name="synthetic", **SMALL_DATA)
    else:
        model = dense.build_model("tiny14", "seg_linear", num_classes=7)
        with torch.no_grad():
            model.head.conv_seg.bias[2] = 1e4
        data = DenseDataModule(name="synthetic", task="segmentation", **SMALL_DATA)
    return build_task(model, data, optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0},
                      **task_options), data  # fmt: skip


@pytest.mark.parametrize("kind", ["depth", "segmentation"])
def test_a_dead_head_stops_the_run_at_the_next_check(tmp_path, kind):
    task, data = dead_task(kind, dead_head_steps=3)
    trainer = small_trainer(tmp_path, max_steps=20, log_every_n_steps=2)
    with pytest.raises(DeadHeadError) as info:
        trainer.fit(task, datamodule=data)
    # Dead from step 1; checks every 2 steps: step 2 (2 in a row), step 4 (4 >= 3).
    assert trainer.global_step == 4
    message = str(info.value)
    assert "\n" not in message and "for the last 4 training steps (up to step 4)" in message
    assert "task.optimizer.lr" in message and "warmup_steps" in message and "dead_head_steps=0" in message
    if kind == "depth":
        assert "min_depth (0.001)" in message and "init_depth_from_data" in message
    else:
        assert "one class, 2 (ceiling)" in message, message


def test_the_check_can_be_turned_off_and_spares_a_live_head(tmp_path):
    task, data = dead_task("depth", dead_head_steps=0)
    small_trainer(tmp_path, max_steps=6, log_every_n_steps=1).fit(task, datamodule=data)
    torch.manual_seed(0)
    for name, options in (("depth_dpt", {"channels": 32}), ("seg_linear", {"num_classes": 7})):
        model = dense.build_model("tiny14", name, **options)
        data = DenseDataModule(name="synthetic", task=model.task, **SMALL_DATA)
        task = build_task(model, data, dead_head_steps=1)
        small_trainer(tmp_path, max_steps=4, log_every_n_steps=1).fit(task, datamodule=data)
        assert task.trainer.global_step == 4  # fresh heads: alive, several classes


def test_a_failed_run_exits_with_status_3_and_one_line(tmp_path, capsys):
    """train.py runs train() through runner.run: a DeadHeadError, like a TrainingDivergedError, is one line on
    stderr and exit status 3 (a configuration mistake is 2)."""
    task, data = dead_task("depth", dead_head_steps=2)
    trainer = small_trainer(tmp_path, max_steps=8, log_every_n_steps=2)
    with pytest.raises(SystemExit) as stop:
        runner.run(lambda cfg: trainer.fit(task, datamodule=data), None)
    assert stop.value.code == runner.EXIT_TRAINING_FAILED == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the depth head is dead: for the last 2 training steps") and "\n" not in err
    assert issubclass(DeadHeadError, TrainingFailedError)


def test_dead_head_steps_is_checked_before_the_run():
    from dense.tasks.base import check_dead_head_steps

    assert check_dead_head_steps(None) == 0 and check_dead_head_steps(100) == 100
    for bad in (-1, 2.5, True, "10"):
        with pytest.raises(ConfigError, match="task.dead_head_steps"):
            check_dead_head_steps(bad)
