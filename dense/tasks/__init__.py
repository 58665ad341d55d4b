"""LightningModules that train a DenseModel's head: DepthTask and SegmentationTask.

`build_task(model, datamodule, **task_config)` picks the class from the model's task and takes what
the metrics need (depth range and crop, classes, ignore index, segmentation test scale) from the datamodule.
"""

from __future__ import annotations

from dense.model import DenseModel
from dense.tasks.base import DenseTask, RunCheckpointIO, lr_schedule
from dense.tasks.depth import DepthTask
from dense.tasks.segmentation import SegmentationTask

TASKS: dict[str, type[DenseTask]] = {"depth": DepthTask, "segmentation": SegmentationTask}


def build_task(
    model: DenseModel,
    datamodule,
    *,
    depth_loss=None,
    seg_loss=None,
    init_depth_from_data: bool = False,
    **common,
) -> DenseTask:
    """The LightningModule for `model`'s task. `depth_loss` / `seg_loss`: the loss options of each
    task (the other one is ignored); init_depth_from_data: DepthTask's (ignored for segmentation);
    `common`: DenseTask's options (optimizer, scheduler, test_*, dead_head_steps, config)."""
    if model.task == "depth":
        return DepthTask(
            model,
            loss=depth_loss,
            init_depth_from_data=init_depth_from_data,
            min_depth=datamodule.min_depth,
            max_depth=datamodule.max_depth,
            crop=datamodule.eval_crop,
            **common,
        )
    return SegmentationTask(
        model,
        loss=seg_loss,
        ignore_index=datamodule.ignore_index,
        class_names=datamodule.class_names,
        eval_scale=datamodule.eval_scale,
        **common,
    )


__all__ = [
    "TASKS",
    "DenseTask",
    "DepthTask",
    "RunCheckpointIO",
    "SegmentationTask",
    "build_task",
    "lr_schedule",
]
