"""Reading any image a user points at, and writing result files so that none is ever left half-written.

`read_image` is the one place where "whatever PIL can open" becomes the uint8 H×W×3 RGB array the
pipeline starts from: EXIF orientation applied, and every mode (grey, 16-bit, RGBA, palette, CMYK, …)
converted explicitly, because PIL's own `convert("RGB")` clips 16-bit images to white and drops alpha
onto whatever colours happen to sit under transparent pixels.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dense.core.constants import IMAGE_SUFFIXES, MEAN_FILL
from dense.core.errors import ImageReadError

# More than the datasets read: predict.py takes whatever people have lying around.
INPUT_SUFFIXES = tuple(sorted({*IMAGE_SUFFIXES, ".gif", ".jp2", ".ppm", ".pgm", ".pbm", ".tga"}))

# The most pixels an image may have (8000×8000). Decoding costs memory in pixels, not in file size: a
# 105 KB PNG of 108 megapixels takes 4 GB, and PIL only refuses above 179 megapixels. predict.py's
# max_pixels option passes its own bound.
MAX_PIXELS = 64_000_000


def list_images(path: str | os.PathLike) -> list[Path]:
    """[path] for a file; a folder's image files (by suffix, sorted, hidden files skipped, not recursive)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(
            p
            for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in INPUT_SUFFIXES
        )
    raise ImageReadError(f"input {path} does not exist (expected an image file or a folder of images)")


def to_rgb(im: Image.Image) -> np.ndarray:
    """A PIL image in any mode → uint8 H×W×3 RGB."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(im).astype(np.float64)
        # 16-bit images use the full 0–65535 range; a float image in 0–1 is already normalised.
        full_scale = 1.0 if im.mode == "F" and values.max(initial=0) <= 1.0 else 65535.0
        grey = np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels become the ImageNet mean colour: zero after normalisation, i.e. exactly
        # what the model sees where DenseModel pads, rather than arbitrary hidden colours.
        background = Image.new("RGBA", im.size, (*MEAN_FILL, 255))
        im = Image.alpha_composite(background, im.convert("RGBA"))
    if im.mode != "RGB":
        im = im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV: PIL's conversions are right for these
    return np.asarray(im)


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any image file PIL can open → uint8 H×W×3 RGB, EXIF orientation applied. Multi-frame files
    (GIF, TIFF) give their first frame. An image of more than `max_pixels` pixels is refused from its
    header, before it is decoded. Raises ImageReadError naming the file and the reason."""
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 megapixels; the size check below is the one message people see.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            width, height = im.size
            if width * height > max_pixels:
                raise ImageReadError(
                    f"{path}: {width}×{height} = {width * height:,} pixels, more than the {max_pixels:,} "
                    f"allowed (max_pixels={max_pixels}); downscale it, or in predict.py raise max_pixels"
                )
            im.load()  # decode now, so a truncated file fails here and not half-way through later
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageReadError(
            f"{path}: permission denied (this user may not read it; check its permissions)"
        ) from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file PIL can read (unknown or corrupt format)") from None
    except Image.DecompressionBombError as e:  # over ~179 megapixels: PIL's guard against zip bombs
        raise ImageReadError(f"{path}: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageReadError(f"{path}: cannot decode ({reason}); the file is truncated or corrupt") from None


def read_npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the header of the .npy open in `f`, which is left at the
    first data byte. Raises ValueError (or EOFError) for anything but a version 1 or 2 header."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f".npy version {version} is not supported (np.save writes 1.0)")


# --------------------------------------------------------------------------- atomic writes

# Read once: os.umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# Who is told of each file atomic_path is about to put in place (announcing_writes).
_BEFORE_REPLACE: contextvars.ContextVar[Callable[[str, str], None] | None] = contextvars.ContextVar(
    "before_replace", default=None
)


@contextlib.contextmanager
def announcing_writes(before_replace: Callable[[str, str], None]) -> Iterator[None]:
    """Inside the block, atomic_path calls before_replace(path, tmp) for every file it writes, once the
    file is complete under its temporary name `tmp` and just before it is renamed onto `path`: it has
    then the inode, size and modification time the final file will have. predict.py records its
    results this way before they appear, so a run killed at any moment leaves none unrecorded."""
    token = _BEFORE_REPLACE.set(before_replace)
    try:
        yield
    finally:
        _BEFORE_REPLACE.reset(token)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path in the destination's folder; renamed onto `path` only when the block
    finishes, removed if it fails. Readers never see a half-written file, and an interrupted run
    leaves no partial output (os.replace is atomic on one filesystem)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Keep the real suffix: PIL and numpy pick the format from it.
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    os.close(handle)
    try:
        yield tmp
        # mkstemp creates the file private (0600); results should get the usual permissions.
        os.chmod(tmp, 0o666 & ~_UMASK)
        before_replace = _BEFORE_REPLACE.get()
        if before_replace is not None:
            before_replace(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """uint8 H×W×3 (colour), uint8 H×W or uint16 H×W (single channel, 16-bit kept) → PNG, atomically."""
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG data must be uint8 or uint16, got {array.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")


def save_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array, allow_pickle=False)
