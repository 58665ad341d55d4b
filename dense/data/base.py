"""The dataset contract: `DenseDataset`, the base class every dataset derives from.

Sample contract (`DenseDataset.__getitem__`), each tensor in its smallest exact dtype (what a loader
worker hands over and a batch carries to the device):
    image: uint8 3×H×W RGB; the model normalises it on the device (DenseModel.normalise)
    depth: float32 1×H×W metres, 0 = no measurement (also padding)       [depth datasets]
    disparity: float32 1×H×W relative disparity ≥ 0, -1 = no value        [instead of depth: relative maps]
    mask:  uint8 H×W class ids in [0, num_classes), 255 = ignore (also padding) [segmentation]
           (int64 when a dataset reads its labels wider than uint8, for more than 255 classes)
    name:  str, the sample id (a relative path without extension; may contain '/')
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import albumentations as A
from torch.utils.data import Dataset

from dense.core.errors import DatasetError
from dense.data.checks import (
    DepthRangeWarning,
    DepthScaleWarning,
    check_sample,
    depth_range_hint,
    depth_scale_hint,
)
from dense.data.readers import unreadable
from dense.data.sample import DatasetInfo, RawSample
from dense.data.transforms import compose, to_sample

# "multi": depth and segmentation targets both (train.py head=multi; synthetic and folder data).
TASK_NAMES = ("depth", "segmentation", "multi")
# NYU, KITTI, ADE20K and VOC serve their one evaluation split as both val and test.
SPLITS = ("train", "val", "test")


def file_identity(path: str | os.PathLike, root: str | None) -> list:
    """[path relative to root, size, mtime_ns, inode, ctime_ns]: what tells a changed file apart
    without reading it. Size and mtime alone miss a file regenerated at the same size with its mtime
    set back (os.utime, `touch -r`, `cp -p`); the ctime cannot be set back by a user, and any rewrite,
    rename or chmod moves it, as a replacement moves the inode. So a copy or a chmod also makes a new
    cache entry: one refill, never a stale read."""
    path = os.fspath(path)
    try:
        status = os.stat(path)
    except OSError as e:
        raise unreadable(path, "dataset file", e, "the file the dataset was built from") from None
    if root is not None:
        prefix = os.path.join(root, "")
        # The prefix test first: os.path.relpath costs more than the stat, on every file of the dataset.
        path = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root)
    return [path, status.st_size, status.st_mtime_ns, status.st_ino, status.st_ctime_ns]


def _jsonable(value):
    """Options as plain JSON values (tuples → lists; anything else by its repr), for fingerprints."""
    return json.loads(json.dumps(value, default=repr))


class DenseDataset(Dataset):
    """The dataset contract. The shared constructor arguments are taken and checked here, once:

        root     the dataset folder (subclasses resolve it: `resolve_root`); unused by generated data
        split    "train", "val" or "test"
        augment  apply the train recipe (False: the evaluation transform)
        task     "depth" or "segmentation"; a dataset with a `fixed_task` refuses the other
        seed     the augmentation RNG (albumentations keeps its own)
        recipe options: the fields of `recipe_options` (a dataclass such as transforms.SegRecipe), when
                 the dataset has one: built once into `self.recipe`

    A subclass takes `root` and `split` (positional, as users write them), its own keyword options,
    and passes the rest on: `def __init__(self, root=None, split="train", *, layout="auto", **common)`,
    `super().__init__(root, split, **common)`; then it finds its samples and chooses its transforms
    with `use_recipe`. It implements `__len__`, `read(index) -> RawSample`, `sample_names()` and
    `sample_files(index)` (the defaults read `self.items = [(name, *files)]`), and `dataset_files()`
    when every sample also depends on shared files such as a split list. `fingerprint()` then
    describes the samples for the feature cache (dense/cache.py).

    Class attributes describe the dataset before any file is read (see `describe`). `needs_root`
    is False only for datasets generated in memory. The constructor's arguments are recorded once,
    here (`__new__`), for `fingerprint`: no subclass has to list them again.
    """

    fixed_task: ClassVar[str | None] = None  # None: the config chooses (synthetic, folder)
    class_names: ClassVar[tuple[str, ...]] = ()
    palette: ClassVar[Sequence[Sequence[int]]] = ()  # one (r, g, b) per class; empty: the generic palette
    min_depth: ClassVar[float] = 1e-3
    max_depth: ClassVar[float] = 10.0
    eval_crop: ClassVar[str | None] = None
    needs_root: ClassVar[bool] = True
    layout: ClassVar[str] = ""  # what data.root must hold, for the message when it is missing
    recipe_options: ClassVar[type | None] = None

    def __new__(cls, *args, **kwargs):
        dataset = super().__new__(cls)
        # Unpickling (a loader worker) calls __new__ without arguments, then restores __dict__, and
        # with it the options recorded here at construction.
        dataset._options = cls._bind_options(args, kwargs)
        return dataset

    def __init__(
        self,
        root=None,
        split: str = "train",
        augment: bool = False,
        task: str | None = None,
        seed: int | None = None,
        **recipe_options,
    ):
        self.task = self.check_task(task)
        self.split = self.check_split(split)
        self.root, self.augment, self.seed = root, bool(augment), seed
        self.recipe = self.recipe_from(recipe_options, strict=True)
        self.use_recipe([])
        self._warned_depth = False

    def use_recipe(self, transforms: Sequence[A.BasicTransform], num_classes: int | None = None) -> None:
        """The transforms every sample goes through (jointly with its targets), seeded by `seed`, and the
        class count its labels are checked against (default: `class_names`)."""
        self.transform = compose(transforms, seed=self.seed)
        self._num_classes = len(self.class_names) if num_classes is None else num_classes

    @classmethod
    def recipe_from(cls, options: dict, strict: bool = False):
        """`recipe_options` built from those of `options` that are its fields (None without one);
        `strict`: any other key is a mistake (the constructor's unknown keyword)."""
        fields = (
            set() if cls.recipe_options is None else {f.name for f in dataclasses.fields(cls.recipe_options)}
        )
        unknown = sorted(set(options) - fields)
        if strict and unknown:
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {unknown[0]!r}")
        if cls.recipe_options is None:
            return None
        return cls.recipe_options(**{k: v for k, v in options.items() if k in fields})

    @classmethod
    def describe(cls, root=None, task: str | None = None, **options) -> DatasetInfo:
        recipe = cls.recipe_from(options)
        return DatasetInfo(
            task=cls.check_task(task),
            class_names=tuple(cls.class_names),
            palette=tuple(tuple(int(c) for c in row) for row in cls.palette),
            min_depth=cls.min_depth,
            max_depth=cls.max_depth,
            eval_crop=cls.eval_crop,
            eval_scale=getattr(recipe, "eval_scale", None),
        )

    @classmethod
    def check_task(cls, task: str | None) -> str:
        if task is not None and task not in TASK_NAMES:
            raise DatasetError(f"data.task={task!r} is not one of {TASK_NAMES}")
        if cls.fixed_task is not None and task not in (None, cls.fixed_task):
            raise DatasetError(f"data.task={task!r}, but this dataset only provides {cls.fixed_task}")
        return task or cls.fixed_task or "depth"

    @classmethod
    def check_split(cls, split: str) -> str:
        if split not in SPLITS:
            raise DatasetError(f"split {split!r} is not one of {SPLITS}")
        return split

    @classmethod
    def _parameters(cls) -> list[inspect.Parameter]:
        """The constructor's named parameters, plus the parent's when it forwards **options, plus the
        fields of `recipe_options`: every keyword option the dataset takes, with its default."""
        parameters: dict[str, inspect.Parameter] = {}
        for klass in cls.__mro__:
            if "__init__" not in klass.__dict__:
                continue
            params = inspect.signature(klass.__init__).parameters.values()
            for p in params:
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                    parameters.setdefault(p.name, p)
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                break
        if cls.recipe_options is not None:  # the fields of the recipe, taken as keyword options
            for p in inspect.signature(cls.recipe_options).parameters.values():
                parameters.setdefault(p.name, p.replace(kind=p.KEYWORD_ONLY))
        return list(parameters.values())

    @classmethod
    def option_names(cls) -> list[str]:
        """The keyword options of the constructor, for validating configs early."""
        return [p.name for p in cls._parameters() if p.name not in ("root", "split")]

    @classmethod
    def _bind_options(cls, args: tuple, kwargs: dict) -> dict:
        """Every constructor argument by name, defaults filled in (so leaving an option out and
        passing its default give the same fingerprint)."""
        signature = inspect.signature(cls.__init__)
        try:
            bound = signature.bind(None, *args, **kwargs)
        except TypeError:
            return {}  # __init__ raises the same mistake with its own message
        options = {p.name: p.default for p in cls._parameters() if p.default is not p.empty}
        for name, value in list(bound.arguments.items())[1:]:  # [0] is self
            kind = signature.parameters[name].kind
            if kind == inspect.Parameter.VAR_KEYWORD:
                options.update(value)
            elif kind != inspect.Parameter.VAR_POSITIONAL:
                options[name] = value
        return options

    # ---- what a sample is made of (the feature cache's key, dense/cache.py)

    # Most datasets keep their samples as `self.items = [(name, *files)]`; these defaults read it.

    def sample_names(self) -> list[str]:
        """The id of every sample, in index order (the `name` of each item)."""
        return [name for name, *_ in self._items()]

    def sample_files(self, index: int) -> tuple[Path, ...]:
        """The files sample `index` is read from (none for generated data)."""
        return tuple(self._items()[index][1:])

    def _items(self) -> list[tuple]:
        if not hasattr(self, "items"):
            raise NotImplementedError(
                f"{type(self).__name__} has no `items` list: define sample_names() and sample_files(index), "
                "which the feature cache needs to tell a changed dataset apart"
            )
        return self.items

    def dataset_files(self) -> tuple[Path, ...]:
        """Files every sample depends on: split and class lists, one archive holding all samples."""
        return ()

    def fingerprint(self) -> dict:
        """A JSON-able description of everything that makes the samples what they are: the class, the
        resolved root, the split, the constructor's options, and for every sample its name and
        files (path relative to the root, size, mtime_ns, inode, ctime_ns: `file_identity`). Equal
        fingerprints mean equal samples; any edit, addition, removal or rename of a file changes it.
        Costs one stat per file."""
        root = getattr(self, "root", None)
        root = None if root is None else os.fspath(root)
        files = hashlib.sha256()
        for path in self.dataset_files():
            files.update(json.dumps(file_identity(path, root)).encode() + b"\n")
        for index, name in enumerate(self.sample_names()):
            identities = [file_identity(path, root) for path in self.sample_files(index)]
            files.update(json.dumps([name, identities]).encode() + b"\n")
        # `seed` only drives the augmentation RNG: the cache reads unaugmented samples, and an
        # augmented sample is a random draw that no fingerprint pins down (`augment` itself is kept).
        options = {k: v for k, v in self._options.items() if k not in ("root", "split", "seed")}
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "root": None if root is None else str(Path(root).resolve()),
            "split": self._options.get("split"),
            "options": _jsonable(options),
            "samples": len(self),
            "files": files.hexdigest(),
        }

    # ---- reading

    def read(self, index: int) -> RawSample:
        raise NotImplementedError

    def reseed(self, seed: int) -> None:
        """Give this copy of the augmentation pipeline its own RNG (called in each loader worker)."""
        self.transform.set_random_seed(seed)

    def _check_depth_values(self, raw: RawSample) -> None:
        """One warning per dataset when the depth looks wrong: the cause is the whole folder (a unit,
        a scale, a range), not a file, so the first file found is named and the rest stay quiet."""
        if raw.depth is None or self._warned_depth:
            return
        category, hint = (
            DepthScaleWarning,
            depth_scale_hint(raw.depth, raw.source, raw.depth_unit, raw.depth_bits),
        )
        if not hint:  # a wrong unit also empties the range: it is the message that names the cause
            category, hint = (
                DepthRangeWarning,
                depth_range_hint(raw.depth, raw.source, self.min_depth, self.max_depth),
            )
        if hint:
            self._warned_depth = True
            warnings.warn(hint, category, stacklevel=3)

    def __getitem__(self, index: int) -> dict:
        raw = self.read(index)
        check_sample(raw, self._num_classes)
        self._check_depth_values(raw)
        try:
            sample = to_sample(self.transform, raw.image, raw.depth, raw.mask, raw.disparity)
        except ValueError as e:  # e.g. an image smaller than a fixed crop
            raise DatasetError(f"{raw.source}: the augmentation recipe failed ({e})") from e
        sample["name"] = raw.name
        return sample
