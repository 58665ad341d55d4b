"""Training losses: depth (SigLoss + GradientLoss, the official DINOv2 recipe), relative depth (MiDaS'
scale-and-shift-invariant loss) and segmentation.

Depth losses take a prediction and a ground truth of shape B×1×H×W (metres). Invalid ground-truth
pixels are 0 (or beyond `max_depth`) and are masked out. Segmentation losses take logits B×C×H×W and
integer labels B×H×W, with `ignore_index` marking pixels that do not count.

Where the official DINOv2 code (dinov2/eval/depth/models/losses) defines a loss, the formula is
matched here and every choice is noted next to the line that makes it. The official GradientLoss
indexes as if maps were 2-D: on the batched B×1×H×W input it gets it slices the batch and channel
axes, and is exactly 0 for the recipe's 2 images per GPU. GradientLoss(form="toolbox") computes
exactly that (the published models were trained with it), form="correct" the per-image loss meant.

No host-device sync on the training path: the loss bodies use no boolean-mask indexing (its output
size depends on the data, so it syncs), no Python `if` on tensor values and no `.item()`/`int()`;
masked statistics are weighted sums with the float mask and edge cases are picked with torch.where.
tests/tasks/test_no_sync.py holds them to it: it traces them with torch.compile(fullgraph=True) and refuses
a graph break or any value in the graph that only the data determine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dense.core.constants import IGNORE_INDEX
from dense.core.errors import BadInputError

# ----------------------------------------------------------------------------------------------------
# Input checks shared by the losses and the metrics (dense/tasks/metrics.py imports these).
# Shape and dtype checks read only metadata and always run. The checks that look at values
# (check_finite, check_labels) cost one device sync each when the tensor is on an accelerator: fine
# for standalone use and for the metrics, but not in every training step. The losses therefore take
# `check_values` (default True); the training tasks pass False and run the same checks on the HOST,
# on the CPU batch before it is moved to the device (DenseTask.on_before_batch_transfer), and catch a
# NaN/inf loss with a device-side flag read every few steps (DenseTask.on_train_batch_end).
# ----------------------------------------------------------------------------------------------------


def check_finite(tensor: torch.Tensor, what: str, where: str) -> None:
    """Raise if `tensor` holds NaN or inf, naming which tensor (`what`) and which loss/metric (`where`)."""
    if torch.isfinite(tensor).all():
        return
    kinds = [name for name, bad in (("NaN", torch.isnan(tensor)), ("inf", torch.isinf(tensor))) if bad.any()]
    raise BadInputError(f"{where}: the {what} contains {' and '.join(kinds)} values")


def check_depth_pair(pred: torch.Tensor, target: torch.Tensor, where: str, check_values: bool = True) -> None:
    """Depth prediction and ground truth: both B×1×H×W, same shape, and (if check_values) finite."""
    for name, tensor in (("prediction", pred), ("target", target)):
        if not isinstance(tensor, torch.Tensor):
            raise BadInputError(f"{where}: the {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4 or tensor.shape[1] != 1:
            raise BadInputError(f"{where}: the {name} must be B×1×H×W, got shape {tuple(tensor.shape)}")
    if pred.shape != target.shape:
        raise BadInputError(
            f"{where}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
        )
    if check_values:
        check_finite(pred, "prediction", where)
        check_finite(target, "target", where)


def depth_valid_mask(target: torch.Tensor, valid_mask: bool, max_depth: float | None) -> torch.Tensor:
    """Upstream's validity rule: gt > 0, and gt <= max_depth when set (inclusive, as upstream);
    with valid_mask=False every pixel counts."""
    if not valid_mask:
        return torch.ones_like(target, dtype=torch.bool)
    mask = target > 0
    if max_depth is not None:
        mask = mask & (target <= max_depth)
    return mask


def _log_difference(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    """log(pred + eps) - log(target + eps) at valid pixels, exactly 0 elsewhere.

    Invalid pixels are replaced by 1 with torch.where BEFORE the logs (and the difference is zeroed
    with where after): whatever sits there (0, a negative or NaN prediction) never reaches a log, so
    neither the value nor the gradient (0 · inf = NaN in backward) can leak from a pixel that does
    not count. A product with the mask would not do: NaN · 0 = NaN.
    """
    one = torch.ones((), dtype=pred.dtype, device=pred.device)
    g = torch.log(torch.where(mask, pred, one) + eps) - torch.log(torch.where(mask, target, one) + eps)
    return torch.where(mask, g, torch.zeros((), dtype=g.dtype, device=g.device))


# ----------------------------------------------------------------------------------------------------
# Depth
# ----------------------------------------------------------------------------------------------------


class SigLoss(nn.Module):
    """Scale-invariant log loss (Eigen et al. / AdaBins form), as the official DINOv2 SigLoss.

    Matched to upstream (dinov2/eval/depth/models/losses/sigloss.py):
      g    = log(pred + eps) - log(gt + eps)          eps = 1e-3 added to BOTH, inside the log
      loss = sqrt(var(g) + 0.15 * mean(g)^2)          var UNBIASED (torch.var default, divides by n-1)
      warm-up (first `warm_iter` counted calls): loss = sqrt(0.15 * mean(g)^2)
      statistics are pooled over all valid pixels of the WHOLE BATCH (upstream flattens pred[mask]),
      not computed per image.
      result is multiplied by loss_weight.
    Differences, all on purpose:
      * warm_up defaults to True here (the recipe's setting; upstream's class default is False);
      * the warm-up counter is a buffer, so it is saved in checkpoints and a resumed run continues
        exactly where it stopped (upstream keeps a Python int that restarts at 0);
      * the counter only advances in training mode (module.train()); validation calls made under
        model.eval() do not eat warm-up steps (upstream only calls the loss in training anyway);
      * no valid pixel in the batch gives 0, still attached to the graph with zero gradient
        (upstream: NaN); exactly one gives var = 0 (upstream: NaN).
    The module must be a submodule of the LightningModule for the buffer to reach the checkpoint.

    No host-device sync: mean and variance are sums weighted by the mask (n = number of valid pixels,
    mean = sum(g)/n, var = sum((g - mean)^2)/(n - 1)), the edge cases and the warm-up/full choice are
    made with torch.where on the device, and the counter advances by tensor arithmetic.
    check_values: refuse NaN/inf inputs (one sync each); the training tasks pass False and check the
        ground truth on the host instead. With False a NaN/inf at a VALID pixel gives a NaN loss;
        at an invalid pixel it is ignored.
    """

    def __init__(
        self,
        valid_mask: bool = True,
        loss_weight: float = 1.0,
        max_depth: float | None = None,
        warm_up: bool = True,
        warm_iter: int = 100,
        eps: float = 1e-3,
        check_values: bool = True,
    ):
        super().__init__()
        self.valid_mask = valid_mask
        self.loss_weight = loss_weight
        self.max_depth = max_depth
        self.check_values = check_values
        self.warm_up = warm_up
        self.warm_iter = int(warm_iter)
        self.eps = eps  # upstream: 0.001, "avoid grad explode" near gt/pred = 0
        # Counts warm-up calls made so far (saturates at warm_iter). A persistent buffer, not an int:
        # it goes into state_dict / Lightning checkpoints and follows the module across devices.
        self.register_buffer("warm_up_counter", torch.zeros((), dtype=torch.long))

    @property
    def in_warm_up(self) -> bool:
        """For inspection only (reads the counter from the device: one sync); the loss itself decides
        on the device."""
        return self.warm_up and int(self.warm_up_counter) < self.warm_iter

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_depth_pair(pred, target, "SigLoss", self.check_values)
        return self._loss(pred, target)

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss on already-checked inputs (DepthLoss checks once for both of its parts)."""
        mask = depth_valid_mask(target, self.valid_mask, self.max_depth)
        g = _log_difference(pred, target, mask, self.eps)  # 0 at invalid pixels
        n = mask.sum().to(g.dtype)  # valid pixels of the whole batch (counted exactly), on the device
        zero = torch.zeros((), dtype=g.dtype, device=g.device)

        # Whole-batch statistics over the valid pixels as weighted sums (same values as upstream's
        # g = pred[mask] ...; g.mean(); torch.var(g)). The clamps only matter in the edge cases:
        # n = 0 gives mean 0 (handled below), n = 1 gives var = 0/1 = 0 (g - mean is exactly 0 there;
        # torch.var's unbiased n - 1 would give 0/0 = NaN, as upstream).
        mean = g.sum() / n.clamp(min=1)
        centred = torch.where(mask, g - mean, zero)
        var = (centred * centred).sum() / (n - 1).clamp(min=1)  # unbiased (correction=1), as upstream
        squared = var + 0.15 * mean**2
        if self.warm_up:
            # First `warm_iter` training calls: the warm-up form sqrt(0.15 mean^2). Chosen on the device.
            warming_up = self.warm_up_counter < self.warm_iter
            squared = torch.where(warming_up, 0.15 * mean**2, squared)
            if self.training:
                # Every warm-up call counts, as upstream, even one without valid pixels; saturates at
                # warm_iter because warming_up is then False.
                self.warm_up_counter += warming_up.to(self.warm_up_counter.dtype)

        # No valid pixel: 0 instead of upstream's NaN. The sqrt is taken of 1 there, not 0: sqrt's
        # gradient at 0 is inf and 0 · inf = NaN would reach the parameters through the unused branch.
        has_valid = n > 0
        loss = torch.sqrt(torch.where(has_valid, squared, torch.ones_like(squared)))
        return torch.where(has_valid, self.loss_weight * loss, zero)


