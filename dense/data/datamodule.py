"""DenseDataModule: one LightningDataModule for every dataset, built from `configs/data/*.yaml`.

It tells the model and the training task what they need before any file is read (`task`,
`num_classes`, `class_names`, `ignore_index`, `min_depth`, `max_depth`, `eval_crop`, `eval_scale`),
builds the datasets lazily per split, and makes loading reproducible: the shuffle order and the loader workers'
seeds come from `seed`, and each worker re-seeds its copy of the albumentations pipeline (2.x keeps
its own RNG, which forked workers would otherwise share and repeat).
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from dense.core import schema
from dense.core.constants import IGNORE_INDEX, MEAN_FILL
from dense.core.errors import DatasetError, UnknownNameError
from dense.core.host_memory import keep_large_allocations
from dense.core.plain import plain, plain_value_problem
from dense.data.base import DenseDataset
from dense.data.registry import DATASETS
from dense.data.sample import DatasetInfo
from dense.data.transforms import size_pair, to_sample

SPLIT_SEED_OFFSETS = {"train": 0, "val": 1, "test": 2}
# Padding between samples of different sizes: uint8 images get the mean colour, which the model
# normalises to about 0, what a float (normalised) image gets; depth 0 = no measurement; mask ignored.
# disparity -1 = no value (transforms.NO_DISPARITY)
PAD_VALUES = {"image": 0.0, "depth": 0.0, "mask": IGNORE_INDEX, "disparity": -1.0}
MAX_DEFAULT_WORKERS = 16  # num_workers=null: one per core less one per device, at most this many


def default_num_workers() -> int:
    """What num_workers=null gives: the cores this process may run on, shared by the devices' training
    processes (one per CUDA device), less one core each for the process that runs the model, at most
    MAX_DEFAULT_WORKERS. 0 (load in the main process) on a single core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 1
    return max(0, min(cores // max(devices, 1) - 1, MAX_DEFAULT_WORKERS))


def pad_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A C×h×w image padded bottom/right to height×width: uint8 with the mean colour, floats with 0."""
    if image.dtype != torch.uint8:
        return F.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2]), value=0.0)
    out = torch.tensor(MEAN_FILL, dtype=torch.uint8).view(3, 1, 1).repeat(1, height, width)
    out[:, : image.shape[-2], : image.shape[-1]] = image
    return out


def pad_collate(batch: list[dict]) -> dict:
    """default_collate, after padding samples of different sizes to the largest (bottom/right):
    image 0, depth 0 (no measurement), mask 255 (ignore), so the metrics skip the padding. The batch's
    `image_size` (B×2, height and width before padding) tells each image's own size, at which the
    segmentation evaluation predicts and scores it."""
    if "image" not in batch[0]:  # a wrapped train set's features (the feature cache's): one fixed size
        return default_collate(batch)
    image_sizes = torch.tensor([tuple(s["image"].shape[-2:]) for s in batch], dtype=torch.long)
    sizes = {tuple(s["image"].shape[-2:]) for s in batch}
    if len(sizes) > 1:
        h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
        batch = [
            {
                k: pad_image(v, h, w)
                if k == "image"
                else F.pad(v, (0, w - v.shape[-1], 0, h - v.shape[-2]), value=PAD_VALUES[k])
                if k in PAD_VALUES
                else v
                for k, v in sample.items()
            }
            for sample in batch
        ]
    collated = default_collate(batch)
    collated["image_size"] = image_sizes
    return collated


def seed_worker(worker_id: int) -> None:
    """Set up one loader worker: one thread per library, large temporaries kept, and per-worker seeds
    derived from the loader's generator (so from `seed` and the epoch).

    Threads: the workers are the parallelism. PyTorch sets its own pool to one thread in a worker, not
    numpy's BLAS (the synthetic scenes' products ran on one BLAS thread per core in every worker: 15
    workers on 16 cores made 240 threads, and 2 workers on 2 cores loaded half as fast as one); cv2's
    threads in forked workers oversubscribe too, and can deadlock. Memory: keep_large_allocations, as the
    entry scripts do for themselves (a worker started elsewhere inherits nothing): the scenes' and
    recipes' image-sized temporaries then reuse their pages instead of faulting fresh ones in."""
    threadpool_limits(1)  # numpy's BLAS and any OpenMP library loaded; it lasts for the process
    cv2.setNumThreads(0)  # (PyTorch has set its own to 1 before this function runs)
    keep_large_allocations()
    info = get_worker_info()
    seed = info.seed % 2**32
    np.random.seed(seed)
    random.seed(seed)
    if isinstance(info.dataset, DenseDataset):
        info.dataset.reseed(seed)


class DenseDataModule(L.LightningDataModule):
    """Data for one dataset.

    name: a registered dataset (`dense.list_datasets()`: synthetic, nyu, kitti, ade20k, voc, folder
        and any registered with @dense.register_dataset)
    root: the dataset folder (unused by synthetic)
    task: "depth" | "segmentation"; only synthetic and folder let you choose
    batch_size / val_batch_size (default: batch_size)
    num_workers: loader processes; None follows the machine (default_num_workers: the cores less one
        per device); the validation and test loaders start no more than they have batches
    persistent_workers: keep the workers between epochs and validations (no re-spawn)
    pin_memory: None pins when CUDA is available (Lightning then copies batches without blocking)
    augment: apply the train recipe to the train split (False e.g. for feature caching)
    seed: shuffle order, worker seeds and the augmentation RNG
    drop_last: drop the last incomplete train batch (BatchNorm in the linear segmentation heads
        dislikes a batch of 1)
    **options: dataset-specific keys (crop sizes, depth_scale, num_train, ...); see each dataset's
        constructor. Unknown keys fail here, naming the valid ones.
    """

    def __init__(
        self,
        name: str = "synthetic",
        root: str | None = None,
        task: str | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        augment: bool = True,
        seed: int | None = 0,
        drop_last: bool = True,
        **options,
    ):
        super().__init__()
        self.dataset_cls = DATASETS.get(name)
        options = {k: plain(v) for k, v in options.items()}
        allowed = set(self.dataset_cls.option_names()) - {"augment", "seed", "task"}
        unknown = sorted(set(options) - allowed)
        # The folder first: a wrong data.root is the mistake to fix first, whatever else is wrong.
        if self.dataset_cls.needs_root:
            layout = f"; expected {self.dataset_cls.layout}" if self.dataset_cls.layout else ""
            if root is None:
                raise DatasetError(
                    f"data.root is not set; the {name} dataset needs the folder it is stored in{layout}"
                )
            if not Path(root).expanduser().is_dir():
                raise DatasetError(
                    f"data root {root} does not exist or is not a folder (set data.root=FOLDER){layout}"
                )
        if unknown:
            raise DatasetError(
                f"data.{unknown[0]} is not an option of the {name} dataset; its options: {sorted(allowed)}"
            )
        self.save_hyperparameters(logger=False)
        self.name, self.root, self.options = name, root, options
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and self.num_workers > 0  # DataLoader refuses it with 0
        self.augment, self.seed, self.drop_last = augment, 0 if seed is None else int(seed), drop_last
        self.info: DatasetInfo = self.dataset_cls.describe(root=root, task=task, **options)
        self._datasets: dict[str, DenseDataset] = {}
        self.train_set_wrapper: Callable[[Dataset], Dataset] | None = None
        self.train_set_description: str | None = None

    def wrap_train_set(
        self, wrapper: Callable[[Dataset], Dataset], *, augment: bool = True, description: str | None = None
    ) -> None:
        """Build the train split as `wrapper(dataset)`: what the entry does to train on something made
        from the images (dense.cache.use_feature_cache: the frozen backbone's cached features).

        augment=False reads the train split without its augmentation recipe (a wrapper that stores
        samples needs them deterministic); `description` is then describe_sizes()'s line, which does
        not build the wrapped split to describe it. Validation and test are not wrapped.
        """
        if "train" in self._datasets:
            raise RuntimeError("wrap_train_set must be called before the train split is built")
        if not augment:
            self.augment = False
        self.train_set_wrapper, self.train_set_description = wrapper, description

    # ---- what the model, task and metrics read
    @property
    def task(self) -> str:
        return self.info.task

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def palette(self) -> list[list[int]]:
        return self.info.class_colours

    @property
    def ignore_index(self) -> int:
        return IGNORE_INDEX

    @property
    def min_depth(self) -> float:
        return self.info.min_depth

    @property
    def max_depth(self) -> float:
        return self.info.max_depth

    @property
    def depth_target(self) -> str:
        """The depth ground truth: "depth" (metres) or "disparity" (relative maps, folder datasets)."""
        return self.info.depth_target

    @property
    def eval_crop(self) -> str | None:
        return self.info.eval_crop

    @property
    def eval_scale(self) -> tuple[int, int] | None:
        return self.info.eval_scale

    # ---- datasets
    def dataset(self, split: str) -> DenseDataset:
        """The dataset of one split ("train" augmented unless augment=False; "val", "test" not)."""
        if split not in SPLIT_SEED_OFFSETS:
            raise DatasetError(f"split {split!r} is not one of {tuple(SPLIT_SEED_OFFSETS)}")
        if split not in self._datasets:
            dataset = self.dataset_cls(
                self.root,
                split=split,
                augment=self.augment and split == "train",
                task=self.info.task,
                seed=self.seed + SPLIT_SEED_OFFSETS[split],
                **self.options,
            )
            if split == "train" and self.train_set_wrapper is not None:
                dataset = self.train_set_wrapper(dataset)
            self._datasets[split] = dataset
        return self._datasets[split]

    def describe_sizes(self) -> str:
        """One line on the sizes the model sees: the first training sample as read and after the train
        recipe, the segmentation recipe's rescale and crop, and the evaluation size. The user's images
        may be far smaller (or larger) than a recipe made for another dataset expects: a run says so."""
        # The wrapper's train split (the cache's, built when it is filled) is described by its line.
        if self.train_set_description is not None:
            return self.train_set_description
        train = self.dataset("train")
        raw = train.read(0)
        height, width = raw.image.shape[:2]
        # Through a copy of the recipe: the run's own augmentation draws stay as they were.
        sample = to_sample(copy.deepcopy(train.transform), raw.image, raw.depth, raw.mask)
        size = "×".join(str(n) for n in sample["image"].shape[-2:])
        recipe = train.recipe
        how = f"the first training image is {height}×{width}"
        if (
            self.task == "segmentation"
            and self.augment
            and recipe is not None
            and hasattr(recipe, "short_side")
        ):
            low, high = recipe.ratio_range
            how += (
                f"; the recipe rescales to short side {recipe.short_side} × {low:g}–{high:g} and crops "
                f"{'×'.join(str(n) for n in size_pair(recipe.crop_size))} (data.short_side, data.ratio_range, data.crop_size)"
            )
        scale = self.eval_scale
        evaluation = (
            "each image at its own size"
            if scale is None
            else f"views at short side {scale[1]}, long side at most {scale[0]} (data.eval_short_side)"
        )
        if self.task == "depth":
            evaluation = "whole images" + (f", scored in the {self.eval_crop} crop" if self.eval_crop else "")
        return f"training size {size} ({how}); evaluation: {evaluation}"

    def setup(self, stage: str | None = None) -> None:
        # Building the datasets here surfaces layout errors before the first step.
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage, ("train", "val", "test")):
            self.dataset(split)

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.dataset(split)
        batch_size = self.batch_size if train else self.val_batch_size
        generator = torch.Generator().manual_seed(self.seed)
        # An evaluation pass over 2 batches gains nothing from a 3rd worker, which would only start.
        workers = self.num_workers if train else min(self.num_workers, math.ceil(len(dataset) / batch_size))
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and self.drop_last and len(dataset) >= batch_size,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
            worker_init_fn=seed_worker,
            generator=generator,
            collate_fn=pad_collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


