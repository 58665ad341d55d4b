"""What the depth and segmentation LightningModules share: the frozen backbone kept out of training,
the optimiser and its per-iteration schedule, evaluation through `DenseModel.predict`, metric logging,
and the checkpoint contract of dense/checkpoint.py.

The LightningModule holds the DenseModel as `self.model`, so checkpoint keys are `model.head.*`
(what `dense.load_model` and `build_model(head_weights=CKPT)` read) and `model.backbone.*` (dropped
on save unless the backbone cannot be rebuilt otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.optim.lr_scheduler import LambdaLR

from dense._cli import ConfigError, plain
from dense.cache import forward_cached
from dense.checkpoint import atomic_save, restore_frozen_backbone, strip_frozen_backbone
from dense.model import DenseModel

DECAYS = ("cosine", "poly", "constant")
TEST_MODES = ("whole", "slide")
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-4, "weight_decay": 0.01}


def lr_schedule(
    total_steps: int,
    warmup_steps: int = 0,
    warmup_ratio: float = 1e-6,
    decay: str = "cosine",
    power: float = 1.0,
    min_lr_ratio: float = 0.0,
) -> Callable[[int], float]:
    """The learning-rate factor of each optimiser step, as mmcv's iteration-based LrUpdaterHook
    (the upstream recipes): the decay (cosine or poly) runs over all `total_steps`, and during the first
    `warmup_steps` the decayed value is scaled linearly from `warmup_ratio` up to 1.

    Returns a plain closure, not an object: LambdaLR then stores nothing of it in its state_dict, so
    checkpoints stay loadable with weights_only=True; the step counter that LambdaLR does store is all
    a resumed run needs.
    """
    check_schedule(warmup_steps, warmup_ratio, decay, power, min_lr_ratio)
    total_steps = max(int(total_steps), 1)

    def factor(step: int) -> float:
        progress = min(step, total_steps) / total_steps
        if decay == "cosine":
            value = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        elif decay == "poly":
            value = min_lr_ratio + (1 - min_lr_ratio) * (1 - progress) ** power
        else:
            value = 1.0
        if step < warmup_steps:
            value *= 1 - (1 - step / warmup_steps) * (1 - warmup_ratio)
        return value

    return factor


def check_schedule(
    warmup_steps: int = 0,
    warmup_ratio: float = 1e-6,
    decay: str | None = "cosine",
    power: float = 1.0,
    min_lr_ratio: float = 0.0,
) -> None:
    """Refuse a schedule that cannot work, before training starts (keys of `task.scheduler`)."""
    if decay is not None and decay not in DECAYS:
        raise ConfigError(f"task.scheduler.decay={decay!r} is not one of {', '.join(DECAYS)} (or null)")
    if not (isinstance(warmup_steps, int) and not isinstance(warmup_steps, bool) and warmup_steps >= 0):
        raise ConfigError(f"task.scheduler.warmup_steps={warmup_steps!r} must be an integer >= 0")
    if not 0 < warmup_ratio <= 1:
        raise ConfigError(f"task.scheduler.warmup_ratio={warmup_ratio!r} must be in (0, 1]")
    if not 0 <= min_lr_ratio <= 1:
        raise ConfigError(f"task.scheduler.min_lr_ratio={min_lr_ratio!r} must be in [0, 1]")
    if power <= 0:
        raise ConfigError(f"task.scheduler.power={power!r} must be positive")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints with dense.checkpoint.atomic_save: a temporary file in the same folder,
    fsync, then rename. Lightning's default serialises to memory and lets fsspec write a temporary
    file in the system temp folder, then *moves* it: across file systems that move is a plain copy,
    so a run killed at that moment can leave a truncated last.ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_save(checkpoint, path)


class DenseTask(L.LightningModule):
    """Base LightningModule: a DenseModel whose head alone is trained.

    model: the DenseModel (its backbone is frozen and stays so).
    optimizer: a Hydra `_partial_` config of the optimiser class (default AdamW); bound to the head's
        parameters in configure_optimizers, so the backbone can never enter the optimiser.
    scheduler: keys of `lr_schedule` (warmup_steps, warmup_ratio, decay, power, min_lr_ratio); decay
        null = the task's default (depth cosine, segmentation poly). Stepped every iteration.
    test_mode / test_crop_size / test_stride / test_scales / test_flip: how validation and test
        predict (DenseModel.predict): whole image or sliding window, multi-scale, horizontal flip.
    config: the run's whole configuration (plain dict), stored in the checkpoint's hyper-parameters so
        that eval.py can find the data the model was trained on.
    """

    task: ClassVar[str]
    main_metric: ClassVar[str]  # what "best.ckpt" is chosen by
    main_metric_mode: ClassVar[str]  # "min" | "max"
    default_decay: ClassVar[str]

    def __init__(
        self,
        model: DenseModel,
        *,
        optimizer: Mapping | None = None,
        scheduler: Mapping | None = None,
        test_mode: str = "whole",
        test_crop_size: int | Sequence[int] | None = None,
        test_stride: int | Sequence[int] | None = None,
        test_scales: Sequence[float] = (1.0,),
        test_flip: bool = False,
        config: Mapping | None = None,
    ):
        super().__init__()
        if model.task != self.task:
            raise ConfigError(f"{type(self).__name__} trains {self.task} heads, got a {model.task} model")
        if test_mode not in TEST_MODES:
            raise ConfigError(f"task.test_mode={test_mode!r} is not one of {', '.join(TEST_MODES)}")
        if test_mode == "slide" and test_crop_size is None:
            raise ConfigError("task.test_mode=slide needs task.test_crop_size (e.g. 512)")
        scheduler = dict(plain(scheduler) or {})
        scheduler["decay"] = scheduler.get("decay") or self.default_decay
        check_schedule(**scheduler)
        self.model = model
        self.optimizer_config = dict(plain(optimizer) or DEFAULT_OPTIMIZER)
        self.scheduler_config = scheduler
        self.predict_options = {
            "mode": test_mode,
            "crop_size": plain(test_crop_size),
            "stride": plain(test_stride),
            "scales": tuple(float(s) for s in plain(test_scales)),
            "flip": bool(test_flip),
        }
        # Plain containers only (no OmegaConf, no modules): checkpoints load with weights_only=True.
        self.save_hyperparameters(
            {
                "optimizer": self.optimizer_config,
                "scheduler": scheduler,
                "predict": {**self.predict_options, "scales": list(self.predict_options["scales"])},
                "config": plain(config) or {},
            }
        )

    # ---- optimisation --------------------------------------------------------------------------

    def configure_optimizers(self):
        from hydra.utils import instantiate

        # Only the head: the frozen backbone's parameters are never handed to the optimiser.
        optimizer = instantiate(self.optimizer_config, _partial_=True)(self.model.head.parameters())
        total = self.trainer.estimated_stepping_batches
        scheduler = LambdaLR(optimizer, lr_schedule(total, **self.scheduler_config))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "patches" in batch:  # features read from the cache (dense/cache.py): no backbone to run
            target = self.target(batch)
            prediction = forward_cached(self.model, batch, tuple(target.shape[-2:]))
        else:
            prediction = self.model(batch["image"])
        losses = self.compute_loss(prediction, batch)
        size = len(batch["name"])
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=size)
        return losses["loss"]

    # ---- evaluation ----------------------------------------------------------------------------

    def evaluate(self, images: torch.Tensor) -> torch.Tensor:
        """The prediction used by validation and test (depth in metres, or class probabilities)."""
        return self.model.predict(images, **self.predict_options)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_metrics.update(self.evaluate(batch["image"]), self.target(batch))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_metrics.update(self.evaluate(batch["image"]), self.target(batch))

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def _log_metrics(self, metrics, stage: str) -> None:
        # compute() sums the metric states of all processes, so every rank already holds the same
        # value; sync_dist then averages identical numbers (a no-op that keeps Lightning from warning).
        values = metrics.compute()
        self.log_dict({f"{stage}/{k}": float(v) for k, v in values.items()}, sync_dist=True)
        self.on_metrics_computed(metrics, stage)
        metrics.reset()

    def on_metrics_computed(self, metrics, stage: str) -> None:
        """Hook for task-specific reporting (the segmentation per-class table)."""

    # ---- checkpoints (dense/checkpoint.py) --------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        strip_frozen_backbone(checkpoint, self.model.config)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_frozen_backbone(checkpoint, self.model)

    # ---- reproducible epochs -------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        """Make each epoch's shuffle and augmentation a function of (seed, epoch) only.

        The datamodule seeds its train loader's generator once, so epoch k's order depends on the
        k-1 epochs drawn before it, and a run resumed at epoch k would replay epoch 0's order. Giving
        the sampler a fresh generator here (the permutation is drawn lazily at the first batch,
        after this hook) and re-seeding the in-process augmentation makes a resumed run see the
        same batches as an uninterrupted one. (With loader workers the augmentation RNG lives in the
        workers; their seeds still come from the datamodule.)
        """
        loader = self.trainer.train_dataloader
        datamodule = getattr(self.trainer, "datamodule", None)
        seed = int(getattr(datamodule, "seed", 0) or 0)
        epoch_seed = seed * 1_000_003 + self.current_epoch
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, torch.utils.data.RandomSampler) and sampler.generator is not None:
            sampler.generator = torch.Generator().manual_seed(epoch_seed)
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "reseed") and getattr(loader, "num_workers", 0) == 0:
            dataset.reseed(epoch_seed)

    # ---- for subclasses ------------------------------------------------------------------------

    def target(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def compute_loss(self, prediction: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError
