"""The real configs compose: every group option, every experiment with its recipe values, eval.yaml."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import heads
from dense.backbones import BACKBONES
from tests import _tiny_run
from tests._tiny_run import CONFIGS

OUT = "paths.output_dir=/tmp/dense-test-unused"


def compose_config(name: str, *overrides: str):
    return _tiny_run.compose_config(name, OUT, *overrides)


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


def test_the_default_recipe_trains():
    """train.py without experiment=: a learning-rate warm-up over the first 5 % of the steps, the gradient
    norm clipped at 1, SigLoss without its variance-free warm-up (the depth head starts at the data's
    median depth instead), dead heads stopped after 100 steps, bf16 on a bf16 GPU, TF32 matmuls."""
    cfg = compose_config("train")
    assert (cfg.task.optimizer.lr, cfg.task.optimizer.weight_decay) == (None, 0.01)  # each head its own
    assert (cfg.task.scheduler.warmup_steps, cfg.trainer.gradient_clip_val) == ("5%", 1.0)
    assert cfg.task.depth_loss.warm_up is False and cfg.task.init_depth_from_data is True
    assert (cfg.task.dead_head_steps, cfg.task.best_ckpt_dtype) == (100, "fp32")
    assert (cfg.trainer.precision, cfg.float32_matmul_precision) == ("auto", "high")
    assert compose_config("train", "trainer=cpu").trainer.precision == "32-true"
    assert cfg.callbacks.model_checkpoint.save_weights_only is True  # best.ckpt: weights only
    assert "save_weights_only" not in cfg.callbacks.last_checkpoint  # last.ckpt: everything to resume
    assert compose_config("eval", "ckpt_path=x.ckpt").trainer.precision == "auto"


def test_every_backbone_and_head_option_composes():
    assert set(options("backbone")) == set(BACKBONES)
    # head=multi: several heads (configs/head/multi.yaml, tests/model/test_multi_head.py), each a head group's keys
    assert set(options("head")) == set(heads.list_heads(with_aliases=True)) | {"multi"}
    for name in options("backbone"):
        assert compose_config("train", f"backbone={name}").backbone.name == name
    multi = compose_config("train", "head=multi").head
    assert {n: e.name for n, e in multi.heads.items()} == {"depth": "depth_dpt", "seg": "seg_linear"}
    for name in set(options("head")) - {"multi"}:
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
    if heads.get_head_spec(head).task == "depth":  # SigLoss with its 100-step warm-up
        assert (cfg.task.depth_loss.warm_up, cfg.task.depth_loss.warm_iter) == (True, 100)
    if cfg.data.name == "nyu":
        assert (cfg.head.max_depth, cfg.data.batch_size) == (10.0, 2)
    if cfg.data.name == "kitti":
        assert cfg.head.max_depth == 80.0
    if decay == "poly":
        assert (cfg.task.scheduler.power, cfg.task.scheduler.warmup_ratio) == (1.0, 1e-6)
        assert cfg.data.batch_size == 16
    OmegaConf.resolve(cfg)


# What every experiment composed to before the shared recipes of configs/recipe/ (main at 233beac, made
# by tests/reference/make_experiment_reference.py from that commit's config files).
BEFORE_RECIPES = json.loads((Path(__file__).parents[1] / "reference" / "experiments.json").read_text())[
    "experiments"
]
# Defaults changed on purpose since then, in every data config alike (not by the recipes): (then, now).
CHANGED_SINCE = {
    "data.num_workers": (4, None),  # issue 22: null follows the machine (dense.data.default_num_workers)
    # issue 25: the progress bar lives in the tasks room now
    "callbacks.progress_bar._target_": (
        "dense.progress.TimedProgressBar",
        "dense.tasks.progress.TimedProgressBar",
    ),
}


def compose_with_choices(*overrides: str) -> tuple[dict, dict]:
    """The composed train.yaml (unresolved, as the reference was saved) and the option of each group."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train", overrides=list(overrides), return_hydra_config=True))
    return cfg, cfg.pop("hydra")["runtime"]["choices"]


