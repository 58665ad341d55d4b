"""MultiTask: trains the heads of a MultiHeadModel together (train.py head=multi).

Each head keeps the LightningModule a single head of its kind would have (DepthTask, RelativeDepthTask,
SegmentationTask: `parts[name]`), built on that head's DenseModel (`model.parts[name]`), for what is
per head: its target, its loss, its metrics and its evaluation protocol. MultiTask adds what is shared:

- a training step runs the backbone once (MultiHeadModel.forward) and trains
  loss = Σ loss_weight[name] · loss[name], logging train/loss and train/<name>/loss, train/<name>/<term>;
- validation and test score each head as its own task does (segmentation: mmseg's views per image),
  logged as val/<name>/<metric> and test/<name>/<metric>;
- one optimiser over every head's parameters (the backbone stays frozen), one checkpoint
  (`model.backbone.*` when stored, `model.heads.<name>.*`);
- best.ckpt follows the first head's main metric (val/<first>/rmse for a metric depth head).

The parts are not submodules (they hold the same DenseModel parts as `model`); their losses and metrics
are registered here (`losses`, `val_metrics`, `test_metrics`), so they move with the module and the
SigLoss warm-up counter is saved in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from dense.core.errors import ConfigError
from dense.multi_head import MultiHeadModel
from dense.tasks.base import DenseTask, next_dead_streak
from dense.tasks.segmentation import SegmentationTask


def multi_monitor(first_name: str, first_task_class: type[DenseTask]) -> SimpleNamespace:
    """What best.ckpt follows in a multi-head run: the first head's main metric under its name (what
    train.py's make_callbacks reads of a task class: main_metric, main_metric_mode)."""
    metric = first_task_class.main_metric.split("/", 1)[1]
    return SimpleNamespace(
        main_metric=f"val/{first_name}/{metric}", main_metric_mode=first_task_class.main_metric_mode
    )


class MultiTask(DenseTask):
    """Trains every head of a MultiHeadModel at once (module docstring).

    parts: {name: the single-head task of that head}, in the model's order.
    loss_weights: {name: weight ≥ 0} of each head's loss in the trained sum (default 1).
    common: DenseTask's options (optimizer, scheduler, test_*, config).
    """

    task = "multi"
    default_decay = "cosine"

    def __init__(
        self,
        model: MultiHeadModel,
        parts: Mapping[str, DenseTask],
        *,
        loss_weights: Mapping[str, float] | None = None,
        **common,
    ):
        super().__init__(model, **common)
        if list(parts) != model.names:
            raise ConfigError(f"MultiTask: parts {list(parts)} are not the model's heads {model.names}")
        self.parts: dict[str, DenseTask] = dict(parts)  # plain dict: see the module docstring
        weights = {name: float((loss_weights or {}).get(name, 1.0)) for name in parts}
        self.loss_weights = weights
        self.losses = nn.ModuleDict({name: part.loss for name, part in parts.items()})
        self.val_metrics = nn.ModuleDict({name: part.val_metrics for name, part in parts.items()})
        self.test_metrics = nn.ModuleDict({name: part.test_metrics for name, part in parts.items()})
        first = next(iter(parts))
        monitor = multi_monitor(first, type(parts[first]))
        self.main_metric, self.main_metric_mode = monitor.main_metric, monitor.main_metric_mode
        self.per_class_tables: dict[str, str] = {}
        self._dead_heads: torch.Tensor | None = None  # of the last training step, one flag per head
        self.hparams.update(
            heads={
                name: {
                    "task": type(part).__name__,
                    "loss_weight": weights[name],
                    "loss": part.hparams.get("loss"),
                    "metrics": part.hparams.get("metrics"),
                }
                for name, part in parts.items()
            }
        )

    def record_classes(self, record: dict) -> None:
        # Copies: the record's head entries are the model's own config dicts (strip_frozen_backbone).
        record["heads"] = {name: dict(entry) for name, entry in record["heads"].items()}
        for name, part in self.parts.items():
            part.record_classes(record["heads"][name])

    def setup(self, stage: str) -> None:
        # The parts read the trainer (training or not, the rank printing the per-class table).
        for part in self.parts.values():
            part.trainer = self.trainer

    # ---- training -------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "patches" in batch:
            raise ConfigError(
                "cache.features=true trains one head; train head=multi on images (cache.features=false)"
            )
        predictions = self.model(batch["image"])
        size = len(batch["name"])
        total = None
        for name, part in self.parts.items():
            losses = part.compute_loss(predictions[name], batch)
            self.log_dict({f"train/{name}/{k}": v for k, v in losses.items()}, batch_size=size)
            weighted = self.loss_weights[name] * losses["loss"]
            total = weighted if total is None else total + weighted
        self._record_nonfinite(total)
        if self.dead_head_steps:
            # A step is dead when any head's prediction is (each by its own rule); which one: _dead_heads.
            with torch.no_grad():
                self._dead_heads = torch.stack([p.is_dead(predictions[n]) for n, p in self.parts.items()])
            self._dead_streak = next_dead_streak(self._dead_streak, self._dead_heads.any())
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        return total

    def parameter_groups(self) -> list[dict]:
        """One group per head, each at task.optimizer.lr or, when that is null, its own head's default."""
        return [  # named: the LR monitor logs lr-<Optimizer>/<head>
            {
                "params": list(part.model.head.parameters()),
                "lr": self.learning_rate_for(part.model),
                "name": name,
            }
            for name, part in self.parts.items()
        ]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        for part in self.parts.values():  # a fresh depth head starts at the data's median (DepthTask)
            part.on_train_batch_start(batch, batch_idx)

    def dead_head_message(self, steps: int, step: int) -> str:
        dead = self._dead_heads.tolist() if self._dead_heads is not None else [True] * len(self.parts)
        name, part = next((n, p) for (n, p), d in zip(self.parts.items(), dead) if d)
        return f"head.heads.{name}: " + part.dead_head_message(steps, step)

    def check_batch(self, batch: dict) -> None:
        """Every head's ground truth of a (host) training batch: present, and valid for its loss."""
        for part in self.parts.values():
            part.check_batch(batch)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        # Evaluation batches: the segmentation heads' views, made once on the host (SegmentationTask).
        segmentation = [p for p in self.parts.values() if isinstance(p, SegmentationTask)]
        if segmentation and self._trainer is not None and not self.trainer.training and "image" in batch:
            batch["views"] = segmentation[0].eval_views(batch)
        return batch

    # ---- evaluation: each head by its own protocol ----------------------------------------------

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        for part in self.parts.values():
            part.val_metrics.update(part.evaluate_batch(batch), part.target(batch))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        for part in self.parts.values():
            part.test_metrics.update(part.evaluate_batch(batch), part.target(batch))

    def on_validation_epoch_end(self) -> None:
        self._log_all("val")

    def on_test_epoch_end(self) -> None:
        self._log_all("test")

    def _log_all(self, stage: str) -> None:
        for name, part in self.parts.items():
            metrics = part.val_metrics if stage == "val" else part.test_metrics
            values = metrics.compute()
            self.log_dict({f"{stage}/{name}/{k}": float(v) for k, v in values.items()}, sync_dist=True)
            part.on_metrics_computed(metrics, stage)
            if getattr(part, "per_class_table", None):
                self.per_class_tables[name] = part.per_class_table
            metrics.reset()


