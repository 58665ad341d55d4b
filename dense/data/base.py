"""What every dataset shares: the error type, file readers that fail with one clear line, the
content checks, and the base class that turns a raw sample into the tensor contract.

Sample contract (`DenseDataset.__getitem__`):
    image: float32 3×H×W, ImageNet-normalised
    depth: float32 1×H×W metres, 0 = no measurement (also padding)       [depth datasets]
    mask:  int64 H×W class ids in [0, num_classes), 255 = ignore (also padding) [segmentation]
    name:  str, the sample id (a relative path without extension; may contain '/')
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar

import albumentations as A
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from dense.errors import DatasetError

from .transforms import IGNORE_INDEX, compose, eval_scale, seg_recipe, to_sample

TASKS = ("depth", "segmentation")
SPLITS = (
    "train",
    "val",
    "test",
)  # NYU, KITTI, ADE20K and VOC serve their one evaluation split as both val and test
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DepthScaleWarning(UserWarning):
    """Depth values in an implausible range for the configured unit (metres vs millimetres), or an
    8-bit depth PNG (too few levels for depth: usually a visualisation)."""


class DepthRangeWarning(UserWarning):
    """Depth whose every valid pixel lies outside the dataset's [min_depth, max_depth]: the loss and
    the metrics ignore such a sample entirely."""


@dataclass
class DatasetInfo:
    """What the model, the training task and the metrics need to know before any file is read."""

    task: str
    class_names: tuple[str, ...] = ()
    min_depth: float = 1e-3
    max_depth: float = 10.0
    eval_crop: str | None = None  # "eigen" (NYU), "garg" (KITTI) or None
    # Segmentation: the test-time scale (long, short) the evaluation views are made at
    # (transforms.eval_view_size), e.g. (2048, 512); None: each image at its own size.
    eval_scale: tuple[int, int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class RawSample:
    """A sample as read from disk, before augmentation. `source` names the file(s) for errors."""

    name: str
    image: np.ndarray  # uint8 H×W×3 RGB
    depth: np.ndarray | None = None  # float32 H×W metres, 0 = invalid
    mask: np.ndarray | None = None  # uint8 H×W class ids, 255 = ignore
    source: str = ""
    depth_unit: str = "m"  # what the file stored: "m" (floats) or "scaled" (integers = metres × depth_scale)
    depth_bits: int | None = None  # bits per stored value of an integer depth file (8 or 16 for PNGs)


# --------------------------------------------------------------------------- readers


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Any PIL-readable image → uint8 H×W×3 RGB, exactly as predict.py reads it (dense.io.read_image):
    EXIF orientation applied, 16-bit scaled rather than clipped, transparency composited onto the
    ImageNet mean, palette/CMYK/grey converted. Errors are DatasetErrors naming the file."""
    # Imported here: dense.io imports dense.data (suffixes, the mean colour), so a module-level import
    # would be circular.
    from ..io import ImageReadError, read_image

    check_regular(path, "image", "an image file")  # read_image would block on a FIFO
    try:
        return read_image(path)
    except ImageReadError as e:
        raise DatasetError(f"cannot read image {e}") from None


def unreadable(path: str | os.PathLike, what: str, error: Exception, expected: str) -> DatasetError:
    """The one-line error for a file that could not be read: missing, not readable by this user, or
    (anything else) damaged, saying what the file should be."""
    if isinstance(error, FileNotFoundError):
        return DatasetError(f"{what} {path} does not exist")
    if isinstance(error, PermissionError):
        return DatasetError(f"{what} {path}: permission denied; make it readable by this user (chmod a+r)")
    if isinstance(error, IsADirectoryError):
        return DatasetError(f"{what} {path} is a folder, not a file; expected {expected}")
    return DatasetError(f"cannot read {what} {path} ({error}); expected {expected}")


# The most a text list (split, id, class or file list) may hold: NYU's and KITTI's lists are well
# under a megabyte, and a list is read whole.
MAX_LIST_BYTES = 64 << 20


