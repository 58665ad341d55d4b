"""One typed schema per config group: the keys, their types, defaults and one-line meanings, written once.

Each group's YAML files name their schema in their defaults list (`- schema`, `- schema_nyu`, ...) and
dense/cli/schema.py registers these dataclasses with Hydra's ConfigStore under those names, so Hydra
refuses an unknown key or a value of the wrong type while it composes the configuration. The same
dataclasses are
- the meanings `--help` prints (a field's `doc`), and
- the checks of what a checkpoint stores (`ModelRecord`, a data group), read as plain data by
  `check_plain`: a stored dict is compared with the fields' types, never instantiated.
Semantic checks that need code (a registered head, a folder that exists) stay where the code is.

This module imports nothing but the standard library: the entry scripts read it before torch loads.
A new option of a group is one field here (plus its value in the YAML file, and the code that uses it).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any

REQUIRED = "???"  # OmegaConf's MISSING: the YAML file must set it


def doc(
    text: str, default: Any = None, *, factory: typing.Callable[[], Any] | None = None, shown: bool = True
) -> Any:
    """A field with its one-line meaning. `--help` lists the shown fields of the groups a script uses
    (a nested group's fields below its own line); shown=False keeps a rarely changed key out of it."""
    metadata = {"doc": text, "shown": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# ---- backbone ------------------------------------------------------------------------------------


@dataclass
class BackboneConfig:
    """configs/backbone/*.yaml: the frozen backbone (dense.backbones)."""

    name: str = doc(
        "a registered backbone: DINOv2 vit*14, DINOv3 vit*16, tiny14*/tiny16* test variants",
        REQUIRED,
        shown=False,
    )
    pretrained: bool = doc("official weights (downloaded to the torch hub cache when online)", True)
    weights: str | None = doc("a local backbone weights file instead of the official one (takes precedence)")


# ---- head ----------------------------------------------------------------------------------------


@dataclass
class HeadConfig:
    """configs/head/*.yaml: one head (heads/). null: upstream's default for this head and backbone."""

    name: str = doc(
        "a registered head: depth_dpt, depth_linear, depth_linear4, seg_linear, seg_ms, seg_mask",
        REQUIRED,
        shown=False,
    )
    weights: str | None = doc("initial head weights: Meta's released head file or a train.py checkpoint")
    layers: list[int] | None = doc(
        "backbone blocks the head reads, e.g. [5,11,17,23] (null: upstream's)", shown=False
    )
    norm: bool | None = doc("the backbone's final norm on the features (null: upstream's)", shown=False)
    use_cls_token: bool | None = doc(
        "the class token beside the patch features (null: upstream's)", shown=False
    )
    min_depth: float | None = doc(
        "depth heads: metres; null: the dataset's range (NYU 0.001–10 m, KITTI 0.001–80 m; 10 m without data)"
    )
    max_depth: float | None = doc("depth heads: metres (null: the dataset's range; NYU 10 m, KITTI 80 m)")
    num_classes: int | None = doc("segmentation heads: classes (null: the dataset's)")
    options: dict[str, Any] = doc("the head's own options (heads/<name>.py), e.g. num_queries", factory=dict)


@dataclass
class MultiHeadEntry(HeadConfig):
    """One head of head=multi: a head's keys and its weight in the summed loss."""

    loss_weight: float = doc("this head's weight in the summed loss", 1.0)


@dataclass
class MultiHeadConfig:
    """configs/head/multi.yaml: several heads on one backbone pass."""

    name: str = doc("multi: several heads on one backbone pass", "multi")
    # Entries stay untyped for Hydra (dict[str, MultiHeadEntry] would refuse `+head.heads.seg4={name:seg_ms}`,
    # the way to add a head): dense.config.multi_head_entries checks each against MultiHeadEntry.
    heads: dict[str, Any] = doc(
        "{name: a head's keys + loss_weight}, e.g. head.heads.depth.name=depth_dpt; add one: +head.heads.seg4={name:seg_ms}",
        factory=dict,
    )


# ---- data ----------------------------------------------------------------------------------------

# The `_target_` the data configs carry: it only says which class the keys belong to and is never
# instantiated (dense.data.datamodule_from_config reads the keys as plain values).
DATAMODULE_TARGET = "dense.data.DenseDataModule"


@dataclass
class DataConfig:
    """The keys every data config has: the DataModule's own (dense.data.DenseDataModule)."""

    _target_: str = doc(
        "read as plain values for this class, never instantiated", DATAMODULE_TARGET, shown=False
    )
    name: str = doc(
        "a registered dataset format: synthetic, nyu, kitti, ade20k, voc, folder", REQUIRED, shown=False
    )
    root: str | None = doc("the folder that holds the dataset")
    task: str | None = doc("depth | segmentation | multi (datasets that carry both)")
    batch_size: int = doc("training images per step", 8)
    val_batch_size: int | None = doc("validation and test images per step (null: batch_size)")
    num_workers: int | None = doc("loader processes (null: one per core, less one per GPU, at most 16)")
    pin_memory: bool | None = doc(
        "pinned host memory for the copies to the GPU (null: when CUDA is available)", shown=False
    )
    persistent_workers: bool = doc(
        "keep the loader workers between epochs (no re-spawn before each epoch)", True, shown=False
    )
    augment: bool = doc("augment the train split (the format's recipe)", True)
    seed: int | None = doc("shuffle order, loader workers, augmentation (train.py: its seed)", 0, shown=False)
    drop_last: bool = doc("drop the last incomplete training batch", True, shown=False)


@dataclass
class SegmentationRecipe:
    """mmseg's segmentation training recipe (dense.data.transforms): rescale, crop, flip, photometric."""

    crop_size: Any = doc("training crop, an int or [H, W]", 512)
    short_side: int = doc("train rescale: short side short_side × ratio", 512)
    max_long_side: int = doc("the rescale's long side at most", 2048, shown=False)
    ratio_range: list[float] = doc(
        "the rescale's random ratio range", factory=lambda: [0.5, 2.0], shown=False
    )
    cat_max_ratio: float = doc(
        "a crop is redrawn while one class covers more than this share", 0.75, shown=False
    )
    eval_short_side: int | None = doc("evaluation short side (null: each image at its original size)", 512)


@dataclass
class SyntheticData(DataConfig):
    """configs/data/synthetic.yaml: procedurally rendered rooms (dense/data/synthetic.py)."""

    image_size: Any = doc("H, W (multiples of 14 avoid padding in the model)", factory=lambda: [224, 224])
    num_train: int = doc("scenes in the train split", 2000, shown=False)
    num_val: int = doc("scenes in the val split", 200, shown=False)
    num_test: int = doc("scenes in the test split", 200, shown=False)
    base_seed: int = doc("which scenes: (base_seed, split, index) seeds each one", 0, shown=False)
    shadows: bool = doc("render the objects' shadows", True, shown=False)


@dataclass
class DepthColourRecipe:
    """The colour augmentation of NYU's and KITTI's training recipe (dense.data.transforms)."""

    color_aug: str = doc(
        "toolbox: gamma on 0–255 values, as the published heads were trained | bts: on 0–1", "toolbox"
    )


@dataclass
class NyuData(DepthColourRecipe, DataConfig):
    """configs/data/nyu.yaml: NYU-Depth v2 (dense/data/nyu.py)."""

    layout: str = doc("auto | mat (the official labelled .mat) | filelist (BTS lists of 16-bit PNGs)", "auto")
    crop_size: Any = doc("training crop [H, W]", factory=lambda: [416, 544])
    depth_scale: float = doc("file lists: PNG value / depth_scale = metres", 1000.0)


@dataclass
class KittiData(DepthColourRecipe, DataConfig):
    """configs/data/kitti.yaml: KITTI Eigen split (dense/data/kitti.py)."""

    image_dir: str = doc("the RGB images' folder under root", "input")
    depth_dir: str = doc("the depth PNGs' folder under root (or KITTI's data_depth_annotated)", "gt_depth")
    crop_size: Any = doc("training crop [H, W]", factory=lambda: [352, 704])
    depth_scale: float = doc("PNG value / depth_scale = metres", 256.0)


@dataclass
class Ade20kData(SegmentationRecipe, DataConfig):
    """configs/data/ade20k.yaml: ADE20K / ADEChallengeData2016 (dense/data/ade20k.py), 150 classes."""


@dataclass
class VocData(SegmentationRecipe, DataConfig):
    """configs/data/voc.yaml: Pascal VOC 2012 (dense/data/voc.py), 21 classes."""

    use_aug: bool = doc("true: SegmentationClassAug + ImageSets/Segmentation/train_aug.txt (SBD)", False)


@dataclass
class FolderData(SegmentationRecipe, DataConfig):
    """configs/data/folder.yaml: your own images (dense/data/folder.py)."""

    depth_target: str = doc(
        "depth (root/depth, metres) | disparity (root/disparity + root/valid: relative maps, task.depth_mode=relative)",
        "depth",
    )
    depth_scale: float = doc("PNG depth: value / depth_scale = metres (.npy is read as metres)", 1000.0)
    min_depth: float = doc("depth: metres", 0.001)
    max_depth: float = doc("depth: metres", 10.0)
    num_classes: int | None = doc("segmentation: num_classes, class_names or root/classes.txt")
    class_names: Any = doc("segmentation: a list of names (null: root/classes.txt or numbers)", shown=False)
    val_fraction: float = doc("the val share without split files", 0.1, shown=False)
    crop_size: Any = doc(
        "depth: [H, W] random crop (null: whole); segmentation: null = short side, at most 512"
    )
    short_side: int | None = doc("segmentation: null = the images' own scale; 512: ADE20K's recipe")
    eval_short_side: int | None = doc("segmentation evaluation: null = each image at its own size")


# data=<name>: the schema of each format's config file, registered as data/schema_<name>.
DATA_SCHEMAS: dict[str, type[DataConfig]] = {
    "synthetic": SyntheticData,
    "nyu": NyuData,
    "kitti": KittiData,
    "ade20k": Ade20kData,
    "voc": VocData,
    "folder": FolderData,
}


# ---- task (train.py's `task:` node) --------------------------------------------------------------


@dataclass
class SchedulerConfig:
    warmup_steps: Any = doc(
        'linear warm-up from warmup_ratio × lr: steps, or a share of the run ("5%")', "5%"
    )
    warmup_ratio: float = doc("the warm-up's first rate, a share of lr", 1.0e-6, shown=False)
    decay: str | None = doc("cosine | poly | constant (null: cosine for depth, poly for segmentation)")
    power: float = doc("poly exponent", 1.0, shown=False)
    min_lr_ratio: float = doc("the decay ends at min_lr_ratio × lr", 0.0)
    decay_after_warmup: bool = doc(
        "true: the decay starts after the warm-up (PMT's), not at step 0 (mmcv's)", False, shown=False
    )


@dataclass
class DepthLossConfig:
    sig_weight: float = doc("SigLoss weight", 1.0, shown=False)
    grad_weight: float = doc("GradientLoss weight", 0.5, shown=False)
    warm_up: bool = doc("upstream's recipes: true (SigLoss' variance term after warm_iter steps)", False)
    warm_iter: int = doc("steps without SigLoss' variance term (warm_up: true)", 100, shown=False)
    gradient: str = doc(
        "correct: per-image GradientLoss | toolbox: upstream's batched indexing", "correct", shown=False
    )
    max_depth: float | None = doc("ground truth above it does not count (null: every gt > 0 counts)")


@dataclass
class RelativeLossConfig:
    trim: float = doc("drop the largest residuals per image (the paper's L_ssitrim; 0: untrimmed)", 0.2)
    grad_weight: float = doc("alpha, the multi-scale gradient-matching term's weight", 0.5, shown=False)
    scales: int = doc("gradient-matching scales (maps subsampled by 1, 2, 4, 8)", 4, shown=False)


@dataclass
class SegLossConfig:
    ce_weight: float = doc("cross-entropy weight (ignore 255)", 1.0, shown=False)
    dice_weight: float = doc("Dice weight (smp)", 0.0, shown=False)
    lovasz_weight: float = doc("Lovasz weight (smp)", 0.0, shown=False)


@dataclass
class MaskLossConfig:
    class_weight: float = doc("cross-entropy of each query's class", 2.0, shown=False)
    no_object_weight: float = doc('the "no object" class\' weight in that cross-entropy', 0.1, shown=False)
    mask_weight: float = doc("BCE of the matched masks", 5.0, shown=False)
    dice_weight: float = doc("Dice of the matched masks", 5.0, shown=False)
    num_points: int = doc("points sampled a mask", 12544, shown=False)
    oversample_ratio: float = doc("candidates for the uncertain points, × num_points", 3.0, shown=False)
    importance_sample_ratio: float = doc(
        "share of the points taken among the most uncertain", 0.75, shown=False
    )


@dataclass
class TaskConfig:
    """train.py's `task:` node: the LightningModule (dense/tasks), chosen by the head's task."""

    depth_mode: str = doc(
        "depth heads: metric (metres) | relative (disparity up to scale and shift)", "metric"
    )
    optimizer: dict[str, Any] = doc(
        "bound to the heads' parameters (AdamW; lr null: each head's own)", factory=dict
    )
    scheduler: SchedulerConfig = doc(
        "per iteration, as mmcv's iteration-based LrUpdaterHook", factory=SchedulerConfig
    )
    depth_loss: DepthLossConfig = doc("SigLoss + GradientLoss (metric depth)", factory=DepthLossConfig)
    relative_loss: RelativeLossConfig = doc(
        "MiDaS' scale-and-shift-invariant loss on disparity", factory=RelativeLossConfig
    )
    seg_loss: SegLossConfig = doc(
        "cross-entropy (ignore 255) + optional Dice / Lovasz (smp)", factory=SegLossConfig
    )
    mask_loss: MaskLossConfig = doc(
        "head=seg_mask: Mask2Former's loss, its ADE20K weights", factory=MaskLossConfig
    )
    test_mode: str = doc("whole | slide", "whole")
    test_crop_size: Any = doc("slide window, e.g. 512")
    test_stride: Any = doc("slide stride (null: 2/3 of the window)", shown=False)
    test_scales: list[float] = doc(
        "image ratios averaged (upstream ms: [1.0, 1.32, 1.73, 2.28, 3.0])", factory=lambda: [1.0]
    )
    test_flip: bool = doc("average with the horizontally flipped image", False)
    dead_head_steps: int | None = doc(
        "that many dead training steps in a row stop the run (exit 3); 0: no check", 100
    )
    init_depth_from_data: bool = doc(
        "a fresh depth head starts at the first training batch's median depth", True
    )
    best_ckpt_dtype: str = doc("fp32 | bf16: the weights in best.ckpt (last.ckpt keeps fp32)", "fp32")


# ---- train.py, eval.py, export.py: the scripts' own keys -----------------------------------------


@dataclass
class CacheConfig:
    """train.py's frozen-feature cache (dense/cache.py)."""

    features: bool = doc("true: train the head on cached backbone features, not on images", False)
    dir: str = doc(
        "where the cache's entries go (a folder per backbone/weights/layers/norm/size/dataset)",
        REQUIRED,
        shown=False,
    )
    batch_size: int = doc("images per backbone pass while filling the cache", 16)
    precision: str = doc("fp32 | bf16: the backbone's precision while filling", "fp32")


# The groups no schema types: their keys are Lightning's (trainer, logger, callbacks) and the run's
# folders (paths). Every other key of train.py's configuration is a field of a schema.
UNTYPED_GROUPS = ("trainer", "logger", "callbacks", "paths")


@dataclass
class TrainConfig:
    """configs/train.yaml: train.py's own keys (the groups have theirs)."""

    backbone: Any = doc("", shown=False)  # the groups: listed as groups, typed by their own schemas
    head: Any = doc("", shown=False)
    data: Any = doc("", shown=False)
    trainer: Any = doc("", shown=False)
    logger: Any = doc("", shown=False)
    callbacks: Any = doc("", shown=False)
    paths: Any = doc("", shown=False)
    seed: int = doc("seed_everything(seed, workers=True): head init, shuffling, augmentation", 0)
    imports: list[str] = doc(
        "your own modules to import first (their @dense.register_head etc.): imports=[my_package.heads]",
        factory=list,
    )
    ckpt_path: str | None = doc("a last.ckpt to resume from: the run continues exactly where it stopped")
    compile: Any = doc(
        "torch.compile the backbone (and the head in validation): true | false | a mode (max-autotune, ...)",
        False,
    )
    float32_matmul_precision: str | None = doc(
        "on a CUDA GPU: float32 matmuls on TF32 tensor cores (highest: full float32; null: torch's own)",
        "high",
    )
    test: bool = doc("evaluate on the test split after training (with best.ckpt)", True)
    threads: int | None = doc(
        "CPU runs: threads of the main process; null = half the cores (shared cores stall more), 0 = PyTorch's one per core"
    )
    cache: CacheConfig = doc("the frozen-feature cache (dense/cache.py)", factory=CacheConfig)
    task: TaskConfig = doc("the LightningModule (dense/tasks), chosen by the head's task", factory=TaskConfig)


@dataclass
class EvalTaskOverrides:
    """eval.py's task: node: the checkpoint's prediction settings, replaced where not null."""

    test_mode: str | None = doc("whole | slide (null: the checkpoint's)")
    test_crop_size: Any = doc("slide window (null: the checkpoint's)")
    test_stride: Any = doc("slide stride (null: the checkpoint's)")
    test_scales: list[float] | None = doc("image ratios averaged (null: the checkpoint's)")
    test_flip: bool | None = doc("average with the flipped image (null: the checkpoint's)")


@dataclass
class EvalConfig:
    """configs/eval.yaml: eval.py's own keys."""

    trainer: Any = doc("", shown=False)
    paths: Any = doc("", shown=False)
    data: Any = doc("", shown=False)  # the checkpoint's data config, replaced where not null (or data=NAME)
    ckpt_path: str = doc("a checkpoint written by train.py", REQUIRED)
    split: str = doc("val | test", "test")
    backbone_weights: str | None = doc("where the backbone weights file lies now, if it moved since training")
    seed: int = doc("seed of the evaluation", 0, shown=False)
    imports: list[str] = doc(
        "modules defining the checkpoint's own head/backbone/dataset: imports=[my_package.heads]",
        factory=list,
    )
    compile: Any = doc(
        "torch.compile the backbone and the head: true | false | a mode (max-autotune, ...)", False
    )
    float32_matmul_precision: str | None = doc(
        "on a CUDA GPU: float32 matmuls on TF32 tensor cores (highest: full float32; null: torch's own)",
        "high",
    )
    task: EvalTaskOverrides = doc(
        "the checkpoint's prediction settings, replaced where not null", factory=EvalTaskOverrides
    )


@dataclass
class ExportConfig:
    """configs/export.yaml: export.py's own keys."""

    backbone: Any = doc("", shown=False)
    head: Any = doc("", shown=False)
    ckpt: str | None = doc("checkpoint written by train.py")
    output: str = doc(
        ".onnx (ONNX Runtime, TensorRT; predict.py model=FILE.onnx) | .pt2 (torch.export.load)", "model.onnx"
    )
    fp16: bool = doc(".onnx: store the weights in float16 (half the file; computed in float32)", False)
    normalise: bool = doc(
        "true: the graph takes uint8 RGB B×3×H×W and normalises it; false: ImageNet-normalised float32", False
    )


# ---- predict.py ----------------------------------------------------------------------------------


@dataclass
class PredictConfig:
    """configs/predict.yaml: predict.py's own keys (the backbone and head groups have theirs)."""

    backbone: Any = doc("", shown=False)  # the backbone group (listed as a group)
    head: Any = doc("", shown=False)  # the head group (listed as a group)
    ckpt: str | None = doc("checkpoint written by train.py")
    model: str | None = doc("instead of ckpt: an ONNX file written by export.py, run by ONNX Runtime")
    input: str | None = doc("an image file or a folder of images (not recursive)")
    output: str | None = doc("folder for the results (created)")
    imports: list[str] = doc(
        "modules defining your own head/backbone: imports=[my_package.heads]", factory=list
    )
    device: str = doc("auto (cuda when available, else cpu) | cpu | cuda | cuda:1 | mps", "auto")
    precision: str = doc("fp32 | bf16 (autocast; the frozen backbone's weights then stored in bf16)", "fp32")
    compile: Any = doc(
        "torch.compile the backbone and the head: true | false | a mode (max-autotune, ...)", False
    )
    batch_size: int = doc("images of equal size go through together; others one at a time", 4)
    mode: str = doc("whole | slide (sliding window: crop_size, stride)", "whole")
    crop_size: Any = doc("slide: window size, an int or [h, w]")
    stride: Any = doc("slide: default 2/3 of crop_size")
    scales: list[float] = doc(
        "test-time resize ratios, e.g. [1.0, 1.32, 1.73, 2.28, 3.0] (upstream's ms)", factory=lambda: [1.0]
    )
    flip: bool = doc("also predict the horizontally flipped image and average", False)
    max_pixels: int = doc(
        "images above this (8000×8000 = 64 MP), or whose largest view would be, are skipped", 64_000_000
    )
    onnx_time_limit: float | None = doc(
        "model=FILE.onnx: seconds an image may take; past it the image is skipped; null: no limit", 600
    )
    depth_scale: float = doc("integers per metre in the 16-bit PNG: 1000 = millimetres; 256: KITTI's", 1000)
    save_npy: bool = doc("also write <stem>.npy (float32 metres)", True)
    depth_range: Any = doc(
        "colours of _color.png: auto (each image's own range) | model | [min,max] metres", "auto"
    )
    cmap: str = doc("any matplotlib colour map, e.g. magma_r, turbo", "magma_r")
    colorbar: bool = doc("draw the labelled colour bar beside each picture (false: the picture alone)", True)
    palette: str = doc("auto (the checkpoint's; else by class count) | ade20k | voc | generic", "auto")
    alpha: float = doc("overlay opacity of the class colours", 0.5)
    progress: bool = doc("progress bar on stderr", True)


# ---- what a checkpoint stores of its model -------------------------------------------------------


@dataclass
class ModelRecord:
    """A checkpoint's `dense_model` entry for one head (dense.checkpoint): build_model's arguments as
    train.py resolved them, plus the training data's class names and palette. Its other keys must be
    options of the stored head (HeadSpec.options): nothing else reaches build_model. Never instantiated:
    a stored record is checked against these fields as plain data (type_problem); a key it lacks takes
    build_model's default."""

    backbone: str = doc("the registered backbone", REQUIRED)
    head: str = doc("the registered head", REQUIRED)
    pretrained: bool = doc("official backbone weights", None)
    backbone_weights: str | None = doc("the backbone weights file (read only inside the run's folder)")
    backbone_sha256: str | None = doc("that file's sha256")
    layers: list[Any] = doc("backbone blocks the head reads", None)
    norm: bool = doc("the backbone's final norm on the features", None)
    use_cls_token: bool = doc("the class token beside the patch features", None)
    min_depth: float = doc("depth heads: metres", None)
    max_depth: float = doc("depth heads: metres", None)
    depth_mode: str = doc("relative (absent: metric); its value is checked by build_model", None)
    class_names: list[Any] = doc("segmentation: one name per class (checked by dense.checkpoint)", None)
    palette: list[Any] = doc("segmentation: one [r, g, b] per class (checked by dense.checkpoint)", None)


# ---- reading the schemas -------------------------------------------------------------------------


@functools.cache
def type_hints(schema: type) -> dict[str, Any]:
    """The fields' annotations, resolved (this module writes them as strings)."""
    return typing.get_type_hints(schema)


def field_names(schema: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(schema))


def field_docs(schema: type, prefix: str = "", shown_only: bool = False) -> dict[str, str]:
    """{dotted key: its doc}, nested dataclasses' fields included (`task.scheduler.decay`);
    shown_only: the fields `--help` lists."""
    docs = {}
    hints = type_hints(schema)
    for f in dataclasses.fields(schema):
        if shown_only and not f.metadata.get("shown", True):
            continue
        key = f"{prefix}{f.name}"
        if f.metadata.get("doc"):
            docs[key] = f.metadata["doc"]
        if dataclasses.is_dataclass(hints[f.name]):
            docs.update(field_docs(hints[f.name], key + ".", shown_only))
    return docs


def describe(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(annotation):
        return "a mapping"
    return {str: "a string", bool: "true or false", int: "an integer", float: "a number"}.get(
        annotation, "a value"
    )


def _fits(value, annotation) -> bool:
    """Whether a plain value (a checkpoint's, a composed config's) has the annotation's type. Integers
    are numbers; true/false are not."""
    if annotation is Any:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list | tuple) and all(_fits(v, args[0]) for v in value)
    if origin is dict or dataclasses.is_dataclass(annotation):
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, annotation)


def type_problem(values: dict, schema: type, prefix: str = "", required: bool = True) -> str | None:
    """The first key of `values` (plain data) whose value does not have its field's type, as
    "<prefix><key>=<value> must be <type>"; keys the schema lacks are not looked at (the caller says
    what other keys may stand there). required: the REQUIRED fields must be present."""
    hints = type_hints(schema)
    for f in dataclasses.fields(schema):
        if required and f.default == REQUIRED and f.name not in values:
            return f"{prefix}{f.name} is missing"
    for key, value in values.items():
        problem = value_problem(prefix + key, value, hints[key]) if key in hints else None
        if problem:
            return problem
    return None


def value_problem(key: str, value, annotation) -> str | None:
    """`<key>=<value> must be <type>` when a plain value does not have the annotation's type, else None."""
    if _fits(value, annotation):
        return None
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:59] + "…"
    return f"{key}={shown} must be {describe(annotation)}"
