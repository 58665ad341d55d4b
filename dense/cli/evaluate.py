"""What eval.py runs: a checkpoint's metrics on a data split, printed and written to metrics.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dense.cli import runner
from dense.cli.imports import import_modules

SPLITS = ("val", "test")
PREDICT_KEYS = {
    "mode": "test_mode",
    "crop_size": "test_crop_size",
    "stride": "test_stride",
    "scales": "test_scales",
    "flip": "test_flip",
}


def main(cfg: DictConfig) -> None:
    """eval.py's Hydra main: evaluate() with one-line errors and exit codes (runner.run)."""
    runner.run(evaluate, cfg)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Metrics of checkpoint `cfg.ckpt_path` on `cfg.split` (keys without the split prefix)."""
    import lightning as L
    from hydra.utils import instantiate

    from dense.cli.model import from_checkpoint
    from dense.config import apply_matmul_precision, apply_speed_options, compile_mode, resolve_precision
    from dense.core.io import atomic_path
    from dense.multi_head import MultiHeadModel
    from dense.tasks import build_task
    from dense.tasks.multi import build_multi_task, check_data_carries
    from dense.tasks.progress import TimedProgressBar

    with runner.setup_errors():
        import_modules(cfg.get("imports"))  # the user's own registered heads, backbones, datasets
        runner.require(
            not OmegaConf.is_missing(cfg, "ckpt_path"),
            "ckpt_path is not set: python eval.py ckpt_path=RUN/checkpoints/best.ckpt",
        )
        runner.absolute_paths(cfg, ("ckpt_path", "backbone_weights", "data.root"))
        runner.require(cfg.split in SPLITS, f"split={cfg.split} is not one of {', '.join(SPLITS)}")
        compile_mode(cfg.compile)
        checkpoint, model = from_checkpoint(cfg.ckpt_path, backbone_weights=cfg.backbone_weights)
        stored = checkpoint.get("hyper_parameters") or {}
        L.seed_everything(cfg.seed, workers=True)
        datamodule = build_datamodule(cfg, stored.get("config") or {})
        if isinstance(model, MultiHeadModel):  # every head scored by its own task (dense/tasks/multi.py)
            task = build_multi_task(model, datamodule, **predict_options(cfg, stored.get("predict")))
            check_data_carries(task, datamodule, cfg.split)
        else:
            runner.require(
                model.task == datamodule.task,
                f"the checkpoint holds a {model.task} model but the data is set up for {datamodule.task}",
            )
            task = build_task(model, datamodule, **predict_options(cfg, stored.get("predict")))
        accelerator = cfg.trainer.get("accelerator")
        apply_matmul_precision(cfg.get("float32_matmul_precision"), accelerator)
        trainer = instantiate(
            cfg.trainer,
            precision=resolve_precision(cfg.trainer.get("precision"), accelerator),
            logger=False,
            # train.py's bar: plain lines instead of redraws when the output is not a terminal.
            callbacks=[TimedProgressBar()] if cfg.trainer.get("enable_progress_bar", True) else [],
            enable_checkpointing=False,
        )
        apply_speed_options(model, compile=cfg.compile, bf16_autocast=trainer.precision == "bf16-mixed")

    run = trainer.validate if cfg.split == "val" else trainer.test
    results = run(task, datamodule=datamodule, verbose=False, weights_only=True)[0]
    metrics = {k.split("/", 1)[1]: plain_number(k, v) for k, v in results.items()}
    title = f"{cfg.ckpt_path} on {datamodule.name} {cfg.split}"
    if isinstance(model, MultiHeadModel):  # one table per head: its metrics are logged as <head>/<metric>
        for name in model.names:
            own = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(f"{name}/")}
            print(format_table(own, f"{title}, head {name}") + "\n", flush=True)
            if cfg.split == "val" and name in task.per_class_tables:
                print(f"Per-class results (val, head {name}):\n{task.per_class_tables[name]}\n", flush=True)
    else:
        print(format_table(metrics, title), flush=True)
    if cfg.split == "val" and getattr(task, "per_class_table", None):
        print(f"\nPer-class results (val):\n{task.per_class_table}", flush=True)
    if trainer.is_global_zero:
        path = Path(cfg.paths.output_dir) / "metrics.json"
        with atomic_path(path) as tmp:
            Path(tmp).write_text(
                json.dumps({"ckpt_path": str(cfg.ckpt_path), "split": cfg.split, **metrics}, indent=2)
            )
        print(f"wrote {path}", flush=True)
    return metrics


def plain_number(key: str, value) -> float | int:
    """A logged metric as a number for the table and metrics.json: counts (n_images, n_skipped) as integers."""
    return int(round(float(value))) if key.split("/")[-1].startswith("n_") else float(value)


def build_datamodule(cfg: DictConfig, run_config: dict):
    """`data=NAME` given: that config. Otherwise the checkpoint's, with the non-null data.* keys of
    eval.yaml (root, batch_size, ...) on top. The stored config is read as plain values
    (datamodule_from_config), never instantiated: a checkpoint is data, not code."""
    from dense.data import datamodule_from_config

    if cfg.data.get("name") is not None:
        return datamodule_from_config(cfg.data)
    stored = run_config.get("data") if isinstance(run_config, dict) else None
    runner.require(
        isinstance(stored, dict),
        f"{cfg.ckpt_path} stores no data config (not written by train.py?): choose one with data=NAME",
    )
    overrides = {k: v for k, v in runner.plain(cfg.data).items() if v is not None}
    if "root" not in overrides:
        check_stored_root(stored.get("root"), cfg)
    return datamodule_from_config({**stored, **overrides}, source=str(cfg.ckpt_path))


def check_stored_root(root, cfg: DictConfig) -> None:
    """A data root read from a checkpoint is followed only inside the checkpoint's run folder or your
    own data folder (paths.data_dir, where configs/data look): a path stored in a file never leads
    elsewhere. Anything else needs data.root on the command line."""
    from dense.checkpoint import is_inside, trusted_folders
    from dense.core.errors import shown

    if root is None or not isinstance(root, str):
        return  # no root (synthetic), or a type datamodule_from_config refuses
    folders = [*trusted_folders(str(cfg.ckpt_path)), os.path.realpath(cfg.paths.data_dir)]
    runner.require(
        is_inside(root, folders),
        f"{cfg.ckpt_path} was trained on data.root={shown(root, 200)}, outside its run folder and paths.data_dir: "
        "a path stored in a checkpoint is not followed; give it on the command line (data.root=...)",
    )


def predict_options(cfg: DictConfig, stored) -> dict:
    """The task.test_* settings: the checkpoint's (checked, naming the file), with the non-null ones of
    the command line on top."""
    from dense.core.plain import plain_value_problem
    from dense.tasks.base import check_test_settings

    options = {}
    if stored is not None:
        runner.require(
            isinstance(stored, dict), f"{cfg.ckpt_path}: its stored prediction settings are not a mapping"
        )
        for key, value in stored.items():
            if key in PREDICT_KEYS:
                problem = plain_value_problem(value, f"predict.{key}")
                runner.require(problem is None, f"{cfg.ckpt_path}: {problem}")
                options[PREDICT_KEYS[key]] = value
        try:
            check_test_settings(**options)
        except runner.ConfigError as error:
            raise runner.ConfigError(f"{cfg.ckpt_path}: stored {error}") from None
    options.update({k: v for k, v in runner.plain(cfg.task).items() if v is not None})
    return options


def format_table(metrics: dict[str, float], title: str) -> str:
    width = max(len(k) for k in metrics)
    lines = [title, f"{'metric':<{width}}  value", "-" * (width + 12)]
    for key, value in metrics.items():
        shown = f"{value}" if isinstance(value, int) else f"{value:.4f}"
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)
