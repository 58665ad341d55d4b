"""DenseModel: a frozen DINOv2 or DINOv3 backbone under one head, for any input size.

    images (uint8 RGB B×3×H×W, or ImageNet-normalised float B×3×H×W; any H, W)
      → normalised once with the backbone's own mean/std, on the device (uint8: a table lookup; float:
        re-normalised from ImageNet's statistics when the backbone's differ, the DINOv3 satellite variants)
      → centre-pad to a multiple of the patch size, 14 or 16 (an odd pad's extra pixel goes bottom/right)
      → backbone.get_intermediate_tokens(layers, norm) → FeatureMaps
      → head → raw output on the head's own grid
      → depth: clamp to [min_depth, max_depth], except in training (train mode with autograd on), and
        never for a relative model (depth_mode="relative": a disparity up to scale and shift, no unit)
      → resize to the padded size, crop the padding away → B×1×H×W metres | B×K×H×W logits
        (a mask-classification head, seg_mask: its mask logits are resized and cropped, then combined
        with its class logits into Mask2Former's class scores B×K×H×W; in training the loss gets the
        per-layer class and mask logits instead, dense/core/mask_predictions.py)

The clamp follows upstream (dinov2/eval/depth/models/depther/encoder_decoder.py): `encode_decode`,
the inference path, clamps; `forward_train` hands the losses the raw head output, so a DPT head
(relu + min_depth, no upper bound) that overshoots max_depth still gets a gradient pulling it back.

Upstream resizes the padded prediction straight to H×W, which shifts it by up to half a patch; we
resize to the padded size and then crop, so the prediction stays aligned with the image. The two agree
exactly whenever H and W are multiples of the patch size (no padding).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import dense.backbones.dinov3.specs  # noqa: F401  (the DINOv3 variants register themselves)
import heads
from dense.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone, get_spec
from dense.core.errors import DenseError, shown
from dense.core.features import FeatureMaps
from dense.core.mask_predictions import MaskPredictions
from dense.core.ops import imagenet_normalised, normalisation_table, normalise_levels, resize
from dense.core.weights_file import load_weights_file

DEFAULT_DEPTH_RANGE = (1e-3, 10.0)
# What a depth model predicts: "metric" depth in metres, or "relative" disparity (larger = nearer) up to
# an unknown scale and shift per image (MiDaS' output; dense/tasks/relative_depth.py trains it).
DEPTH_MODES = ("metric", "relative")
# Upstream's multi-scale test ratios for the "ms" segmentation evaluation.
MS_SCALES = (1.0, 1.32, 1.73, 2.28, 3.0)
INFERENCE_MODES = ("whole", "slide")
MAX_SCALE = 16.0  # bounds, since each ratio and window sizes an image the model runs on
MAX_WINDOW = 16384
MAX_VIEWS = 16


def check_inference_settings(
    mode: str = "whole",
    crop_size=None,
    stride=None,
    scales=(1.0,),
    flip: bool = False,
    *,
    option_prefix: str = "",
) -> None:
    """Refuse whole/slide/multi-scale/flip settings that cannot work, before anything runs: the one check
    of DenseModel.predict, the tasks' task.test_* (option_prefix="task.test_"), eval.py and predict.py.
    Raises ValueError naming the option as `option_prefix` + its name."""
    p = option_prefix
    if mode not in INFERENCE_MODES:
        raise ValueError(f"{p}mode={mode} is not one of {', '.join(INFERENCE_MODES)}")
    if mode == "slide" and crop_size is None:
        raise ValueError(
            f"{p}mode=slide needs {p}crop_size (e.g. {p}crop_size=518; {p}stride defaults to 2/3 of it)"
        )
    sides = {}
    for key, value in (("crop_size", crop_size), ("stride", stride)):
        if value is None:
            continue
        pair = [value, value] if isinstance(value, int) else value
        if not (
            isinstance(pair, list | tuple)
            and len(pair) in (1, 2)
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_WINDOW for v in pair)
        ):
            raise ValueError(
                f"{p}{key}={value!r} must be a positive number of pixels or [height,width] of them (at most {MAX_WINDOW})"
            )
        sides[key] = (pair[0], pair[-1])
    if (
        "crop_size" in sides
        and "stride" in sides
        and any(s > c for s, c in zip(sides["stride"], sides["crop_size"]))
    ):
        raise ValueError(
            f"{p}stride={stride} is larger than {p}crop_size={crop_size}: the windows would leave pixels "
            "uncovered; use a stride of at most the window"
        )
    if not (
        isinstance(scales, list | tuple)
        and 0 < len(scales) <= MAX_VIEWS
        and all(isinstance(s, int | float) and not isinstance(s, bool) and 0 < s <= MAX_SCALE for s in scales)
    ):
        small = isinstance(scales, list | tuple) and len(scales) <= MAX_VIEWS
        numbers = small and all(isinstance(s, int | float) for s in scales)
        raise ValueError(
            f"{p}scales={list(scales) if numbers else shown(scales)} must be a list of 1 to {MAX_VIEWS} ratios in (0, {MAX_SCALE:g}] "
            "(upstream's multi-scale test: [1.0, 1.32, 1.73, 2.28, 3.0])"
        )
    if not isinstance(flip, bool):
        raise ValueError(f"{p}flip={flip!r} must be true or false")


def center_padding(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding to the next multiple; odd remainders go right/bottom."""
    # (-n) % multiple: ceil(n / multiple) · multiple − n in integers, which a .pt2 program can store.
    pad_h, pad_w = -height % multiple, -width % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def to_maps(patch_tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Patch tokens B×(h·w)×D → feature maps B×D×h×w, stored channels-last (NHWC).

    Channels-last is the tokens' own layout (no transpose copy), and the heads' convolutions and
    bilinear resizes run faster on it (on the CPU; on GPUs, cuDNN's bf16 convolutions are NHWC kernels). Convolutions keep the layout of their input, so the whole head
    runs channels-last without converting its weights.
    """
    B = patch_tokens.shape[0]
    return patch_tokens.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


class InferenceModes:
    """The inference modes (whole image, sliding windows, scales, flip) around a model's raw forward, for
    DenseModel and for an exported ONNX file run by predict.py (dense/tools/export.py OnnxDenseModel),
    which holds no backbone or head. What they need of the class: calling it on B×3×h×w images gives
    the raw output at that size (depth B×1×h×w, class logits or scores B×K×h×w), and its `task` and
    `seg_output`."""

    task: str
    seg_output: str

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        mode: str = "whole",
        *,
        crop_size: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
    ) -> torch.Tensor:
        """Inference: depth B×1×H×W (metres) or class probabilities B×K×H×W (softmax; seg_mask:
        Mask2Former's class scores, see seg_output).

        mode "whole": the image at once; "slide": overlapping crop_size windows every `stride` pixels,
        averaged where they overlap (upstream's slide_inference). `scales` resizes this image tensor by
        each ratio (e.g. MS_SCALES) to round(ratio × side), bilinear, and `flip` adds horizontally flipped
        copies; all are resized back to H×W and averaged (`predict_views`). The segmentation evaluation
        (validation, test, eval.py, predict.py) makes its views from the uint8 original with mmseg's
        size rule instead (dense.data.transforms.eval_view) and hands them to `predict_views`.
        """
        size = tuple(images.shape[-2:])
        if images.dtype == torch.uint8 and any(float(s) != 1.0 for s in scales):
            images = imagenet_normalised(images)  # resized views need floats: the float contract
        views = (resize(images, (max(1, round(size[0] * s)), max(1, round(size[1] * s)))) for s in scales)
        return self.predict_views(views, size, mode, crop_size=crop_size, stride=stride, flip=flip)

    @torch.no_grad()
    def predict_views(
        self,
        views: Iterable[torch.Tensor],
        size: tuple[int, int],
        mode: str = "whole",
        *,
        crop_size: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        flip: bool = False,
    ) -> torch.Tensor:
        """The average over prepared views of the same images (each B×3×h×w, any h×w; read once, so a
        generator keeps one view in memory at a time): depth B×1×H×W or probabilities B×K×H×W at `size`.

        Each view is predicted whole or by sliding windows (`mode`, at the view's own size), and with
        `flip` also its horizontally flipped copy (flipped back); each output is resized to `size`
        (bilinear, align_corners=False), segmentation logits are softmaxed there, and all are averaged.
        That is mmseg's aug_test (mmseg/models/segmentors/encoder_decoder.py: whole_inference and
        slide_inference resize the view's logits to ori_shape, inference softmaxes and flips back,
        aug_test averages the probabilities). Class scores (seg_output "scores", seg_mask) are averaged
        without a softmax, as Mask2Former's test-time augmentation sums them.
        """
        check_inference_settings(mode, crop_size, stride, flip=flip)
        size = (int(size[0]), int(size[1]))
        total = None
        count = 0
        for scaled in views:
            for flipped in (False, True) if flip else (False,):
                view = scaled.flip(-1) if flipped else scaled
                if mode == "slide":
                    out = self.slide_inference(
                        view, _pair(crop_size), _pair(stride or _two_thirds(crop_size))
                    )
                else:
                    out = self(view)
                if flipped:
                    out = out.flip(-1)
                out = resize(out.float(), size)
                if self.task == "segmentation" and self.seg_output == "logits":
                    out = out.softmax(dim=1)
                total = out if total is None else total + out
                count += 1
        if total is None:
            raise ValueError("predict_views needs at least one view")
        return total / count

    def slide_inference(
        self, images: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]
    ) -> torch.Tensor:
        """Raw outputs (depth or logits) of overlapping windows, averaged; windows are clipped to the image."""
        B, _, H, W = images.shape
        (crop_h, crop_w), (stride_h, stride_w) = crop, stride
        rows = max(H - crop_h + stride_h - 1, 0) // stride_h + 1
        cols = max(W - crop_w + stride_w - 1, 0) // stride_w + 1
        total = count = None
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * stride_h + crop_h, H), min(c * stride_w + crop_w, W)
                y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
                out = self(images[:, :, y1:y2, x1:x2]).float()
                if total is None:
                    total = out.new_zeros(B, out.shape[1], H, W)
                    count = out.new_zeros(1, 1, H, W)
                total[:, :, y1:y2, x1:x2] += out
                count[:, :, y1:y2, x1:x2] += 1
        return total / count


class DenseModel(nn.Module, InferenceModes):
    """Backbone + head + padding + resizing, and the inference modes (InferenceModes). Build it with
    `build_model`.

    The backbone is frozen: no gradients, never in the optimiser, always in eval mode (even after
    `model.train()`), so training a head cannot change it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        task: str,
        layers: Sequence[int],
        norm: bool,
        use_cls_token: bool,
        min_depth: float | None = None,
        max_depth: float | None = None,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        config: dict | None = None,
        depth_mode: str = "metric",
    ):
        super().__init__()
        if task not in ("depth", "segmentation"):
            raise ValueError(f"task must be 'depth' or 'segmentation', got {task!r}")
        if depth_mode not in DEPTH_MODES or (depth_mode == "relative" and task != "depth"):
            raise ValueError(
                f"depth_mode={depth_mode!r} must be one of {DEPTH_MODES} (relative: depth models only)"
            )
        self.backbone = backbone
        self.head = head
        self.task = task
        self.layers = [int(i) for i in layers]
        self.norm = norm
        self.use_cls_token = use_cls_token
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.depth_mode = depth_mode
        # Everything build_model needs to rebuild this model (stored in checkpoints).
        self.config = dict(config or {})
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        # uint8 images are normalised with the backbone's own mean/std by a table of the 256 levels per
        # channel, computed in float64 as dense.data.transforms.normalize_image computes ImageNet's: so a
        # uint8 image gives exactly what its ImageNet-normalised float copy gives (tested). A buffer, so
        # it moves with the model (no copy per call), but not persistent: checkpoints do not change.
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.register_buffer(
            "image_table", normalisation_table(self.image_mean, self.image_std), persistent=False
        )
        # Float images are ImageNet-normalised (the contract before uint8 batches, kept); a backbone
        # trained with other statistics (the DINOv3 satellite variants) gets its own through one affine
        # map per channel: (x·std_in + mean_in − mean) / std = x·scale + shift. None when they agree.
        if self.image_mean == IMAGENET_MEAN and self.image_std == IMAGENET_STD:
            self.renormalisation = None
        else:
            mean_in, std_in = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
            mean, std = torch.tensor(self.image_mean), torch.tensor(self.image_std)
            self.renormalisation = ((std_in / std).view(3, 1, 1), ((mean_in - mean) / std).view(3, 1, 1))
        self.backbone_dtype = torch.float32  # of its matrix weights: see cast_backbone
        self._compiled_tokens = None  # the compiled get_intermediate_tokens: see compile
        self._compiled_head = None  # the compiled head.forward, used when autograd is off: see compile

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    @property
    def num_classes(self) -> int | None:
        return getattr(self.head, "num_classes", None)

    @property
    def seg_output(self) -> str:
        """What a segmentation head's outputs are: "logits" (the linear heads: softmaxed before views
        are averaged) or "scores" (seg_mask: Mask2Former's class scores, averaged as they are)."""
        return getattr(self.head, "seg_output", "logits")

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: dropout/BN-free anyway, but keep the contract explicit
        return self

    # ---- speed options (the compile / precision switches of train.py, eval.py, predict.py) ---------

    def compile(self, **options) -> None:
        """torch.compile the two parts that do the work: the backbone's token extraction (always) and
        the head (for inference only, i.e. when autograd is off). The glue around them (padding, clamp,
        resize, crop) stays eager: it is cheap and its shapes change with every image size.

        Why not the head in training: its compiled backward was slower than eager everywhere we
        measured, while in inference the compiled head gains (benchmarks/BENCHMARKS.md, "GPU targets", has the
        numbers).

        Nothing is registered as a submodule, so state_dict keys do not change and checkpoints
        written with and without compile are interchangeable. `options` go to torch.compile (mode=...).
        The first call of each input shape compiles (seconds to minutes); later calls are fast.
        Call it once the backbone and head are in place: the compiled functions keep the modules they
        were made from (loading weights into them is fine; assigning a new `model.head` needs another
        compile()).
        """
        self._compiled_tokens = torch.compile(self.backbone.get_intermediate_tokens, **options)
        self._compiled_head = torch.compile(self.head.forward, **options)

    def cast_backbone(self, dtype: torch.dtype = torch.bfloat16) -> None:
        """Store the frozen backbone's matrix weights (every Linear and the patch-embedding Conv2d) in
        `dtype`; norms, layer scales, position embeddings and the class/register tokens stay float32.

        For runs under bf16 autocast only. Autocast casts each float32 weight to bf16 at every call
        (it caches no casts of weights that need no gradient), so casting once gives bit-identical
        outputs, half the backbone's weight memory (ViT-g/14: 4.5 → 2.3 GB) and no per-call copies.
        The residual stream stays float32, as under autocast. Outside autocast the backbone refuses
        to run (extract_features raises), since its matmuls would mix dtypes.
        """
        for module in self.backbone.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                module.to(dtype)
        self.backbone_dtype = dtype

    # ---- the pipeline, one step per method ------------------------------------------------------

    @property
    def default_lr(self) -> float:
        """The learning rate its head trains at when the run sets none (the head's registration)."""
        name = self.config.get("head")
        return heads.get_head_spec(name).default_lr if name else heads.registry.DEFAULT_LR

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Images as the backbone takes them, normalised with its own mean/std (before padding, so that
        the padding is the backbone's mean colour, as upstream pads normalised images with zeros):
        uint8 RGB (what the datasets give, a quarter of float32's bytes to move to the device) through
        the table; float images, ImageNet-normalised, re-normalised where the backbone's statistics differ."""
        if images.dtype == torch.uint8:
            return normalise_levels(images, self.image_table)
        if not images.is_floating_point():
            raise ValueError(f"images must be uint8 RGB or ImageNet-normalised floats, got {images.dtype}")
        if self.renormalisation is None:
            return images
        scale, shift = (t.to(images.device, images.dtype) for t in self.renormalisation)
        return images * scale + shift

    def pad(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        padding = center_padding(images.shape[-2], images.shape[-1], self.patch_size)
        if any(padding):
            images = F.pad(images, padding)
        return images, padding

    @torch.no_grad()
    def extract_features(self, padded_images: torch.Tensor) -> FeatureMaps:
        """The frozen backbone's FeatureMaps for images whose sides are multiples of the patch size."""
        device_type = padded_images.device.type
        if not padded_images.is_floating_point():
            raise ValueError(
                f"extract_features takes normalised float images, got {padded_images.dtype}: "
                "normalise uint8 images first (model.normalise) or call the model"
            )
        if self.backbone_dtype != torch.float32 and not torch.is_autocast_enabled(device_type):
            raise DenseError(
                f"the backbone's weights are stored in {self.backbone_dtype} (cast_backbone): run the model "
                f"under torch.autocast('{device_type}', dtype={self.backbone_dtype})"
            )
        get_tokens = self._compiled_tokens or self.backbone.get_intermediate_tokens
        tokens = get_tokens(padded_images, self.layers, norm=self.norm)
        B, _, H, W = padded_images.shape
        h, w = H // self.patch_size, W // self.patch_size
        patches = tuple(to_maps(t.patches, h, w) for t in tokens)
        cls_tokens = tuple(t.cls for t in tokens) if self.use_cls_token else None
        return FeatureMaps(patches, cls_tokens)

    def image_features(self, images: torch.Tensor) -> tuple[FeatureMaps, tuple[int, int, int, int]]:
        """Images (uint8 or ImageNet-normalised, any size) → (their FeatureMaps, the padding added):
        normalise, pad, run the frozen backbone. What forward and the feature cache feed the head."""
        padded, padding = self.pad(self.normalise(images))
        return self.extract_features(padded), padding

    def forward_head(self, features: FeatureMaps, padding: tuple[int, int, int, int], size: tuple[int, int]):
        """The head's output for FeatureMaps of padded images, as the model's output: clamp (depth, not in
        training) → resize to the padded size → crop the padding → H×W. (Not a decoder: the head is.)

        Training means train mode with autograd on: what DenseTask.training_step runs, on images or on
        cached features (dense.cache.forward_cached calls this too). There the losses get the raw
        depth, as upstream's; validation, eval-mode and no-grad calls (predict) are clamped.
        """
        grad = torch.is_grad_enabled()
        compiled = self._compiled_head is not None and not grad
        out = self._compiled_head(features) if compiled else self.head(features)
        left, right, top, bottom = padding
        height, width = size
        padded_size = (height + top + bottom, width + left + right)
        masks = None
        if isinstance(out, MaskPredictions):  # a mask-classification head (seg_mask)
            if self.training and grad:  # the loss samples points of the image on the head's own grid
                return out.in_image(padding, padded_size)
            masks, out = out, out.mask_logits[-1]  # resized and cropped below, then combined
        if self.task == "depth" and self.depth_mode == "metric" and not (self.training and grad):
            out = out.clamp(self.min_depth, self.max_depth)
        out = resize(out, padded_size)[..., top : top + height, left : left + width]
        return out if masks is None else masks.final_scores(out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Depth B×1×H×W in metres, or class logits (seg_mask: class scores) B×K×H×W, for B×3×H×W
        images: uint8 RGB, or ImageNet-normalised floats. (seg_mask in training: its MaskPredictions, for
        the loss.)"""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape B×3×H×W, got {tuple(images.shape)}")
        features, padding = self.image_features(images)
        return self.forward_head(features, padding, tuple(images.shape[-2:]))


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def _two_thirds(crop) -> tuple[int, int]:
    h, w = _pair(crop)
    return max(1, h * 2 // 3), max(1, w * 2 // 3)


def build_model(
    backbone: str,
    head: str,
    *,
    pretrained: bool = False,
    backbone_weights: str | os.PathLike | None = None,
    head_weights: str | os.PathLike | None = None,
    layers: Sequence[int] | None = None,
    norm: bool | None = None,
    use_cls_token: bool | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
    depth_mode: str = "metric",
    **head_options,
) -> DenseModel:
    """A DenseModel: a registered `backbone` (e.g. "vitl14", "vitg14_reg", "vitl16") under a registered
    `head` (e.g. "depth_dpt", or one of your own registered with @dense.register_head).

    pretrained / backbone_weights: official backbone weights (see build_backbone).
    head_weights: one of Meta's released head files, or a checkpoint written by train.py.
    layers: 0-based block indices (default: the head's layer set on this backbone); norm (features
    through the backbone's final LayerNorm) / use_cls_token: override the head's registered defaults.
    min_depth / max_depth (depth heads, default 0.001–10 m), num_classes (segmentation heads), and any
    other option of the head (n_bins, bins_strategy, bin_weighting, channels, dropout, …).
    depth_mode (depth heads): "metric" (metres, clamped to [min_depth, max_depth] at inference) or
    "relative" (disparity up to scale and shift, never clamped; the head is unchanged, see
    dense/tasks/relative_depth.py). Recorded in `config` only when relative, so metric checkpoints
    are as before.
    """
    backbone_spec = get_spec(backbone)
    plan = plan_head(
        backbone_spec,
        head,
        layers=layers,
        norm=norm,
        use_cls_token=use_cls_token,
        min_depth=min_depth,
        max_depth=max_depth,
        depth_mode=depth_mode,
        **head_options,
    )
    backbone_module = build_backbone(backbone_spec.name, pretrained=pretrained, weights=backbone_weights)
    model = assemble(
        backbone_module, backbone_spec, plan, pretrained=pretrained, backbone_weights=backbone_weights
    )
    if head_weights is not None:
        load_head_weights(model, head_weights)
    return model


def plan_head(
    backbone_spec,
    head: str,
    *,
    layers: Sequence[int] | None = None,
    norm: bool | None = None,
    use_cls_token: bool | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
    depth_mode: str = "metric",
    **head_options,
) -> dict:
    """build_model's checks of one head's settings on a backbone (`BackboneSpec`), before anything is
    built: the head's spec, layers, norm, use_cls_token, depth range, depth_mode and options, resolved to
    what `assemble` takes. (dense/multi_head.py plans each of its heads with it.)"""
    spec = heads.get_head_spec(head)
    backbone_name = backbone_spec.name
    layers = list(layers) if layers is not None else list(backbone_spec.layer_indices(spec.layer_set))
    if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise ValueError(f"layers={layers!r} must be a non-empty list of block indices")
    if not all(0 <= i < backbone_spec.depth for i in layers):
        raise ValueError(
            f"layers={layers}: {backbone_name} has blocks 0 to {backbone_spec.depth - 1} (0-based block indices)"
        )
    norm = spec.norm if norm is None else bool(norm)
    use_cls_token = spec.use_cls_token if use_cls_token is None else bool(use_cls_token)
    if spec.task == "depth":
        for key, value in (("min_depth", min_depth), ("max_depth", max_depth)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"{key}={value!r} must be a number of metres")
        min_depth = DEFAULT_DEPTH_RANGE[0] if min_depth is None else float(min_depth)
        max_depth = DEFAULT_DEPTH_RANGE[1] if max_depth is None else float(max_depth)
        head_options.update(min_depth=min_depth, max_depth=max_depth)
    elif min_depth is not None or max_depth is not None:
        raise ValueError(f"min_depth/max_depth are options of depth heads, not of {spec.name}")
    if depth_mode not in DEPTH_MODES or (depth_mode == "relative" and spec.task != "depth"):
        raise ValueError(
            f"depth_mode={depth_mode!r} must be one of {DEPTH_MODES} (relative: depth heads only)"
        )
    return {
        "spec": spec,
        "layers": layers,
        "norm": norm,
        "use_cls_token": use_cls_token,
        "min_depth": min_depth,
        "max_depth": max_depth,
        "depth_mode": depth_mode,
        "head_options": head_options,
    }


def assemble(
    backbone_module: nn.Module, backbone_spec, plan: dict, *, pretrained: bool = False, backbone_weights=None
) -> DenseModel:
    """The DenseModel of a planned head (`plan_head`) on a built backbone (which it holds, not copies)."""
    spec, layers, head_options = plan["spec"], plan["layers"], plan["head_options"]
    head_module = heads.build_head(
        spec.name,
        backbone_module.embed_dim,
        num_layers=len(layers),
        use_cls_token=plan["use_cls_token"],
        **head_options,
    )
    depth_mode = plan["depth_mode"]
    config = {
        "backbone": backbone_spec.name,
        "head": spec.name,
        "pretrained": bool(pretrained),
        "backbone_weights": os.fspath(backbone_weights) if backbone_weights is not None else None,
        "layers": layers,
        "norm": plan["norm"],
        "use_cls_token": plan["use_cls_token"],
        **{k: v for k, v in head_options.items() if v is not None},
        **({"depth_mode": depth_mode} if depth_mode != "metric" else {}),
    }
    return DenseModel(
        backbone_module,
        head_module,
        task=spec.task,
        layers=layers,
        norm=plan["norm"],
        use_cls_token=plan["use_cls_token"],
        min_depth=plan["min_depth"],
        max_depth=plan["max_depth"],
        image_mean=backbone_spec.image_mean,
        image_std=backbone_spec.image_std,
        config=config,
        depth_mode=depth_mode,
    )


def load_head_weights(model: DenseModel, path: str | os.PathLike) -> None:
    """Meta's released head files (`decode_head.*`) or a train.py checkpoint (`model.head.*`), strictly."""
    checkpoint = load_weights_file(path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    ours = isinstance(state, dict) and any(isinstance(k, str) and k.startswith("model.head.") for k in state)
    heads.load_released_head(
        model.head, checkpoint, prefix="model.head." if ours else "decode_head.", name=os.fspath(path)
    )
    if not ours and model.backbone.num_register_tokens:
        warnings.warn(
            f"{os.fspath(path)}: Meta's released heads were trained on backbones without registers; "
            f"on {model.config.get('backbone')} their outputs are not what they were trained for",
            stacklevel=3,
        )
