"""LightningModules that train a DenseModel's head: DepthTask, RelativeDepthTask and SegmentationTask.

`build_task(model, datamodule, **task_config)` picks the class from the model's task (and, for depth,
its depth_mode) and takes what the metrics need (depth range and crop, depth ground truth, classes,
ignore index, segmentation test scale) from the datamodule.
"""

from __future__ import annotations

from dense.core.errors import ConfigError
from dense.model import DEPTH_MODES, DenseModel
from dense.tasks.base import DenseTask, RunCheckpointIO, lr_schedule
from dense.tasks.depth import DepthTask
from dense.tasks.relative_depth import RelativeDepthTask
from dense.tasks.segmentation import SegmentationTask

TASKS: dict[str, type[DenseTask]] = {"depth": DepthTask, "segmentation": SegmentationTask}


def check_depth_mode(depth_mode, head_task: str, depth_target: str = "depth") -> None:
    """task.depth_mode against the head's task and the data's depth ground truth (one-line ConfigError)."""
    if depth_mode not in DEPTH_MODES:
        raise ConfigError(f"task.depth_mode={depth_mode!r} is not one of {', '.join(DEPTH_MODES)}")
    if depth_mode == "relative" and head_task != "depth":
        raise ConfigError(f"task.depth_mode=relative trains depth heads, not {head_task} heads")
    if head_task == "depth" and depth_mode == "metric" and depth_target == "disparity":
        raise ConfigError(
            "data.depth_target=disparity holds relative maps without a unit: train them with task.depth_mode=relative"
        )


def task_class(head_task: str, depth_mode: str = "metric") -> type[DenseTask]:
    """The LightningModule class that trains a `head_task` head in `depth_mode` (checked)."""
    check_depth_mode(depth_mode, head_task)
    return RelativeDepthTask if depth_mode == "relative" else TASKS[head_task]


def build_task(
    model: DenseModel,
    datamodule,
    *,
    depth_loss=None,
    seg_loss=None,
    relative_loss=None,
    mask_loss=None,
    init_depth_from_data: bool = False,
    depth_mode: str | None = None,
    **common,
) -> DenseTask:
    """The LightningModule for `model`'s task. `depth_loss` / `relative_loss` / `seg_loss` / `mask_loss`
    (seg_mask): the loss options of each task and head kind (the others are ignored); `depth_mode`:
    train.py's task.depth_mode, which must be the model's own (None: the model's, as eval.py builds it);
    init_depth_from_data: DepthTask's (metric depth only); `common`: DenseTask's options (optimizer,
    scheduler, test_*, dead_head_steps, best_ckpt_dtype, config)."""
    if model.task == "depth":
        if depth_mode is not None and depth_mode != model.depth_mode:
            check_depth_mode(depth_mode, "depth")
            raise ConfigError(
                f"task.depth_mode={depth_mode} but the model is a {model.depth_mode} one (a checkpoint keeps "
                "the mode it was trained in): resume with the same task.depth_mode"
            )
        check_depth_mode(model.depth_mode, "depth", datamodule.depth_target)
        depth = {
            "min_depth": datamodule.min_depth,
            "max_depth": datamodule.max_depth,
            "crop": datamodule.eval_crop,
        }
        if model.depth_mode == "relative":
            return RelativeDepthTask(
                model, loss=relative_loss, depth_target=datamodule.depth_target, **depth, **common
            )
        return DepthTask(model, loss=depth_loss, init_depth_from_data=init_depth_from_data, **depth, **common)
    if depth_mode is not None:
        check_depth_mode(depth_mode, model.task)
    return SegmentationTask(
        model,
        loss=seg_loss,
        mask_loss=mask_loss,
        ignore_index=datamodule.ignore_index,
        class_names=datamodule.class_names,
        palette=datamodule.palette,
        eval_scale=datamodule.eval_scale,
        **common,
    )


__all__ = [
    "TASKS",
    "DenseTask",
    "DepthTask",
    "RelativeDepthTask",
    "RunCheckpointIO",
    "SegmentationTask",
    "build_task",
    "check_depth_mode",
    "lr_schedule",
    "task_class",
]
