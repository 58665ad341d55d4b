"""A disk cache of the frozen backbone's features, so linear heads train at the speed of the head.

The backbone is frozen, so for a fixed image and view its FeatureMaps never change: compute them once,
store them in half precision in memory-mapped .npy files, and read them back instead of running the
backbone. This fits the linear-probe recipes, whose inputs are deterministic apart from a horizontal
flip: each image is cached in two views (as it is, and flipped), and training picks one at random.

Layout: `<root>/<key>/` with
    meta.json        what the key was made of (readable, for humans)
    patches.npy      N × V × L × D × h × w  float16   (V = 2 views, L = layers)
    cls.npy          N × V × L × D          float16   (when the head uses class tokens)
    target.npy       N × ...                the depth (float32) or mask (int16) of view 0
    done.npy         N × V bool             written after the features, so a killed fill resumes

The key is a hash of everything that changes the features: backbone name, the backbone's weights
(the file's sha256, or a hash of the tensors for a random initialisation), layers, norm, class
tokens, image size, and the dataset's identity (class, split, sample names). Change any of them and
a new folder is used: a stale entry is never read.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dense.features import FeatureMaps
from dense.model import DenseModel, center_padding

VIEWS = ("original", "hflip")
_HASH_CHUNK = 1 << 24


def file_sha256(path: str) -> str:
    """sha256 of a weights file, memoised next to the cache by (path, size, mtime): hashing a 4 GB
    ViT-g file takes seconds, and it only changes when the file does."""
    stat = os.stat(path)
    memo_key = f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"
    memo_path = os.path.join(os.path.expanduser("~"), ".cache", "dense", "file_hashes.json")
    try:
        with open(memo_path) as f:
            memo = json.load(f)
    except (OSError, ValueError):
        memo = {}
    if memo_key not in memo:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
        memo[memo_key] = digest.hexdigest()
        os.makedirs(os.path.dirname(memo_path), exist_ok=True)
        tmp = memo_path + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(memo, f)
        os.replace(tmp, memo_path)
    return memo[memo_key]


def backbone_fingerprint(model: DenseModel) -> str:
    config = model.config
    if config.get("backbone_weights"):
        return "file:" + file_sha256(config["backbone_weights"])
    digest = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return "tensors:" + digest.hexdigest()


def dataset_fingerprint(dataset: Dataset) -> dict:
    names = [str(n) for n in getattr(dataset, "names", [])] or [str(len(dataset))]
    return {
        "class": type(dataset).__name__,
        "split": getattr(dataset, "split", None),
        "samples": hashlib.sha256("\n".join(names).encode()).hexdigest(),
        "length": len(dataset),
    }


def cache_key(model: DenseModel, dataset: Dataset, image_size: tuple[int, int]) -> tuple[str, dict]:
    description = {
        "backbone": model.config.get("backbone"),
        "weights": backbone_fingerprint(model),
        "layers": list(model.layers),
        "norm": bool(model.norm),
        "cls_token": bool(model.use_cls_token),
        "image_size": list(image_size),
        "views": list(VIEWS),
        "dataset": dataset_fingerprint(dataset),
        "format": 1,
    }
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]
    return key, description


class CachedFeatures(Dataset):
    """Features of `dataset` (fixed-size samples), filled on construction, read back per item.

    Items: {"patches": L×D×h×w float16, "cls": L×D float16 (if used), "depth"/"mask", "name",
    "view": 0|1}. With `random_flip`, each read picks a view at random (training); otherwise view 0.
    """

    def __init__(self, dataset: Dataset, model: DenseModel, root: str, *, random_flip: bool,
                 batch_size: int = 8, device: str | torch.device = "cpu", precision: str = "fp32"):
        self.dataset = dataset
        self.random_flip = random_flip
        first = dataset[0]
        self.target_key = "depth" if "depth" in first and model.task == "depth" else "mask"
        self.image_size = tuple(first["image"].shape[-2:])
        self.names = [str(n) for n in getattr(dataset, "names", range(len(dataset)))]
        key, description = cache_key(model, dataset, self.image_size)
        self.directory = os.path.join(root, key)
        self._open(model, first, description)
        self.fill(model, batch_size, device, precision)

    # ---- storage --------------------------------------------------------------------------------

    def _open(self, model: DenseModel, first: dict, description: dict) -> None:
        os.makedirs(self.directory, exist_ok=True)
        padded, _ = model.pad(first["image"][None])
        h, w = padded.shape[-2] // model.patch_size, padded.shape[-1] // model.patch_size
        n, v, layers, dim = len(self.dataset), len(VIEWS), len(model.layers), model.backbone.embed_dim
        target = first[self.target_key]
        target_dtype = np.float32 if self.target_key == "depth" else np.int16
        shapes = {
            "patches": ((n, v, layers, dim, h, w), np.float16),
            "target": ((n, *target.shape), target_dtype),
            "done": ((n, v), np.bool_),
        }
        if model.use_cls_token:
            shapes["cls"] = ((n, v, layers, dim), np.float16)
        self.arrays = {}
        for name, (shape, dtype) in shapes.items():
            path = os.path.join(self.directory, f"{name}.npy")
            if os.path.exists(path):
                array = np.load(path, mmap_mode="r+")
                if array.shape != shape or array.dtype != dtype:  # an older format: start again
                    del array
                    os.remove(path)
            if not os.path.exists(path):
                np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape).flush()
            self.arrays[name] = np.load(path, mmap_mode="r+")
        with open(os.path.join(self.directory, "meta.json"), "w") as f:
            json.dump(description, f, indent=1)

    @property
    def complete(self) -> bool:
        return bool(self.arrays["done"].all())

    @torch.no_grad()
    def fill(self, model: DenseModel, batch_size: int, device, precision: str) -> int:
        """Compute the missing entries; returns how many images were run through the backbone."""
        todo = np.flatnonzero(~self.arrays["done"].all(axis=1))
        if len(todo) == 0:
            return 0
        backbone_device = next(model.backbone.parameters()).device
        model.to(device)
        loader = DataLoader(torch.utils.data.Subset(self.dataset, todo.tolist()), batch_size=batch_size)
        position = 0
        # bf16 when asked, and always when the backbone's weights are stored in bf16 (a bf16-mixed run,
        # DenseModel.cast_backbone): such a backbone runs only under autocast.
        bf16 = precision == "bf16" or model.backbone_dtype == torch.bfloat16
        autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
        for batch in loader:
            indices = todo[position : position + len(batch["image"])]
            position += len(indices)
            images = batch["image"].to(device)
            for view in range(len(VIEWS)):
                view_images = images.flip(-1) if view == 1 else images
                with autocast:
                    features = model.extract_features(model.pad(view_images)[0])
                patches = torch.stack(features.patches, dim=1).half().cpu().numpy()
                self.arrays["patches"][indices, view] = patches
                if "cls" in self.arrays:
                    self.arrays["cls"][indices, view] = torch.stack(features.cls_tokens, dim=1).half().cpu().numpy()
            self.arrays["target"][indices] = batch[self.target_key].numpy().astype(self.arrays["target"].dtype)
            for name in ("patches", "cls", "target"):
                if name in self.arrays:
                    self.arrays[name].flush()
            # Only after the features are on disk: a fill killed before this line redoes the batch.
            self.arrays["done"][indices] = True
            self.arrays["done"].flush()
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
    """The model's output from cached features: the head, clamp, un-pad and resize, no backbone."""
    height, width = image_size
    padding = center_padding(height, width, model.patch_size)
    return model.decode(batch_features(batch), padding, (height, width))