GRADIENT_FORMS = ("correct", "toolbox")


class GradientLoss(nn.Module):
    """Multi-scale gradient-matching loss on log depth (MegaDepth), in one of two forms.

    Upstream (dinov2/eval/depth/models/losses/gradientloss.py) writes it for a 2-D H×W map: with
        d = (log(pred + eps) - log(gt + eps)) * mask           eps = 1e-3
    and maps subsampled by `[::s, ::s]` for s in {1, 2, 4, 6} (its `[:: 2*i]`, i = 1..3),
        term(s) = ( sum |d[i] - d[i+2]| * m[i] m[i+2]  along the first axis
                  + sum |d[:, j] - d[:, j+2]| * m[:, j] m[:, j+2]  along the second )  /  N_s
    with N_s the valid pixels of the subsampled map, and loss = loss_weight * sum over s of term(s).

    form "correct" (default): the two axes are H and W of each image, N_s counts that image's valid
        pixels, and a batch gives the mean over images that have a valid pixel (MegaDepth's
        per-image definition). For one image it equals upstream on that H×W map.
    form "toolbox": what upstream computes on the B×1×H×W tensor its decode head really passes: the
        two axes are the batch and the channel axis. The channel axis has length 1, so the second
        sum is empty; the first compares image b with image b+2 of the subsampled batch; N_s counts
        the valid pixels of all the images kept by `[::s]`. For B <= 2 images it is exactly 0 (the
        recipe's 2 per GPU: the published DPT models were trained without this loss). Used by the
        paper recipes (configs/experiment, task.depth_loss.gradient=toolbox) to reproduce them.
    Both: a scale without valid pixels contributes 0 (upstream: 0/0 = NaN); no valid pixel at all
    gives 0, attached to the graph.

    No host-device sync: the subsampling is by shape only and every count is clamped, not tested.
    check_values: as SigLoss.
    """

    # Subsampling strides of the four scales, as upstream: [input] + [input[::2*i, ::2*i] for i in 1..3].
    STRIDES = (1, 2, 4, 6)

    def __init__(
        self,
        valid_mask: bool = True,
        loss_weight: float = 0.5,
        max_depth: float | None = None,
        eps: float = 1e-3,
        check_values: bool = True,
        form: str = "correct",
    ):
        super().__init__()
        if form not in GRADIENT_FORMS:
            raise BadInputError(
                f"GradientLoss form={form!r} is not one of {GRADIENT_FORMS} (task.depth_loss.gradient): "
                "'toolbox' reproduces upstream's batched indexing, 'correct' the per-image loss"
            )
        self.valid_mask = valid_mask
        self.loss_weight = loss_weight
        self.max_depth = max_depth
        self.eps = eps
        self.check_values = check_values
        self.form = form

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_depth_pair(pred, target, "GradientLoss", self.check_values)
        return self._loss(pred, target)

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        full_mask = depth_valid_mask(target, self.valid_mask, self.max_depth)
        # Log-difference, exactly 0 at invalid pixels (where(), not a product: nothing odd at an
        # invalid pixel can leak in, neither into the value nor into the gradient).
        diff = _log_difference(pred, target, full_mask, self.eps)
        fmask = full_mask.to(diff.dtype)
        if self.form == "toolbox":
            return self.loss_weight * self._toolbox(diff, fmask)
        return self.loss_weight * self._per_image(diff, fmask, full_mask)

    def _per_image(self, diff: torch.Tensor, fmask: torch.Tensor, full_mask: torch.Tensor) -> torch.Tensor:
        """The mean over images (with a valid pixel) of the loss of each image's H×W map."""
        per_image = diff.new_zeros(diff.shape[0])
        for s in self.STRIDES:
            d, m = diff[..., ::s, ::s], fmask[..., ::s, ::s]  # B×1×h×w: H and W only, never the batch axis
            numerator = _difference_sum(d, m, dim=2, keep=0) + _difference_sum(d, m, dim=3, keep=0)
            # count == 0 implies numerator == 0: clamp so that case adds 0 instead of NaN.
            per_image = per_image + numerator / m.sum(dim=(1, 2, 3)).clamp(min=1)
        # Weighted mean over the images that have a valid pixel (per_image is exactly 0 for the others;
        # where() keeps it so regardless). No image valid: 0 / 1 = 0, still on the graph.
        has_valid = full_mask.flatten(1).any(dim=1)
        total = torch.where(has_valid, per_image, torch.zeros_like(per_image)).sum()
        return total / has_valid.sum(dtype=per_image.dtype).clamp(min=1)

    def _toolbox(self, diff: torch.Tensor, fmask: torch.Tensor) -> torch.Tensor:
        """Upstream's 2-D indexing applied to the B×1×H×W tensor: axes 0 (batch) and 1 (channel)."""
        total = diff.new_zeros(())
        for s in self.STRIDES:
            d, m = diff[::s, ::s], fmask[::s, ::s]  # every s-th image, and channel 0
            numerator = _difference_sum(d, m, dim=0) + _difference_sum(d, m, dim=1)
            total = total + numerator / m.sum().clamp(min=1)
        return total


def _difference_sum(
    d: torch.Tensor, m: torch.Tensor, dim: int, keep: int | None = None, gap: int = 2
) -> torch.Tensor:
    """sum of |d[k] - d[k+gap]| along `dim` where both are valid, over all axes, or over all but axis
    `keep`: the MegaDepth gradient of GradientLoss (gap 2) and MiDaS' (gap 1). An axis shorter than
    gap + 1 gives 0, as upstream's empty slices."""
    n = d.shape[dim]
    if n <= gap:
        return d.new_zeros(d.shape[keep]) if keep is not None else d.new_zeros(())
    step = (d.narrow(dim, 0, n - gap) - d.narrow(dim, gap, n - gap)).abs()
    both = m.narrow(dim, 0, n - gap) * m.narrow(dim, gap, n - gap)
    terms = step * both
    if keep is None:
        return terms.sum()
    return terms.sum(dim=[a for a in range(terms.dim()) if a != keep])


class DepthLoss(nn.Module):
    """The recipe's depth loss: SigLoss (weight 1, warm-up 100 calls) + GradientLoss (weight 0.5).

    forward(pred, target) -> {"loss": total, "loss_sig": weighted SigLoss, "loss_grad": weighted
    GradientLoss}; "loss_grad" is absent when grad_weight is 0. The parts are already weighted, so
    loss == loss_sig + loss_grad.
    gradient: GradientLoss's form, "correct" (per image) or "toolbox" (upstream's batched indexing,
        0 for <= 2 images per GPU); the paper recipes set "toolbox".
    max_depth: ground truth above it does not count (None, upstream's recipe: every gt > 0 counts).
    check_values: refuse NaN/inf prediction or target (True, one sync each; standalone use). The
        training tasks pass False (no sync in the step) and check the target on the host instead.
    """

    def __init__(
        self,
        sig_weight: float = 1.0,
        grad_weight: float = 0.5,
        valid_mask: bool = True,
        max_depth: float | None = None,
        warm_up: bool = True,
        warm_iter: int = 100,
        eps: float = 1e-3,
        check_values: bool = True,
        gradient: str = "correct",
    ):
        super().__init__()
        self.check_values = check_values
        self.sig = SigLoss(valid_mask, sig_weight, max_depth, warm_up, warm_iter, eps, check_values)
        # Built even with grad_weight 0, so a wrong `gradient` is refused whatever the weight.
        grad = GradientLoss(valid_mask, grad_weight, max_depth, eps, check_values, form=gradient)
        self.grad = grad if grad_weight else None

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        check_depth_pair(pred, target, "DepthLoss", self.check_values)  # once for both parts
        parts = {"loss_sig": self.sig._loss(pred, target)}
        if self.grad is not None:
            parts["loss_grad"] = self.grad._loss(pred, target)
        return {"loss": sum(parts.values()), **parts}


# ----------------------------------------------------------------------------------------------------
# Relative depth (disparity up to scale and shift)
# ----------------------------------------------------------------------------------------------------


class ScaleShiftInvariantLoss(nn.Module):
    """MiDaS' loss for relative depth: scale-and-shift-invariant, in disparity space, with multi-scale
    gradient matching (Ranftl et al., "Towards Robust Monocular Depth Estimation", TPAMI 2020, eqs.
    5–7 and 11; the authors' code: gist ranftlr/1d6194db2e1dffa0a50c9b0a9549cbd2, linked from
    isl-org/MiDaS issue 33, `TrimmedProcrustesLoss`).

    forward(pred, target, mask) -> {"loss": total, "loss_ssi": the data term, "loss_grad": the weighted
    gradient term}; pred and target are disparities (B×1×H×W, larger = nearer), mask (B×1×H×W bool) the
    valid ground-truth pixels. Per image, over its M valid pixels:
        t(d) = median(d),  s(d) = mean |d − t(d)| (at least 1e-6),  d̂ = (d − t(d)) / s(d)
        r    = d̂(pred) − d̂(target)
        ssi  = Σ of the U smallest |r| / (2M),  U = floor((1 − trim)·M)
               (trim 0.2: the paper's trimmed loss L_ssitrim, which MiDaS and DPT train with;
               trim 0: L_ssimae, the untrimmed form)
        grad = Σ over scales k = 0..scales−1 of (Σ |r_x| + Σ |r_y|) / M_k on the map subsampled by
               2^k ([::2^k, ::2^k]): differences of r between neighbouring valid pixels, M_k the valid
               pixels of that map (the gist's normalisation; the paper's eq. 11 writes 1/M)
        loss = ssi + grad_weight·grad   (alpha = 0.5, 4 scales: the paper's and the gist's values)
    and the batch loss is the mean over the images that have a valid pixel (0 without any, on the graph).
    Where the gist and the paper differ, the paper is followed (tests/tasks/test_relative.py checks both):
      * the gist's trim does nothing: `torch.sort(res)[:k]` slices the (values, indices) pair, not
        the values, so it sums every |r|. trim=0 computes exactly that; the default 0.2 is the paper's;
      * the gist takes the median over all pixels with invalid ones as 0; here, over the valid pixels;
      * the gist averages over the whole batch's pixels; here per image, then the mean of images (the
        paper's 1/N Σ_n L(d̂ⁿ, d̂*ⁿ)).
    On one image whose every pixel is valid, trim=0 gives the gist's value.
    The prediction is normalised by its own median and deviation (not fitted by least squares to the
    target, MiDaS v1's form), so the loss is also invariant to a positive scale and any shift of the
    target. No host-device sync: medians are nanmedians over masked rows, the trim a rank test.
    """

    def __init__(
        self, trim: float = 0.2, grad_weight: float = 0.5, scales: int = 4, check_values: bool = True
    ):
        super().__init__()
        if not 0 <= trim < 1:
            raise BadInputError(f"ScaleShiftInvariantLoss: trim={trim!r} must be in [0, 1) (MiDaS: 0.2)")
        if not (isinstance(scales, int) and 1 <= scales <= 8):
            raise BadInputError(
                f"ScaleShiftInvariantLoss: scales={scales!r} must be an integer in 1–8 (MiDaS: 4)"
            )
        self.trim, self.grad_weight, self.scales = float(trim), float(grad_weight), scales
        self.check_values = check_values

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        where = "ScaleShiftInvariantLoss"
        check_depth_pair(pred, target, where, self.check_values)
        if not isinstance(mask, torch.Tensor) or mask.shape != target.shape or mask.dtype != torch.bool:
            raise BadInputError(
                f"{where}: the mask must be a bool tensor of the target's shape {tuple(target.shape)}"
            )
        residual = self.normalised(pred, mask) - self.normalised(target, mask)  # 0 at invalid pixels
        count = mask.flatten(1).sum(dim=1).to(residual.dtype)  # M per image
        ssi = self._trimmed_sum(residual, mask, count) / (2 * count.clamp(min=1))
        grad = residual.new_zeros(len(residual))
        fmask = mask.to(residual.dtype)
        for k in range(self.scales):
            step = 2**k
            r, m = residual[..., ::step, ::step], fmask[..., ::step, ::step]
            numerator = _difference_sum(r, m, dim=2, keep=0, gap=1) + _difference_sum(
                r, m, dim=3, keep=0, gap=1
            )
            grad = grad + numerator / m.sum(dim=(1, 2, 3)).clamp(min=1)
        has_valid = count > 0
        images = has_valid.sum().to(residual.dtype).clamp(min=1)
        ssi = torch.where(has_valid, ssi, torch.zeros_like(ssi)).sum() / images
        grad = self.grad_weight * torch.where(has_valid, grad, torch.zeros_like(grad)).sum() / images
        return {"loss": ssi + grad, "loss_ssi": ssi, "loss_grad": grad}

    @staticmethod
    def normalised(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(d − median) / mean absolute deviation per image, over the valid pixels; 0 at the others.
        The lower of the two middle values for an even count, as torch.median (the gist's)."""
        flat, valid = d.flatten(1), mask.flatten(1)
        nan = torch.full((), float("nan"), dtype=d.dtype, device=d.device)
        median = torch.nanmedian(torch.where(valid, flat, nan), dim=1).values
        median = torch.where(valid.any(dim=1), median, torch.zeros_like(median))  # no pixel: NaN → 0
        centred = torch.where(valid, flat - median[:, None], torch.zeros_like(flat))
        deviation = centred.abs().sum(dim=1) / valid.sum(dim=1).clamp(min=1)
        return (centred / deviation.clamp(min=1e-6)[:, None]).view_as(d)

    def _trimmed_sum(self, residual: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Per image, the sum of the floor((1 − trim)·M) smallest |r| over the valid pixels."""
        magnitude = residual.abs().flatten(1)
        inf = torch.full((), float("inf"), dtype=magnitude.dtype, device=magnitude.device)
        ordered = torch.sort(torch.where(mask.flatten(1), magnitude, inf), dim=1).values  # invalid last
        # floor in float64, as the gist's int(len(res) * (1.0 - trim)) in Python floats.
        kept = torch.floor(count.to(torch.float64) * (1.0 - self.trim))
        rank = torch.arange(ordered.shape[1], device=ordered.device, dtype=torch.float64)
        keep = rank[None, :] < kept[:, None]
        return torch.where(keep, ordered, torch.zeros_like(ordered)).sum(dim=1)


# ----------------------------------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------------------------------


def check_label_dtype(labels: torch.Tensor, what: str, where: str) -> None:
    """Integer class labels (reads only the dtype: no device sync)."""
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise BadInputError(f"{where}: the {what} must hold integer class labels, got dtype {labels.dtype}")


def check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int | None, what: str, where: str):
    """Integer labels in [0, num_classes) or equal to ignore_index."""
    check_label_dtype(labels, what, where)
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bad.any():
        values = torch.unique(labels[bad])[:5].tolist()
        ignore = f" and is not the ignore index {ignore_index}" if ignore_index is not None else ""
        raise BadInputError(
            f"{where}: the {what} has labels {values} outside [0, {num_classes - 1}]{ignore} "
            f"({int(bad.sum())} pixels)"
        )


def as_label_map(target: torch.Tensor, batch_hw: tuple[int, ...], where: str) -> torch.Tensor:
    """Accept labels as B×H×W or B×1×H×W; return B×H×W, or refuse a shape that does not match."""
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if tuple(target.shape) != tuple(batch_hw):
        raise BadInputError(
            f"{where}: target shape {tuple(target.shape)} does not match the prediction's B×H×W {tuple(batch_hw)}"
        )
    return target


class SegLoss(nn.Module):
    """Cross-entropy (ignore_index) + optional Dice and Lovasz-softmax from segmentation_models_pytorch.

    forward(logits B×C×H×W, target B×H×W int) -> {"loss": total, "loss_ce", "loss_dice",
    "loss_lovasz"}; a part is present only when its weight is non-zero, and parts are weighted.
    CE is the mean over non-ignored pixels of the batch (F.cross_entropy's mean); a batch where
    every pixel is ignored gives 0 instead of NaN.
    check_values: refuse NaN/inf logits and labels outside [0, num_classes) other than ignore_index
        (True, one sync each; standalone use). The training tasks pass False (no sync in the step) and
        check the labels on the host instead; with False an out-of-range label is NOT caught here (on
        a GPU, cross-entropy then fails with a device-side assert).
    CE and Dice are free of host-device syncs; smp's Lovasz is not (it sorts per class and skips
    absent classes with a Python `if`), so lovasz_weight > 0 costs syncs in every step.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        ce_weight: float = 1.0,
        dice_weight: float = 0.0,
        lovasz_weight: float = 0.0,
        check_values: bool = True,
    ):
        super().__init__()
        if not (ce_weight or dice_weight or lovasz_weight):
            raise BadInputError(
                "SegLoss: all loss weights are 0; set ce_weight, dice_weight or lovasz_weight"
            )
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.lovasz_weight = lovasz_weight
        self.check_values = check_values
        # smp's multiclass Dice/Lovasz take logits B×C×H×W and labels B×H×W and drop ignore_index pixels.
        # Imported only when one of them is used: cross-entropy alone needs nothing from smp.
        if dice_weight or lovasz_weight:
            import segmentation_models_pytorch as smp
        self.dice = (
            smp.losses.DiceLoss(mode="multiclass", ignore_index=ignore_index, from_logits=True)
            if dice_weight
            else None
        )
        self.lovasz = (
            smp.losses.LovaszLoss(mode="multiclass", ignore_index=ignore_index) if lovasz_weight else None
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        where = "SegLoss"
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise BadInputError(f"{where}: the prediction must be B×C×H×W logits, got {shape}")
        if logits.shape[1] != self.num_classes:
            raise BadInputError(
                f"{where}: the prediction has {logits.shape[1]} channels but num_classes is {self.num_classes}"
            )
        target = as_label_map(target, (logits.shape[0], *logits.shape[2:]), where)
        if self.check_values:
            check_finite(logits, "prediction", where)
            check_labels(target, self.num_classes, self.ignore_index, "target", where)
        else:
            check_label_dtype(target, "target", where)  # reads the dtype only: no sync
        target = target.long()

        parts = {}
        if self.ce_weight:
            # Sum / count rather than reduction="mean": identical when some pixel is valid, and 0 rather
            # than NaN (0/0) when every pixel is ignored, without a device sync to test for it.
            ce_sum = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum")
            n_valid = (target != self.ignore_index).sum().clamp(min=1)
            parts["loss_ce"] = self.ce_weight * ce_sum / n_valid
        if self.dice is not None:
            parts["loss_dice"] = self.dice_weight * self.dice(logits, target)
        if self.lovasz is not None:
            parts["loss_lovasz"] = self.lovasz_weight * self.lovasz(logits, target)
        return {"loss": sum(parts.values()), **parts}