# ---- building from a config: plain values, never `instantiate` --------------------------------------

# The `_target_` our data configs carry (configs/data/*.yaml). It is not instantiated: it only says
# which class the keys belong to. Any other `_target_` is refused.
DATAMODULE_TARGET = schema.DATAMODULE_TARGET
# DenseDataModule's own keys are typed by schema.DataConfig and a format's options by its schema
# (schema.DATA_SCHEMAS); the options of a dataset registered elsewhere by its constructor's defaults.
LOADER_MINIMUMS = {"batch_size": 1, "val_batch_size": 1, "num_workers": 0}
# Bounds on what a config (possibly a checkpoint's) may ask for: processes and images per step.
LOADER_MAXIMUMS = {"batch_size": 65536, "val_batch_size": 65536, "num_workers": 256}


def _option_annotation(parameter: inspect.Parameter):
    """The type a dataset option registered without a schema accepts, from its default value (None:
    any plain value), with null where the annotation allows None (`eval_short_side: int | None = 512`)."""
    default = parameter.default
    if default is None or default is inspect.Parameter.empty:
        return Any
    kind = list[Any] if isinstance(default, list | tuple) else type(default)
    return kind | None if "None" in str(parameter.annotation) else kind


def datamodule_from_config(config, source: str | None = None) -> DenseDataModule:
    """A DenseDataModule from a data config (a config group, or the copy a checkpoint stores), read as
    plain data: known keys, known types, plain values only. Nothing in it is instantiated or imported,
    so a crafted checkpoint's data config cannot run code. Errors are one line, naming `source` (the
    checkpoint) when given."""
    prefix = f"{source}: " if source else ""
    values = dict(plain(config))
    target = values.pop("_target_", DATAMODULE_TARGET)
    if target != DATAMODULE_TARGET:
        raise DatasetError(
            f"{prefix}data._target_={target!r}: a data config is read as plain values for {DATAMODULE_TARGET}, "
            "never instantiated; choose the dataset with data.name"
        )
    for key, value in values.items():
        if not isinstance(key, str) or key.startswith("_"):
            raise DatasetError(f"{prefix}data config key {key!r} is not a data option")
        problem = plain_value_problem(value, f"data.{key}")
        if problem:
            raise DatasetError(prefix + problem)
    try:
        dataset_cls = DATASETS.get(values.get("name", "synthetic"))
    except UnknownNameError as error:
        raise UnknownNameError(f"{prefix}{error}") from None
    parameters = {p.name: p for p in dataset_cls._parameters()}
    format_schema = schema.DATA_SCHEMAS.get(values.get("name", "synthetic"), schema.DataConfig)
    known = set(schema.field_names(format_schema))
    for key, value in values.items():
        if key in LOADER_MINIMUMS:
            minimum = LOADER_MINIMUMS[key]
            if not (value is None and key in ("val_batch_size", "num_workers")) and not (
                isinstance(value, int)
                and not isinstance(value, bool)
                and minimum <= value <= LOADER_MAXIMUMS[key]
            ):
                kind = "a positive integer" if minimum else "an integer >= 0 or null (one per core)"
                raise DatasetError(
                    f"{prefix}data.{key}={value!r} must be {kind} (at most {LOADER_MAXIMUMS[key]})"
                )
            continue
        if key in known:  # data.shadows='maybe' must be true or false
            problem = schema.type_problem({key: value}, format_schema, "data.", required=False)
        elif key in parameters:  # a format registered without a schema: its constructor's defaults
            problem = schema.value_problem(f"data.{key}", value, _option_annotation(parameters[key]))
        else:
            continue  # an unknown option: DenseDataModule names it and the valid ones
        if problem:
            raise DatasetError(prefix + problem)
    try:
        return DenseDataModule(**values)
    except DatasetError as error:
        raise DatasetError(f"{prefix}{error}") from None
