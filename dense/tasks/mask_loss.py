"""Mask2Former's training loss for mask-classification heads (seg_mask), on semantic label maps.

As facebookresearch/Mask2Former's published code (mask2former/modeling/matcher.py HungarianMatcher,
criterion.py SetCriterion, with detectron2's point_rend point_sample and
get_uncertain_point_coords_with_randomness) computes it, for each prediction of the head (one per
decoder layer: deep supervision, every layer matched and weighted alike):

- targets: one binary mask per class present in an image's label map (ignore pixels, 255, belong to
  no mask: they are background of every mask, as upstream's semantic mapper builds them);
- matching: Hungarian (scipy's linear_sum_assignment) on the cost
      class_weight · (−softmax(class logits)[class]) + mask_weight · BCE + dice_weight · Dice,
  the mask costs on `num_points` points drawn uniformly, the same for every query and target of an
  image; each target gets one query, the other queries are "no object";
- class loss: cross-entropy of every query against its matched class or "no object", "no object"
  weighted by `no_object_weight`;
- mask losses: per matched mask, BCE (mean over points) and Dice (+1 smoothing) on `num_points` points,
  `importance_sample_ratio` of them the most uncertain (|logit| smallest) of `oversample_ratio` ×
  `num_points` uniform candidates, the rest uniform; summed over masks and divided by the number of
  target masks in the batch (averaged over processes);
- weights (Mask2Former's ADE20K configs, MODEL.MASK_FORMER): class 2, mask 5, Dice 5, no object 0.1,
  12,544 points, oversample 3, importance 0.75.

Points are drawn in the image's own [0, 1]² coordinates: the ground truth is sampled there (bilinear,
as grid_sample with align_corners=False, zero outside), the predicted masks at the same place in the
padded frame they cover (MaskPredictions.image_box). Upstream's images are padded bottom/right with
ignore, which then counts as background; here the model's patch padding lies outside the image and is
never sampled.

Host-device syncs. The loss is built to need exactly one per call: the Hungarian matching runs on the
CPU (as upstream's), so the cost matrices of every layer and image, and which classes each image
holds, go to the host together in one transfer (`to_host`); the matched indices come back in one.
Everything before (`matching_costs`) and after (`layer_losses`) is free of syncs
(tests/tasks/test_no_sync.py traces both with fullgraph=True and counts the transfers of a whole call).
Upstream makes one transfer per layer and image, and reads the mask count with .item().
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dense.core.constants import IGNORE_INDEX
from dense.core.errors import BadInputError
from dense.core.mask_predictions import MaskPredictions
from dense.tasks.losses import as_label_map, check_finite, check_label_dtype, check_labels

# A cost that is NaN or inf (a diverged head) is matched as this instead, so that the step goes on and
# the NaN loss reaches the trainer's divergence check rather than failing inside scipy.
NONFINITE_COST = 1e9


def point_sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of N×C×H×W `maps` at N×P×2 points (x, y) in [0, 1]², N×C×P (detectron2's
    point_sample: grid_sample, align_corners=False, zero outside)."""
    return F.grid_sample(maps, 2.0 * points[:, :, None, :] - 1.0, align_corners=False).squeeze(3)


def to_frame(points: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    """Points in the image's [0, 1]² → the padded frame's, where the image is `box` (x0, y0, w, h)."""
    x0, y0, width, height = box
    if box == (0.0, 0.0, 1.0, 1.0):
        return points
    return points * points.new_tensor([width, height]) + points.new_tensor([x0, y0])


def bilinear_corners(points: torch.Tensor, height: int, width: int):
    """For points (…×2, x y in [0, 1]²) on an H×W map: the 4 pixels around each (flat indices) and their
    bilinear weights, as F.grid_sample(align_corners=False, padding_mode="zeros") weighs them (pixel
    centres at (i + 0.5) / size; a pixel outside the map weighs 0)."""
    x = points[..., 0] * width - 0.5
    y = points[..., 1] * height - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
            index = yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)
            yield index.long(), torch.where(inside, wx * wy, torch.zeros_like(wx))


