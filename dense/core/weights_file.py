"""The one safe way to read a weights file or checkpoint (torch.load with weights_only=True, sizes
bounded before inflating) and the one check every tensor read from a file passes before it is used.
Kept apart from dense/core/errors.py, which stays importable without torch (fast `--help` and config
errors)."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping

import torch

from dense.core.errors import WeightsError, shown

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


# The dtypes of the tensors a weights file or checkpoint of a model holds: floating-point weights,
# integer and bool buffers (counters, indices, masks). Anything else (complex, float8, quantized
# integer types, unsigned 16-64 bits) is no tensor any of our models reads.
PLAIN_DTYPES = frozenset(
    {torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool, torch.uint8, torch.int8}
    | {torch.int16, torch.int32, torch.int64}
)


def tensor_problem(
    value, expected: torch.Tensor | None = None, *, shape: bool = True, owner: str = "the model"
) -> str | None:
    """Why `value`, read from a file, cannot be used as a tensor, or None. The one check every tensor
    read from a file passes before it is used: a plain tensor (dense strided layout, not nested or
    quantized, with data on the CPU, where files are loaded, rather than on the `meta` device, of a
    dtype in PLAIN_DTYPES); with `expected` (the model's own tensor, possibly on the meta device), also
    of its rank, its kind of dtype (floating point, or exactly its integer or bool dtype) and, with
    `shape`, its shape (`owner` names what expects it). The reason reads after the tensor's name:
    "'cls_token' is a 0-d tensor but tiny14 expects 3-d (1, 1, 48)"."""
    if not isinstance(value, torch.Tensor):
        return f"is {shown(value)}, not a tensor"
    if value.layout is not torch.strided or value.is_nested:
        layout = "nested" if value.is_nested else str(value.layout).removeprefix("torch.")
        return f"is a {layout} tensor, not a dense one (re-save it with .to_dense())"
    if value.is_quantized:
        return f"is a quantized tensor ({str(value.dtype).removeprefix('torch.')}), not a plain one"
    if value.device.type != "cpu":
        return f"is a tensor of the {value.device.type} device, which holds no values"
    if value.dtype not in PLAIN_DTYPES:
        return f"holds {str(value.dtype).removeprefix('torch.')}, no dtype of a model's weights"
    if expected is None:
        return None
    if value.dim() != expected.dim():
        return f"is a {value.dim()}-d tensor but {owner} expects {expected.dim()}-d {tuple(expected.shape)}"
    if expected.is_floating_point() != value.is_floating_point() or (
        not expected.is_floating_point() and value.dtype != expected.dtype
    ):
        wanted = (
            "floating point" if expected.is_floating_point() else str(expected.dtype).removeprefix("torch.")
        )
        return f"holds {str(value.dtype).removeprefix('torch.')} but {owner} expects {wanted}"
    if shape and value.shape != expected.shape:
        return f"has shape {tuple(value.shape)} but {owner} expects {tuple(expected.shape)}"
    return None


def check_state_dict(
    state,
    where: str,
    expected: Mapping[str, torch.Tensor] | None = None,
    *,
    shape: bool = True,
    owner: str = "the model",
) -> None:
    """A WeightsError naming `where` and the key unless `state` maps names (strings) to tensors that
    pass tensor_problem, against `expected`'s tensor of the same name where it has one."""
    if not isinstance(state, Mapping):
        raise WeightsError(f"{where} holds {shown(state)}, not a state dict of named tensors")
    expected = expected or {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise WeightsError(f"{where}: its state dict has the key {shown(key)}, not a tensor name")
        problem = tensor_problem(value, expected.get(key), shape=shape, owner=owner)
        if problem is not None:
            raise WeightsError(f"{where}: {shown(key, 120)} {problem}")


MAX_TENSOR_PATH = 160


def _check_file_tensors(loaded, path: str) -> None:
    """Every tensor anywhere in what torch.load returned is a plain one (tensor_problem), or a one-line
    WeightsError names the file and where in it the tensor lies (`['state_dict']['cls_token']`)."""
    holders = (torch.Tensor, Mapping, list, tuple)
    pending = [(loaded, "")] if isinstance(loaded, holders) else []
    while pending:  # a loop, not recursion: a crafted file may nest thousands deep
        value, where = pending.pop()
        if isinstance(value, torch.Tensor):
            problem = tensor_problem(value)
            if problem is not None:
                raise WeightsError(f"{path}: the value at {where or 'its top'} {problem}")
            continue
        mapping = isinstance(value, Mapping)
        for key, item in value.items() if mapping else enumerate(value):
            if not isinstance(item, holders):
                continue
            name = shown(key, 80) if mapping else str(key)
            if mapping and isinstance(item, torch.Tensor) and not isinstance(key, str):
                # Every model's tensors are named; a number as a name breaks whatever matches names.
                raise WeightsError(
                    f"{path}: the tensor at {where + f'[{name}]'} is keyed by {name}, not by a name"
                )
            pending.append((item, (where + f"[{name}]")[:MAX_TENSOR_PATH]))


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
        loaded = torch.load(path, map_location="cpu", weights_only=True)
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
    _check_file_tensors(loaded, path)
    return loaded
