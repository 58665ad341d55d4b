"""Segmentation is evaluated as mmseg 0.x evaluates it (DINOv2's segmentation numbers come from it).

1. Scored on the ORIGINAL annotation: each view's logits are resized back to the annotation's own size
   (bilinear, align_corners=False), softmaxed and averaged before the argmax; the annotation is never
   resized, so thin structures that a nearest downscale drops still count.
2. Every test-time view is rescaled from the original uint8 image, with cv2 bilinear, to the size
   mmseg's Resize computes for ratio r: (int(long·r), int(short·r)) of img_scale, keep ratio.

Every expected value comes from a reference written here from mmseg's published code (each function
names the file it follows), never from dense's own functions; the model itself (DenseModel.forward,
the network) is the only part of ours the references call. Small test scales (eval_short_side 28 on
images of 84–112 pixels) keep the tests fast: the rule is the same as at 512.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dense
from dense.cli import evaluate as eval_script
from dense.cli.predict import run as predict_script
from dense.core.ops import imagenet_normalised
from dense.data import DenseDataModule, datamodule_from_config, pad_collate
from dense.data.transforms import denormalize_image, eval_view, eval_view_size, normalize_image
from dense.model import MS_SCALES
from dense.tasks import build_task
from tests._fixtures_data import VOC_PALETTE, save_labels, save_rgb
from tests._tiny_run import QUIET_TINY_RUN, compose_config, predict_config, train_in_process

pytestmark = pytest.mark.fidelity  # the fidelity audit: `python -m pytest -m fidelity`

IGNORE = 255
SHORT = 28  # the test-time short side of these tests (eval_short_side); upstream's is 512

# --------------------------------------------------------------------------- references (mmseg 0.x)

# mmseg's img_norm_cfg: mean and std of 0–255 values.
MMSEG_MEAN = np.array([123.675, 116.28, 103.53])
MMSEG_STD = np.array([58.395, 57.12, 57.375])


def mmseg_view_size(height: int, width: int, ratio: float, img_scale) -> tuple[int, int]:
    """mmseg/datasets/pipelines/test_time_aug.py MultiScaleFlipAug: the scale of ratio r is
    (int(img_scale[0]·r), int(img_scale[1]·r)), or (int(w·r), int(h·r)) when img_scale is None;
    Resize(keep_ratio=True) → mmcv.imrescale → mmcv.rescale_size: factor = min(max(scale) / max(h, w),
    min(scale) / min(h, w)) and _scale_size: (int(w·factor + 0.5), int(h·factor + 0.5))."""
    if img_scale is None:
        scale = (int(width * ratio), int(height * ratio))
    else:
        scale = (int(img_scale[0] * ratio), int(img_scale[1] * ratio))
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    new_w, new_h = int(width * factor + 0.5), int(height * factor + 0.5)
    return new_h, new_w


def mmseg_normalize(image: np.ndarray) -> torch.Tensor:
    """mmcv.imnormalize with mmseg's img_norm_cfg (the image is read as RGB already) → 1×3×H×W."""
    x = (image.astype(np.float64) - MMSEG_MEAN) / MMSEG_STD
    return torch.from_numpy(np.ascontiguousarray(x.astype(np.float32).transpose(2, 0, 1)))[None]