def open_regular(path: str | os.PathLike, what: str, expected: str, max_bytes: int | None = None) -> BinaryIO:
    """`path` opened for reading in binary, only if it is a regular file (a link to one is fine) of at
    most `max_bytes`: a FIFO would block the read forever and a device such as /dev/zero never ends.
    Fails with one line naming the file. The file is checked through the descriptor that is read, so
    it cannot be swapped between the check and the read."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise unreadable(path, what, e, expected) from None
    try:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            raise unreadable(path, what, IsADirectoryError(), expected)
        if not stat.S_ISREG(status.st_mode):
            raise DatasetError(
                f"{what} {path} is not a regular file (a FIFO, device or socket, which never ends or "
                f"blocks the read); expected {expected}"
            )
        if max_bytes is not None and status.st_size > max_bytes:
            raise DatasetError(
                f"{what} {path} is {status.st_size:,} bytes, larger than the {max_bytes:,} allowed; "
                f"expected {expected}"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str | os.PathLike, what: str, expected: str) -> None:
    """Fails like `open_regular` unless `path` is a regular file (for readers that take a path)."""
    open_regular(path, what, expected).close()


def read_text(path: str | os.PathLike, what: str) -> str:
    """A text file (split, class and file lists) of at most MAX_LIST_BYTES, failing with one line naming it."""
    expected = "a text file with one entry per line"
    with open_regular(path, what, expected, MAX_LIST_BYTES) as f:
        try:
            return f.read(MAX_LIST_BYTES).decode()
        except (OSError, UnicodeDecodeError) as e:
            raise unreadable(path, what, e, expected) from None


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The non-empty, stripped lines of a text file."""
    return [line.strip() for line in read_text(path, what).splitlines() if line.strip()]


def check_pixels(name: str, height: int, width: int) -> None:
    """Refuse an image or array (`name`: what and which file) of more than dense.io.MAX_PIXELS pixels,
    from its header, before it is decoded: the memory it takes is in pixels, not in file size."""
    from ..io import MAX_PIXELS  # dense.io imports dense.data: a module-level import would be circular

    if height * width > MAX_PIXELS:
        raise DatasetError(
            f"{name}: {height}×{width} = {height * width:,} pixels, more than the {MAX_PIXELS:,} allowed; "
            "use smaller images"
        )


def _read_single_channel(path: str | os.PathLike, what: str) -> np.ndarray:
    expected = "a single-channel PNG (is the file truncated or not a PNG?)"
    try:
        with open_regular(path, what, expected) as f, warnings.catch_warnings():
            # PIL warns from 89 megapixels; check_pixels is the one message people see.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as im:
                if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "F", "1"):
                    raise DatasetError(
                        f"{what} {path} is a {im.mode} image; expected a single-channel PNG "
                        f"({'16-bit depth' if what == 'depth' else 'class ids as L or palette mode'})"
                    )
                width, height = im.size
                check_pixels(f"{what} {path}", height, width)
                return np.asarray(im)
    except DatasetError:
        raise
    except Image.DecompressionBombError as e:  # over ~179 megapixels: PIL refuses it while opening
        raise DatasetError(f"{what} {path}: more than the pixels allowed ({e}); use smaller images") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise unreadable(path, what, e, expected) from None


def read_depth_png(path: str | os.PathLike, scale: float) -> tuple[np.ndarray, int]:
    """Integer depth PNG (16-bit, value = metres × scale; 0 = no measurement) → (float32 metres, the
    bits per stored value: 8 for an 8-bit PNG, which cannot hold depth at millimetre steps)."""
    stored = _read_single_channel(path, "depth")
    return stored.astype(np.float32) / np.float32(scale), stored.dtype.itemsize * 8


def read_npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the header of the .npy open in `f`, which is left at the
    first data byte. Raises ValueError (or EOFError) for anything but a version 1 or 2 header."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f".npy version {version} is not supported (np.save writes 1.0)")


