"""sha256 of (large) files, memoised: what checkpoints record of the backbone file they point at, and
what the feature cache keys its entries by.

Hashing a 4.5 GB ViT-g file takes seconds, and the result only changes when the file does, so it is
memoised in ~/.cache/dense/file_hashes.json by everything a rewrite changes: the resolved path, device
and inode, size, mtime and ctime (nanoseconds). mtime alone is not enough: a file rewritten with the
same size and its old mtime put back (`touch -d`, `os.utime`, `cp -p`) would get its old hash; ctime
cannot be set back by a user, and a rewrite through a new file changes the inode.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

_CHUNK = 1 << 24
MEMO_PATH = os.path.join(os.path.expanduser("~"), ".cache", "dense", "file_hashes.json")


def _memo_key(path: str) -> str:
    stat = os.stat(path)
    return f"{os.path.realpath(path)}:{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"


def _read_memo() -> dict:
    try:
        with open(MEMO_PATH) as f:
            memo = json.load(f)
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's content (memoised, see above)."""
    path = os.fspath(path)
    key = _memo_key(path)
    memo = _read_memo()
    digest = memo.get(key)
    if isinstance(digest, str):
        return digest
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    digest = hasher.hexdigest()
    if _memo_key(path) != key:  # the file changed while it was read: do not memoise a mixed hash
        return digest
    memo[key] = digest
    try:
        os.makedirs(os.path.dirname(MEMO_PATH), exist_ok=True)
        tmp = f"{MEMO_PATH}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(memo, f)
        os.replace(tmp, MEMO_PATH)
    except OSError:
        pass  # a read-only home: hash again next time
    return digest


def tensors_sha256(state: dict) -> str:
    """sha256 of a state dict's names and tensor bytes (sorted by name): the identity of a set of weights
    that is not (yet) a file."""
    hasher = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        hasher.update(name.encode())
        hasher.update(str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        hasher.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()
