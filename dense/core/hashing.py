"""sha256 of (large) files and of sets of tensors: what checkpoints record of the backbone file they
point at, what names a random backbone's file, and what the feature cache keys its entries by.

Hashing a 4.5 GB ViT-g file reads all of it, and the result only changes when the file does, so it is
memoised in ~/.cache/dense/file_hashes.json, one record per path, trusted only while the file's size,
mtime, inode and ctime are all unchanged. mtime alone is not enough: a file rewritten with the same
size and its old mtime put back (`touch -d`, `os.utime`) would get its old hash; ctime cannot be set
back by a user, and a rewrite through a new file changes the inode.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

import torch

from dense.core.io import atomic_path

_CHUNK = 1 << 24


def memo_path() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "dense", "file_hashes.json")


def _identity(path: str) -> list[int]:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's content (memoised, see above)."""
    path = os.path.abspath(path)
    identity = _identity(path)
    memo_file = memo_path()
    try:
        with open(memo_file) as f:
            memo = json.load(f)
    except (OSError, ValueError):
        memo = {}
    if not isinstance(memo, dict):
        memo = {}
    known = memo.get(path)
    if isinstance(known, dict) and known.get("stat") == identity and isinstance(known.get("sha256"), str):
        return known["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    if _identity(path) == identity:  # not rewritten while it was read: a hash worth remembering
        # One record per path (older memo formats are dropped), so the memo does not grow with rewrites.
        memo = {p: v for p, v in memo.items() if isinstance(v, dict)}
        memo[path] = {"stat": identity, "sha256": digest.hexdigest()}
        with contextlib.suppress(OSError):  # a read-only home only costs the next run a re-hash
            with atomic_path(memo_file) as tmp, open(tmp, "w") as f:
                json.dump(memo, f)
    return digest.hexdigest()


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensors_sha256(state: dict) -> str:
    """sha256 of a state dict's names, dtypes, shapes and tensor bytes (sorted by name): the identity of
    a set of weights that is not (yet) a file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(f"{name}{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()
