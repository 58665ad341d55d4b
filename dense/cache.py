"""A disk cache of the frozen backbone's features, so linear heads train at the speed of the head.

The backbone is frozen, so for a fixed image and view its FeatureMaps never change: compute them once,
store them in half precision in memory-mapped .npy files, and read them back instead of running the
backbone. This fits the linear-probe recipes, whose inputs are deterministic apart from a horizontal
flip: each image is cached in two views (as it is, and flipped), and training picks one at random.

Layout: `<root>/<key>/` with
    meta.json        what the key was made of (written last when an entry is created)
    patches.npy      N × V × L × D × h × w  float16   (V = 2 views, L = layers)
    cls.npy          N × V × L × D          float16   (when the head uses class tokens)
    target.npy       N × ...                the depth (float32) or mask (int16) of view 0
    done.npy         N × V bool             written after the features, so a killed fill resumes
    .lock            held (flock) while a run checks and fills the entry

The key is a hash of everything that changes an entry: the backbone (name, weights: the file's sha256
or a hash of the tensors of a random initialisation, layers, norm, class tokens), the precision the
backbone ran in, the views, the image size, the target, and the dataset's `fingerprint()` (class,
resolved root, split, options, and every sample's files by path, size and mtime). A dataset without a
fingerprint (a plain torch Dataset) is keyed by a hash of all its samples' contents, read once per
run. Change anything and a new folder is filled: a stale entry is never read.

Opening an entry checks it before trusting `done.npy`: meta.json must equal the description, and each
.npy must have the expected header (shape, dtype, order) and exactly header + data bytes. A damaged
entry (a file missing, cut short, rewritten) is reset with one `CacheEntryWarning` and refilled.
Files are created under a temporary name and renamed, and the check and fill run under an exclusive
lock, so a run killed at any moment or two runs sharing the folder never leave or read a half-made file.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import math
import os
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dense.errors import DenseError
from dense.features import FeatureMaps
from dense.hashing import file_sha256, tensor_bytes, tensors_sha256
from dense.io import atomic_path
from dense.model import DenseModel, center_padding

VIEWS = ("original", "hflip")
FORMAT = 2  # bump when what an entry holds, or how it is computed, changes
PRECISIONS = ("fp32", "bf16")


class CacheError(DenseError):
    """A cache entry that cannot be used or repaired here (e.g. a read-only cache folder)."""


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
    return {"class": f"{type(dataset).__module__}.{type(dataset).__qualname__}", "samples": len(dataset),
            "content": digest.hexdigest()}


def dataset_fingerprint(dataset: Dataset) -> dict:
    return dataset.fingerprint() if hasattr(dataset, "fingerprint") else content_fingerprint(dataset)


def feature_description(model: DenseModel, precision: str) -> dict:
    """What changes the features of one image: the backbone and the precision it runs in."""
    if precision not in PRECISIONS:
        raise CacheError(f"cache.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    # A backbone whose weights are stored in bf16 (a bf16-mixed run, DenseModel.cast_backbone) runs
    # only under bf16 autocast, whatever was asked.
    bf16 = precision == "bf16" or model.backbone_dtype == torch.bfloat16
    return {
        "backbone": model.config.get("backbone"),
        "weights": backbone_fingerprint(model),
        "layers": list(model.layers),
        "norm": bool(model.norm),
        "cls_token": bool(model.use_cls_token),
        "precision": "bf16" if bf16 else "fp32",
        "views": list(VIEWS),
    }


def cache_key(model: DenseModel, dataset: Dataset, image_size: tuple[int, int], *, target: str,
              precision: str = "fp32") -> tuple[str, dict]:
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


def npy_problem(path: str, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """Why `path` is not a complete C-order .npy of this shape and dtype, or None when it is."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(f)
            else:
                return f"{name} has .npy version {version}, not one this cache writes"
            header_bytes, size = f.tell(), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return f"{name} is missing"
    except (OSError, ValueError, EOFError) as e:
        return f"{name} has no readable .npy header ({str(e).strip().splitlines()[0][:80]})"
    found_shape, fortran, found_dtype = header
    if tuple(found_shape) != tuple(shape) or found_dtype != np.dtype(dtype) or fortran:
        return (f"{name} holds {'a Fortran-order ' if fortran else ''}{found_dtype} {tuple(found_shape)} array, "
                f"expected {np.dtype(dtype)} {tuple(shape)}")
    expected = header_bytes + math.prod(shape) * np.dtype(dtype).itemsize
    if size != expected:
        return f"{name} is {size} bytes, expected {expected} (cut short or padded)"
    return None


