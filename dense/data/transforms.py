"""Augmentation recipes, ImageNet normalisation and the conversion of one sample to tensors.

Every dataset hands `to_sample` a uint8 H×W×3 image plus its targets (depth float32 metres, class ids
uint8); the recipe runs them through one albumentations `Compose` so geometry is applied jointly.

Padding: albumentations' `fill_mask` is one value for every mask target, so padding a segmentation
map with 255 would also write 255 m into a depth map sharing the pipeline. Instead every geometric
transform pads all targets with 0, and a `valid` target (ones before the pipeline) records where real
pixels ended up; `to_sample` then sets depth 0 / mask 255 wherever `valid` is 0. That also covers the
corners that rotation brings in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.core.transforms_interface import DualTransform, ImageOnlyTransform

from dense.core.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, MEAN_FILL
from dense.core.errors import RecipeError
from dense.core.ops import IMAGENET_TABLE

# Depth, disparity and the validity map are "mask" targets: nearest interpolation, no pixel (colour)
# transforms.
ADDITIONAL_TARGETS = {"depth": "mask", "disparity": "mask", "valid": "mask"}
NO_DISPARITY = -1.0  # a relative disparity's "no value" (0 is a real disparity: infinitely far)


# --------------------------------------------------------------------------- tensors


# Per channel, the normalised value of each of the 256 uint8 levels: a table lookup costs less than
# float arithmetic on an H×W×3 array. The same table normalises uint8 batches on the device (dense.core.ops).
_NORMALIZE_LUT = IMAGENET_TABLE.numpy()


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 H×W×3 RGB → uint8 3×H×W: what a sample holds and the model takes (it normalises on the
    device, with the backbone's own mean/std: dense.model.DenseModel.normalise)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image_tensor expects a uint8 H×W×3 RGB array, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """uint8 H×W×3 RGB → float32 3×H×W, ImageNet-normalised on 0–1 values: (x/255 − mean) / std.
    (The float form the model also takes; the datasets hand it uint8, see image_tensor.)"""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"normalize_image expects a uint8 H×W×3 RGB array, got {image.dtype} {image.shape}")
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    out = np.empty(chw.shape, np.float32)
    for c in range(3):
        np.take(_NORMALIZE_LUT[c], chw[c], out=out[c])
    return torch.from_numpy(out)


def denormalize_image(image: torch.Tensor) -> np.ndarray:
    """A sample's image tensor (3×H×W) → uint8 H×W×3, for display and for the segmentation evaluation,
    which makes its views from the original image: a uint8 tensor (the samples' form) is transposed;
    a float one is taken as ImageNet-normalised and mapped back, which inverts `normalize_image`
    exactly (the 256 levels are far apart compared with float32 rounding)."""
    if image.dtype == torch.uint8:
        return image.detach().permute(1, 2, 0).cpu().numpy()
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    x = (image.detach().float() * std + mean).clamp(0, 1).mul(255).round().byte()
    return x.permute(1, 2, 0).cpu().numpy()


def compose(transforms: Sequence[A.BasicTransform] = (), seed: int | None = None) -> A.Compose:
    """A joint image/depth/mask/valid pipeline. Compose keeps its own RNG (albumentations 2.x ignores
    numpy's global seed), hence the explicit seed; data loader workers re-seed it (see datamodule)."""
    return A.Compose(list(transforms), additional_targets=ADDITIONAL_TARGETS, seed=seed)


def to_sample(
    transform: A.Compose,
    image: np.ndarray,
    depth: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    disparity: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """Run the recipe jointly: the one place a sample becomes tensors, each in its smallest exact dtype
    (what the loader workers hand over and the batch carries to the device): the image uint8 3×H×W (the
    model normalises it there), depth float32 1×H×W, class ids uint8 H×W when they are read as uint8
    (255 = ignore), else int64."""
    data = {"image": image, "valid": np.ones(image.shape[:2], np.uint8)}
    if depth is not None:
        data["depth"] = depth.astype(np.float32, copy=False)
    if mask is not None:
        data["mask"] = mask
    if disparity is not None:
        data["disparity"] = disparity.astype(np.float32, copy=False)
    out = transform(**data)
    valid = out["valid"].astype(bool)
    sample = {"image": image_tensor(out["image"])}
    if depth is not None:
        d = np.where(valid, out["depth"], 0.0).astype(np.float32)
        sample["depth"] = torch.from_numpy(d)[None]
    if mask is not None:
        m = out["mask"].astype(np.uint8 if out["mask"].dtype == np.uint8 else np.int64)
        m[~valid] = IGNORE_INDEX
        sample["mask"] = torch.from_numpy(m)
    if disparity is not None:
        d = np.where(valid, out["disparity"], NO_DISPARITY).astype(np.float32)
        sample["disparity"] = torch.from_numpy(d)[None]
    return sample


# --------------------------------------------------------------------------- custom transforms


class BottomCenterCrop(BaseCrop):
    """Crop height×width anchored at the bottom, centred horizontally: KITTI's KB crop (352×1216).
    A fixed `A.Crop` cannot do it because KITTI frames differ by a few pixels per drive."""

    def __init__(self, height: int, width: int, p: float = 1.0):
        super().__init__(p=p)
        self.height, self.width = height, width

    def get_params_dependent_on_data(self, params, data):
        h, w = params["shape"][:2]
        if h < self.height or w < self.width:
            raise ValueError(f"BottomCenterCrop {self.height}×{self.width} needs a larger image, got {h}×{w}")
        top, left = h - self.height, (w - self.width) // 2
        return {"crop_coords": (left, top, left + self.width, top + self.height)}


def mmseg_rescale_size(
    height: int, width: int, short_side: int = 512, max_long_side: int = 2048, ratio: float = 1.0
) -> tuple[int, int]:
    """The H×W that mmseg's `Resize(img_scale=(max_long_side, short_side), keep_ratio=True)` gives an
    image for the ratio r, exactly:
      target = (int(max_long_side·r), int(short_side·r))             Resize.random_sample_ratio truncates
      factor = min(max(target) / max(H, W), min(target) / min(H, W))  mmcv.rescale_size
      size   = (int(H·factor + 0.5), int(W·factor + 0.5))             mmcv._scale_size rounds
    (mmseg/datasets/pipelines/transforms.py, mmcv/image/geometric.py; MultiScaleFlipAug's test
    ratios truncate the same way)."""
    target = (int(max_long_side * ratio), int(short_side * ratio))
    factor = min(max(target) / max(height, width), min(target) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class RescaleShortSide(DualTransform):
    """mmseg `Resize(img_scale=(max_long_side, short_side), ratio_range, keep_ratio=True)`: one
    ratio r per call, uniform in ratio_range, then the size of `mmseg_rescale_size` (short side about
    short_side·r, long side at most max_long_side·r). Images bilinear, targets nearest (cv2, as mmcv)."""

    def __init__(
        self,
        short_side: int = 512,
        max_long_side: int = 2048,
        ratio_range: tuple[float, float] = (1.0, 1.0),
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.short_side, self.max_long_side = short_side, max_long_side
        self.ratio_range = tuple(ratio_range)

    def get_params_dependent_on_data(self, params, data):
        h, w = params["shape"][:2]
        r = self.py_random.uniform(*self.ratio_range)  # mmseg: random_sample() * (max - min) + min
        return {"size": mmseg_rescale_size(h, w, self.short_side, self.max_long_side, r), "ratio": r}

    def apply(self, img, size, **params):
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask, size, **params):
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


class CatMaxRatioCrop(BaseCrop):
    """mmseg `RandomCrop(cat_max_ratio)`: a random crop (no larger than the image; padding comes
    after), re-drawn up to 10 times while a single class covers ≥ cat_max_ratio of the labelled
    pixels, so crops of one big wall or sky region are rarer."""

    def __init__(self, height: int, width: int, cat_max_ratio: float = 0.75, p: float = 1.0):
        super().__init__(p=p)
        self.height, self.width, self.cat_max_ratio = height, width, cat_max_ratio

    def _draw(self, h: int, w: int) -> tuple[int, int, int, int]:
        top = self.py_random.randint(0, max(h - self.height, 0))
        left = self.py_random.randint(0, max(w - self.width, 0))
        return left, top, min(left + self.width, w), min(top + self.height, h)

    def get_params_dependent_on_data(self, params, data):
        h, w = params["shape"][:2]
        coords = self._draw(h, w)
        labels = data.get("mask")
        if labels is not None and self.cat_max_ratio < 1.0:
            for _ in range(10):
                x0, y0, x1, y1 = coords
                counts = np.bincount(labels[y0:y1, x0:x1].ravel(), minlength=256)[:IGNORE_INDEX]
                if np.count_nonzero(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                coords = self._draw(h, w)
        return {"crop_coords": coords}


# data.color_aug: the depth colour augmentation's two forms (GammaBrightnessColor).
COLOR_AUG_FORMS = ("toolbox", "bts")


class GammaBrightnessColor(ImageOnlyTransform):
    """The depth colour augmentation of BTS and of the Monocular-Depth-Estimation-Toolbox `ColorAug`
    (depth/datasets/pipelines/transforms.py): x**gamma, × brightness, × one factor per channel, clip.

    form "toolbox": what the toolbox computes and the published DINOv2 depth heads were trained with:
        the gamma is applied to the 0–255 values (float64, as numpy does uint8 ** float), and the
        result clipped to 0–255. That is a strong distortion: gamma 0.9 caps an image at
        255**0.9 = 146.5 (before the brightness factor), gamma 1.1 saturates every value above
        255**(1/1.1) = 154.1.
    form "bts": what BTS meant (cleinc/bts pytorch/bts_dataloader.py, augment_image on the image / 255):
        the gamma on 0–1 values, clip to 0–1.
    The result is rounded to uint8 (the toolbox hands floats to Normalize: at most half a level
    apart). The toolbox's images are BGR and ours RGB: the three colour factors are independent
    draws from one range, so which channel gets which draw does not change what the recipe does.
    """

    def __init__(
        self,
        gamma: tuple[float, float] = (0.9, 1.1),
        brightness: tuple[float, float] = (0.9, 1.1),
        color: tuple[float, float] = (0.9, 1.1),
        form: str = "bts",
        p: float = 0.5,
    ):
        super().__init__(p=p)
        if form not in COLOR_AUG_FORMS:
            raise RecipeError(
                f"data.color_aug={form!r} is not one of {COLOR_AUG_FORMS}: 'toolbox' is the upstream "
                "recipe's gamma on 0–255 values, 'bts' the gamma on 0–1 values"
            )
        self.gamma, self.brightness, self.color = tuple(gamma), tuple(brightness), tuple(color)
        self.form = form

    def get_params(self):
        return {
            "gamma": self.py_random.uniform(*self.gamma),
            "brightness": self.py_random.uniform(*self.brightness),
            "colors": np.array([self.py_random.uniform(*self.color) for _ in range(3)], np.float32),
        }

    def apply(self, img, gamma, brightness, colors, **params):
        # Each output value depends on its channel and its input value alone: computed for the 256 levels
        # of the three channels (the same arithmetic), then looked up.
        return channel_lookup(img, self.levels(LEVELS, gamma, brightness, colors))

    def levels(self, img, gamma, brightness, colors):
        """The transform of uint8 values img (…×3, RGB last), as the form computes it per pixel."""
        if self.form == "toolbox":
            x = img.astype(np.float64) ** gamma * brightness * colors.astype(np.float64)
            return (np.clip(x, 0.0, 255.0) + 0.5).astype(np.uint8)
        x = (img.astype(np.float32) / 255.0) ** gamma * brightness * colors
        return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# Every uint8 level, in each of three channels (256×1×3): what a per-value colour transform is computed
# on once, to be looked up for a whole image (channel_lookup).
LEVELS = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)


def channel_lookup(img: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 H×W×3 image → each channel's values through its column of `table` (256×1×3 uint8, as a
    per-value transform of LEVELS gives it): cv2.LUT, one pass."""
    return cv2.LUT(np.ascontiguousarray(img), np.ascontiguousarray(table))


def _scale_shift(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg PhotoMetricDistortion.convert: float32 x·alpha + beta, clipped to 0–255, truncated to uint8;
    computed for the 256 levels of uint8 x and looked up (the same values, one pass over the image)."""
    table = np.clip(np.arange(256, dtype=np.float32) * alpha + beta, 0, 255).astype(np.uint8)
    return cv2.LUT(np.ascontiguousarray(x), table)


class PhotoMetricDistortion(ImageOnlyTransform):
    """mmseg's PhotoMetricDistortion (mmseg/datasets/pipelines/transforms.py, 0.x), step for step:

      brightness (p 0.5): + uniform(-32, 32)
      mode (p 0.5): contrast first, or last
      [contrast (p 0.5): × uniform(0.5, 1.5)]              if first
      saturation (p 0.5): HSV S channel × uniform(0.5, 1.5), clipped
      hue (p 0.5): HSV H channel + randint(-18, 18) (i.e. -18…17), modulo 180
      [contrast]                                            if last
    each value step in float32, clipped to 0–255 and truncated to uint8 (mmseg's convert).

    Units: mmseg's images are uint8 all along (LoadImageFromFile's to_float32=False; Resize, crop and
    flip keep the dtype; every step returns uint8), so mmcv.bgr2hsv is OpenCV's uint8 conversion:
    H in half-degrees 0–179, S and V 0–255. hue_delta=18 is thus ±36°, and `% 180` wraps the circle.
    (OpenCV's float32 conversion would give H in 0–360: not what runs there.) mmseg works on BGR
    images, we on RGB: cv2's RGB2HSV/HSV2RGB on RGB are the same arithmetic as BGR2HSV/HSV2BGR on the
    same pixels in BGR order, so the result is the same image.
    Saturation is a multiply of S, not albumentations' ColorJitter (a blend with the grey image).
    """

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.brightness_delta = brightness_delta
        self.contrast_range, self.saturation_range = tuple(contrast_range), tuple(saturation_range)
        self.hue_delta = int(hue_delta)

    def get_params(self):
        """The draws of one call; None where a step is skipped. (mmseg draws contrast's coin at its
        place in the sequence; the draws are independent, so the order they are made in is moot.)"""
        rng = self.py_random

        def maybe(draw):
            return draw() if rng.random() < 0.5 else None

        return {
            "brightness": maybe(lambda: rng.uniform(-self.brightness_delta, self.brightness_delta)),
            "contrast_first": rng.random() < 0.5,  # mmseg's mode == 1
            "contrast": maybe(lambda: rng.uniform(*self.contrast_range)),
            "saturation": maybe(lambda: rng.uniform(*self.saturation_range)),
            # numpy's randint(-d, d) excludes d; Python's randint includes its upper bound.
            "hue": maybe(lambda: rng.randint(-self.hue_delta, self.hue_delta - 1)),
        }

    def apply(
        self, img, brightness=None, contrast_first=False, contrast=None, saturation=None, hue=None, **params
    ):
        if img.dtype != np.uint8:
            raise TypeError(f"PhotoMetricDistortion expects uint8 RGB images, got {img.dtype}")
        if brightness is not None:
            img = _scale_shift(img, beta=brightness)
        if contrast_first and contrast is not None:
            img = _scale_shift(img, alpha=contrast)
        if saturation is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[..., 1] = _scale_shift(hsv[..., 1], alpha=saturation)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if hue is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + hue) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first and contrast is not None:
            img = _scale_shift(img, alpha=contrast)
        return img


# --------------------------------------------------------------------------- recipes


def _rotate(degrees: float, p: float = 0.5) -> A.Rotate:
    # Constant 0 border for every target (`valid` then marks it "no measurement"); black image
    # corners, as upstream, which rotates before normalising.
    return A.Rotate(
        limit=degrees,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=0,
        p=p,
    )


def nyu_train(crop_size: Sequence[int] = (416, 544), color_aug: str = "toolbox") -> list[A.BasicTransform]:
    """NYU recipe of the official DINOv2 depth configs (Monocular-Depth-Estimation-Toolbox).
    color_aug: "toolbox" (what the published heads were trained with) or "bts" (GammaBrightnessColor)."""
    return [
        # NYUCrop [45:472, 43:608]: drops the white border left by the Kinect RGB/depth registration.
        A.Crop(x_min=43, y_min=45, x_max=608, y_max=472),
        _rotate(2.5),
        A.HorizontalFlip(p=0.5),
        A.RandomCrop(height=crop_size[0], width=crop_size[1]),
        GammaBrightnessColor(brightness=(0.75, 1.25), form=color_aug, p=0.5),
    ]


def kitti_eval() -> list[A.BasicTransform]:
    """KB crop: the bottom-centred 352×1216 window where the LiDAR ground truth lives."""
    return [BottomCenterCrop(352, 1216)]


def kitti_train(crop_size: Sequence[int] = (352, 704), color_aug: str = "toolbox") -> list[A.BasicTransform]:
    """KITTI recipe of the toolbox config used by DINOv2: KB crop, rotate ±2.5°, flip, crop, colour
    (color_aug as nyu_train)."""
    return [
        *kitti_eval(),
        _rotate(2.5),
        A.HorizontalFlip(p=0.5),
        A.RandomCrop(height=crop_size[0], width=crop_size[1]),
        GammaBrightnessColor(brightness=(0.9, 1.1), form=color_aug, p=0.5),
    ]


def photometric_distortion() -> list[A.BasicTransform]:
    """mmseg's PhotoMetricDistortion with its defaults: brightness ±32, contrast ×0.5–1.5 (before or
    after the HSV part at random), saturation ×0.5–1.5, hue -18…17 (OpenCV half-degrees), each p 0.5."""
    return [PhotoMetricDistortion()]


def seg_eval(short_side: int | None = 512, max_long_side: int = 2048) -> list[A.BasicTransform]:
    """Short side `short_side` keeping the aspect ratio (None: keep the original size): the un-augmented
    train split's resize (the feature cache reads it). Validation and test are not resized: see
    `SegRecipe` and `eval_view`."""
    return [] if short_side is None else [RescaleShortSide(short_side, max_long_side)]


def seg_train(
    crop_size: int | Sequence[int] = 512,
    short_side: int = 512,
    max_long_side: int = 2048,
    ratio_range: Sequence[float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
) -> list[A.BasicTransform]:
    """ADE20K / VOC linear-probe recipe (mmseg): random rescale, crop, flip, photometric, pad."""
    ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    return [
        RescaleShortSide(short_side, max_long_side, tuple(ratio_range)),
        CatMaxRatioCrop(ch, cw, cat_max_ratio),
        A.HorizontalFlip(p=0.5),
        *photometric_distortion(),
        # mmseg pads bottom/right; targets get 0 and `valid` turns that into mask 255.
        A.PadIfNeeded(
            min_height=ch,
            min_width=cw,
            position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=MEAN_FILL,
            fill_mask=0,
        ),
    ]


@dataclass(frozen=True)
class SegRecipe:
    """The segmentation recipe's options (the `data.*` keys of ADE20K, VOC and segmentation folders),
    and the transforms of each split:
    - augmenting: `seg_train` (mmseg's linear-probe recipe);
    - val and test: nothing; they keep the original image and annotation (mmseg scores on the untouched
      annotation; the model sees the views `eval_view` makes, at `eval_scale`);
    - the un-augmented train split (the feature cache reads it): `seg_eval`.
    """

    crop_size: int | Sequence[int] = 512
    short_side: int = 512
    max_long_side: int = 2048
    ratio_range: Sequence[float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    eval_short_side: int | None = 512

    def transforms(self, augment: bool, split: str) -> list[A.BasicTransform]:
        if augment:
            return seg_train(
                size_pair(self.crop_size),
                self.short_side,
                self.max_long_side,
                self.ratio_range,
                self.cat_max_ratio,
            )
        if split != "train":
            return []
        return seg_eval(self.eval_short_side, self.max_long_side)

    @property
    def eval_scale(self) -> tuple[int, int] | None:
        """The test-time scale (long side, short side) the evaluation views are made at."""
        return eval_scale(self.eval_short_side, self.max_long_side)


# --------------------------------------------------------------------------- test-time views (segmentation)


def eval_scale(eval_short_side: int | None, max_long_side: int = 2048) -> tuple[int, int] | None:
    """mmseg's test `img_scale` (long side, short side), e.g. (2048, 512); None (eval_short_side null):
    each image at its own size."""
    return None if eval_short_side is None else (int(max_long_side), int(eval_short_side))


def eval_view_size(height: int, width: int, ratio: float, scale: tuple[int, int] | None) -> tuple[int, int]:
    """(height, width) of the test-time view of a height×width image at `ratio`.

    mmseg 0.x MultiScaleFlipAug (mmseg/datasets/pipelines/test_time_aug.py) makes each ratio a target
    scale, (int(long·r), int(short·r)) of img_scale, or with img_scale None (int(w·r), int(h·r)) of the
    image, and Resize(keep_ratio=True) rescales into it: the same rule as in training,
    `mmseg_rescale_size` (whose factor is symmetric in the two target sides).
    """
    long_side, short_side = (width, height) if scale is None else scale
    return mmseg_rescale_size(height, width, short_side, long_side, ratio)


def eval_view(image: np.ndarray, ratio: float, scale: tuple[int, int] | None) -> torch.Tensor:
    """The test-time view of an original uint8 H×W×3 image at `ratio`: uint8 1×3×h×w (the model
    normalises it).

    As mmseg's test pipeline: the uint8 image is rescaled to `eval_view_size` with cv2 bilinear
    (mmcv.imresize's cv2 backend, INTER_LINEAR), then normalised. The view is made from the original
    every time, never from another view, so a ×3 view of a large image keeps the original's detail.
    Flipped views are the flipped resized view (mmseg's RandomFlip follows Resize): DenseModel.predict_views.
    """
    height, width = image.shape[:2]
    size = eval_view_size(height, width, ratio, scale)
    if size != (height, width):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return image_tensor(image)[None]


def depth_train(crop_size: Sequence[int] | None = None, color_aug: str = "bts") -> list[A.BasicTransform]:
    """Generic depth recipe (synthetic scenes, image folders): flip, optional random crop padded
    with 'no depth' where the image is smaller, colour aug in BTS's 0–1 form by default: these
    recipes reproduce no published number, so they get the augmentation that was meant rather than
    the toolbox's, which saturates bright images."""
    crop = []
    if crop_size is not None:
        crop = [
            A.RandomCrop(
                height=crop_size[0],
                width=crop_size[1],
                pad_if_needed=True,
                pad_position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=MEAN_FILL,
                fill_mask=0,
            )
        ]
    return [
        A.HorizontalFlip(p=0.5),
        *crop,
        GammaBrightnessColor(brightness=(0.9, 1.1), form=color_aug, p=0.5),
    ]


def size_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """Config convenience: 512 → (512, 512); [416, 544] → (416, 544)."""
    if size is None:
        return None
    if isinstance(size, int | float):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


__all__ = [
    "image_tensor",
    "normalize_image",
    "denormalize_image",
    "compose",
    "to_sample",
    "BottomCenterCrop",
    "mmseg_rescale_size",
    "RescaleShortSide",
    "CatMaxRatioCrop",
    "COLOR_AUG_FORMS",
    "RecipeError",
    "GammaBrightnessColor",
    "PhotoMetricDistortion",
    "nyu_train",
    "kitti_train",
    "kitti_eval",
    "photometric_distortion",
    "seg_train",
    "seg_eval",
    "SegRecipe",
    "eval_scale",
    "eval_view_size",
    "eval_view",
    "depth_train",
    "size_pair",
]
