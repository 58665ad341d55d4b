"""The real configs compose: every group option, every experiment with its recipe values, eval.yaml."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import heads
from dense.backbone import BACKBONES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
OUT = "paths.output_dir=/tmp/dense-test-unused"


def compose_config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(name, overrides=[OUT, *overrides])


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_defaults_are_the_documented_ones():
    cfg = compose_config("train")
    assert (cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.weights) == ("vits14", True, None)
    assert cfg.head.name == "depth_dpt" and cfg.data.name == "synthetic"
    assert cfg.trainer.accelerator == "auto" and list(cfg.logger) == ["csv"]
    assert (
        cfg.callbacks.model_checkpoint.filename == "best" and cfg.callbacks.last_checkpoint.filename == "last"
    )
    assert cfg.data.seed == cfg.seed == 0
    OmegaConf.resolve(cfg)  # every interpolation resolves


def test_every_backbone_and_head_option_composes():
    assert set(options("backbone")) == set(BACKBONES)
    assert set(options("head")) == set(heads.list_heads(with_aliases=True))
    for name in options("backbone"):
        assert compose_config("train", f"backbone={name}").backbone.name == name
    for name in options("head"):
        cfg = compose_config("train", f"head={name}")
        # aliases resolve: depth → depth_dpt, seg → seg_ms
        assert cfg.head.name == heads.get_head_spec(name).name
        assert {"name", "weights", "layers", "norm", "use_cls_token", "options"} <= set(cfg.head)


def test_trainer_logger_and_data_options():
    assert compose_config("train", "trainer=a100").trainer.precision == "bf16-mixed"
    ddp = compose_config("train", "trainer=ddp").trainer
    assert (ddp.strategy, ddp.sync_batchnorm) == ("ddp", True)
    assert compose_config("train", "trainer=cpu").trainer.deterministic is True
    for name in options("logger"):
        assert list(compose_config("train", f"logger={name}").logger) == [name]
    for name in ("nyu", "kitti", "ade20k", "voc", "folder"):
        cfg = compose_config("train", f"data={name}", "paths.data_dir=/datasets")
        assert cfg.data.root == f"/datasets/{name}"


# experiment → (head, data, lr, weight decay, warm-up, decay, max_steps, clip, test-time settings)
# fmt: off
RECIPES = {
    "nyu_linear": ("depth_linear", "nyu", 1e-4, 0.01, 12800, "cosine", 38400, 35, {"test_flip": True}),
    "nyu_linear4": ("depth_linear4", "nyu", 1e-4, 0.01, 12800, "cosine", 38400, 35, {"test_flip": True}),
    "nyu_dpt": ("depth_dpt", "nyu", 1e-4, 0.01, 12800, "cosine", 38400, 35, {"test_flip": True}),
    "kitti_dpt": ("depth_dpt", "kitti", 1e-4, 0.01, 12800, "cosine", 38400, 35, {"test_flip": True}),
    "ade20k_linear": (
        "seg_linear", "ade20k", 1e-3, 1e-4, 1500, "poly", 40000, None,
        {"test_mode": "slide", "test_crop_size": 512, "test_stride": 341, "test_scales": [1.0]},
    ),
    "ade20k_ms": (
        "seg_ms", "ade20k", 1e-3, 1e-4, 1500, "poly", 40000, None,
        {"test_mode": "slide", "test_scales": [1.0, 1.32, 1.73, 2.28, 3.0], "test_flip": True},
    ),
    "voc_linear": ("seg_linear", "voc", 1e-3, 1e-4, 1500, "poly", 40000, None, {"test_mode": "slide"}),
    "voc_ms": (
        "seg_ms", "voc", 1e-3, 1e-4, 1500, "poly", 40000, None,
        {"test_scales": [1.0, 1.32, 1.73, 2.28, 3.0], "test_flip": True},
    ),
}
# fmt: on


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_experiment_recipes(name):
    head, data, lr, wd, warmup, decay, steps, clip, test = RECIPES[name]
    cfg = compose_config("train", f"experiment={name}", "backbone=vitl14")
    assert cfg.backbone.name == "vitl14"  # experiments leave the backbone to the user
    assert (cfg.head.name, cfg.data.name) == (head, data)
    assert (cfg.task.optimizer.lr, cfg.task.optimizer.weight_decay) == (lr, wd)
    assert cfg.task.optimizer._target_ == "torch.optim.AdamW" and cfg.task.optimizer._partial_
    assert (cfg.task.scheduler.warmup_steps, cfg.task.scheduler.decay) == (warmup, decay)
    assert (cfg.trainer.max_steps, cfg.trainer.gradient_clip_val) == (steps, clip)
    assert cfg.trainer.check_val_every_n_epoch is None and cfg.trainer.val_check_interval > 0
    for key, value in test.items():
        assert OmegaConf.to_container(cfg.task)[key] == value, key
    if cfg.data.name == "nyu":
        assert (cfg.head.max_depth, cfg.data.batch_size) == (10.0, 2)
    if cfg.data.name == "kitti":
        assert cfg.head.max_depth == 80.0
    if decay == "poly":
        assert (cfg.task.scheduler.power, cfg.task.scheduler.warmup_ratio) == (1.0, 1e-6)
        assert cfg.data.batch_size == 16
    OmegaConf.resolve(cfg)


def test_every_experiment_is_tested():
    assert set(options("experiment")) == set(RECIPES) | {"smoke"}


def test_smoke_is_a_random_vits_on_small_synthetic_data():
    cfg = compose_config("train", "experiment=smoke")
    assert (cfg.backbone.name, cfg.backbone.pretrained) == ("vits14", False)
    assert cfg.data.name == "synthetic" and cfg.trainer.accelerator == "cpu" and cfg.test


def test_eval_config():
    cfg = compose_config("eval", "ckpt_path=x.ckpt")
    assert cfg.split == "test" and "_target_" not in cfg.data  # data: the checkpoint's unless chosen
    cfg = compose_config("eval", "ckpt_path=x.ckpt", "data=nyu", "data.root=/nyu")
    assert cfg.data._target_ == "dense.data.DenseDataModule" and cfg.data.root == "/nyu"
    assert cfg.data.batch_size == 8
