"""A disk cache of the frozen backbone's features, so linear heads train at the speed of the head.

The backbone is frozen, so for a fixed image and view its FeatureMaps never change: compute them once,
store them in half precision in memory-mapped .npy files, and read them back instead of running the
backbone. This fits the linear-probe recipes, whose inputs are deterministic apart from a horizontal
flip: each image is cached in two views (as it is, and flipped), and training picks one at random.

Layout: `<root>/<key>/` with
    meta.json        what the key was made of (written last when an entry is created)
    patches.npy      N × V × L × D × h × w  float16   (V = 2 views, L = layers)
    cls.npy          N × V × L × D          float16   (when the head uses class tokens)
    target.npy       N × ...                the depth or disparity (float32) or mask (int16) of view 0
    done.npy         N × V bool             written after the features, so a killed fill resumes
    .lock            held (flock) while a run checks and fills the entry

The key is a hash of everything that changes an entry: the backbone (name, weights: the file's sha256
or a hash of the tensors of a random initialisation, layers, norm, class tokens), the precision the
backbone ran in, the views, the image size, the target, and the dataset's `fingerprint()` (class,
resolved root, split, options, and every sample's files by path, size, mtime, inode and ctime). A
dataset without a fingerprint (a plain torch Dataset) is keyed by a hash of all its samples' contents,
read once per run. Change anything and a new folder is filled: a stale entry is never read.

What opening an entry checks, before trusting `done.npy`:
  * the entry folder and every file the cache reads or writes in it are real: the folder is opened
    without following a link and every file is reached through that descriptor, never followed
    through a symbolic link, and must be a regular file (not a FIFO, device or folder). Anything else
    is refused with a CacheError naming it: nothing outside the entry is read, locked, replaced or
    deleted, whatever the shared cache folder holds.
  * meta.json is at most 1 MiB of JSON and equals the description;
  * each .npy has the expected header (shape, dtype, order) and exactly header + data bytes;
  * each .npy names the entry it belongs to, as meta.json does (a comment at the end of its header: the
    key and a random part drawn at every reset), so a file swapped in from another entry, or from
    an earlier fill of this one, with the same shape, is found.
A damaged entry (a file missing, cut short, rewritten with another header or meta.json) is reset with
one `CacheEntryWarning` and refilled. Files are created under a temporary name (O_EXCL, never through
a link) and renamed, and the check and fill run under an exclusive lock, so a run killed at any moment
or two runs sharing the folder never leave or read a half-made file. Their disk blocks are allocated
when they are created (posix_fallocate, else zeros written), not left sparse: the fill writes through
memory maps, which a full disk would kill with SIGBUS; a full disk is a CacheError at creation instead.

What it does NOT check: the features themselves. Someone with write access to the cache folder can
rewrite an entry's numbers in place, keeping every header and size, and training reads them; telling
that apart would need a keyed checksum of every entry, which the cache does not keep. Share a cache
folder only read-only or with people you trust. Also, the arrays are memory-mapped: a file of an entry
cut short by another process while a run reads it kills that run with SIGBUS (the cache's own refill
never does this: it writes new files and renames them, and a running reader keeps the old ones).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import stat
import warnings
from typing import BinaryIO

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dense.core.constants import IMAGENET_MEAN, IMAGENET_STD
from dense.core.errors import CacheError
from dense.core.features import FeatureMaps
from dense.core.hashing import file_sha256, tensor_bytes, tensors_sha256
from dense.core.io import read_npy_header
from dense.model import DenseModel, center_padding

VIEWS = ("original", "hflip")
FORMAT = 3  # bump when what an entry holds, or how it is computed, changes (3: each file names its entry)
PRECISIONS = ("fp32", "bf16")
MAX_META_BYTES = 1 << 20  # a description is a few KB; meta.json is read whole
# Each .npy of an entry names the entry in a comment at the end of its header (numpy reads the header as
# a Python literal, so np.load reads the file as any other); meta.json holds the same identity.
ENTRY_MARK = "# dense feature cache entry "
ENTRY_ID = re.compile(r"[0-9a-f]{20}-[0-9a-f]{16}")  # <key>-<random, new at every reset>
ALLOCATION_CHUNK = 1 << 20  # zeros written at a time where the disk cannot allocate (no posix_fallocate)


class CacheEntryWarning(UserWarning):
    """A damaged cache entry was found; it is reset and refilled, never read."""


# ---- the key --------------------------------------------------------------------------------------


def backbone_fingerprint(model: DenseModel) -> str:
    config = model.config
    if config.get("backbone_weights"):
        return "file:" + file_sha256(config["backbone_weights"])
    return "tensors:" + tensors_sha256(model.backbone.state_dict())


def content_fingerprint(dataset: Dataset) -> dict:
    """The key of a dataset that has no `fingerprint()`: a hash of every sample's tensors and values.
    It reads the whole dataset once per run (far cheaper than the backbone, and never stale); a
    dataset that augments at random gets a new entry each run."""
    digest = hashlib.sha256()
    for index in range(len(dataset)):
        sample = dataset[index]
        for name in sorted(sample):
            value = sample[name]
            digest.update(name.encode())
            if isinstance(value, torch.Tensor):
                digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
                digest.update(tensor_bytes(value))
            else:
                digest.update(repr(value).encode())
    return {
        "class": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
        "samples": len(dataset),
        "content": digest.hexdigest(),
    }


def dataset_fingerprint(dataset: Dataset) -> dict:
    return dataset.fingerprint() if hasattr(dataset, "fingerprint") else content_fingerprint(dataset)


def feature_description(model: DenseModel, precision: str) -> dict:
    """What changes the features of one image: the backbone and the precision it runs in."""
    if precision not in PRECISIONS:
        raise CacheError(f"cache.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    # A backbone whose weights are stored in bf16 (a bf16-mixed run, DenseModel.cast_backbone) runs
    # only under bf16 autocast, whatever was asked.
    bf16 = precision == "bf16" or model.backbone_dtype == torch.bfloat16
    description = {
        "backbone": model.config.get("backbone"),
        "weights": backbone_fingerprint(model),
        "layers": list(model.layers),
        "norm": bool(model.norm),
        "cls_token": bool(model.use_cls_token),
        "precision": "bf16" if bf16 else "fp32",
        "views": list(VIEWS),
    }
    if (model.image_mean, model.image_std) != (IMAGENET_MEAN, IMAGENET_STD):
        # Images reach the model as uint8 and are normalised straight to these statistics; entries
        # made when they went through ImageNet's first differ in the last bits: keyed apart. (With
        # ImageNet's statistics both ways give the same numbers, so those entries stay valid.)
        description["normalisation"] = {"mean": list(model.image_mean), "std": list(model.image_std)}
    return description


def cache_key(
    model: DenseModel, dataset: Dataset, image_size: tuple[int, int], *, target: str, precision: str = "fp32"
) -> tuple[str, dict]:
    """(folder name, description): the name is a hash of the description, which meta.json keeps."""
    description = {
        **feature_description(model, precision),
        "image_size": list(image_size),
        "target": target,
        "dataset": dataset_fingerprint(dataset),
        "format": FORMAT,
    }
    description = json.loads(json.dumps(description))  # exactly as meta.json reads back
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]
    return key, description


# ---- checking an entry ----------------------------------------------------------------------------


def npy_problem(
    f: BinaryIO, name: str, shape: tuple[int, ...], dtype: np.dtype, entry: str | None = None
) -> str | None:
    """Why the .npy open in `f` (at its start) is not a complete C-order array of this shape and dtype
    (whose header names `entry`, when given), or None when it is; `f` is then at the first data byte."""
    try:
        found_shape, fortran, found_dtype = read_npy_header(f)
        header_bytes, size = f.tell(), os.fstat(f.fileno()).st_size
    except (OSError, ValueError, EOFError) as e:
        return f"{name} has no readable .npy header ({str(e).strip().splitlines()[0][:80]})"
    if tuple(found_shape) != tuple(shape) or found_dtype != np.dtype(dtype) or fortran:
        return (
            f"{name} holds {'a Fortran-order ' if fortran else ''}{found_dtype} {tuple(found_shape)} array, "
            f"expected {np.dtype(dtype)} {tuple(shape)}"
        )
    expected = header_bytes + math.prod(shape) * np.dtype(dtype).itemsize
    if size != expected:
        return f"{name} is {size} bytes, expected {expected} (cut short or padded)"
    if entry is not None:
        f.seek(0)
        found = header_entry(f.read(header_bytes))
        if found != entry:
            return f"{name} belongs to {f'the entry {found}' if found else 'no entry'}, not to {entry} (swapped in?)"
    return None


def header_entry(header: bytes) -> str | None:
    """The entry identity a .npy header of the cache names (npy_header), or None."""
    text = header.decode("latin1")
    start = text.rfind(ENTRY_MARK)
    if start < 0:
        return None
    found = text[start + len(ENTRY_MARK) :].split()
    return found[0] if found and ENTRY_ID.fullmatch(found[0]) else None


def npy_header(shape: tuple[int, ...], dtype: np.dtype, entry: str) -> bytes:
    """The .npy header (version 1.0) of a C-order array, as np.save writes it, with a comment naming the
    entry the file belongs to; padded to 64 bytes as numpy pads."""
    fields = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    text = f"{fields!r}  {ENTRY_MARK}{entry}"
    magic = np.lib.format.magic(1, 0)
    padding = -(len(magic) + 2 + len(text) + 1) % 64
    body = (text + " " * padding + "\n").encode("latin1")
    return magic + len(body).to_bytes(2, "little") + body


def allocate(fd: int, start: int, length: int) -> None:
    """Give bytes [start, start + length) of the file real disk blocks now (zeros): the arrays are filled
    through memory maps, and a map that writes into a hole of a sparse file on a full disk is killed
    with SIGBUS; allocated here, a full disk is an OSError (ENOSPC) instead. posix_fallocate where the
    system has it, else (or where the filesystem cannot) zeros written."""
    if length <= 0:
        return
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, start, length)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    os.lseek(fd, start, os.SEEK_SET)
    zeros = bytes(min(length, ALLOCATION_CHUNK))
    while length > 0:
        length -= os.write(fd, zeros[: min(length, len(zeros))])


def refused(path: str, what: str, entry: str) -> CacheError:
    """The one line for something in a cache folder that is not what the cache made (a link, a FIFO):
    never followed or read, so the entry cannot be used until it is cleared."""
    return CacheError(
        f"feature cache entry {path} {what}: the cache never follows links or reads anything but regular files "
        f"and folders; remove it (rm -r {entry}) or point cache.dir elsewhere"
    )


class EntryFolder:
    """An entry's folder, opened once without following a link; every file in it is then reached through
    that descriptor (never through a path that could be swapped for a link) and must be a regular file."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as e:
            if os.path.islink(path):
                raise refused(path, "is a symbolic link", path) from None
            if e.errno == errno.ENOTDIR:
                raise refused(path, "is not a folder", path) from None
            raise CacheError(f"cannot open the feature cache entry {path} ({e}); set cache.dir") from None

    def close(self) -> None:
        os.close(self.fd)

    def open_fd(self, name: str, flags: int, mode: int = 0o666) -> int:
        """A descriptor of regular file `name` (O_NOFOLLOW, and O_NONBLOCK so that a FIFO is found, not
        waited on). FileNotFoundError and other OSErrors pass; a link or a non-regular file is refused."""
        path = os.path.join(self.path, name)
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=self.fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise refused(path, "is a symbolic link", self.path) from None
            if e.errno == errno.EISDIR:
                raise refused(path, "is not a regular file", self.path) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise refused(path, "is not a regular file", self.path)
        os.set_blocking(fd, True)
        return fd

    def open(self, name: str, writable: bool = False) -> BinaryIO:
        fd = self.open_fd(name, os.O_RDWR if writable else os.O_RDONLY)
        return os.fdopen(fd, "r+b" if writable else "rb")

    def create(self, name: str, content: bytes, size: int | None = None) -> None:
        """Makes `name` hold `content` followed by zeros up to `size` bytes, allocated on the disk
        (allocate): written under a new temporary name (O_EXCL: never through a link), then renamed over
        `name` (which replaces the name itself, never what a link there points at)."""
        tmp = f".tmp-{secrets.token_hex(6)}-{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=self.fd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
                f.flush()
                allocate(f.fileno(), len(content), (size or 0) - len(content))
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=self.fd)
            raise

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)  # removes the name, a link included, never its target

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    @contextlib.contextmanager
    def lock(self):
        """Holds an exclusive flock on `.lock`: one run at a time checks and fills the entry. Where the
        folder cannot hold a lock (read-only, a filesystem without flock) the block runs unlocked; a
        `.lock` that is a link or not a regular file is refused."""
        try:
            fd = self.open_fd(".lock", os.O_RDWR | os.O_CREAT)
        except OSError:  # not a CacheError: that one (a link, a FIFO) goes up
            yield
            return
        try:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


