"""SegmentationTask: cross-entropy (+ optional Dice/Lovasz) training, mIoU/mAcc/aAcc evaluation.

Evaluation follows mmseg's test protocol (DINOv2's segmentation numbers come from it): the batch holds
the original images and annotations; for each image and each test ratio a view is rescaled from the
original uint8 image with mmseg's size rule (dense.data.transforms.eval_view, on the host, before the
batch moves to the device); DenseModel.predict_views predicts every view (and its flipped copy), resizes
the logits to the image's own original size, softmaxes and averages them; SegMetrics scores the argmax
against the untouched annotation.

The views are made from the batch's own uint8 images (`denormalize_image` only transposes them; a
dataset that hands over ImageNet-normalised floats gets them inverted exactly), so the sample contract
stays one image per sample and any dataset that follows it is evaluated the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dense.core.constants import IGNORE_INDEX
from dense.core.errors import BadInputError
from dense.core.mask_predictions import MaskPredictions
from dense.core.plain import plain
from dense.data.transforms import denormalize_image, eval_view
from dense.model import DenseModel
from dense.tasks.base import DenseTask
from dense.tasks.losses import SegLoss, check_labels
from dense.tasks.mask_loss import MaskClassificationLoss
from dense.tasks.metrics import SegMetrics


def image_sizes(batch: dict) -> list[tuple[int, int]]:
    """Each image's own (height, width): `image_size` from pad_collate, else the batch's image size."""
    if "image_size" in batch:
        return [(int(h), int(w)) for h, w in batch["image_size"].tolist()]
    height, width = batch["image"].shape[-2:]
    return [(int(height), int(width))] * len(batch["image"])


class SegmentationTask(DenseTask):
    """Trains a segmentation head.

    loss: SegLoss weights (ce_weight, dice_weight, lovasz_weight); pixels equal to `ignore_index`
        (255) count for neither the loss nor the metrics. The loss is built with check_values=False
        (no host-device sync per step): the labels of each training batch are checked on the host
        instead (check_target). CE and Dice make no sync; smp's Lovasz does (dense/tasks/losses.py).
    mask_loss: for a mask-classification head (seg_mask, whose training output is MaskPredictions),
        the options of Mask2Former's loss instead (dense/tasks/mask_loss.py: class_weight, mask_weight,
        dice_weight, no_object_weight, num_points, oversample_ratio, importance_sample_ratio); it
        makes one host-device sync per step, for the Hungarian matching. Ignore pixels belong to no mask.
    class_names: for the per-class IoU table printed at the end of a test (and by eval.py).
    palette: one [r, g, b] per class (the dataset's); with the names, stored in the checkpoint's model
        record for predict.py and the notebooks.
    eval_scale: the test-time scale (long side, short side) the evaluation views are made at, e.g.
        (2048, 512) (the datamodule's `eval_scale`, from data.eval_short_side); None: each image at its
        own size. The ratios (test_scales), flip and whole/slide mode are the common test_* settings.
    Logs train/loss, train/loss_ce (+ loss_dice, loss_lovasz); val/* and test/*: mIoU mAcc aAcc, as
    fractions, from a confusion matrix summed over the whole split (and over all processes).
    """

    task = "segmentation"
    main_metric = "val/mIoU"
    main_metric_mode = "max"
    default_decay = "poly"

    def __init__(
        self,
        model: DenseModel,
        *,
        loss: Mapping | None = None,
        mask_loss: Mapping | None = None,
        ignore_index: int = IGNORE_INDEX,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        eval_scale: Sequence[int] | None = None,
        **common,
    ):
        super().__init__(model, **common)
        self.eval_scale = None if eval_scale is None else (int(eval_scale[0]), int(eval_scale[1]))
        num_classes = model.num_classes
        class_names = list(class_names) if class_names else None
        palette = [[int(c) for c in row] for row in palette] if palette else None
        if palette is not None and len(palette) != num_classes:
            raise BadInputError(f"SegmentationTask: {len(palette)} palette colours for {num_classes} classes")
        loss = dict(plain(loss) or {})
        mask_loss = dict(plain(mask_loss) or {})
        self.ignore_index = ignore_index
        # check_values=False: no sync in the step (loss.check_values=true turns the in-loss checks on).
        if model.seg_output == "scores":  # a mask-classification head: Mask2Former's loss
            self.loss = MaskClassificationLoss(
                num_classes, ignore_index=ignore_index, **{"check_values": False, **mask_loss}
            )
        else:
            self.loss = SegLoss(num_classes, ignore_index=ignore_index, **{"check_values": False, **loss})
        self.val_metrics = SegMetrics(num_classes, ignore_index, class_names)
        self.test_metrics = SegMetrics(num_classes, ignore_index, class_names)
        self.hparams.update(
            loss=loss, mask_loss=mask_loss, metrics={"ignore_index": ignore_index, "class_names": class_names}
        )
        self.per_class_table: str | None = None  # of the last validation or test, for eval.py
        self.class_names, self.palette = class_names, palette
        self._last_class: torch.Tensor | None = (
            None  # the class of the last training prediction's first pixel
        )

    def record_classes(self, record: dict) -> None:
        if self.class_names:
            record["class_names"] = list(self.class_names)
        if self.palette:
            record["palette"] = [list(row) for row in self.palette]

    def target(self, batch: dict) -> torch.Tensor:
        return batch["mask"]

    def check_target(self, target: torch.Tensor, where: str) -> None:
        check_labels(target, self.model.num_classes, self.ignore_index, "labels", where)

    def compute_loss(self, prediction: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        return self.loss(prediction.float(), batch["mask"])

    def is_dead(self, prediction: torch.Tensor) -> torch.Tensor:
        """One class predicted at every pixel of the batch (a mask head: by its final class scores)."""
        if isinstance(prediction, MaskPredictions):
            prediction = prediction.final_scores()
        classes = prediction.argmax(dim=1)
        self._last_class = classes.flatten()[0]
        return (classes == self._last_class).all()

    def dead_head_message(self, steps: int, step: int) -> str:
        index = int(self._last_class) if self._last_class is not None else None
        name = (
            f" ({self.class_names[index]})"
            if self.class_names and index is not None and index < len(self.class_names)
            else ""
        )
        return (
            f"the segmentation head is stuck: for the last {steps} training steps (up to step {step}) it "
            f"predicted one class, {index}{name}, at every pixel; start a new run with a lower "
            "task.optimizer.lr, a longer task.scheduler.warmup_steps or trainer.gradient_clip_val set "
            "(task.dead_head_steps=0: no check)"
        )

    # ---- evaluation: mmseg's protocol (module docstring) -------------------------------------------

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Evaluation batches get their test-time views here, on the host, where cv2 resizes the uint8
        images (Lightning then moves the views to the device with the batch)."""
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        if self._trainer is not None and not self.trainer.training and "image" in batch:
            batch["views"] = self.eval_views(batch)
        return batch

    def eval_views(self, batch: dict) -> list[list[torch.Tensor]]:
        """For each image of a batch, its views (uint8 1×3×h×w, one per test ratio), each rescaled from
        the original uint8 image, without the padding."""
        images = batch["image"].cpu()
        ratios = self.predict_options["scales"]
        views = []
        for image, (height, width) in zip(images, image_sizes(batch)):
            original = denormalize_image(image[:, :height, :width])
            views.append([eval_view(original, ratio, self.eval_scale) for ratio in ratios])
        return views

    def evaluate_batch(self, batch: dict) -> torch.Tensor:
        """Class probabilities B×K×H×W for an evaluation batch: each image predicted from its views and
        resized to its own original size; the padding between images of different sizes stays 0 (its
        labels are 255, ignored by the metrics)."""
        views = batch.get("views") or self.eval_views(batch)
        device = batch["image"].device
        options = {key: value for key, value in self.predict_options.items() if key != "scales"}
        height, width = batch["image"].shape[-2:]
        out = None
        for i, (image_views, size) in enumerate(zip(views, image_sizes(batch))):
            probs = self.model.predict_views((v.to(device) for v in image_views), size, **options)
            if out is None:
                out = probs.new_zeros(len(views), probs.shape[1], height, width)
            out[i, :, : size[0], : size[1]] = probs[0]
        return out

    def evaluate(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities B×K×H×W for images of one size (uint8 or normalised), evaluated as
        validation does."""
        return self.evaluate_batch({"image": images})

    def on_metrics_computed(self, metrics: SegMetrics, stage: str) -> None:
        # per_class() reads this process's confusion matrix; inside sync_context it reads the sum
        # over all processes, as compute() did (compute()'s cached result is reused, no second sync).
        with metrics.sync_context():
            self.per_class_table = metrics.per_class_table()
        if stage == "test" and self.trainer.is_global_zero:
            print(f"\nPer-class results ({stage}):\n{self.per_class_table}", flush=True)
