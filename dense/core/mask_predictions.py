"""MaskPredictions: what a mask-classification head (seg_mask) hands over, and how it becomes class scores.

A mask-classification head does not predict a class per pixel. Each of its Q queries predicts one
class (K classes and a last "no object") and one mask; Mask2Former's semantic inference combines them:

    scores[k, pixel] = sum over queries q of softmax(class_logits[q])[k] · sigmoid(mask_logits[q, pixel])

with the "no object" probability left out (facebookresearch/Mask2Former,
mask2former/maskformer_model.py, semantic_inference). The scores are already probabilities of a sort
(each query's class distribution weighted by its mask), so nothing softmaxes them again: DenseModel's
inference averages them over windows, scales and flips as they are, as Mask2Former's test-time
augmentation sums them (mask2former/test_time_augmentation.py).

The structure passes from the head to DenseModel, and in training on to the loss (dense/tasks/mask_loss.py):
    class_logits  per prediction, B×Q×(K+1)
    mask_logits   per prediction, B×Q×h×w on the head's own grid, which covers the PADDED image
    image_box     (x0, y0, width, height): where the image lies in that grid, as fractions of it
                  (DenseModel sets it in training, so the loss samples points inside the image only)
One prediction per decoder layer in training (deep supervision, the last is the final one); in
inference a head may return only the final one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class MaskPredictions(NamedTuple):
    class_logits: tuple[torch.Tensor, ...]
    mask_logits: tuple[torch.Tensor, ...]
    image_box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    def float(self) -> MaskPredictions:
        """The same predictions in float32 (what the loss computes in, as SegLoss gets logits.float())."""
        return self._replace(
            class_logits=tuple(t.float() for t in self.class_logits),
            mask_logits=tuple(t.float() for t in self.mask_logits),
        )

    def in_image(self, padding: tuple[int, int, int, int], padded_size: tuple[int, int]) -> MaskPredictions:
        """Record where an image lies in the padded frame the masks cover: padding (left, right, top,
        bottom) in pixels of the padded_size (height, width) frame."""
        left, _, top, _ = padding
        height, width = padded_size
        unpadded_w = width - padding[0] - padding[1]
        unpadded_h = height - padding[2] - padding[3]
        return self._replace(image_box=(left / width, top / height, unpadded_w / width, unpadded_h / height))

    def final_scores(self, mask_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Class scores B×K×H×W of the final prediction; `mask_logits` replaces its masks (DenseModel
        passes them resized to the image and cropped, as Mask2Former upsamples the mask logits
        before the sigmoid)."""
        return semantic_scores(
            self.class_logits[-1], self.mask_logits[-1] if mask_logits is None else mask_logits
        )


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """B×Q×(K+1) class logits and B×Q×H×W mask logits → B×K×H×W scores (module docstring).

    Written as one batched matrix product (B×K×Q times B×Q×HW) so that the exported graph holds
    Softmax, Sigmoid and MatMul only."""
    probs = class_logits.softmax(dim=-1)[..., :-1]  # B×Q×K, "no object" dropped after the softmax
    masks = mask_logits.sigmoid()
    batch, queries, height, width = masks.shape
    scores = probs.transpose(1, 2).to(masks.dtype) @ masks.reshape(batch, queries, height * width)
    return scores.reshape(batch, -1, height, width)
