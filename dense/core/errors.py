"""Errors that users see (the one safe way to read a weights file is dense/core/weights_file.py).

Every error class meant for users is defined here, so that the entry scripts and library code agree on
them.

Every refusal is a single line saying what was wrong and how to fix it. The entry scripts print
`DenseError`s as that one line instead of a traceback.
"""

from __future__ import annotations

import sys


class DenseError(Exception):
    """Base class of the errors meant for users: the message is the whole story."""


def shown(value, width: int = 60) -> str:
    """A value read from a file, for a one-line message. Containers are described by type and length,
    never printed (they may be huge, or nested thousands deep); strings are repr'd, so newlines and
    terminal escape codes show as escapes; everything is cut to `width` characters."""
    if isinstance(value, dict | list | tuple | set):
        text = f"a {type(value).__name__} of {len(value)}"
    elif _is_tensor(value):
        text = f"a tensor of shape {list(value.shape)}"
    elif isinstance(value, str | bytes | bool | int | float | type(None)):
        text = repr(value)
    else:
        text = f"a {type(value).__name__}"
    return text if len(text) <= width else text[: width - 1] + "…"


def _is_tensor(value) -> bool:
    # Without torch imported nothing can be a tensor: this module stays importable without torch, so
    # that `--help` and configuration errors come before torch's start-up second.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


class WeightsError(DenseError, ValueError):
    """A weights or checkpoint file that cannot be used (missing, corrupt, unsafe, or for another model)."""


class ConfigError(DenseError, ValueError):
    """A run configuration that cannot work (the message names the key and what it should be)."""


class DatasetError(DenseError, ValueError):
    """A data problem the user can fix. The message is one line: the path, what is wrong, and what
    the layout should be."""


class WriteError(DenseError, OSError):
    """A file that could not be written (a full disk, a file size limit, a read-only folder); nothing
    partial is left under its name. The message says which file and why."""


class RecipeError(DenseError, ValueError):
    """An augmentation option that is not one of its choices."""


class ImageReadError(DenseError):
    """An input image that cannot be used; the message names the file and the reason."""


class InstallError(DenseError, ImportError):
    """The installed packages do not work together (e.g. torchvision built for another torch)."""


class CacheError(DenseError):
    """A cache entry that cannot be used or repaired here (e.g. a read-only cache folder)."""


class UnknownNameError(DenseError, ValueError):
    """A name that no registered backbone, head or dataset has (dense.core.registry)."""


class ImportsError(DenseError, ValueError):
    """A module named in imports=[...] that cannot be imported (dense/cli/imports.py)."""


class ExportError(DenseError, ValueError):
    """A model that cannot be exported as asked, an output that cannot be written, a file not ours."""


class OnnxRunError(DenseError, RuntimeError):
    """ONNX Runtime failed on an input, or ran past the time limit, or the graph's output is not what
    the metadata describes; the message names the file. predict.py skips that image."""


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
