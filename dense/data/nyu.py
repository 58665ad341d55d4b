"""NYU-Depth v2, in either of its two common layouts.

(a) The official labelled set: `root/nyu_depth_v2_labeled.mat` (MATLAB v7.3 = HDF5) with the
    official split `root/splits.mat` (`trainNdxs` 795 / `testNdxs` 654, 1-based). MATLAB stores
    column-major, so h5py sees `images` as N×3×W×H uint8 and `depths` as N×W×H float metres
    (already hole-filled); both are transposed back to H×W here.
(b) The BTS / Monocular-Depth-Estimation-Toolbox file lists: `root/nyu_train.txt` and
    `root/nyu_test.txt`, lines "rgb_path depth_path [focal]" relative to root, RGB .jpg and 16-bit
    depth .png in millimetres (0 = no measurement).

val and test are both the 654-image test split, as in the upstream recipes. Train: the toolbox NYU
recipe (crop [45:472, 43:608], rotate ±2.5°, flip, random crop 416×544, colour in the toolbox's
form unless color_aug="bts"); eval: the full 480×640 frame, metrics use the Eigen crop.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from dense.core.errors import DatasetError
from dense.data.filelist import DepthFileList
from dense.data.readers import (
    MAX_LIST_BYTES,
    check_pixels,
    check_regular,
    open_regular,
    resolve_root,
    unreadable,
)
from dense.data.registry import register_dataset
from dense.data.sample import RawSample
from dense.data.transforms import nyu_train, size_pair

MAT_FILE = "nyu_depth_v2_labeled.mat"
SPLITS_FILE = "splits.mat"
LIST_FILES = {"train": "nyu_train.txt", "val": "nyu_test.txt", "test": "nyu_test.txt"}
ROOT_CANDIDATES = ("nyu", "nyu_depth_v2")  # root may also be the folder above the dataset
LAYOUT = (
    f"either the official labelled set ({MAT_FILE} with {SPLITS_FILE} beside it) or the BTS file-list "
    "layout (nyu_train.txt / nyu_test.txt with lines 'rgb_path depth_path [focal]' relative to the root)"
)


SPLIT_EXPECTED = "the NYU splits.mat with trainNdxs/testNdxs"
MAX_SPLIT_INDICES = 100_000  # the labelled set has 1449 frames: a split lists at most those


def read_official_split(path: Path, split: str) -> np.ndarray:
    """0-based indices of the official 795/654 split from splits.mat (1-based MATLAB indices)."""
    key = "trainNdxs" if split == "train" else "testNdxs"
    if not os.path.lexists(path):
        raise DatasetError(
            f"{path} is missing: the official NYU split (trainNdxs/testNdxs) is needed next to {MAT_FILE}; "
            "get splits.mat from the NYU-Depth v2 toolbox page"
        )
    from scipy.io.matlab import MatReadError

    with open_regular(path, "split file", SPLIT_EXPECTED, MAX_LIST_BYTES) as f:
        try:
            indices = _split_variable(f, key, path)
        except (OSError, ValueError, TypeError, MatReadError) as e:
            raise unreadable(path, "split file", e, SPLIT_EXPECTED) from None
    if indices is None:
        raise DatasetError(f"{path} has no {key}; expected {SPLIT_EXPECTED}")
    try:
        return np.asarray(indices).astype(np.int64).ravel() - 1
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: {key} is not a list of numbers; expected {SPLIT_EXPECTED}") from None


def _split_variable(f, key: str, path: Path):
    """The array `key` of the .mat open in `f` (None when it has none), its size checked from the
    header before it is read."""
    import scipy.io

    def check(count: int) -> None:
        if count > MAX_SPLIT_INDICES:
            raise DatasetError(
                f"{path}: {key} holds {count:,} values, more than the {MAX_SPLIT_INDICES:,} allowed; "
                f"expected {SPLIT_EXPECTED}"
            )

    try:
        shapes = {name: shape for name, shape, _ in scipy.io.whosmat(f)}
    except NotImplementedError:  # a v7.3 (HDF5) .mat
        shapes = None
    f.seek(0)
    if shapes is not None:
        if key not in shapes:
            return None
        check(math.prod(shapes[key]))
        return scipy.io.loadmat(f, variable_names=[key])[key]
    import h5py

    with h5py.File(f, "r") as mat:
        if key not in mat:
            return None
        if not isinstance(mat[key], h5py.Dataset):
            raise ValueError(f"{key} is an HDF5 group, not an array")
        check(mat[key].size)
        return mat[key][()]


def mat_sample_name(index: int) -> str:
    """The name of .mat image `index` (0-based): its 1-based MATLAB index, as in splits.mat."""
    return f"{int(index) + 1:04d}"


@register_dataset("nyu")
class NYUDepthV2(DepthFileList):
    """Both layouts; in the file-list layout everything but finding the list is DepthFileList's."""

    layout = LAYOUT

    min_depth, max_depth = 1e-3, 10.0
    eval_crop = "eigen"

    def __init__(
        self,
        root=None,
        split: str = "train",
        *,
        layout: str = "auto",
        crop_size=(416, 544),
        depth_scale: float = 1000.0,
        color_aug: str = "toolbox",
        **common,
    ):
        super().__init__(root, split, depth_scale=depth_scale, color_aug=color_aug, **common)
        if layout not in ("auto", "mat", "filelist"):
            raise DatasetError(f"data.layout={layout!r} is not one of 'auto', 'mat', 'filelist'")
        self.layout = layout
        if layout == "auto":  # whichever layout is present, the .mat first
            try:
                resolve_root(root, ROOT_CANDIDATES, MAT_FILE, LAYOUT)
                self.layout = "mat"
            except DatasetError:
                self.layout = "filelist"
        marker = MAT_FILE if self.layout == "mat" else LIST_FILES[self.split]
        self.root = resolve_root(root, ROOT_CANDIDATES, marker, LAYOUT)
        self._h5, self._h5_pid = None, None

        if self.layout == "mat":
            self.indices = self._check_mat()
        else:
            self.read_file_list(self.root / LIST_FILES[self.split], self.root, self.root)
        self.use_recipe(nyu_train(size_pair(crop_size), color_aug) if self.augment else [])

    def _check_mat(self) -> np.ndarray:
        import h5py

        mat = self.root / MAT_FILE
        check_regular(mat, "NYU file", "the official v7.3 labelled .mat")  # HDF5 would block on a FIFO
        try:
            with h5py.File(mat, "r") as f:
                images, depths = f["images"], f["depths"]
                if (
                    images.ndim != 4
                    or images.shape[1] != 3
                    or depths.shape != (images.shape[0], *images.shape[2:])
                ):
                    raise DatasetError(
                        f"{mat}: images {images.shape} / depths {depths.shape} do not match the official layout "
                        "(h5py view: images N×3×W×H, depths N×W×H)"
                    )
                if images.shape[2] < images.shape[3]:  # NYU frames are landscape: W=640 > H=480
                    raise DatasetError(
                        f"{mat}: images {images.shape} are stored H×W (they would be read transposed); the "
                        "official file, MATLAB's column-major H×W×3×N, reads in h5py as N×3×640×480: store "
                        "images as N×3×W×H and depths as N×W×H"
                    )
                if images.dtype != np.uint8 or depths.dtype.kind != "f" or depths.dtype.itemsize > 8:
                    raise DatasetError(
                        f"{mat}: images are {images.dtype}, expected uint8, and depths {depths.dtype}, expected "
                        "float metres (as in the official file)"
                    )
                # Bounded before any frame is read: a few KB of chunked HDF5 can declare any frame size.
                check_pixels(f"the images of {mat}", images.shape[3], images.shape[2])
                n = images.shape[0]
        except KeyError as e:
            raise DatasetError(
                f"{mat} has no {e}; expected the official labelled NYU-Depth v2 file"
            ) from None
        except PermissionError as e:
            raise unreadable(mat, "NYU file", e, "the official v7.3 labelled .mat") from None
        except OSError as e:
            raise DatasetError(
                f"cannot open {mat} as HDF5 ({e}); expected the official v7.3 labelled .mat"
            ) from None
        indices = read_official_split(self.root / SPLITS_FILE, self.split)
        if indices.size == 0:
            raise DatasetError(f"{self.root / SPLITS_FILE} lists no {self.split} indices")
        if indices.min() < 0 or indices.max() >= n:
            raise DatasetError(
                f"{self.root / SPLITS_FILE} indexes images up to {indices.max() + 1} but {mat} has {n}; "
                "the split and the .mat do not belong together"
            )
        return indices

    def __len__(self) -> int:
        return len(self.indices) if self.layout == "mat" else super().__len__()

    def sample_names(self) -> list[str]:
        if self.layout == "mat":
            return [mat_sample_name(i) for i in self.indices]
        return super().sample_names()

    def sample_files(self, index: int) -> tuple[Path, ...]:
        if self.layout == "mat":
            return ()  # every sample lives in the .mat: see dataset_files
        return super().sample_files(index)

    def dataset_files(self) -> tuple[Path, ...]:
        if self.layout == "mat":
            return self.root / MAT_FILE, self.root / SPLITS_FILE
        return super().dataset_files()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_h5"] = None  # an open HDF5 handle cannot cross into a worker process
        return state

    def _file(self):
        # One handle per process, opened lazily: h5py handles must not be shared across a fork.
        if self._h5 is None or self._h5_pid != os.getpid():
            import h5py

            check_regular(self.root / MAT_FILE, "NYU file", "the official v7.3 labelled .mat")
            self._h5, self._h5_pid = h5py.File(self.root / MAT_FILE, "r"), os.getpid()
        return self._h5

    def read(self, index: int) -> RawSample:
        if self.layout == "mat":
            i = int(self.indices[index])
            f = self._file()
            image = np.ascontiguousarray(f["images"][i].transpose(2, 1, 0))  # 3×W×H → H×W×3
            depth = np.ascontiguousarray(f["depths"][i].T).astype(np.float32)  # W×H → H×W, metres
            return RawSample(mat_sample_name(i), image, depth, source=f"{self.root / MAT_FILE}[{i + 1}]")
        return super().read(index)
