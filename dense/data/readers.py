"""Reading a dataset's files so that every failure is one line naming the file: images, depth (16-bit
PNG or .npy), relative disparity (8/16-bit PNG or .npy) and validity masks, label PNGs and text lists,
each opened only if it is a regular file of bounded size."""

from __future__ import annotations

import math
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from dense.core.errors import DatasetError, ImageReadError
from dense.core.io import MAX_PIXELS, read_image, read_npy_header


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Any PIL-readable image → uint8 H×W×3 RGB, exactly as predict.py reads it (dense.core.io.read_image):
    EXIF orientation applied, 16-bit scaled rather than clipped, transparency composited onto the
    ImageNet mean, palette/CMYK/grey converted. Errors are DatasetErrors naming the file."""
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
    """Refuse an image or array (`name`: what and which file) of more than dense.core.io.MAX_PIXELS pixels,
    from its header, before it is decoded: the memory it takes is in pixels, not in file size."""
    if height * width > MAX_PIXELS:
        raise DatasetError(
            f"{name}: {height}×{width} = {height * width:,} pixels, more than the {MAX_PIXELS:,} allowed; "
            "use smaller images"
        )


# What each kind of single-channel PNG holds, for the error that refuses a colour image.
SINGLE_CHANNEL_KINDS = {
    "depth": "16-bit depth",
    "label map": "class ids as L or palette mode",
    "disparity": "8- or 16-bit relative disparity",
    "validity mask": "nonzero = valid, 0 = no value",
}


def read_short_side(path: str | os.PathLike) -> int:
    """The shorter side of an image in pixels, from its header (nothing is decoded; the EXIF
    orientation swaps the sides, not which one is shorter)."""
    with open_regular(path, "image", "an image file") as f:
        try:
            with Image.open(f) as image:
                return min(image.size)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise unreadable(path, "image", e, "an image file") from None


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
                        f"({SINGLE_CHANNEL_KINDS[what]})"
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


def read_depth_npy(path: str | os.PathLike, what: str = "depth") -> np.ndarray:
    """A .npy H×W (or 1×H×W / H×W×1) float array in metres (what="disparity": a relative disparity) →
    float32. The header is checked against the file's size and the pixel budget before any memory is
    allocated for the data."""
    expected = "an H×W float array saved with np.save"
    unit = " in metres" if what == "depth" else ""
    with open_regular(path, what, expected) as f:
        try:
            shape, fortran, dtype = read_npy_header(f)
        except (OSError, ValueError, EOFError) as e:
            raise unreadable(path, what, e, expected) from None
        if dtype.hasobject:
            raise DatasetError(
                f"{what} {path} holds Python objects (a pickle, never loaded); expected {expected}"
            )
        # Only a channel axis is dropped: np.squeeze would also collapse a 1-pixel-high or 1×1 map.
        plane = shape
        if len(shape) == 3 and shape[0] == 1:
            plane = shape[1:]
        elif len(shape) == 3 and shape[2] == 1:
            plane = shape[:2]
        if len(plane) != 2 or not np.issubdtype(dtype, np.number):
            raise DatasetError(
                f"{what} {path} has shape {shape} ({dtype}); expected an H×W float array{unit}"
            )
        count = math.prod(shape)
        data_bytes, file_bytes = count * dtype.itemsize, os.fstat(f.fileno()).st_size - f.tell()
        if data_bytes != file_bytes:
            raise DatasetError(
                f"{what} {path}: its header declares a {dtype} {shape} array of {data_bytes:,} bytes, but the "
                f"file holds {file_bytes:,} (cut short or crafted); expected {expected}"
            )
        check_pixels(f"{what} {path}", *plane)
        try:
            depth = np.fromfile(f, dtype=dtype, count=count)
        except (OSError, ValueError) as e:
            raise unreadable(path, what, e, expected) from None
    return depth.reshape(shape, order="F" if fortran else "C").reshape(plane).astype(np.float32)


def read_disparity_png(path: str | os.PathLike) -> np.ndarray:
    """An 8- or 16-bit single-channel PNG of relative disparity (any scale: larger = nearer) → float32
    of the stored integers."""
    return _read_single_channel(path, "disparity").astype(np.float32)


def read_validity_png(path: str | os.PathLike) -> np.ndarray:
    """A single-channel PNG whose nonzero pixels are valid (0 = no value) → bool H×W."""
    return _read_single_channel(path, "validity mask") != 0


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


def check_exists(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what} {path} does not exist; expected {layout}")
    return path


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