def multi_run_checks(cfg, datamodule, depth_mode: str = "metric") -> SimpleNamespace:
    """train.py's checks of a head=multi run before anything is built: the heads (names, keys, loss
    weights), each head against the data (depth mode, class count), the data carrying every head's
    targets (one validation sample is read), no feature cache. Returns what best.ckpt follows
    (multi_monitor)."""
    from dense.config import multi_head_entries, multi_head_tasks
    from dense.tasks import check_depth_mode, task_class

    try:
        entries, tasks = multi_head_entries(cfg.head), multi_head_tasks(cfg.head)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if cfg.cache.features:
        raise ConfigError(
            "cache.features=true trains one head; train head=multi on images (cache.features=false)"
        )
    if depth_mode != "metric" and "depth" not in tasks.values():
        raise ConfigError(f"task.depth_mode={depth_mode} trains depth heads, and head=multi has none")
    check_data_carries(tasks, datamodule, "val", where="head.heads.")
    for name, task in tasks.items():
        if task == "depth":
            check_depth_mode(depth_mode, task, datamodule.depth_target)
        classes = entries[name].get("num_classes")
        if task == "segmentation" and classes is not None and classes != datamodule.num_classes:
            raise ConfigError(
                f"head.heads.{name}.num_classes={classes} but data={cfg.data.name} has {datamodule.num_classes} classes"
            )
    first = next(iter(tasks))
    first_mode = depth_mode if tasks[first] == "depth" else "metric"
    return multi_monitor(first, task_class(tasks[first], first_mode))


def check_data_carries(tasks, datamodule, split: str = "val", where: str = "head ") -> None:
    """The first sample of `split` carries the target of every head ({name: "depth" | "segmentation"},
    or a MultiTask), or a one-line ConfigError names the head and what the data carries."""
    if isinstance(tasks, MultiTask):
        tasks = {name: part.task for name, part in tasks.parts.items()}
    sample = datamodule.dataset(split)[0]
    keys = {"depth": (datamodule.depth_target,), "segmentation": ("mask",)}
    for name, task in tasks.items():
        if not any(key in sample for key in keys[task]):
            carried = ", ".join(k for k in ("depth", "disparity", "mask") if k in sample) or "no targets"
            raise ConfigError(
                f"{where}{name} is a {task} head but data={datamodule.name} carries {carried}: use data that "
                "carries every head's targets (data=synthetic, or data=folder with data.task=multi)"
            )


def build_multi_task(
    model: MultiHeadModel,
    datamodule,
    *,
    loss_weights: Mapping[str, float] | None = None,
    depth_loss=None,
    seg_loss=None,
    relative_loss=None,
    mask_loss=None,
    init_depth_from_data: bool = False,
    depth_mode: str | None = None,
    config: Mapping | None = None,
    **common,
) -> MultiTask:
    """The MultiTask of a MultiHeadModel: each head's single-head task (as build_task makes it for that
    head), combined with `loss_weights` ({name: weight}); the rest as build_task."""
    from dense.tasks import build_task

    parts = {
        name: build_task(
            part,
            datamodule,
            depth_loss=depth_loss,
            seg_loss=seg_loss,
            relative_loss=relative_loss,
            mask_loss=mask_loss,
            init_depth_from_data=init_depth_from_data,
            depth_mode=depth_mode if part.task == "depth" else None,
            **common,
        )
        for name, part in model.parts.items()
    }
    return MultiTask(model, parts, loss_weights=loss_weights, config=config, **common)