# ---- the dataset ----------------------------------------------------------------------------------


class CachedFeatures(Dataset):
    """Features of `dataset` (fixed-size, unaugmented samples), filled on construction, read back per item.

    Items: {"patches": L×D×h×w float16, "cls": L×D float16 (if used), "depth"/"disparity"/"mask", "name",
    "view": 0|1}. With `random_flip`, each read picks a view at random (training); otherwise view 0.
    `filled` is how many images the construction ran through the backbone (0: the entry was complete).
    """

    def __init__(
        self,
        dataset: Dataset,
        model: DenseModel,
        root: str,
        *,
        random_flip: bool,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ):
        self.dataset = dataset
        self.random_flip = random_flip
        first = dataset[0]
        depth_keys = [k for k in ("depth", "disparity") if k in first] if model.task == "depth" else []
        self.target_key = depth_keys[0] if depth_keys else "mask"
        self.image_size = tuple(first["image"].shape[-2:])
        self.names = (
            list(dataset.sample_names())
            if hasattr(dataset, "sample_names")
            else [str(n) for n in getattr(dataset, "names", range(len(dataset)))]
        )
        key, self.description = cache_key(
            model, dataset, self.image_size, target=self.target_key, precision=precision
        )
        if self.description["dataset"].get("options", {}).get("augment"):
            raise CacheError(
                "the feature cache needs unaugmented samples (cached views are reused every "
                "epoch): build the dataset with augment=False"
            )
        self.directory = os.path.join(root, key)
        self.shapes = self._shapes(model, first)
        self.filled = self._fill(model, batch_size, device)

    # ---- storage --------------------------------------------------------------------------------

    def _shapes(self, model: DenseModel, first: dict) -> dict[str, tuple[tuple[int, ...], type]]:
        padded, _ = model.pad(first["image"][None])
        h, w = padded.shape[-2] // model.patch_size, padded.shape[-1] // model.patch_size
        n, v, layers, dim = len(self.dataset), len(VIEWS), len(model.layers), model.backbone.embed_dim
        target_dtype = np.int16 if self.target_key == "mask" else np.float32
        shapes = {
            "patches": ((n, v, layers, dim, h, w), np.float16),
            "target": ((n, *first[self.target_key].shape), target_dtype),
            "done": ((n, v), np.bool_),
        }
        if model.use_cls_token:
            shapes["cls"] = ((n, v, layers, dim), np.float16)
        return shapes

    def _problem(self, folder: EntryFolder) -> str | None:
        """What is wrong with the entry on disk, None when it can be trusted; "" when it was never
        completely created (no meta.json: nothing of it was ever read, so nothing to warn about)."""
        try:
            f = folder.open("meta.json")
        except FileNotFoundError:
            return ""
        except OSError as e:
            return f"meta.json is unreadable ({type(e).__name__})"
        with f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_META_BYTES:
                return f"meta.json is {size:,} bytes, larger than the {MAX_META_BYTES:,} a description takes"
            try:
                meta = json.loads(f.read(MAX_META_BYTES))
            except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
                return f"meta.json is unreadable ({type(e).__name__})"
        if not isinstance(meta, dict) or {k: v for k, v in meta.items() if k != "entry"} != self.description:
            return "meta.json describes another entry"
        entry = meta.get("entry")
        if not isinstance(entry, str) or not ENTRY_ID.fullmatch(entry):
            return "meta.json names no entry identity"
        for name, (shape, dtype) in self.shapes.items():
            try:
                f = folder.open(f"{name}.npy")
            except FileNotFoundError:
                return f"{name}.npy is missing"
            except OSError as e:
                return f"{name}.npy is unreadable ({type(e).__name__})"
            with f:
                problem = npy_problem(f, f"{name}.npy", shape, dtype, entry)
            if problem:
                return problem
        self.entry = entry
        return None

    def _reset(self, folder: EntryFolder) -> None:
        """Re-creates every file of the entry (features zero, done all False); meta.json last, so an
        entry with a meta.json always has all its files."""
        # A new identity, named in every file and in meta.json: a file of another entry (or of an
        # earlier fill of this one) swapped in is found on open.
        self.entry = f"{os.path.basename(self.directory)[:20]}-{secrets.token_hex(8)}"
        try:
            # Stray temporary files of a killed run: nobody else is in (lock).
            for name in ["meta.json", *(n for n in folder.names() if n.startswith(".tmp-"))]:
                folder.remove(name)
            for name, (shape, dtype) in self.shapes.items():
                header = npy_header(shape, dtype, self.entry)
                folder.create(
                    f"{name}.npy", header, len(header) + math.prod(shape) * np.dtype(dtype).itemsize
                )
            meta = {**self.description, "entry": self.entry}
            folder.create("meta.json", json.dumps(meta, indent=1).encode())
        except OSError as e:
            full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            fix = "free some space" if full else "make the folder writable"
            raise CacheError(
                f"cannot write the feature cache entry {self.directory} ({e.strerror or e}); {fix} or "
                "point cache.dir elsewhere"
            ) from None

    def _map(self, folder: EntryFolder, name: str, mode: str) -> np.memmap:
        """The array `name`, memory-mapped from the very file whose header was just checked."""
        shape, dtype = self.shapes[name]
        try:
            with folder.open(f"{name}.npy", writable=mode == "r+") as f:
                problem = npy_problem(f, f"{name}.npy", shape, dtype, self.entry)
                if problem is None:
                    return np.memmap(f, dtype=dtype, mode=mode, offset=f.tell(), shape=shape)
        except OSError as e:
            problem = f"{name}.npy is unreadable ({e})"
        raise CacheError(
            f"feature cache entry {self.directory} changed while this run opened it ({problem}); "
            "another run is refilling it or the folder is damaged: run again"
        )

    def _open(self, folder: EntryFolder, mode: str) -> dict[str, np.memmap]:
        return {name: self._map(folder, name, mode) for name in self.shapes}

    @property
    def complete(self) -> bool:
        return bool(self.arrays["done"].all())

    def fill(
        self,
        model: DenseModel,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> int:
        """Compute the missing entries; returns how many images were run through the backbone."""
        features = feature_description(model, precision)
        if features != {k: self.description[k] for k in features}:
            raise CacheError(
                f"fill() got another backbone or precision than the entry {self.directory} holds"
            )
        return self._fill(model, batch_size, device)

    def _fill(self, model: DenseModel, batch_size: int, device) -> int:
        try:
            os.makedirs(self.directory, exist_ok=True)
        except FileExistsError:
            pass  # something else by that name (a link, a file): EntryFolder says what
        except OSError as e:
            raise CacheError(
                f"cannot create the feature cache entry {self.directory} ({e}); set cache.dir"
            ) from None
        folder = EntryFolder(self.directory)
        try:
            with folder.lock():
                problem = self._problem(folder)
                if problem is not None:
                    if problem:
                        warnings.warn(
                            f"feature cache entry {self.directory} is damaged ({problem}); refilling it",
                            CacheEntryWarning,
                            stacklevel=3,
                        )
                    self._reset(folder)
                count = 0
                if not self._map(folder, "done", "r").all():
                    count = self._compute_missing(self._open(folder, "r+"), model, batch_size, device)
                # Read-only from here on: nothing in training can write into the entry. Mapped under
                # the lock: a later refill by another run makes new files and leaves these alone.
                self.arrays = self._open(folder, "r")
        finally:
            folder.close()
        return count

    @torch.no_grad()
    def _compute_missing(
        self, arrays: dict[str, np.memmap], model: DenseModel, batch_size: int, device
    ) -> int:
        todo = np.flatnonzero(~arrays["done"].all(axis=1))
        backbone_device = next(model.backbone.parameters()).device
        model.to(device)
        loader = DataLoader(torch.utils.data.Subset(self.dataset, todo.tolist()), batch_size=batch_size)
        position = 0
        bf16 = self.description["precision"] == "bf16"
        autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
        for batch in loader:
            indices = todo[position : position + len(batch["image"])]
            position += len(indices)
            images = batch["image"].to(device)
            for view in range(len(VIEWS)):
                view_images = images.flip(-1) if view == 1 else images
                with autocast:
                    features, _ = model.image_features(view_images)
                arrays["patches"][indices, view] = torch.stack(features.patches, dim=1).half().cpu().numpy()
                if "cls" in arrays:
                    arrays["cls"][indices, view] = (
                        torch.stack(features.cls_tokens, dim=1).half().cpu().numpy()
                    )
            arrays["target"][indices] = batch[self.target_key].numpy().astype(arrays["target"].dtype)
            for name in ("patches", "cls", "target"):
                if name in arrays:
                    arrays[name].flush()
            # Only after the features are on disk: a fill killed before this line redoes the batch.
            arrays["done"][indices] = True
            arrays["done"].flush()
        model.to(backbone_device)
        return len(todo)

    # ---- reading --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        view = int(torch.randint(len(VIEWS), ()).item()) if self.random_flip else 0
        target = torch.from_numpy(np.array(self.arrays["target"][index]))
        if self.target_key == "mask":
            target = target.long()
        if view == 1:
            target = target.flip(-1)
        item = {
            "patches": torch.from_numpy(np.array(self.arrays["patches"][index, view])),
            self.target_key: target,
            "name": self.names[index],
            "view": view,
        }
        if "cls" in self.arrays:
            item["cls"] = torch.from_numpy(np.array(self.arrays["cls"][index, view]))
        return item


def use_feature_cache(
    datamodule,
    model: DenseModel,
    directory: str,
    *,
    batch_size: int = 16,
    device: str | None = None,
    precision: str = "fp32",
) -> None:
    """Train on the frozen backbone's cached features instead of images: `datamodule`'s train split
    (a DenseDataModule, through its wrap_train_set hook) becomes CachedFeatures of it, filled when the
    split is built.

    The train split is then read without its augmentation recipe (cached views must be
    deterministic); each image is cached as it is and flipped, and every read picks one of the
    two. Validation and test still run on images, through DenseModel.predict.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    def cached(dataset: Dataset) -> CachedFeatures:
        return CachedFeatures(
            dataset,
            model,
            directory,
            random_flip=True,
            batch_size=batch_size,
            device=device,
            precision=precision,
        )

    datamodule.wrap_train_set(
        cached,
        augment=False,
        description="training on the cached backbone features of the "
        f"{datamodule.name} train split's whole images",
    )


def batch_features(batch: dict, dtype: torch.dtype = torch.float32) -> FeatureMaps:
    """The FeatureMaps of a collated batch of cached items (B×L×D×h×w → L maps of B×D×h×w)."""
    # Channels-last, as DenseModel.extract_features gives them (dense.model.to_maps).
    patches = tuple(
        p.to(dtype).contiguous(memory_format=torch.channels_last) for p in batch["patches"].unbind(1)
    )
    cls = tuple(c.to(dtype) for c in batch["cls"].unbind(1)) if "cls" in batch else None
    return FeatureMaps(patches, cls)


def forward_cached(model: DenseModel, batch: dict, image_size: tuple[int, int]) -> torch.Tensor:
    """The model's output from cached features: the head, un-pad and resize, no backbone (forward_head clamps
    depth only outside training, as for images)."""
    height, width = image_size
    padding = center_padding(height, width, model.patch_size)
    return model.forward_head(batch_features(batch), padding, (height, width))
