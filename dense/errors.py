"""Errors that users see, and the one safe way to read a weights file.

Every error class meant for users is defined here (dense.registry's UnknownNameError excepted: it
belongs to the registry it describes), so that the entry scripts and library code agree on them.

Every refusal is a single line saying what was wrong and how to fix it. The entry scripts print
`DenseError`s as that one line instead of a traceback.
"""

from __future__ import annotations

import os
import pickle
import zipfile

import torch


class DenseError(Exception):
    """Base class of the errors meant for users: the message is the whole story."""


def shown(value, width: int = 60) -> str:
    """A value read from a file, for a one-line message. Containers are described by type and length,
    never printed (they may be huge, or nested thousands deep); strings are repr'd, so newlines and
    terminal escape codes show as escapes; everything is cut to `width` characters."""
    if isinstance(value, dict | list | tuple | set):
        text = f"a {type(value).__name__} of {len(value)}"
    elif isinstance(value, torch.Tensor):
        text = f"a tensor of shape {list(value.shape)}"
    elif isinstance(value, str | bytes | bool | int | float | type(None)):
        text = repr(value)
    else:
        text = f"a {type(value).__name__}"
    return text if len(text) <= width else text[: width - 1] + "…"


class WeightsError(DenseError, ValueError):
    """A weights or checkpoint file that cannot be used (missing, corrupt, unsafe, or for another model)."""


class ConfigError(DenseError, ValueError):
    """A run configuration that cannot work (the message names the key and what it should be)."""


class DatasetError(DenseError, ValueError):
    """A data problem the user can fix. The message is one line: the path, what is wrong, and what
    the layout should be."""


class RecipeError(DenseError, ValueError):
    """An augmentation option that is not one of its choices."""


class ImageReadError(DenseError):
    """An input image that cannot be used; the message names the file and the reason."""


class CacheError(DenseError):
    """A cache entry that cannot be used or repaired here (e.g. a read-only cache folder)."""


class BadInputError(DenseError, ValueError):
    """A loss or metric was handed tensors it cannot use (wrong shape, NaN/inf, labels out of range)."""


class TrainingFailedError(DenseError):
    """A training run that cannot come to anything any more (the entry scripts exit with status 3)."""


class TrainingDivergedError(TrainingFailedError, FloatingPointError):
    """The training loss became NaN or inf (raised by dense.tasks.DenseTask at its periodic check)."""


class DeadHeadError(TrainingFailedError):
    """The head stopped learning: a depth head predicting min_depth, where its ReLU passes no gradient, or
    a segmentation head predicting one class everywhere, for task.dead_head_steps steps in a row (raised
    by dense.tasks.DenseTask at its periodic check)."""


# torch.save stores the members of its zip archive uncompressed, so they add up to about the file's size.
# A member that inflates far beyond it (a few hundred KB of deflated zeros declaring 512 MiB) is refused
# before torch reads it, since torch allocates each record's full size.
MAX_INFLATION = 2
INFLATION_ALLOWANCE = 64 << 20


def check_inflated_size(path: str) -> None:
    """Refuse a zip checkpoint whose members would expand far beyond the file's own size."""
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load reports the damage in its own words (below)
    size = os.path.getsize(path)
    if inflated > MAX_INFLATION * size + INFLATION_ALLOWANCE:
        raise WeightsError(
            f"{path} is a {size / 2**20:.1f} MiB file whose members would expand to {inflated / 2**20:.0f} MiB "
            "(compressed far beyond what torch.save writes): refused before inflating; re-save it with torch.save"
        )


def load_weights_file(path: str | os.PathLike) -> dict:
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path}")
    if os.path.getsize(path) == 0:
        raise WeightsError(f"{path} is empty (0 bytes): download or copy it again")
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive ("PK\x03\x04"); files from before torch 1.6 are a bare pickle ("\x80").
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"\x80")):
        raise WeightsError(
            f"{path} is not a PyTorch checkpoint (it starts with {magic!r}; an HTML error page or a text "
            "file saved under a .pth name?): download or copy it again"
        )
    if magic.startswith(b"PK\x03\x04"):
        check_inflated_size(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses anything that would execute code when unpickled.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise WeightsError(
            f"{path} was refused by safe loading (weights_only=True): it holds objects other than tensors "
            f"({first_line[:160]}). Only load files you trust; re-save it as a plain state dict"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise WeightsError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt? {type(error).__name__}: "
            f"{str(error).strip().splitlines()[0][:120] if str(error).strip() else ''})"
        ) from None