def mmseg_slide_logits(model, image: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """mmseg/models/segmentors/encoder_decoder.py slide_inference (before its rescale): windows clipped
    to the image, logits summed where they overlap and divided by the count."""
    _, _, h_img, w_img = image.shape
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds, count = 0, torch.zeros(1, 1, h_img, w_img)
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2, x2 = min(h_idx * stride + crop, h_img), min(w_idx * stride + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            logits = model(image[:, :, y1:y2, x1:x2])
            preds = preds + F.pad(logits, (x1, w_img - x2, y1, h_img - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


def mmseg_predict(model, image: np.ndarray, ratios, flip: bool, img_scale, slide=None) -> np.ndarray:
    """EncoderDecoder.aug_test over MultiScaleFlipAug's views (mmseg/models/segmentors/encoder_decoder.py):
    each view is the ORIGINAL uint8 image resized with cv2 bilinear (mmcv.imresize), flipped after the
    resize (RandomFlip), normalised; its logits (whole or slide) are resized to ori_shape (bilinear,
    align_corners=False), softmaxed, flipped back; the probabilities are averaged, then argmax."""
    height, width = image.shape[:2]
    total, views = 0, 0
    with torch.no_grad():
        for ratio in ratios:
            h, w = mmseg_view_size(height, width, ratio, img_scale)
            resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
            for flipped in (False, True) if flip else (False,):
                x = mmseg_normalize(np.ascontiguousarray(resized[:, ::-1]) if flipped else resized)
                logits = model(x) if slide is None else mmseg_slide_logits(model, x, *slide)
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
                probs = logits.softmax(dim=1)
                total = total + (probs.flip(dims=(3,)) if flipped else probs)
                views += 1
    return (total / views).argmax(dim=1)[0].numpy()


def mmseg_scores(preds, labels, num_classes: int) -> dict[str, float]:
    """mmseg/core/evaluation/metrics.py: intersect_and_union per image (ignore_index dropped, class areas
    by histogram), the four areas summed over the split, then IoU = I/U and Acc = I/label per class,
    mIoU and mAcc their nanmeans, aAcc = ΣI / Σlabel."""
    inter, union, label_area = (np.zeros(num_classes) for _ in range(3))
    for pred, label in zip(preds, labels, strict=True):
        keep = label != IGNORE
        pred, label = pred[keep].astype(np.int64), label[keep].astype(np.int64)
        area_i = np.bincount(pred[pred == label], minlength=num_classes)
        area_p = np.bincount(pred, minlength=num_classes)
        area_l = np.bincount(label, minlength=num_classes)
        inter += area_i
        union += area_p + area_l - area_i
        label_area += area_l
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, acc = inter / union, inter / label_area
    return {"mIoU": np.nanmean(iou), "mAcc": np.nanmean(acc), "aAcc": inter.sum() / label_area.sum()}


def mmseg_reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg LoadAnnotations(reduce_zero_label=True): 0 → 255, k → k − 1 (uint8 arithmetic)."""
    label = label.copy()
    label[label == 0] = 255
    label = label - 1
    label[label == 254] = 255
    return label


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def read_labels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def old_protocol_score(model, images, labels, ratios, flip, num_classes, slide=None):
    """The protocol dense used before: image and annotation resized to the test scale (bilinear /
    nearest) and the prediction scored there, on the downscaled annotation → (scores, those labels)."""
    preds, small_labels = [], []
    for image, label in zip(images, labels, strict=True):
        h, w = mmseg_view_size(*image.shape[:2], 1.0, (2048, SHORT))
        small = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        preds.append(mmseg_predict(model, small, ratios, flip, None, slide))
        small_labels.append(cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST))
    return mmseg_scores(preds, small_labels, num_classes), small_labels


# --------------------------------------------------------------------------- generated datasets


def scene(height: int, width: int, num_classes: int, seed: int, first_class: int = 0):
    """(uint8 image, uint8 labels): blocks of classes, plus one-pixel lines of two other classes on
    rows and columns ≡ 1 (mod 3), which a nearest downscale by 3 drops entirely; the image's colours
    follow the labels (plus noise), so the model's prediction is not uniform."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.uint8)
    block = 14
    for y in range(0, height, block):
        for x in range(0, width, block):
            labels[y : y + block, x : x + block] = first_class + rng.integers(0, num_classes - 3)
    line_a, line_b = first_class + num_classes - 3, first_class + num_classes - 2
    labels[1::9, :] = line_a
    labels[:, 4::9] = line_b
    colours = np.random.default_rng(99).integers(0, 256, (256, 3))
    noise = rng.integers(-20, 21, (height, width, 3))
    image = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)
    return image, labels, (line_a, line_b)


# Originals whose short side is 3× the test short side (so a nearest downscale keeps only every third
# row or column), in both orientations; their long sides are not multiples of 3.
SIZES = [(84, 112), (112, 84), (84, 130)]


def write_ade20k_val(root: Path) -> None:
    base = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        for i, (h, w) in enumerate(SIZES):
            image, labels, _ = scene(h, w, 150, seed=10 * i + (split == "training"), first_class=1)
            labels[:3, :3] = 0  # "other": ignored after reduce_zero_label
            stem = f"ADE_{split}_{i:08d}"
            save_rgb(base / "images" / split / f"{stem}.jpg", image)
            save_labels(base / "annotations" / split / f"{stem}.png", labels)


def write_voc_val(root: Path) -> None:
    base = root / "VOC2012"
    ids = [f"2007_{i:06d}" for i in range(len(SIZES))]
    for i, (h, w) in zip(ids, SIZES, strict=True):
        image, labels, _ = scene(h, w, 21, seed=int(i[-2:]) + 3)
        labels[h // 2, :] = IGNORE  # VOC's object borders
        save_rgb(base / "JPEGImages" / f"{i}.jpg", image)
        save_labels(base / "SegmentationClass" / f"{i}.png", labels, VOC_PALETTE)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split in ("train", "val"):
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def random_seg_model(num_classes: int, head: str = "seg_linear") -> dense.DenseModel:
    torch.manual_seed(0)
    model = dense.build_model("tiny14", head, num_classes=num_classes)
    # Larger class weights than the near-uniform init, so that the argmax varies across the image.
    torch.nn.init.normal_(model.head.conv_seg.weight, std=1.0)
    return model.eval()


def validate(task, datamodule) -> dict[str, float]:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    results = trainer.validate(task, datamodule=datamodule, verbose=False)[0]
    return {key.split("/", 1)[1]: value for key, value in results.items()}


# --------------------------------------------------------------------------- 1. scored on the original


CASES = {
    # dataset, writer, the reference's image paths and annotation reader, classes, prediction settings
    # (a few of upstream's ratios: the view sizes of all five are checked below)
    "ade20k_ms_flip": (
        "ade20k",
        write_ade20k_val,
        lambda root: sorted((root / "ADEChallengeData2016" / "images" / "validation").glob("*.jpg")),
        lambda image_path: mmseg_reduce_zero_label(
            read_labels(image_path.parents[2] / "annotations" / "validation" / f"{image_path.stem}.png")
        ),
        150,
        {"test_scales": [1.0, 1.32, 2.28], "test_flip": True},
    ),
    "voc_slide": (
        "voc",
        write_voc_val,
        lambda root: [
            root / "VOC2012" / "JPEGImages" / f"{i}.jpg"
            for i in (root / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
        ],
        lambda image_path: read_labels(
            image_path.parent.parent / "SegmentationClass" / f"{image_path.stem}.png"
        ),
        21,
        {"test_scales": [1.0, 1.73], "test_mode": "slide", "test_crop_size": 28, "test_stride": 19},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_scores_on_the_original_annotation_as_mmseg(tmp_path, case):
    name, write, image_paths, read_truth, num_classes, settings = CASES[case]
    write(tmp_path)
    model = random_seg_model(num_classes)
    datamodule = DenseDataModule(
        name=name,
        root=str(tmp_path),
        batch_size=2,
        val_batch_size=2,  # padded batches (the configs' default is 1)
        num_workers=0,
        crop_size=SHORT,
        short_side=SHORT,
        eval_short_side=SHORT,
    )
    task = build_task(model, datamodule, **settings)
    ours = validate(task, datamodule)

    paths = image_paths(tmp_path)
    images = [read_rgb(p) for p in paths]
    truth = [read_truth(p) for p in paths]
    assert [t.shape for t in truth] == SIZES
    slide = (28, 19) if settings.get("test_mode") == "slide" else None
    ratios, flip = settings["test_scales"], settings.get("test_flip", False)
    preds = [mmseg_predict(model, image, ratios, flip, (2048, SHORT), slide) for image in images]
    reference = mmseg_scores(preds, truth, num_classes)
    for key in ("mIoU", "mAcc", "aAcc"):
        assert ours[key] == pytest.approx(reference[key], rel=1e-6), (key, ours, reference)

    # The thin lines are gone from the annotations downscaled with nearest (by 3 along the short side
    # of the first two), so scoring there, as dense did before, gives another number.
    old, small = old_protocol_score(model, images, truth, ratios, flip, num_classes, slide)
    lines = set(np.unique(np.concatenate([t.ravel() for t in truth]))) - set(
        np.unique(np.concatenate([t.ravel() for t in small]))
    )
    assert len(lines) >= 1, "no class vanished in the downscale: the data does not test the point"
    assert abs(old["mIoU"] - ours["mIoU"]) > 0.1 * ours["mIoU"], (old, ours)


def test_each_image_of_a_padded_batch_is_predicted_at_its_own_size(tmp_path):
    """val_batch_size 3 pads the three originals to one size; each prediction still equals mmseg's on
    that image alone, and the padding is predicted as nothing (0)."""
    write_ade20k_val(tmp_path)
    model = random_seg_model(150)
    datamodule = DenseDataModule(
        name="ade20k", root=str(tmp_path), val_batch_size=3, num_workers=0, eval_short_side=SHORT
    )
    task = build_task(model, datamodule, test_scales=[1.0, 1.73], test_flip=True)
    datamodule.setup("validate")
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["image"].shape[-2:] == (112, 130)
    with torch.no_grad():
        probs = task.evaluate_batch(batch)
    paths = sorted((tmp_path / "ADEChallengeData2016" / "images" / "validation").glob("*.jpg"))
    for i, ((h, w), path) in enumerate(zip(SIZES, paths, strict=True)):
        expected = mmseg_predict(model, read_rgb(path), [1.0, 1.73], True, (2048, SHORT))
        assert np.array_equal(probs[i, :, :h, :w].argmax(0).numpy(), expected)
        assert probs[i, :, h:].abs().sum() == 0 and probs[i, :, :, w:].abs().sum() == 0


def test_the_original_uint8_image_is_recovered_exactly_from_the_batch():
    """The views are made from the uint8 image that the normalised batch holds: every level of every
    channel comes back unchanged."""
    levels = np.arange(256, dtype=np.uint8)
    image = np.stack([levels, levels[::-1], np.roll(levels, 100)], -1)[None]  # 1×256×3: all 256 levels
    assert np.array_equal(denormalize_image(normalize_image(image)), image)


def test_eval_short_side_null_evaluates_each_image_at_its_own_size(tmp_path):
    """data.eval_short_side=null (a config value, read as plain data): no test scale, so the ×1 view is
    the original itself and the others are mmseg's ratios of its own size."""
    write_voc_val(tmp_path)
    datamodule = datamodule_from_config(
        {"name": "voc", "root": str(tmp_path), "num_workers": 0, "eval_short_side": None}
    )
    assert datamodule.eval_scale is None
    task = build_task(random_seg_model(21), datamodule, test_scales=[1.0, 1.32])
    views = task.eval_views(pad_collate([datamodule.dataset("val")[0]]))[0]
    assert [tuple(v.shape[-2:]) for v in views] == [(84, 112), mmseg_view_size(84, 112, 1.32, None)]


# --------------------------------------------------------------------------- 2. views from the original


ORIGINALS = [(375, 500), (512, 683), (427, 640), (1200, 1600), (2000, 300), (100, 5000), (333, 333), (28, 37)]


@pytest.mark.parametrize("img_scale", [(2048, 512), (2048, SHORT), None])
def test_view_sizes_follow_mmseg_rule(img_scale):
    for height, width in ORIGINALS:
        for ratio in MS_SCALES:
            assert eval_view_size(height, width, ratio, img_scale) == mmseg_view_size(
                height, width, ratio, img_scale
            ), (height, width, ratio)


def test_view_sizes_differ_from_the_old_rounded_ones():
    """Before, each view was round(r × the 512 copy's size): 1 px off mmseg's at some ratios."""
    differs = 0
    for height, width in ORIGINALS:
        copy = mmseg_view_size(height, width, 1.0, (2048, 512))
        for ratio in MS_SCALES:
            old = (round(copy[0] * ratio), round(copy[1] * ratio))
            new = eval_view_size(height, width, ratio, (2048, 512))
            assert new == mmseg_view_size(height, width, ratio, (2048, 512))
            differs += old != new
    assert differs >= 5
    # VOC's common 375×500: the 512 copy is 512×683; at ×1.32 mmseg's short side is int(675.84) = 675.
    assert eval_view_size(375, 500, 1.32, (2048, 512)) == (675, 900)
    assert (round(512 * 1.32), round(683 * 1.32)) == (676, 902)


@pytest.mark.parametrize("height, width", [(1536, 2048), (1000, 1333)])
def test_views_are_cv2_rescales_of_the_original(height, width):
    y, x = np.mgrid[0:height, 0:width]
    fine = ((x * 37 + y * 91) % 256).astype(np.uint8)  # detail at the pixel scale, lost in a 512 copy
    original = np.stack([fine, fine[::-1], np.rot90(fine, 2)], -1)
    for ratio in (1.0, 3.0):
        h, w = mmseg_view_size(height, width, ratio, (2048, 512))
        expected = mmseg_normalize(cv2.resize(original, (w, h), interpolation=cv2.INTER_LINEAR))
        ours = eval_view(original, ratio, (2048, 512))  # uint8: the model normalises it
        assert ours.shape == expected.shape == (1, 3, h, w) and ours.dtype == torch.uint8
        assert torch.allclose(imagenet_normalised(ours), expected, atol=1e-6, rtol=0)
    # A large original at ×3: the old view was the 512 copy upsampled (torch bilinear to round(3 × its
    # size)), which has lost the original's detail.
    h, w = mmseg_view_size(height, width, 1.0, (2048, 512))
    copy = mmseg_normalize(cv2.resize(original, (w, h), interpolation=cv2.INTER_LINEAR))
    upsampled = F.interpolate(copy, size=(3 * h, 3 * w), mode="bilinear", align_corners=False)
    view = imagenet_normalised(eval_view(original, 3.0, (2048, 512)))
    common_h, common_w = min(view.shape[2], upsampled.shape[2]), min(view.shape[3], upsampled.shape[3])
    difference = view[..., :common_h, :common_w] - upsampled[..., :common_h, :common_w]
    assert difference.abs().mean() > 0.1
    if height == 1536:  # ×3 of short side 512 is this original's own size: the view is the original
        assert view.shape[-2:] == (1536, 2048) and upsampled.shape[-2:] == (1536, 2049)
        assert torch.allclose(view, mmseg_normalize(original), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- predict.py = eval.py


def write_folder(root: Path) -> dict[str, np.ndarray]:
    truth = {}
    for i, (h, w) in enumerate([(84, 112), (70, 56), (56, 84), (84, 84)]):
        image, labels, _ = scene(h, w, 5, seed=40 + i)
        save_rgb(root / "images" / f"s{i}.png", image)
        save_labels(root / "masks" / f"s{i}.png", labels)
        truth[f"s{i}"] = labels
    (root / "train.txt").write_text("s2\ns3\n")
    (root / "val.txt").write_text("s0\ns1\n")
    return truth


def test_predict_py_gives_the_maps_eval_py_scores(tmp_path):
    """A folder segmentation run (eval_short_side null: each image at its own size, as predict.py):
    predict.py's class maps equal mmseg's prediction, and mmseg's scorer on them gives eval.py's mIoU."""
    data = tmp_path / "data"
    truth = write_folder(data)
    run = tmp_path / "run"
    train_in_process(
        run,
        *QUIET_TINY_RUN,
        "head=seg_linear",
        "data=folder",
        f"data.root={data}",
        "data.task=segmentation",
        "data.num_classes=5",
        "data.crop_size=28",
        "data.short_side=28",
        "data.eval_short_side=null",
        "data.batch_size=2",
        "trainer.max_steps=1",
        "task.test_scales=[1.0,1.32]",
        "task.test_flip=true",
    )
    eval_cfg = compose_config(
        "eval",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"data.root={data}",  # a stored root outside the run folder is not followed: given here
        "split=val",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        f"paths.output_dir={tmp_path / 'eval'}",
    )
    predict_cfg = predict_config(
        f"ckpt={run / 'checkpoints' / 'last.ckpt'}",
        f"input={tmp_path / 'val_images'}",
        f"output={tmp_path / 'maps'}",
        "scales=[1.0,1.32]",
        "flip=true",
        "device=cpu",
    )
    scores = eval_script.evaluate(eval_cfg)
    (tmp_path / "val_images").mkdir()
    for stem in ("s0", "s1"):
        (tmp_path / "val_images" / f"{stem}.png").write_bytes((data / "images" / f"{stem}.png").read_bytes())
    assert predict_script.predict(predict_cfg) == 0

    model = dense.load_model(run / "checkpoints" / "last.ckpt")
    maps = {stem: read_labels(tmp_path / "maps" / f"{stem}.png") for stem in ("s0", "s1")}
    assert len(np.unique(np.concatenate([m.ravel() for m in maps.values()]))) > 1  # not one class everywhere
    for stem, labels in maps.items():
        image = read_rgb(data / "images" / f"{stem}.png")
        assert np.array_equal(labels, mmseg_predict(model, image, [1.0, 1.32], True, None)), stem
    reference = mmseg_scores([maps["s0"], maps["s1"]], [truth["s0"], truth["s1"]], 5)
    assert scores["mIoU"] == pytest.approx(reference["mIoU"], rel=1e-6)
    assert scores["aAcc"] == pytest.approx(reference["aAcc"], rel=1e-6)