@contextlib.contextmanager
def entry_lock(directory: str):
    """Holds an exclusive flock on `directory/.lock`: one run at a time checks and fills an entry. Where
    the folder cannot hold a lock (read-only, a filesystem without flock) the block runs unlocked."""
    try:
        fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
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

    Items: {"patches": L×D×h×w float16, "cls": L×D float16 (if used), "depth"/"mask", "name",
    "view": 0|1}. With `random_flip`, each read picks a view at random (training); otherwise view 0.
    `filled` is how many images the construction ran through the backbone (0: the entry was complete).
    """

    def __init__(self, dataset: Dataset, model: DenseModel, root: str, *, random_flip: bool,
                 batch_size: int = 8, device: str | torch.device = "cpu", precision: str = "fp32"):
        self.dataset = dataset
        self.random_flip = random_flip
        first = dataset[0]
        self.target_key = "depth" if "depth" in first and model.task == "depth" else "mask"
        self.image_size = tuple(first["image"].shape[-2:])
        self.names = (list(dataset.sample_names()) if hasattr(dataset, "sample_names")
                      else [str(n) for n in getattr(dataset, "names", range(len(dataset)))])
        key, self.description = cache_key(model, dataset, self.image_size, target=self.target_key,
                                          precision=precision)
        if self.description["dataset"].get("options", {}).get("augment"):
            raise CacheError("the feature cache needs unaugmented samples (cached views are reused every "
                             "epoch): build the dataset with augment=False")
        self.directory = os.path.join(root, key)
        self.shapes = self._shapes(model, first)
        self.filled = self._fill(model, batch_size, device)

    # ---- storage --------------------------------------------------------------------------------

    def _shapes(self, model: DenseModel, first: dict) -> dict[str, tuple[tuple[int, ...], type]]:
        padded, _ = model.pad(first["image"][None])
        h, w = padded.shape[-2] // model.patch_size, padded.shape[-1] // model.patch_size
        n, v, layers, dim = len(self.dataset), len(VIEWS), len(model.layers), model.backbone.embed_dim
        target_dtype = np.float32 if self.target_key == "depth" else np.int16
        shapes = {
            "patches": ((n, v, layers, dim, h, w), np.float16),
            "target": ((n, *first[self.target_key].shape), target_dtype),
            "done": ((n, v), np.bool_),
        }
        if model.use_cls_token:
            shapes["cls"] = ((n, v, layers, dim), np.float16)
        return shapes

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.npy" if name != "meta" else "meta.json")

    def _problem(self) -> str | None:
        """What is wrong with the entry on disk, None when it can be trusted; "" when it was never
        completely created (no meta.json: nothing of it was ever read, so nothing to warn about)."""
        try:
            with open(self._path("meta")) as f:
                meta = json.load(f)
        except FileNotFoundError:
            return ""
        except (OSError, ValueError) as e:
            return f"meta.json is unreadable ({type(e).__name__})"
        if meta != self.description:
            return "meta.json describes another entry"
        for name, (shape, dtype) in self.shapes.items():
            problem = npy_problem(self._path(name), shape, dtype)
            if problem:
                return problem
        return None

    def _reset(self) -> None:
        """Re-creates every file of the entry (features zero, done all False); meta.json last, so an
        entry with a meta.json always has all its files."""
        try:
            for path in [self._path("meta"), *glob.glob(os.path.join(self.directory, ".tmp-*"))]:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)  # stray temporary files of a killed run: nobody else is in (lock)
            for name, (shape, dtype) in self.shapes.items():
                with atomic_path(self._path(name)) as tmp:
                    np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape).flush()
            with atomic_path(self._path("meta")) as tmp, open(tmp, "w") as f:
                json.dump(self.description, f, indent=1)
        except OSError as e:
            raise CacheError(f"cannot write the feature cache entry {self.directory} ({e}); make the folder "
                             "writable or point cache.dir elsewhere") from None

    def _open(self, mode: str) -> dict[str, np.memmap]:
        return {name: np.load(self._path(name), mmap_mode=mode) for name in self.shapes}

    @property
    def complete(self) -> bool:
        return bool(self.arrays["done"].all())

    def fill(self, model: DenseModel, batch_size: int = 8, device: str | torch.device = "cpu",
             precision: str = "fp32") -> int:
        """Compute the missing entries; returns how many images were run through the backbone."""
        features = feature_description(model, precision)
        if features != {k: self.description[k] for k in features}:
            raise CacheError(f"fill() got another backbone or precision than the entry {self.directory} holds")
        return self._fill(model, batch_size, device)

    def _fill(self, model: DenseModel, batch_size: int, device) -> int:
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot create the feature cache entry {self.directory} ({e}); set cache.dir") from None
        with entry_lock(self.directory):
            problem = self._problem()
            if problem is not None:
                if problem:
                    warnings.warn(f"feature cache entry {self.directory} is damaged ({problem}); refilling it",
                                  CacheEntryWarning, stacklevel=3)
                self._reset()
            count = 0
            if not np.load(self._path("done"), mmap_mode="r").all():
                count = self._compute_missing(self._open("r+"), model, batch_size, device)
        # Read-only from here on: nothing in training can write into the entry.
        self.arrays = self._open("r")
        return count

    @torch.no_grad()
    def _compute_missing(self, arrays: dict[str, np.memmap], model: DenseModel, batch_size: int, device) -> int:
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
                    features = model.extract_features(model.pad(view_images)[0])
                arrays["patches"][indices, view] = torch.stack(features.patches, dim=1).half().cpu().numpy()
                if "cls" in arrays:
                    arrays["cls"][indices, view] = torch.stack(features.cls_tokens, dim=1).half().cpu().numpy()
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


def batch_features(batch: dict, dtype: torch.dtype = torch.float32) -> FeatureMaps:
    """The FeatureMaps of a collated batch of cached items (B×L×D×h×w → L maps of B×D×h×w)."""
    # Channels-last, as DenseModel.extract_features gives them (dense.model.to_maps).
    patches = tuple(p.to(dtype).contiguous(memory_format=torch.channels_last) for p in batch["patches"].unbind(1))
    cls = tuple(c.to(dtype) for c in batch["cls"].unbind(1)) if "cls" in batch else None
    return FeatureMaps(patches, cls)


def forward_cached(model: DenseModel, batch: dict, image_size: tuple[int, int]) -> torch.Tensor:
    """The model's output from cached features: the head, un-pad and resize, no backbone (decode clamps
    depth only outside training, as for images)."""
    height, width = image_size
    padding = center_padding(height, width, model.patch_size)
    return model.decode(batch_features(batch), padding, (height, width))
