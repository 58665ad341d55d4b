"""What train.py runs: set a run up from its config (checks, data, model, callbacks, Trainer), fit, test."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from dense.cli import runner
from dense.cli.imports import import_modules


def main(cfg: DictConfig) -> float | None:
    """train.py's Hydra main: train() with one-line errors and exit codes (runner.run)."""
    _, metrics = runner.run(train, cfg)
    return metrics.get("best")  # what a Hydra sweeper optimises


def train(cfg: DictConfig):
    """Set up from `cfg`, fit, test. Returns the LightningModule (its `model` is the trained DenseModel)
    and the final logged metrics, with "best": the best value of the main metric."""
    import warnings

    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

    import heads
    from dense.cache import use_feature_cache
    from dense.config import (
        apply_matmul_precision,
        apply_speed_options,
        describe_device,
        is_multi,
        multi_head_entries,
        resolve_precision,
    )
    from dense.core.threads import use_cpu_threads
    from dense.data import datamodule_from_config
    from dense.tasks import RunCheckpointIO, build_task, check_depth_mode, task_class
    from dense.tasks.multi import build_multi_task, multi_run_checks

    # The frozen backbone is in eval mode on purpose (DenseModel.train keeps it so).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    with runner.setup_errors():
        import_modules(cfg.get("imports"))  # the user's own registered heads, backbones, datasets
        runner.absolute_paths(cfg, USER_PATHS)
        validate(cfg)
        if cfg.ckpt_path is None:  # a resume first compares it with the checkpoint's (build_run_model)
            check_optimizer(runner.plain(cfg.task.optimizer))
        refuse_a_second_run(cfg.paths.output_dir, cfg.ckpt_path)
        L.seed_everything(cfg.seed, workers=True)
        datamodule = datamodule_from_config(cfg.data)
        depth_mode = cfg.task.get("depth_mode", "metric")
        if is_multi(cfg.head):  # head=multi: several heads, one backbone pass (dense/tasks/multi.py)
            spec, task_cls = None, multi_run_checks(cfg, datamodule, depth_mode)
        else:
            spec = heads.get_head_spec(cfg.head.name)
            check_head_fits_data(spec, cfg, datamodule)
            check_depth_mode(depth_mode, spec.task, datamodule.depth_target)
            task_cls = task_class(spec.task, depth_mode)
        show_bar = cfg.trainer.get("enable_progress_bar", True)
        callbacks = make_callbacks(cfg.get("callbacks"), task_cls, progress_bar=show_bar)
        # The run deletes and loads checkpoints only in its own checkpoint folders (RunCheckpointIO).
        folders = {str(Path(cfg.paths.output_dir) / "checkpoints")}
        folders |= {c.dirpath for c in callbacks if isinstance(c, ModelCheckpoint) and c.dirpath}
        checkpoint_io = RunCheckpointIO(*sorted(folders))
        loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
        accelerator = cfg.trainer.get("accelerator")
        matmul_precision = apply_matmul_precision(cfg.get("float32_matmul_precision"), accelerator)
        trainer = instantiate(
            cfg.trainer,
            precision=resolve_precision(cfg.trainer.get("precision"), accelerator),
            # The bar is on only when asked for on both sides: trainer.enable_progress_bar and callbacks.progress_bar.
            enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
            callbacks=callbacks,
            logger=loggers or False,
            plugins=[checkpoint_io],
        )
        check_trainer(cfg, trainer)
        logging.getLogger(__name__).info(describe_device(trainer, matmul_precision))
        if isinstance(trainer.accelerator, CPUAccelerator):
            logging.getLogger(__name__).info(use_cpu_threads(cfg.get("threads")))
        check_data_and_weights(cfg, datamodule)
        model = build_run_model(cfg, datamodule, spec, depth_mode)
        if cfg.ckpt_path is not None:
            check_optimizer(runner.plain(cfg.task.optimizer))
        if cfg.cache.features:
            use_feature_cache(
                datamodule,
                model,
                cfg.cache.dir,
                batch_size=cfg.cache.batch_size,
                precision=cfg.cache.precision,
            )
        logging.getLogger(__name__).info(datamodule.describe_sizes())
        # After the cache fill (which runs the backbone in cache.precision, outside the trainer).
        apply_speed_options(model, compile=cfg.compile, bf16_autocast=trainer.precision == "bf16-mixed")
        task_options = runner.plain(cfg.task)
        if cfg.head.get("weights"):  # a loaded head keeps its own output
            task_options["init_depth_from_data"] = False
        if spec is None:
            weights = {n: e.get("loss_weight", 1.0) for n, e in multi_head_entries(cfg.head).items()}
            task = build_multi_task(
                model, datamodule, loss_weights=weights, **task_options, config=runner.plain(cfg)
            )
        else:
            task = build_task(model, datamodule, **task_options, config=runner.plain(cfg))

    with warnings.catch_warnings():
        quiet_fresh_checkpoint_folders(callbacks)
        # Before the first validation the main metric does not exist yet; a run that stops there is reported below.
        warnings.filterwarnings(
            "ignore", message=r"`ModelCheckpoint\(monitor=.*could not find the monitored key"
        )
        trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # The checkpoint callback that follows the main metric (the other one writes last.ckpt).
    best = next((c for c in trainer.checkpoint_callbacks if c.monitor == task_cls.main_metric), None)
    if best is not None and best.best_model_score is not None:
        metrics["best"] = float(best.best_model_score)
    if best is not None and not best.best_model_path and trainer.global_step > 0:
        logging.getLogger(__name__).warning(
            f"training stopped at step {trainer.global_step}, before its first validation, so there is no "
            f"best.ckpt{' and the test uses the final weights' if cfg.test else ''}; to validate sooner set "
            "trainer.val_check_interval=N (steps)"
        )
    if cfg.test:
        best_path = best.best_model_path if best is not None and best.best_model_path else None
        if best_path is not None and not checkpoint_io.owns(best_path):
            best_path = None  # only the run's own files (RunCheckpointIO dropped any other on resume)
        trainer.test(task, datamodule=datamodule, ckpt_path=best_path, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    return task, metrics


# ---- set-up steps -----------------------------------------------------------------------------------


# Paths the user types, read from where the command was typed even with hydra.job.chdir=true.
USER_PATHS = ("ckpt_path", "backbone.weights", "head.weights", "data.root", "cache.dir")


def validate(cfg: DictConfig) -> None:
    """train.py's semantic checks, before anything is built: what the schemas (dense/core/schema.py:
    keys and types, checked by Hydra while composing) cannot say (files that exist, ranges, a schedule
    that fits). The data keys are checked where the datamodule is built (datamodule_from_config)."""
    from dense.config import compile_mode
    from dense.core.threads import check_threads
    from dense.tasks.base import check_dead_head_steps, check_schedule, check_test_settings

    require = runner.require
    if cfg.ckpt_path is not None:
        require(Path(cfg.ckpt_path).is_file(), f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
    check_schedule(**runner.plain(cfg.task.scheduler))
    check_dead_head_steps(cfg.task.get("dead_head_steps"))
    compile_mode(cfg.compile)
    check_threads(cfg.get("threads"))
    test_keys = ("test_mode", "test_crop_size", "test_stride", "test_scales", "test_flip")
    check_test_settings(**{k: runner.plain(cfg.task.get(k)) for k in test_keys if k in cfg.task})
    for key in ("backbone.weights", "head.weights"):
        group, name = key.split(".")
        path = cfg[group].get(name)
        require(path is None or Path(path).is_file(), f"{key}={path}: no such file")


def refuse_a_second_run(folder, ckpt_path) -> None:
    """A fresh run (no ckpt_path) into a folder that holds a run's checkpoints would replace its
    last.ckpt (and Hydra its .hydra/): refused in one line, saying how to resume it instead."""
    checkpoints = Path(folder) / "checkpoints"
    found = sorted(checkpoints.glob("*.ckpt")) if ckpt_path is None and checkpoints.is_dir() else []
    if found:
        last = checkpoints / "last.ckpt" if (checkpoints / "last.ckpt") in found else found[0]
        raise runner.ConfigError(
            f"{folder} already holds a run (its checkpoints {', '.join(p.name for p in found[:3])}): a new run "
            f"there would replace them; resume it with ckpt_path={last} hydra.run.dir={folder}, or choose "
            "another folder"
        )


def refuse_a_second_run_before_hydra(arguments: list[str]) -> None:
    """refuse_a_second_run for `hydra.run.dir=DIR` on the command line, before Hydra writes anything into
    DIR (.hydra/, train.log)."""
    if any(a in ("-m", "--multirun", "-h", "--help") for a in arguments):
        return
    values = dict(a.lstrip("+").split("=", 1) for a in arguments if "=" in a)
    ckpt_path = values.get("ckpt_path")
    if values.get("hydra.run.dir") and ckpt_path in (None, "", "null"):
        try:
            refuse_a_second_run(values["hydra.run.dir"], None)
        except runner.ConfigError as error:
            runner.fail(str(error))


def check_data_and_weights(cfg: DictConfig, datamodule) -> None:
    """What the expensive steps need, checked cheaply before the model is built or anything downloaded:
    the file lists of the splits the run reads (a wrong data.root fails here, not after a 4 GB download;
    DenseDataModule caches them, so this costs nothing later) and the official backbone weights (in the
    torch hub cache, or reachable: a large backbone is slow to build before a download can fail)."""
    from dense.backbones import check_official_weights, get_spec

    splits = ["val", *(["test"] if cfg.test else [])]
    if not cfg.cache.features:  # the cached train split is built with its cache (use_feature_cache)
        splits.insert(0, "train")
    for split in splits:
        datamodule.dataset(split)
    backbone = cfg.backbone
    if cfg.ckpt_path is None and backbone.get("pretrained") and not backbone.get("weights"):
        check_official_weights(get_spec(backbone.name))


def quiet_fresh_checkpoint_folders(callbacks: list) -> None:
    """Lightning warns about a checkpoint folder that is not empty (older checkpoints may mix with the new
    ones). In a fresh run the only file there is the run's own backbone_init-*.pth: no warning then."""
    import warnings

    from lightning.pytorch.callbacks import ModelCheckpoint

    folders = [Path(c.dirpath) for c in callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    if all(
        path.name.startswith("backbone_init-")
        for folder in folders
        if folder.is_dir()
        for path in folder.iterdir()
    ):
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def check_trainer(cfg: DictConfig, trainer) -> None:
    """What Lightning itself only finds once training starts."""
    from lightning.pytorch.accelerators import CPUAccelerator

    if cfg.trainer.get("sync_batchnorm") and isinstance(trainer.accelerator, CPUAccelerator):
        raise runner.ConfigError(
            "trainer.sync_batchnorm=true needs GPUs (SyncBatchNorm is CUDA-only): "
            "add trainer.sync_batchnorm=false to train on the CPU"
        )


def check_head_fits_data(spec, cfg: DictConfig, datamodule) -> None:
    """A depth head needs depth data, a segmentation head labels for as many classes as it predicts."""
    if spec.task != datamodule.task:
        hint = (
            f" (this dataset provides both: add data.task={spec.task})"
            if cfg.data.get("task") is not None
            else ""
        )
        raise runner.ConfigError(
            f"head={cfg.head.name} is a {spec.task} head but data={cfg.data.name} is set up for "
            f"{datamodule.task}{hint}"
        )
    classes = cfg.head.get("num_classes")
    if spec.task == "segmentation" and classes is not None and classes != datamodule.num_classes:
        raise runner.ConfigError(
            f"head.num_classes={classes} but data={cfg.data.name} has {datamodule.num_classes} classes"
        )


def make_callbacks(config: DictConfig | None, task_class, progress_bar: bool = True) -> list:
    """The callbacks group; a `monitor`/`mode` left null means the task's main metric. Without
    `progress_bar` (trainer.enable_progress_bar=false) a progress-bar callback is left out, so that either
    switch alone turns the bar off."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ProgressBar

    callbacks = []
    for callback in (config or {}).values():
        if callback is None:
            continue
        overrides = {}
        if "monitor" in callback and callback.monitor is None:
            overrides["monitor"] = task_class.main_metric
        if "mode" in callback and callback.mode is None:
            overrides["mode"] = task_class.main_metric_mode
        instance = instantiate(callback, **overrides)
        if progress_bar or not isinstance(instance, ProgressBar):
            callbacks.append(instance)
    return callbacks


def build_run_model(cfg: DictConfig, datamodule, spec, depth_mode: str = "metric"):
    """The DenseModel of this run (`spec`: its head's HeadSpec): the checkpoint's own model when
    resuming, else built from the config with the dataset's depth range or class count (and
    task.depth_mode: metric or relative)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    import heads
    from dense.backbones import get_spec
    from dense.checkpoint import atomic_save, backbone_is_stored
    from dense.cli.model import from_checkpoint, from_groups
    from dense.config import multi_head_entries
    from dense.core.hashing import file_sha256, tensors_sha256

    backbone, head = runner.plain(cfg.backbone), runner.plain(cfg.head)
    # Weights paths go into checkpoints: make them absolute so they stay valid from any folder.
    for group in (backbone, head):
        if group.get("weights"):
            group["weights"] = os.path.abspath(group["weights"])

    if cfg.ckpt_path is not None:
        # Resuming: the exact model that wrote the checkpoint (a config that asks for another one is
        # a mistake, not a wish: the optimiser state would not fit).
        checkpoint, model = from_checkpoint(cfg.ckpt_path, backbone_weights=backbone.get("weights"))
        wanted = (get_spec(backbone["name"]).name, head_names(head) if spec is None else spec.name)
        stored = (model.config["backbone"], model.config.get("head") or head_names(model.config))
        runner.require(
            wanted == stored,
            f"ckpt_path was trained with backbone={stored[0]} head={stored[1]}, but this run asks for "
            f"backbone={wanted[0]} head={wanted[1]}: resume with the same backbone and head",
        )
        runner.require(
            "optimizer_states" in checkpoint,
            f"ckpt_path={cfg.ckpt_path} holds weights only (a best.ckpt), not the optimiser state a resume "
            f"needs: resume from the run's last.ckpt, or start a new run from its head with head.weights={cfg.ckpt_path}",
        )
        warn_about_resume_changes(checkpoint, runner.plain(cfg), model)
        return model

    if spec is None:  # head=multi: each head's range or class count from the data
        head["heads"] = multi_head_entries(head)
        for entry in head["heads"].values():
            fill_from_data(entry, heads.get_head_spec(entry["name"]).task, datamodule)
    else:
        fill_from_data(head, spec.task, datamodule)
    model = from_groups(backbone, head, depth_mode=depth_mode)

    if backbone_is_stored(model.config):
        # A random-initialised backbone (backbone.pretrained=false): write it once to a weights file
        # next to the checkpoints and let them point at it, as for any other weights file. Storing it
        # inside every checkpoint instead would make a ViT-S smoke checkpoint ~90 MB, a ViT-g one 4 GB.
        # The file is named by its content, so a second run in the same folder (another seed) never
        # overwrites the backbone the first run's checkpoints point at.
        # Every process built the same weights (same seed), so only rank 0 writes them.
        state = model.backbone.state_dict()
        digest = tensors_sha256(state)
        path = Path(cfg.paths.output_dir).resolve() / "checkpoints" / f"backbone_init-{digest[:16]}.pth"
        if rank_zero_only.rank == 0 and not holds_tensors(path, digest):
            atomic_save(state, path)
        model.config["backbone_weights"] = str(path)
    if model.config.get("backbone_weights") and rank_zero_only.rank == 0:
        # What the checkpoints will record of the file (only rank 0 writes checkpoints, and only it has
        # surely finished writing the file): load_model refuses the file once its content changed.
        model.config["backbone_sha256"] = file_sha256(model.config["backbone_weights"])
    return model


def fill_from_data(head: dict, task: str, datamodule) -> None:
    """A head group's depth range (depth) or class count (segmentation), where null, from the data."""
    if task == "depth":
        head["min_depth"] = datamodule.min_depth if head.get("min_depth") is None else head["min_depth"]
        head["max_depth"] = datamodule.max_depth if head.get("max_depth") is None else head["max_depth"]
    elif head.get("num_classes") is None:
        head["num_classes"] = datamodule.num_classes


def head_names(head: dict) -> dict[str, str]:
    """{name: registered head} of a head=multi group or a stored multi-head model config."""
    from dense.config import is_multi, multi_head_entries
    from heads import get_head_spec

    entries = multi_head_entries(head) if is_multi(head) else head["heads"]
    return {n: get_head_spec(e.get("name") or e.get("head")).name for n, e in entries.items()}


def holds_tensors(path: Path, digest: str) -> bool:
    """Whether `path` exists and holds the state dict whose tensors_sha256 is `digest` (a file of that
    name written by an earlier run with the same seed; anything else under the name is replaced)."""
    from dense.core.errors import WeightsError
    from dense.core.hashing import tensors_sha256
    from dense.core.weights_file import load_weights_file

    if not path.is_file():
        return False
    try:
        return tensors_sha256(load_weights_file(path)) == digest
    except (WeightsError, AttributeError, TypeError):
        return False


# Keys whose change on resume is reported: (section, what happens to the new value).
RESUME_SECTIONS = (
    (
        "task.optimizer",
        "ignored: the optimiser state, learning rate included, is restored from the checkpoint",
    ),
    ("head", "ignored: the model is rebuilt from the checkpoint"),
    ("data", "the run continues on the new data"),
    ("task.scheduler", "the new schedule applies from the resumed step on"),
    ("task.depth_loss", "the new loss applies from the resumed step on"),
    ("task.relative_loss", "the new loss applies from the resumed step on"),
    ("task.seg_loss", "the new loss applies from the resumed step on"),
    ("task.mask_loss", "the new loss applies from the resumed step on"),
)
# Loader settings change no number of the run.
RESUME_UNREPORTED = {"data.num_workers", "data.pin_memory", "data.persistent_workers", "head.weights"}


def check_optimizer(optimizer: dict) -> None:
    """task.optimizer, built once on a stand-in parameter before anything else: Lightning builds the real
    one deep inside fit, where a key the class does not take (SGD has no betas) is a long traceback."""
    import torch
    from hydra.utils import instantiate

    from dense.tasks.base import optimizer_settings

    settings = optimizer_settings(optimizer)
    try:
        instantiate(settings, _partial_=True)([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-3}])
    except Exception as error:  # an unknown class, a key it does not take, a value it refuses
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise runner.ConfigError(
            f"task.optimizer: {message} (another optimiser class takes other keys: drop one with ~task.optimizer.KEY)"
        ) from None


def warn_about_resume_changes(checkpoint: dict, current: dict, model) -> None:
    """A resumed run whose optimiser, head, data, schedule or loss settings differ from those stored in
    the checkpoint: say what changed and what becomes of it (one warning per section). Another
    optimiser class, or an optimiser state that does not fit the head, is refused: Lightning would
    fail on it deep inside the restore."""
    import warnings

    from dense.core.errors import shown
    from dense.core.plain import plain_value_problem

    check_optimizer_state(checkpoint, model)
    stored = (checkpoint.get("hyper_parameters") or {}).get("config")
    if not isinstance(stored, dict):
        return
    # Stored values that are not plain (a crafted file) compare by their description, never by value. An
    # empty section (head.options: {}) is no setting: left out on both sides, so that it compares equal
    # to itself and a section filled in since shows as its new keys.
    old = {
        k: v if plain_value_problem(v, k) is None else f"<{shown(v)}>"
        for k, v in runner.flatten(stored).items()
        if not is_empty_section(v)
    }
    new = {k: v for k, v in runner.flatten(current).items() if not is_empty_section(v)}
    # lr null is the head's own rate: compare the rates that train, not the spelling
    default_lr = getattr(model, "default_lr", None)
    for side in (old, new):
        if default_lr is not None and "task.optimizer.lr" in side and side["task.optimizer.lr"] is None:
            side["task.optimizer.lr"] = default_lr
    target = "task.optimizer._target_"
    if target in old and old[target] != new.get(target):
        raise runner.ConfigError(
            f"{target}={new.get(target)} but the checkpoint was trained with {shown(old[target], 80)}: a resumed "
            "run restores that optimiser's state; resume with the same optimiser, or start a new run"
        )
    for section, consequence in RESUME_SECTIONS:
        changed = [
            f"{key} {shown(old.get(key), 40)} → {shown(new.get(key), 40)}"
            for key in sorted(set(old) | set(new))
            if key.startswith(section + ".") and key not in RESUME_UNREPORTED and old.get(key) != new.get(key)
        ]
        if changed:
            warnings.warn(
                f"resuming with other {section} settings ({'; '.join(changed)}): {consequence}", stacklevel=2
            )


def is_empty_section(value) -> bool:
    return isinstance(value, dict) and not value


def check_optimizer_state(checkpoint: dict, model) -> None:
    """The stored optimiser state has one entry per head parameter, each moment of its shape."""
    import torch

    from dense.core.weights_file import tensor_problem

    states = checkpoint.get("optimizer_states")
    if states is None:
        return
    params = list(model.head.parameters())
    try:
        (state,) = states
        for index, entry in state["state"].items():
            for value in entry.values():
                # A moment (not the 0-d step count) has its parameter's rank, shape and kind of dtype.
                moment = isinstance(value, torch.Tensor) and value.dim() > 0
                problem = moment and tensor_problem(value, params[index], owner="the head")
                if problem:
                    raise ValueError(f"parameter {index} {problem}")
        groups = [i for group in state["param_groups"] for i in group["params"]]
        if sorted(groups) != list(range(len(params))):
            raise ValueError(f"{len(groups)} parameters for the head's {len(params)}")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise runner.ConfigError(
            f"ckpt_path: its optimiser state does not fit the head ({' '.join(str(error).split())[:120]})"
        ) from None
