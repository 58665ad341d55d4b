"""What the depth and segmentation LightningModules share: the frozen backbone kept out of training,
the optimiser and its per-iteration schedule, evaluation through `DenseModel.predict` (segmentation:
mmseg's protocol, dense/tasks/segmentation.py), metric logging, and the checkpoint contract of
dense/checkpoint.py.

The LightningModule holds the DenseModel as `self.model`, so checkpoint keys are `model.head.*`
(what `dense.load_model` and `build_model(head_weights=CKPT)` read) and `model.backbone.*` (dropped
on save unless the backbone cannot be rebuilt otherwise).

The training step makes no host-device sync (GPU → CPU wait) of its own: the losses are built with
check_values=False (dense/tasks/losses.py), the ground truth of each training batch is checked on the host
before it is moved to the device (on_before_batch_transfer), and a NaN/inf loss is recorded in a
device-side flag that is read only every `trainer.log_every_n_steps` steps, before validation and at
the end of each training epoch (one sync each), failing the run with a one-line TrainingDivergedError.
A dead head (a depth head at min_depth, a segmentation head predicting one class everywhere, for
`dead_head_steps` steps in a row) is counted on the device the same way and read at the same points
(DeadHeadError). Both are TrainingFailedErrors: train.py exits with status 3.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from packaging.version import InvalidVersion, Version
from torch.optim.lr_scheduler import LambdaLR

from dense.cache import forward_cached
from dense.checkpoint import (
    MODEL_KEY,
    atomic_save,
    is_inside,
    restore_frozen_backbone,
    strip_frozen_backbone,
)
from dense.core.errors import (
    BadInputError,
    ConfigError,
    DeadHeadError,
    TrainingDivergedError,
    WeightsError,
    shown,
)
from dense.core.plain import learning_rate_problem, plain
from dense.core.weights_file import load_weights_file
from dense.model import DenseModel, check_inference_settings

DECAYS = ("cosine", "poly", "constant")
# No lr: the head's own (DenseModel.default_lr) unless the config sets one.
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "weight_decay": 0.01}
DEFAULT_DEAD_HEAD_STEPS = 100  # train.yaml's task.dead_head_steps
# task.best_ckpt_dtype: the dtype of the weights in weights-only checkpoints (best.ckpt).
CHECKPOINT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def next_dead_streak(streak: torch.Tensor | None, dead: torch.Tensor) -> torch.Tensor:
    """How many training steps in a row ended with a dead prediction (`dead`: a 0-d bool tensor), counted
    on the device: a where(), no host-device sync. `streak` None (or on another device) starts at 0."""
    if streak is None or streak.device != dead.device:
        streak = torch.zeros((), dtype=torch.long, device=dead.device)
    return torch.where(dead, streak + 1, torch.zeros_like(streak))


def optimizer_settings(optimizer: Mapping) -> dict:
    """task.optimizer as the optimiser class takes it: a null lr left out (each parameter group then
    carries its head's rate), a set one checked first (one line for a negative, NaN or text rate)."""
    lr = optimizer.get("lr")
    problem = None if lr is None else learning_rate_problem(lr, zero=True)
    if problem:
        raise ConfigError(f"task.optimizer.lr: {problem}; null: the head's own rate")
    return {k: v for k, v in optimizer.items() if not (k == "lr" and v is None)}


def check_checkpoint_dtype(value) -> torch.dtype:
    """task.best_ckpt_dtype: fp32 | bf16."""
    if value not in CHECKPOINT_DTYPES:
        raise ConfigError(f"task.best_ckpt_dtype={value!r} is not one of {', '.join(CHECKPOINT_DTYPES)}")
    return CHECKPOINT_DTYPES[value]


def check_dead_head_steps(value) -> int:
    """task.dead_head_steps: a whole number of steps >= 0 (0 or null: no check)."""
    if value is None:
        return 0
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise ConfigError(
            f"task.dead_head_steps={value!r} must be a number of training steps >= 0 (0 or null: no check)"
        )
    return value


def lr_schedule(
    total_steps: int,
    warmup_steps: int | str = 0,
    warmup_ratio: float = 1e-6,
    decay: str = "cosine",
    power: float = 1.0,
    min_lr_ratio: float = 0.0,
    decay_after_warmup: bool = False,
) -> Callable[[int], float]:
    """The learning-rate factor of each optimiser step, as mmcv's iteration-based LrUpdaterHook
    (the upstream recipes): the decay (cosine or poly) runs over all `total_steps`, and during the first
    `warmup_steps` the decayed value is scaled linearly from `warmup_ratio` up to 1. `warmup_steps` is a
    number of steps, or a share of the run as a string, "5%" (rounded up: at least one step).
    decay_after_warmup: the decay starts when the warm-up ends and runs over the remaining steps, the
    warm-up rising to the full rate (PMT's WarmupCosineSchedule, tue-mps/pmt
    image/training/warmup_cosine_schedule.py; the seg_mask recipe).

    Returns a plain closure, not an object: LambdaLR then stores nothing of it in its state_dict, so
    checkpoints stay loadable with weights_only=True; the step counter that LambdaLR does store is all
    a resumed run needs.
    """
    check_schedule(warmup_steps, warmup_ratio, decay, power, min_lr_ratio, decay_after_warmup)
    total_steps = max(int(total_steps), 1)
    warmup_steps = warmup_length(warmup_steps, total_steps)
    start = warmup_steps if decay_after_warmup else 0  # where the decay begins
    span = max(total_steps - start, 1)

    def factor(step: int) -> float:
        progress = min(max(step - start, 0) / span, 1.0)
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


def warmup_length(warmup_steps: int | str, total_steps: int) -> int:
    """task.scheduler.warmup_steps in steps: an int as it is, "P%" as P% of `total_steps`, rounded up."""
    if isinstance(warmup_steps, str):
        return math.ceil(float(warmup_steps[:-1]) / 100 * total_steps)
    return warmup_steps


def check_schedule(
    warmup_steps: int | str = 0,
    warmup_ratio: float = 1e-6,
    decay: str | None = "cosine",
    power: float = 1.0,
    min_lr_ratio: float = 0.0,
    decay_after_warmup: bool = False,
) -> None:
    """Refuse a schedule that cannot work, before training starts (keys of `task.scheduler`)."""
    if not isinstance(decay_after_warmup, bool):
        raise ConfigError(f"task.scheduler.decay_after_warmup={decay_after_warmup!r} must be true or false")
    if decay is not None and decay not in DECAYS:
        raise ConfigError(f"task.scheduler.decay={decay!r} is not one of {', '.join(DECAYS)} (or null)")
    if not (
        isinstance(warmup_steps, int) and not isinstance(warmup_steps, bool) and warmup_steps >= 0
    ) and not (isinstance(warmup_steps, str) and is_percentage(warmup_steps)):
        raise ConfigError(
            f"task.scheduler.warmup_steps={warmup_steps!r} must be a number of steps >= 0 or a share of "
            "the run's steps in percent, e.g. '5%'"
        )
    if not 0 < warmup_ratio <= 1:
        raise ConfigError(f"task.scheduler.warmup_ratio={warmup_ratio!r} must be in (0, 1]")
    if not 0 <= min_lr_ratio <= 1:
        raise ConfigError(f"task.scheduler.min_lr_ratio={min_lr_ratio!r} must be in [0, 1]")
    if power <= 0:
        raise ConfigError(f"task.scheduler.power={power!r} must be positive")


def is_percentage(text: str) -> bool:
    """ "5%", "2.5%": a percentage in [0, 100]."""
    try:
        return text.endswith("%") and 0 <= float(text[:-1]) <= 100
    except ValueError:
        return False


def check_test_settings(
    test_mode: str = "whole",
    test_crop_size=None,
    test_stride=None,
    test_scales=(1.0,),
    test_flip: bool = False,
) -> None:
    """Refuse prediction settings (task.test_*) that cannot work, before anything runs."""
    try:
        check_inference_settings(
            test_mode, test_crop_size, test_stride, test_scales, test_flip, option_prefix="task.test_"
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None


class RunCheckpointIO(TorchCheckpointIO):
    """How Lightning writes, reads and deletes the checkpoints of one run, whose own files lie in
    `folders` (`<run>/checkpoints`, and any other dirpath the run's checkpoint callbacks write to).

    - Writes go through dense.checkpoint.atomic_save: a temporary file in the same folder, fsync, then
      rename. Lightning's default serialises to memory and lets fsspec write a temporary file in the
      system temp folder, then *moves* it: across file systems that move is a plain copy, so a run
      killed at that moment could leave a truncated last.ckpt.
    - Reads are local files only, through dense.core.weights_file.load_weights_file (weights_only=True, sizes
      bounded), whatever Lightning asks for. Lightning itself would load a URL with weights_only=False.
    - The callbacks' state stored in a checkpoint (ModelCheckpoint's best/last/kth paths, best_k_models,
      dirpath) keeps only paths inside those folders; anything else is dropped, with a warning. Lightning
      follows those paths: `trainer.test(ckpt_path=best)` loads what best_model_path names, and
      rotating the best files deletes what the state names (fsspec, recursively for `local://` and
      other protocols).
    - Deletes remove only regular files inside those folders (real, resolved paths), never recursively.
    """

    PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path", "dirpath")
    SCORE_KEYS = ("best_model_score", "kth_value", "current_score")

    def __init__(self, *folders: str | os.PathLike):
        super().__init__()
        if not folders:
            raise ValueError("RunCheckpointIO needs the run's checkpoints folder")
        self.folders = [os.path.realpath(f) for f in folders]

    def owns(self, path, folder: bool = False) -> bool:
        """A local path that resolves inside the run's checkpoint folders: a `.ckpt` file there, or
        (folder=True) one of the folders itself. Only strings: a crafted state may hold anything."""
        if not isinstance(path, str) or "://" in path:
            return False
        if folder:
            return os.path.realpath(path) in self.folders
        return path.endswith(".ckpt") and is_inside(path, self.folders)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("RunCheckpointIO does not take storage_options")
        atomic_save(checkpoint, path)

    def load_checkpoint(
        self, path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Always on the CPU and with weights_only=True (`map_location`, `weights_only` are Lightning's
        arguments; they cannot loosen this)."""
        path = os.fspath(path)
        if "://" in path:
            raise WeightsError(
                f"{shown(path, 200)} is not a local file: checkpoints are read from local files only"
            )
        checkpoint = load_weights_file(path)
        if not isinstance(checkpoint, dict):
            raise WeightsError(f"{path} holds {shown(checkpoint)}, not a Lightning checkpoint")
        version = checkpoint.get("pytorch-lightning_version")
        if version is not None:  # Lightning's checkpoint migration parses it
            try:
                Version(version)
            except (InvalidVersion, TypeError):
                raise WeightsError(
                    f"{path}: its pytorch-lightning_version {shown(version)} is not a version"
                ) from None
        callbacks = checkpoint.get("callbacks")
        if isinstance(callbacks, dict):
            for state in callbacks.values():
                if isinstance(state, dict):
                    self._keep_own_state(state, path)
        return checkpoint

    def _keep_own_state(self, state: dict, source: str) -> None:
        """Drop, with one warning, whatever of a stored callback state points outside the run's own
        checkpoint files or is not what ModelCheckpoint writes there (a path, a score)."""
        dropped = []
        for key in self.PATH_KEYS:
            value = state.get(key)
            if value and not self.owns(value, folder=key == "dirpath"):
                dropped.append(f"{key}={shown(value, 120)}")
                if key == "dirpath":
                    del state[key]  # Lightning then takes the callback's own dirpath
                else:
                    state[key] = ""  # Lightning's "none yet" (it reads best_model_path unconditionally)
        for key in self.SCORE_KEYS:
            if key in state and not is_score(state[key]):
                dropped.append(f"{key}={shown(state[key])}")
                state[key] = None
        models = state.get("best_k_models")
        if isinstance(models, dict):
            for path in [p for p, score in models.items() if not (self.owns(p) and is_score(score))]:
                del models[path]
                dropped.append(f"the best_k_models entry {shown(path, 120)}")
        elif models is not None:
            state.pop("best_k_models")
            dropped.append(f"best_k_models ({shown(models)})")
        if dropped:
            warnings.warn(
                f"{source}: ignoring {', '.join(dropped[:5])}{' and more' if len(dropped) > 5 else ''} of the "
                f"stored callback state: outside this run's checkpoints folder {', '.join(self.folders)} or not "
                "a checkpoint file or score (a run reads and deletes only its own .ckpt files)",
                stacklevel=2,
            )

    def remove_checkpoint(self, path) -> None:
        path = os.fspath(path) if isinstance(path, os.PathLike) else path
        if not self.owns(path) or os.path.islink(path) or not os.path.isfile(path):
            warnings.warn(
                f"not deleting {shown(path, 120)}: a run deletes only the regular .ckpt files of its own "
                f"checkpoints folder {', '.join(self.folders)}",
                stacklevel=2,
            )
            return
        os.remove(path)


def is_score(value) -> bool:
    """What ModelCheckpoint stores as a score: None, a number or a 0-d tensor."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0
    return value is None or isinstance(value, int | float) and not isinstance(value, bool)


class DenseTask(L.LightningModule):
    """Base LightningModule: a DenseModel whose head alone is trained.

    model: the DenseModel (its backbone is frozen and stays so).
    optimizer: a Hydra `_partial_` config of the optimiser class (default AdamW); bound to the head's
        parameters in configure_optimizers, so the backbone can never enter the optimiser. Its lr null
        or absent: the head's registered `default_lr` (1e-4 the DPT, as upstream; 1e-3 the others).
    scheduler: keys of `lr_schedule` (warmup_steps, warmup_ratio, decay, power, min_lr_ratio); decay
        null = the task's default (depth cosine, segmentation poly). Stepped every iteration.
    test_mode / test_crop_size / test_stride / test_scales / test_flip: how validation and test
        predict (DenseModel.predict): whole image or sliding window, multi-scale, horizontal flip.
    dead_head_steps: stop the run (DeadHeadError) once the training predictions were dead (`is_dead`)
        for this many steps in a row; 0 or None: never.
    best_ckpt_dtype: "fp32" | "bf16": the dtype of the weights in a weights-only checkpoint (best.ckpt,
        ModelCheckpoint(save_weights_only=True)); full checkpoints (last.ckpt) keep the training dtype.
    config: the run's whole configuration (plain dict), stored in the checkpoint's hyper-parameters so
        that eval.py can find the data the model was trained on.

    Subclasses build their loss with check_values=False (no sync per step) and implement
    `check_target`, which on_before_batch_transfer runs on the host for every training batch, and
    `is_dead` / `dead_head_message` for the dead-head check.
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
        dead_head_steps: int | None = DEFAULT_DEAD_HEAD_STEPS,
        best_ckpt_dtype: str = "fp32",
        config: Mapping | None = None,
    ):
        super().__init__()
        if model.task != self.task:
            raise ConfigError(f"{type(self).__name__} trains {self.task} heads, got a {model.task} model")
        test_crop_size, test_stride, test_scales = (
            plain(test_crop_size),
            plain(test_stride),
            plain(test_scales),
        )
        check_test_settings(test_mode, test_crop_size, test_stride, test_scales, test_flip)
        scheduler = dict(plain(scheduler) or {})
        scheduler["decay"] = scheduler.get("decay") or self.default_decay
        check_schedule(**scheduler)
        self.model = model
        self.dead_head_steps = check_dead_head_steps(dead_head_steps)
        self.weights_only_dtype = check_checkpoint_dtype(best_ckpt_dtype)
        self.optimizer_config = dict(plain(optimizer) or DEFAULT_OPTIMIZER)
        optimizer_settings(self.optimizer_config)  # its lr checked now, not when fit starts
        self.scheduler_config = scheduler
        self.predict_options = {
            "mode": test_mode,
            "crop_size": test_crop_size,
            "stride": test_stride,
            "scales": tuple(float(s) for s in test_scales),
            "flip": test_flip,
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
        # True once a training loss was NaN/inf: a 0-d bool tensor on the loss's device, updated in every
        # step without a sync and read every log_every_n_steps steps (_check_divergence). A plain
        # attribute, not a buffer: never in a checkpoint, and DDP would overwrite a buffer with rank 0's
        # copy before each forward, losing a NaN seen on another rank.
        self._loss_nonfinite: torch.Tensor | None = None
        self._last_divergence_check = 0  # the global step of the last check that found the loss finite
        # Training steps in a row whose prediction was dead: a 0-d long tensor on the device, kept as the
        # flag above (next_dead_streak) and read with it.
        self._dead_streak: torch.Tensor | None = None

    # ---- optimisation --------------------------------------------------------------------------

    def configure_optimizers(self):
        optimizer, scheduler = self.optimizer_and_schedule(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_and_schedule(self, total_steps: int) -> tuple[torch.optim.Optimizer, LambdaLR]:
        """The optimiser of the head and its per-step schedule over `total_steps` (also what the bench's
        training step uses outside a Trainer)."""
        from hydra.utils import instantiate

        # Only the head: the frozen backbone's parameters are never handed to the optimiser.
        optimizer = instantiate(optimizer_settings(self.optimizer_config), _partial_=True)(
            self.parameter_groups()
        )
        return optimizer, LambdaLR(optimizer, lr_schedule(total_steps, **self.scheduler_config))

    def parameter_groups(self) -> list[dict]:
        """The head's parameters at its learning rate (`learning_rate_for`)."""
        return [{"params": list(self.model.head.parameters()), "lr": self.learning_rate_for(self.model)}]

    def learning_rate_for(self, model: DenseModel) -> float:
        """task.optimizer.lr, or the default of `model`'s head when that is null."""
        lr = self.optimizer_config.get("lr")
        return model.default_lr if lr is None else lr

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "patches" in batch:  # features read from the cache (dense/cache.py): no backbone to run
            target = self.target(batch)
            prediction = forward_cached(self.model, batch, tuple(target.shape[-2:]))
        else:
            prediction = self.model(batch["image"])
        losses = self.compute_loss(prediction, batch)
        self._record_nonfinite(losses["loss"])
        if self.dead_head_steps:
            with torch.no_grad():  # a flag, no graph (predictions may be a tensor or MaskPredictions)
                dead = self.is_dead(prediction)
            self._dead_streak = next_dead_streak(self._dead_streak, dead)
        size = len(batch["name"])
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=size)
        return losses["loss"]

    # ---- checks kept out of the training step: host-side targets, periodic divergence check -------

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Check the ground truth of each training batch while it is still on the CPU (Lightning calls
        this before moving the batch to the device), so that the loss needs no value check and no sync.
        The datasets already refuse NaN depth and out-of-range labels when they read a file
        (dense/data/base.py check_sample); this is the second line of defence, for every source of
        batches (feature cache, custom datasets), at CPU cost only."""
        if self._trainer is not None and self.trainer.training:
            self.check_batch(batch)
        return batch

    def check_batch(self, batch: dict) -> None:
        """Run `check_target` on a (host) batch; the one-line error names the offending samples."""
        target = self.target(batch)
        where = f"{type(self).__name__} training batch"
        try:
            self.check_target(target, where)
        except BadInputError as error:
            names = list(batch.get("name") or [])
            if len(names) != len(target):
                raise
            bad = []
            for i, name in enumerate(names):  # only on the error path: which samples are at fault
                try:
                    self.check_target(target[i : i + 1], where)
                except BadInputError:
                    bad.append(str(name))
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise BadInputError(f"{error} (sample {', '.join(bad[:5])}{more})") from None

    def _record_nonfinite(self, loss: torch.Tensor) -> None:
        """Remember a NaN/inf loss without waiting for the device (an `if` on it would sync every step)."""
        nonfinite = ~torch.isfinite(loss.detach())
        if self._loss_nonfinite is None or self._loss_nonfinite.device != nonfinite.device:
            self._loss_nonfinite = torch.zeros((), dtype=torch.bool, device=nonfinite.device)
        torch.logical_or(self._loss_nonfinite, nonfinite, out=self._loss_nonfinite)

    def on_train_start(self) -> None:
        self._loss_nonfinite = None  # a module fitted again starts clean
        self._dead_streak = None
        self._last_divergence_check = self.global_step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.trainer.log_every_n_steps or 50  # 0 turns logging off, not this check
        if (batch_idx + 1) % every == 0:
            self._check_training()

    def on_validation_start(self) -> None:
        # During fit, validate a diverged head? Its NaN predictions would fail in the metrics with a
        # message about the prediction; say what happened instead.
        if self.trainer.state.fn == "fit":
            self._check_training()

    def on_train_epoch_end(self) -> None:
        self._check_training()

    def _check_training(self) -> None:
        """The periodic checks of the device-side records (a sync each): NaN loss, then dead head."""
        self._check_divergence()
        self._check_dead_head()

    def _check_dead_head(self) -> None:
        """Read the dead-prediction streak; raise a one-line DeadHeadError once it reached
        dead_head_steps (on any process: all stop together)."""
        if not self.dead_head_steps:
            return
        streak = 0 if self._dead_streak is None else int(self._dead_streak)  # the sync
        dead = self.trainer.strategy.reduce_boolean_decision(streak >= self.dead_head_steps, all=False)
        if dead:
            raise DeadHeadError(self.dead_head_message(max(streak, self.dead_head_steps), self.global_step))

    def _check_divergence(self) -> None:
        """Read the NaN/inf flag (one host-device sync), agreed over all processes so that all stop
        together; raise a one-line TrainingDivergedError if any training loss since the start was not
        finite."""
        flag = self._loss_nonfinite
        local = flag is not None and bool(flag)  # the sync
        diverged = self.trainer.strategy.reduce_boolean_decision(local, all=False)
        step = self.global_step
        if diverged:
            last = self._last_divergence_check
            since = f" (it was finite up to step {last})" if last else ""
            raise TrainingDivergedError(
                f"training diverged: the loss became NaN or inf at or before step {step}{since}; "
                "lower task.optimizer.lr, or check the data"
            )
        self._last_divergence_check = step

    # ---- evaluation ----------------------------------------------------------------------------

    def evaluate(self, images: torch.Tensor) -> torch.Tensor:
        """The prediction used by validation and test (depth in metres, or class probabilities)."""
        return self.model.predict(images, **self.predict_options)

    def evaluate_batch(self, batch: dict) -> torch.Tensor:
        """The prediction for an evaluation batch, the size of its target (SegmentationTask: per image)."""
        return self.evaluate(batch["image"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_metrics.update(self.evaluate_batch(batch), self.target(batch))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_metrics.update(self.evaluate_batch(batch), self.target(batch))

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
        self.record_classes(checkpoint[MODEL_KEY])
        # A weights-only checkpoint (best.ckpt: for evaluation, prediction, export, fine-tuning) has no
        # optimiser state; Lightning leaves it out there and only there.
        if "optimizer_states" not in checkpoint and self.weights_only_dtype != torch.float32:
            state = checkpoint["state_dict"]
            for key, value in state.items():
                if value.is_floating_point():
                    state[key] = value.to(self.weights_only_dtype)

    def record_classes(self, record: dict) -> None:
        """Add what the task knows of its classes to the checkpoint's model record (`dense_model`):
        a segmentation task, their names and palette (dense/checkpoint.py checks them when read)."""

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

    def check_target(self, target: torch.Tensor, where: str) -> None:
        """Raise BadInputError if a (host) target tensor holds values the loss cannot use."""
        raise NotImplementedError

    def compute_loss(self, prediction: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def is_dead(self, prediction: torch.Tensor) -> torch.Tensor:
        """A 0-d bool tensor (computed on the device, never read here): whether this training prediction
        is one a head that stopped learning gives."""
        raise NotImplementedError

    def dead_head_message(self, steps: int, step: int) -> str:
        """The one line of the DeadHeadError after `steps` dead steps in a row, up to global step `step`."""
        raise NotImplementedError