def flat(tree: dict, prefix: str = "") -> dict:
    leaves = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            leaves.update(flat(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


@pytest.mark.parametrize("name", sorted(BEFORE_RECIPES))
def test_experiment_composes_as_before_the_shared_recipes(name):
    before = BEFORE_RECIPES[name]
    cfg, choices = compose_with_choices(f"experiment={name}")
    assert {group: choices.get(group) for group in before["choices"]} == before["choices"]
    now, then = flat(cfg), flat(before["config"])
    then.update({key: now_ for key, (was, now_) in CHANGED_SINCE.items() if then.get(key, now_) == was})
    # The precision is the trainer group's (hardware), not a recipe's: trainer=default has "auto" since
    # issue 21, which is the reference's 32-true wherever the reference was made (no GPU) and bf16-mixed
    # on a bf16 GPU (test_precision.py).
    if choices.get("trainer") == "default":
        assert (then["trainer.precision"], now["trainer.precision"]) == ("32-true", "auto")
        now["trainer.precision"] = then["trainer.precision"]
    # The depth loss of a segmentation experiment is never built: its defaults (train.yaml's) may change.
    if heads.get_head_spec(cfg["head"]["name"]).task == "segmentation":
        then = {key: value for key, value in then.items() if not key.startswith("task.depth_loss.")}
    assert {key: now.get(key, "<missing>") for key in then} == then
    # A key the reference lacks may only come from a group file or train.yaml (added there since), never
    # from the experiment: it equals the plain composition of the same group options.
    same_groups = [
        f"{group}={option}" for group, option in before["choices"].items() if group != "experiment"
    ]
    plain, added = flat(compose_with_choices(*same_groups)[0]), now.keys() - then.keys()
    assert {key: now[key] for key in added} == {key: plain.get(key) for key in added}


# DINOv3's own recipes, value by value from its configs (dinov3/eval/depth/configs/config-nyu.yaml,
# dinov3/eval/segmentation/configs/config-ade20k-linear-training.yaml, dinov3/hub/depthers.py):
# experiment → (head, data, layers-norm-cls, lr, betas, wd, warm-up, steps, clip, eval interval, head options)
# fmt: off
DINOV3_RECIPES = {
    "dinov3_nyu_linear": ("depth_linear", "nyu", (None, True, False), 3e-4, [0.9, 0.99], 1e-4, 12800, 38400, 35, 1600,
                          {"upsample": 1}),
    "dinov3_nyu_dpt": ("depth_dpt", "nyu", (None, True, False), 3e-4, [0.9, 0.99], 1e-4, 12800, 38400, 35, 1600,
                       {"channels": 512, "post_process_channels": [1024] * 4}),
    "dinov3_nyu_dpt_relative": ("depth_dpt", "nyu", (None, True, False), 3e-4, [0.9, 0.99], 1e-4, 12800, 38400, 35,
                                1600, {"channels": 512, "post_process_channels": [1024] * 4}),
    "dinov3_ade20k_linear": ("seg_linear", "ade20k", (None, None, None), 1e-3, [0.9, 0.999], 1e-3, 1500, 40000, None,
                             5000, {"dropout": 0.1}),
}
# fmt: on


@pytest.mark.parametrize("name", sorted(DINOV3_RECIPES))
def test_dinov3_experiments_follow_upstreams_configs(name):
    head, data, (layers, norm, use_cls), lr, betas, wd, warmup, steps, clip, interval, head_options = (
        DINOV3_RECIPES[name]
    )
    cfg = compose_config("train", f"experiment={name}")
    assert cfg.backbone.name == "vitl16"  # the ViT-L/16 of upstream's DPT config; backbone=... overrides it
    assert compose_config("train", f"experiment={name}", "backbone=vits16").backbone.name == "vits16"
    assert (cfg.head.name, cfg.data.name) == (head, data)
    assert (cfg.head.layers, cfg.head.norm, cfg.head.use_cls_token) == (layers, norm, use_cls)
    optimizer = cfg.task.optimizer
    assert optimizer._target_ == "torch.optim.AdamW"
    assert (optimizer.lr, list(optimizer.betas), optimizer.weight_decay) == (lr, betas, wd)
    assert (cfg.task.scheduler.warmup_steps, cfg.task.scheduler.decay) == (warmup, "cosine")
    trainer = cfg.trainer
    assert (trainer.max_steps, trainer.gradient_clip_val, trainer.val_check_interval) == (
        steps,
        clip,
        interval,
    )
    assert trainer.check_val_every_n_epoch is None
    assert OmegaConf.to_container(cfg.head.options) == head_options
    assert cfg.data.batch_size == 16  # bs 2 × n_gpus 8
    if (
        data == "nyu"
    ):  # SIGLOSS alone (with its warm-up), flip TTA, the whole-run cosine from lr/1000 to lr/25/1000
        assert (cfg.head.min_depth, cfg.head.max_depth, cfg.task.depth_loss.grad_weight) == (0.001, 10.0, 0.0)
        assert cfg.task.depth_loss.warm_up is True
        assert cfg.task.test_flip and cfg.task.test_mode == "whole"
        assert (cfg.task.scheduler.warmup_ratio, cfg.task.scheduler.min_lr_ratio) == (1e-3, 1 / 25 / 1000)
    else:  # cross-entropy alone, slide 512/341 at short side 512, no TTA
        assert (cfg.task.seg_loss.ce_weight, cfg.task.seg_loss.dice_weight) == (1.0, 0.0)
        assert (cfg.task.test_mode, cfg.task.test_crop_size, cfg.task.test_stride) == ("slide", 512, 341)
        assert not cfg.task.test_flip and list(cfg.task.test_scales) == [1.0]
        data = cfg.data
        assert (data.crop_size, list(data.ratio_range), data.eval_short_side) == (512, [0.5, 2.0], 512)
    OmegaConf.resolve(cfg)


@pytest.mark.parametrize("name", sorted(set(options("experiment"))))
def test_every_experiments_head_options_build_its_head(name):
    """The head options an experiment sets are ones the head takes (built on the meta device: no memory)."""
    cfg = compose_config("train", f"experiment={name}")
    for group in cfg.head.heads.values() if cfg.head.name == "multi" else [cfg.head]:
        head_options = OmegaConf.to_container(group.get("options") or OmegaConf.create({}))
        if heads.get_head_spec(group.name).task == "segmentation":
            head_options["num_classes"] = 150  # the dataset's, known once the data is read
        with torch.device("meta"):
            head = heads.build_head(
                group.name, 1024, use_cls_token=group.get("use_cls_token"), **head_options
            )
        assert sum(p.numel() for p in head.parameters()) > 0


# The seg_mask recipe (configs/recipe/pmt_mask.yaml) against PMT's files (tue-mps/pmt at 54d73c9):
# image/configs/ade20k/semantic/pmt_l.yaml (lr 2e-4, warmup_steps 6000, min_lr 1e-9, max_epochs 16, num_q
# 100, num_blocks 6, hidden_dim = width), training/mask_classification_semantic.py (weight_decay 0.05, the
# loss: 12544 points, oversample 3, importance 0.75, class 2, mask 5, dice 5, no object 0.1),
# datasets/ade20k_semantic.py (batch_size 16, img_size 512), main.py (gradient_clip_val 0.01, norm).
MASK_RECIPES = {"ade20k_mask": "ade20k", "voc_mask": "voc"}


@pytest.mark.parametrize("name", sorted(MASK_RECIPES))
def test_mask_experiments_follow_pmts_config(name):
    cfg = compose_config("train", f"experiment={name}")
    assert cfg.backbone.name == "vitl16"  # PMT-L's; backbone=... overrides it
    assert compose_config("train", f"experiment={name}", "backbone=vitb14").backbone.name == "vitb14"
    assert (cfg.head.name, cfg.data.name) == ("seg_mask", MASK_RECIPES[name])
    options = OmegaConf.to_container(cfg.head.options)
    assert (options["num_queries"], options["num_blocks"], options["mlp_ratio"]) == (100, 6, 1.0)
    optimizer, scheduler = cfg.task.optimizer, cfg.task.scheduler
    assert optimizer._target_ == "torch.optim.AdamW" and list(optimizer.betas) == [0.9, 0.999]
    assert (optimizer.lr, optimizer.weight_decay) == (2e-4, 0.05)
    assert (scheduler.warmup_steps, scheduler.decay, scheduler.decay_after_warmup) == (6000, "cosine", True)
    assert scheduler.min_lr_ratio * optimizer.lr == pytest.approx(1e-9)
    loss = OmegaConf.to_container(cfg.task.mask_loss)
    assert loss == {
        "class_weight": 2.0, "no_object_weight": 0.1, "mask_weight": 5.0, "dice_weight": 5.0,
        "num_points": 12544, "oversample_ratio": 3.0, "importance_sample_ratio": 0.75,
    }  # fmt: skip
    trainer = cfg.trainer
    assert (trainer.max_epochs, trainer.max_steps) == (16, -1)
    assert (trainer.gradient_clip_val, trainer.gradient_clip_algorithm) == (0.01, "norm")
    assert (cfg.data.batch_size, cfg.data.crop_size) == (16, 512)
    assert (cfg.task.test_mode, cfg.task.test_crop_size, cfg.task.test_stride) == ("slide", 512, 512)
    OmegaConf.resolve(cfg)


def test_every_experiment_is_tested():
    own_folder = {"folder_depth", "folder_seg"}  # tests/cli/test_own_folder.py runs them
    multi = {"multi_smoke"}  # tests/model/test_multi_head.py
    assert set(options("experiment")) == (
        set(RECIPES) | set(DINOV3_RECIPES) | set(MASK_RECIPES) | {"smoke"} | own_folder | multi
    )


@pytest.mark.parametrize(
    ("preset", "task", "head"),
    [("folder_depth", "depth", "depth_linear4"), ("folder_seg", "segmentation", "seg_linear")],
)
def test_own_folder_presets_are_a_random_vits_on_the_folder_dataset(preset, task, head):
    cfg = compose_config("train", f"experiment={preset}", "data.root=mydata")
    assert (cfg.backbone.name, cfg.backbone.pretrained) == ("vits14", False)  # nothing to download
    assert (cfg.data.name, cfg.data.task, cfg.head.name) == ("folder", task, head)
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_steps == 24 and cfg.test


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