def read_depth_npy(path: str | os.PathLike) -> np.ndarray:
    """A .npy H×W (or 1×H×W / H×W×1) float array in metres → float32 metres. The header is checked
    against the file's size and the pixel budget before any memory is allocated for the data."""
    expected = "an H×W float array saved with np.save"
    with open_regular(path, "depth", expected) as f:
        try:
            shape, fortran, dtype = read_npy_header(f)
        except (OSError, ValueError, EOFError) as e:
            raise unreadable(path, "depth", e, expected) from None
        if dtype.hasobject:
            raise DatasetError(f"depth {path} holds Python objects (a pickle, never loaded); expected {expected}")
        # Only a channel axis is dropped: np.squeeze would also collapse a 1-pixel-high or 1×1 map.
        plane = shape
        if len(shape) == 3 and shape[0] == 1:
            plane = shape[1:]
        elif len(shape) == 3 and shape[2] == 1:
            plane = shape[:2]
        if len(plane) != 2 or not np.issubdtype(dtype, np.number):
            raise DatasetError(f"depth {path} has shape {shape} ({dtype}); expected an H×W float array in metres")
        count = math.prod(shape)
        data_bytes, file_bytes = count * dtype.itemsize, os.fstat(f.fileno()).st_size - f.tell()
        if data_bytes != file_bytes:
            raise DatasetError(
                f"depth {path}: its header declares a {dtype} {shape} array of {data_bytes:,} bytes, but the "
                f"file holds {file_bytes:,} (cut short or crafted); expected {expected}"
            )
        check_pixels(f"depth {path}", *plane)
        try:
            depth = np.fromfile(f, dtype=dtype, count=count)
        except (OSError, ValueError) as e:
            raise unreadable(path, "depth", e, expected) from None
    return depth.reshape(shape, order="F" if fortran else "C").reshape(plane).astype(np.float32)


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Single-channel PNG of class ids (L, or palette mode read as indices) → uint8 H×W."""
    labels = _read_single_channel(path, "label map")
    if labels.dtype != np.uint8:
        if labels.max(initial=0) > 255 or labels.min(initial=0) < 0:
            raise DatasetError(
                f"label map {path} holds values outside 0–255; class ids must fit in 8 bits (255 = ignore)"
            )
        labels = labels.astype(np.uint8)
    return labels


# --------------------------------------------------------------------------- checks


def check_exists(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what} {path} does not exist; expected {layout}")
    return path


def check_sample(raw: RawSample, num_classes: int) -> None:
    """Content checks at read time, each failing with the offending file named."""
    h, w = raw.image.shape[:2]
    if raw.depth is not None:
        if raw.depth.shape != (h, w):
            raise DatasetError(
                f"{raw.source}: depth is {raw.depth.shape[0]}×{raw.depth.shape[1]} but the image is {h}×{w}; "
                "depth must be pixel-aligned with the image"
            )
        finite = np.isfinite(raw.depth)
        if not finite.all():
            raise DatasetError(
                f"{raw.source}: depth has {np.count_nonzero(~finite)} NaN/inf values; store missing depth as 0"
            )
        if (raw.depth < 0).any():
            raise DatasetError(
                f"{raw.source}: depth has negative values (min {raw.depth.min():.3g}); depth must be ≥ 0, 0 = missing"
            )
    if raw.mask is not None:
        if raw.mask.shape != (h, w):
            raise DatasetError(
                f"{raw.source}: label map is {raw.mask.shape[0]}×{raw.mask.shape[1]} but the image is {h}×{w}; "
                "labels must be pixel-aligned with the image"
            )
        bad = (raw.mask >= num_classes) & (raw.mask != IGNORE_INDEX)
        if bad.any():
            values = sorted(np.unique(raw.mask[bad]).tolist())[:5]
            raise DatasetError(
                f"{raw.source}: label values {values} are outside [0, {num_classes}) and not {IGNORE_INDEX} (ignore); "
                "check the class count or the label encoding"
            )


def depth_scale_hint(depth: np.ndarray, source: str, unit: str, bits: int | None = None) -> str | None:
    """A message when valid depth looks stored in the other unit, else None.

    "scaled" (integer PNG divided by depth_scale): an 8-bit PNG (at most 255 steps: a visualisation,
    not depth), or a maximum under 0.1 m (the PNG holds metres).
    "m" (float metres): a maximum over 1000 m means the values are millimetres.
    """
    if unit == "scaled" and bits == 8:
        return (
            f"{source} is an 8-bit PNG: 255 levels cannot hold depth in millimetres (it is usually a "
            "visualisation); depth PNGs must be 16-bit integers of metres × depth_scale"
        )
    valid = depth[depth > 0]
    if valid.size == 0:
        return None
    peak = float(valid.max())
    if unit == "scaled" and peak < 0.1:
        return (
            f"{source}: depth peaks at {peak:.4f} m after dividing by depth_scale; the PNG looks stored in "
            "metres, but integers of metres × depth_scale (e.g. millimetres) are expected"
        )
    if unit == "m" and peak > 1000.0:
        return (
            f"{source}: depth peaks at {peak:.0f} m; it looks stored in millimetres, but metres are expected"
        )
    return None


def depth_range_hint(depth: np.ndarray, source: str, min_depth: float, max_depth: float) -> str | None:
    """A message when depth has valid pixels but none inside [min_depth, max_depth], else None: the loss
    and the metrics skip every such pixel, so a whole dataset like it trains on nothing."""
    valid = depth[depth > 0]
    if valid.size == 0 or ((valid >= min_depth) & (valid <= max_depth)).any():
        return None
    return (
        f"{source}: every valid depth value ({float(valid.min()):.3g}–{float(valid.max()):.3g} m) lies outside "
        f"[min_depth, max_depth] = [{min_depth:g}, {max_depth:g}] m, so the loss and the metrics ignore it; "
        "check depth_scale and data.max_depth"
    )


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


# --------------------------------------------------------------------------- base class


class DenseDataset(Dataset):
    """Base of every dataset: subclasses implement `__len__`, `read(index) -> RawSample`,
    `sample_names()` and `sample_files(index)` (and `dataset_files()` when every sample also depends
    on shared files, such as a split list).

    Class attributes describe the dataset before any file is read (see `describe`). `needs_root`
    is False only for datasets generated in memory. The constructor's arguments are recorded once,
    here (`__new__`), for `fingerprint`: no subclass has to list them again.
    """

    task: ClassVar[str | None] = None  # None: the config chooses (synthetic, folder)
    class_names: ClassVar[tuple[str, ...]] = ()
    min_depth: ClassVar[float] = 1e-3
    max_depth: ClassVar[float] = 10.0
    eval_crop: ClassVar[str | None] = None
    needs_root: ClassVar[bool] = True

    def __new__(cls, *args, **kwargs):
        dataset = super().__new__(cls)
        # Unpickling (a loader worker) calls __new__ without arguments, then restores __dict__, and
        # with it the options recorded here at construction.
        dataset._options = cls._bind_options(args, kwargs)
        return dataset

    def __init__(self, transform: A.Compose, num_classes: int | None = None):
        self.transform = transform
        self._num_classes = len(self.class_names) if num_classes is None else num_classes
        self._warned_depth = False

    @classmethod
    def describe(cls, root=None, task: str | None = None, **options) -> DatasetInfo:
        return DatasetInfo(
            task=cls.check_task(task),
            class_names=tuple(cls.class_names),
            min_depth=cls.min_depth,
            max_depth=cls.max_depth,
            eval_crop=cls.eval_crop,
        )

    @classmethod
    def check_task(cls, task: str | None) -> str:
        if task is not None and task not in TASKS:
            raise DatasetError(f"data.task={task!r} is not one of {TASKS}")
        if cls.task is not None and task not in (None, cls.task):
            raise DatasetError(f"data.task={task!r}, but this dataset only provides {cls.task}")
        return task or cls.task or "depth"

    @classmethod
    def check_split(cls, split: str) -> str:
        if split not in SPLITS:
            raise DatasetError(f"split {split!r} is not one of {SPLITS}")
        return split

    @classmethod
    def _parameters(cls) -> list[inspect.Parameter]:
        """The constructor's named parameters, plus the parent's when it forwards **options."""
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
        category, hint = DepthScaleWarning, depth_scale_hint(raw.depth, raw.source, raw.depth_unit, raw.depth_bits)
        if not hint:  # a wrong unit also empties the range: it is the message that names the cause
            category, hint = DepthRangeWarning, depth_range_hint(raw.depth, raw.source, self.min_depth, self.max_depth)
        if hint:
            self._warned_depth = True
            warnings.warn(hint, category, stacklevel=3)

    def __getitem__(self, index: int) -> dict:
        raw = self.read(index)
        check_sample(raw, self._num_classes)
        self._check_depth_values(raw)
        try:
            sample = to_sample(self.transform, raw.image, raw.depth, raw.mask)
        except ValueError as e:  # e.g. an image smaller than a fixed crop
            raise DatasetError(f"{raw.source}: the augmentation recipe failed ({e})") from e
        sample["name"] = raw.name
        return sample


def resolve_root(root, candidates: tuple[str, ...], marker: str, layout: str) -> Path:
    """The first of root/<candidate> that contains `marker`; lets users point at either the dataset
    folder or the folder above it (e.g. .../ADEChallengeData2016 or ...)."""
    if root is None:
        raise DatasetError(f"data.root is not set; expected {layout}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data root {root} does not exist or is not a folder; expected {layout}")
    for c in ("", *candidates):
        if (root / c / marker).exists():
            return root / c
    raise DatasetError(f"{root} has no {marker}; expected {layout}")


def read_pair_list(
    list_file: Path, image_root: Path, depth_root: Path | tuple[Path, ...]
) -> tuple[list[tuple[str, Path, Path]], int]:
    """A BTS-style file list: lines "rgb_path depth_path [focal]", paths relative to the roots
    (a leading '/' is ignored, as in BTS lists). `depth_root` may be several folders: a depth path
    is taken from the first that holds it (KITTI's train/ and val/ halves). Lines whose depth is
    "None" (no ground truth) are skipped. Returns ([(name, rgb, depth)], number skipped); fails on
    malformed lines, missing files or an empty list."""
    depth_roots = (depth_root,) if isinstance(depth_root, Path) else tuple(depth_root)
    pairs, skipped, missing = [], 0, []
    for lineno, line in enumerate(read_text(list_file, "file list").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DatasetError(
                f"{list_file}:{lineno}: expected 'rgb_path depth_path [focal]', got {line.strip()!r}"
            )
        rgb_rel, depth_rel = fields[0].lstrip("/\\"), fields[1].lstrip("/\\")
        if depth_rel == "None":
            skipped += 1
            continue
        rgb = image_root / rgb_rel
        if not rgb.is_file():
            missing.append(rgb)
        depth = next((r / depth_rel for r in depth_roots if (r / depth_rel).is_file()), None)
        if depth is None:
            depth = depth_roots[0] / depth_rel
            missing.append(depth)
        pairs.append((str(Path(rgb_rel).with_suffix("")), rgb, depth))
    if missing:
        raise DatasetError(
            f"{list_file} names {len(missing)} files that do not exist, e.g. {missing[0]}; "
            f"rgb paths are relative to {image_root}, depth paths to {' or '.join(map(str, depth_roots))}"
        )
    if not pairs:
        raise DatasetError(
            f"{list_file} lists no samples with ground truth; expected lines 'rgb_path depth_path [focal]'"
        )
    return pairs, skipped


def read_depth_pair(name: str, rgb: Path, depth: Path, depth_scale: float) -> RawSample:
    """RGB image + integer depth PNG (metres × depth_scale): a line of a BTS-style file list, or a
    folder dataset's PNG depth."""
    metres, bits = read_depth_png(depth, depth_scale)
    return RawSample(name, read_rgb(rgb), metres, source=str(depth), depth_unit="scaled", depth_bits=bits)


def segmentation_eval_scale(dataset_cls: type[DenseDataset], options: dict) -> tuple[int, int] | None:
    """The `DatasetInfo.eval_scale` of a segmentation dataset from its options (`eval_short_side`,
    `max_long_side`; the constructor's defaults where not given)."""
    defaults = {p.name: p.default for p in dataset_cls._parameters()}
    return eval_scale(
        options.get("eval_short_side", defaults["eval_short_side"]),
        options.get("max_long_side", defaults["max_long_side"]),
    )


class SegmentationFiles(DenseDataset):
    """Image + label PNG pairs with the mmseg recipe: what ADE20K and VOC share. Subclasses
    implement `find_items(root, split) -> [(name, image, label)]` and may override `decode`.

    val and test samples are the original image and annotation (mmseg's protocol: the score is taken
    on the untouched annotation); the evaluation makes the model's views of the image at
    `eval_scale` = (max_long_side, eval_short_side) and resizes the prediction back
    (SegmentationTask)."""

    task = "segmentation"

    def __init__(
        self,
        root,
        split: str = "train",
        augment: bool = False,
        task: str | None = None,
        crop_size=512,
        short_side: int = 512,
        max_long_side: int = 2048,
        ratio_range=(0.5, 2.0),
        cat_max_ratio: float = 0.75,
        eval_short_side: int | None = 512,
        seed: int | None = None,
    ):
        self.check_task(task)
        self.items = self.find_items(root, self.check_split(split))
        recipe = seg_recipe(
            augment, crop_size, short_side, max_long_side, ratio_range, cat_max_ratio, eval_short_side, split
        )
        super().__init__(compose(recipe, seed=seed))

    @classmethod
    def describe(cls, root=None, task: str | None = None, **options) -> DatasetInfo:
        info = super().describe(root, task, **options)
        info.eval_scale = segmentation_eval_scale(cls, options)
        return info

    def find_items(self, root, split: str) -> list[tuple[str, Path, Path]]:
        raise NotImplementedError

    def decode(self, labels: np.ndarray) -> np.ndarray:
        """Stored label values → class ids (255 = ignore)."""
        return labels

    def __len__(self) -> int:
        return len(self.items)

    def read(self, index: int) -> RawSample:
        name, image, label = self.items[index]
        return RawSample(name, read_rgb(image), mask=self.decode(read_label_png(label)), source=str(label))