def class_masks_at(labels: torch.Tensor, points: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Every class's binary mask of B×H×W `labels` (long, ignore already mapped to num_classes), sampled
    bilinearly at B×P×2 points: B×P×K. The same values as grid_sample on the B×K×H×W one-hot masks,
    without building them."""
    batch, height, width = labels.shape
    flat = labels.reshape(batch, -1)
    out = points.new_zeros(batch, points.shape[1], num_classes + 1)
    for index, weight in bilinear_corners(points, height, width):
        out.scatter_add_(2, flat.gather(1, index)[..., None], weight[..., None])
    return out[..., :num_classes]


def class_mask_at(
    labels: torch.Tensor, image: torch.Tensor, cls: torch.Tensor, points: torch.Tensor
) -> torch.Tensor:
    """The mask of class cls[n] in image image[n] of B×H×W `labels`, sampled at points[n] (N×P×2): N×P."""
    batch, height, width = labels.shape
    flat = labels.reshape(-1)
    total = points.new_zeros(points.shape[:2])
    for index, weight in bilinear_corners(points, height, width):
        found = flat[image[:, None] * (height * width) + index]
        total = total + weight * (found == cls[:, None]).to(weight.dtype)
    return total


def batch_bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE over P points of every mask logit row against every target column: B×Q×P, B×P×T → B×Q×T.

    Upstream computes BCE(x, 1) and BCE(x, 0) for every point and multiplies both by the targets. With
    BCE(x, 1) = softplus(−x) and BCE(x, 0) = softplus(x) = x + softplus(−x), the sum over points is
    Σ softplus(−x) + Σ x·(1 − t): the same value from one softplus and one product (a third of the
    work; it dominated a CPU step)."""
    positive = F.softplus(-logits)
    return (positive.sum(-1, keepdim=True) + logits @ (1 - targets)) / logits.shape[-1]


def batch_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss (+1 smoothing) of every mask row against every target column: B×Q×P, B×P×T → B×Q×T."""
    probs = logits.sigmoid()
    numerator = 2 * (probs @ targets)
    denominator = probs.sum(-1)[..., :, None] + targets.sum(-2)[..., None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class MaskClassificationLoss(nn.Module):
    """forward(MaskPredictions, labels B×H×W) → {"loss", "loss_class", "loss_mask", "loss_dice"}, each
    summed over the predictions (layers) and already weighted: loss = loss_class + loss_mask + loss_dice.

    check_values: refuse NaN/inf logits and labels outside [0, num_classes) other than ignore_index
        (one sync each; standalone use). The training task passes False and checks labels on the host.
    `random_points(n, p, device)` draws every point the loss uses (n×p×2, uniform in [0, 1]²): tests
    replace it to hand ours and a reference the same points.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        check_values: bool = True,
    ):
        super().__init__()
        if not (class_weight or mask_weight or dice_weight):
            raise BadInputError(
                "MaskClassificationLoss: all loss weights are 0; set class, mask or dice weight"
            )
        if not (isinstance(num_points, int) and 1 <= num_points <= 1 << 20):
            raise BadInputError(
                f"task.mask_loss.num_points={num_points!r} must be an integer from 1 to {1 << 20}"
            )
        if not (oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1):
            raise BadInputError(
                "task.mask_loss: oversample_ratio must be >= 1 and importance_sample_ratio in [0, 1] "
                f"(got {oversample_ratio!r}, {importance_sample_ratio!r})"
            )
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.check_values = check_values
        weights = torch.ones(self.num_classes + 1)
        weights[-1] = no_object_weight
        # Not persistent: a checkpoint keeps no copy that could override the configured weight on resume.
        self.register_buffer("class_weights", weights, persistent=False)

    def random_points(self, n: int, p: int, device: torch.device) -> torch.Tensor:
        return torch.rand(n, p, 2, device=device)

    # ---- before the matching: no sync -------------------------------------------------------------

    def prepare_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels as long, with ignore (and anything outside the classes) mapped to num_classes."""
        labels = labels.long()
        outside = (labels < 0) | (labels >= self.num_classes)
        return torch.where(outside, torch.full_like(labels, self.num_classes), labels)

    def presence(self, labels: torch.Tensor) -> torch.Tensor:
        """B×K: which classes each image's (prepared) label map holds."""
        found = labels.new_zeros(labels.shape[0], self.num_classes + 1)
        found.scatter_(1, labels.reshape(labels.shape[0], -1), 1)
        return found[:, : self.num_classes] > 0

    def matching_costs(self, predictions: MaskPredictions, labels: torch.Tensor) -> torch.Tensor:
        """The matching cost of every query against every class, L×B×Q×K (prepared labels); columns of
        classes an image does not hold are left in and dropped on the host."""
        costs = []
        for class_logits, mask_logits in zip(predictions.class_logits, predictions.mask_logits):
            batch = class_logits.shape[0]
            # One set of points per image, shared by all its queries and targets (upstream's matcher).
            points = self.random_points(batch, self.num_points, class_logits.device)
            targets = class_masks_at(labels, points, self.num_classes)  # B×P×K
            logits = point_sample(mask_logits, to_frame(points, predictions.image_box))  # B×Q×P
            cost_class = -class_logits.softmax(-1)[..., : self.num_classes]
            costs.append(
                self.mask_weight * batch_bce_cost(logits, targets)
                + self.class_weight * cost_class
                + self.dice_weight * batch_dice_cost(logits, targets)
            )
        return torch.stack(costs)

    # ---- the matching: the one host-device sync ------------------------------------------------------

    @staticmethod
    def to_host(tensor: torch.Tensor) -> np.ndarray:
        """The loss's one device → host transfer (a sync: the host waits for the device)."""
        return tensor.detach().float().cpu().numpy()

    def match(self, costs: torch.Tensor, present: torch.Tensor) -> list[tuple[np.ndarray, ...]]:
        """Per prediction (layer), (image, query, class) index arrays of the Hungarian matching, every
        image's present classes against all its queries."""
        from scipy.optimize import linear_sum_assignment  # here: train.py's start-up never pays for scipy

        layers, batch, queries, classes = costs.shape
        host = self.to_host(torch.cat((costs.reshape(-1), present.reshape(-1).to(costs.dtype))))
        cost = np.nan_to_num(
            host[: costs.numel()].reshape(layers, batch, queries, classes), nan=NONFINITE_COST
        )
        cost = np.clip(cost, -NONFINITE_COST, NONFINITE_COST)
        holds = host[costs.numel() :].reshape(batch, classes) > 0
        matches = []
        for layer in range(layers):
            images, rows, columns = [], [], []
            for b in range(batch):
                present_classes = np.flatnonzero(holds[b])
                row, column = linear_sum_assignment(cost[layer, b][:, present_classes])
                images.append(np.full(len(row), b))
                rows.append(row)
                columns.append(present_classes[column])
            matches.append(tuple(np.concatenate(a).astype(np.int64) for a in (images, rows, columns)))
        return matches

    # ---- after the matching: no sync ------------------------------------------------------------------

    def uncertain_points(self, logits: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
        """N×P×2 image points for N×1×h×w mask logits: the most uncertain of oversampled uniform candidates,
        plus uniform ones (detectron2's get_uncertain_point_coords_with_randomness, uncertainty −|logit|)."""
        n, device = logits.shape[0], logits.device
        candidates = self.random_points(n, int(self.num_points * self.oversample_ratio), device)
        uncertainty = -point_sample(logits, to_frame(candidates, box)).abs()[:, 0]  # N×P'
        num_uncertain = int(self.importance_sample_ratio * self.num_points)
        index = uncertainty.topk(num_uncertain, dim=1).indices
        chosen = candidates.gather(1, index[..., None].expand(-1, -1, 2))
        num_random = self.num_points - num_uncertain
        if num_random == 0:
            return chosen
        return torch.cat((chosen, self.random_points(n, num_random, device)), dim=1)

    def layer_losses(
        self,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        labels: torch.Tensor,
        match: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        num_masks: torch.Tensor,
        box: tuple[float, float, float, float],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unweighted class CE, mask BCE and Dice of one prediction, given its matching (device index
        tensors: image, query, class) and the batch's mask count."""
        image, query, cls = match
        target = torch.full(
            class_logits.shape[:2], self.num_classes, dtype=torch.long, device=class_logits.device
        )
        target[image, query] = cls
        loss_class = F.cross_entropy(class_logits.transpose(1, 2), target, weight=self.class_weights)
        if image.numel() == 0:  # no target in the batch: no mask terms (a shape, known on the host)
            zero = mask_logits.sum() * 0
            return loss_class, zero, zero
        masks = mask_logits[image, query][:, None]  # N×1×h×w
        with torch.no_grad():
            points = self.uncertain_points(masks, box)
            truth = class_mask_at(labels, image, cls, points)
        logits = point_sample(masks, to_frame(points, box))[:, 0]  # N×P
        loss_mask = (
            F.binary_cross_entropy_with_logits(logits, truth, reduction="none").mean(1).sum() / num_masks
        )
        probs = logits.sigmoid()
        dice = 1 - (2 * (probs * truth).sum(-1) + 1) / (probs.sum(-1) + truth.sum(-1) + 1)
        return loss_class, loss_mask, dice.sum() / num_masks

    def mask_count(self, present: torch.Tensor) -> torch.Tensor:
        """Target masks in the batch, averaged over processes, at least 1 (upstream's num_masks): on the
        device, so reading it costs no sync."""
        count = present.sum().to(torch.float32)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return count.clamp(min=1)

    def forward(self, predictions: MaskPredictions, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        where = "MaskClassificationLoss"
        if not isinstance(predictions, MaskPredictions):
            raise BadInputError(
                f"{where}: the prediction must be a mask head's MaskPredictions, got {type(predictions).__name__}"
            )
        first = predictions.mask_logits[-1]
        # Labels of any size (B×H×W or B×1×H×W): points are drawn in the image's own coordinates.
        labels = as_label_map(labels, (first.shape[0], *labels.shape[-2:]), where)
        if predictions.class_logits[-1].shape[-1] != self.num_classes + 1:
            raise BadInputError(
                f"{where}: the head predicts {predictions.class_logits[-1].shape[-1] - 1} classes "
                f"(+ no object) but num_classes is {self.num_classes}"
            )
        if self.check_values:
            for logits in (*predictions.class_logits, *predictions.mask_logits):
                check_finite(logits, "prediction", where)
            check_labels(labels, self.num_classes, self.ignore_index, "target", where)
        else:
            check_label_dtype(labels, "target", where)
        with torch.autocast(first.device.type, enabled=False):  # costs and losses in float32, as upstream
            predictions = predictions.float()
            labels = self.prepare_labels(labels)
            present = self.presence(labels)
            matches = self.match(self.matching_costs(predictions, labels), present)
            indices = torch.from_numpy(np.concatenate([np.stack(m) for m in matches], axis=1)).to(
                first.device
            )
            num_masks = self.mask_count(present)
            totals = torch.zeros(3, device=first.device)
            start = 0
            for class_logits, mask_logits, match in zip(
                predictions.class_logits, predictions.mask_logits, matches
            ):
                count = len(match[0])
                layer = indices[:, start : start + count]
                start += count
                terms = self.layer_losses(
                    class_logits, mask_logits, labels, tuple(layer), num_masks, predictions.image_box
                )
                totals = totals + torch.stack(terms)
        parts = {
            "loss_class": self.class_weight * totals[0],
            "loss_mask": self.mask_weight * totals[1],
            "loss_dice": self.dice_weight * totals[2],
        }
        return {"loss": sum(parts.values()), **parts}
