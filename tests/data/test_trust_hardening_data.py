"""A shared cache folder or dataset can be crafted: what a hostile review of issue 12 found in the
feature cache and the dataset readers, each as the reviewer reproduced it.

Nothing in an entry folder is followed through a link or read from a device or FIFO, no size read
from a file is allocated before it is checked against the file and the pixel budget, and a dataset
file rewritten with its size and mtime restored is not served from the cache.

Reads that would hang (a FIFO) or allocate without bound (/dev/zero) before the fix run in a forked
child with a deadline and a memory limit (`guarded`), so a regression fails the test, not the suite.
"""

import json
import os
import pickle
import resource
import select
import signal
import stat
import time
import warnings
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from dense.cache import CachedFeatures, CacheEntryWarning, cache_key
from dense.core.errors import CacheError
from dense.data import DatasetError, FolderDataset, KITTIEigen, NYUDepthV2, PascalVOC, SyntheticScenes
from dense.model import build_model
from tests._fixtures_data import (
    pattern_image,
    ramp_depth,
    save_png16,
    save_rgb,
    write_folder,
    write_kitti,
    write_voc,
)

pytestmark = pytest.mark.trust  # the trust audit: `python -m pytest -m trust`

SIZE, N = 28, 4
MESSAGE_LIMIT = 2000  # what a child sends back of an error message (its length is sent too)


# --------------------------------------------------------------------------- running a read guarded


def _address_space() -> int:
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    return kib * 1024


def guarded(call, timeout: float = 20.0, memory: int = 1 << 30):
    """call() in a forked child with a deadline and `memory` bytes more address space than now.
    Returns ("ok", value) or ("raised", exception class names, message (cut), message length);
    fails the test when the child hangs past the deadline or dies."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            torch.set_num_threads(1)  # the parent's thread pool does not survive a fork
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (_address_space() + memory, hard))
            try:
                outcome = ("ok", call())
            except BaseException as e:  # sent to the parent, which asserts on it
                names = [klass.__name__ for klass in type(e).__mro__]
                outcome = ("raised", names, str(e)[:MESSAGE_LIMIT], len(str(e)))
            os.write(write_end, pickle.dumps(outcome))
        finally:
            os._exit(0)  # never return into pytest
    os.close(write_end)
    received, deadline = b"", time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the read did not finish within {timeout:.0f} s (it hangs)")
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            received += chunk
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert received, "the child died without an answer"
    return pickle.loads(received)


def assert_refused(outcome, error: type, *words: str) -> str:
    """The guarded call raised `error` with a short one-line message holding every one of `words`."""
    assert outcome[0] == "raised", f"not refused: returned {outcome[1]!r}"
    _, names, message, length = outcome
    assert error.__name__ in names, f"{names[0]}: {message[:300]}"
    assert length < 600 and "\n" not in message, message[:300]
    for word in words:
        assert word in message, message
    return message


# --------------------------------------------------------------------------- the feature cache


def tiny_scenes(**options) -> SyntheticScenes:
    return SyntheticScenes(split="train", image_size=SIZE, num_train=N, **options)


def seeded_model():
    torch.manual_seed(0)
    return build_model("tiny14", "depth_linear")


@pytest.fixture()
def entry(tmp_path):
    """A complete entry of 4 synthetic scenes: (cache root, model, dataset, entry folder)."""
    model, dataset = seeded_model(), tiny_scenes()
    cache = CachedFeatures(dataset, model, str(tmp_path / "cache"), random_flip=False)
    assert cache.filled == N
    return str(tmp_path / "cache"), model, dataset, Path(cache.directory)


def test_a_symlinked_entry_folder_is_refused_and_its_target_untouched(tmp_path):
    """<cache.dir>/<key> linked to someone's folder: the old reset deleted meta.json and .tmp-* there
    and renamed new arrays over its files."""
    model, dataset = seeded_model(), tiny_scenes()
    key, _ = cache_key(model, dataset, (SIZE, SIZE), target="depth")
    victim = tmp_path / "victim"
    victim.mkdir()
    files = {
        "meta.json": b"precious",
        ".tmp-notes.txt": b"draft",
        "patches.npy": b"data",
        "done.npy": b"more",
    }
    for name, content in files.items():
        (victim / name).write_bytes(content)
    (tmp_path / "cache").mkdir()
    os.symlink(victim, tmp_path / "cache" / key)
    with pytest.raises(CacheError) as error:
        CachedFeatures(dataset, model, str(tmp_path / "cache"), random_flip=False)
    message = str(error.value)
    assert str(tmp_path / "cache" / key) in message and "symbolic link" in message and "\n" not in message
    assert "rm " in message  # how to clear it
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == files


@pytest.mark.parametrize("name", ["meta.json", "patches.npy", "target.npy", "done.npy", ".lock"])
def test_a_symlinked_file_in_an_entry_is_refused_never_followed(entry, tmp_path, name):
    """The link points at an exact copy of the entry's own file: following it would read (or lock)
    someone else's file as if it were the entry's."""
    root, model, dataset, directory = entry
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    os.replace(directory / name, outside)
    content = outside.read_bytes()
    os.symlink(outside, directory / name)
    with pytest.raises(CacheError) as error:
        CachedFeatures(dataset, model, root, random_flip=False)
    message = str(error.value)
    assert str(directory / name) in message and "symbolic link" in message and "\n" not in message
    assert outside.read_bytes() == content and os.path.islink(directory / name)


def test_a_dangling_lock_link_is_refused_and_nothing_created_through_it(entry, tmp_path):
    root, model, dataset, directory = entry
    target = tmp_path / "elsewhere" / "planted"
    target.parent.mkdir()
    (directory / ".lock").unlink()
    os.symlink(target, directory / ".lock")
    with pytest.raises(CacheError, match=r"\.lock is a symbolic link"):
        CachedFeatures(dataset, model, root, random_flip=False)
    assert not os.path.lexists(target)


def test_an_entry_that_is_a_file_is_refused(tmp_path):
    model, dataset = seeded_model(), tiny_scenes()
    key, _ = cache_key(model, dataset, (SIZE, SIZE), target="depth")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / key).write_bytes(b"not an entry")
    with pytest.raises(CacheError, match=f"{key} is not a folder: .* remove it"):
        CachedFeatures(dataset, model, str(tmp_path / "cache"), random_flip=False)
    assert (tmp_path / "cache" / key).read_bytes() == b"not an entry"


def _make_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _make_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _link_to_dev_zero(path: Path) -> None:
    path.unlink()
    os.symlink("/dev/zero", path)


NOT_REGULAR = {
    "lock_is_a_folder": (".lock", _make_folder, "not a regular file"),  # was: locking silently off
    "lock_is_a_fifo": (".lock", _make_fifo, "not a regular file"),
    "meta_is_a_fifo": ("meta.json", _make_fifo, "not a regular file"),  # was: a hang holding the lock
    "meta_links_to_dev_zero": ("meta.json", _link_to_dev_zero, "symbolic link"),  # was: reads 4.5 GB
    "done_is_a_fifo": ("done.npy", _make_fifo, "not a regular file"),
    "patches_is_a_folder": ("patches.npy", _make_folder, "not a regular file"),
}


@pytest.mark.parametrize("case", NOT_REGULAR)
def test_a_file_of_an_entry_that_is_not_a_regular_file_is_refused(entry, case):
    root, model, dataset, directory = entry
    name, arrange, words = NOT_REGULAR[case]
    arrange(directory / name)
    outcome = guarded(lambda: CachedFeatures(dataset, model, root, random_flip=False).filled)
    message = assert_refused(outcome, CacheError, str(directory / name), words)
    assert "rm -r" in message or "point cache.dir" in message


def _refill(root, model, dataset):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cache = CachedFeatures(dataset, model, root, random_flip=False)
    return cache.filled, [str(w.message) for w in record if issubclass(w.category, CacheEntryWarning)]


def test_an_oversized_meta_json_is_a_damaged_entry_not_read(entry):
    """8 GiB (sparse) of meta.json: the old reader read it all."""
    root, model, dataset, directory = entry
    os.truncate(directory / "meta.json", 8 << 30)
    outcome = guarded(lambda: _refill(root, model, dataset))
    assert outcome[0] == "ok", outcome
    filled, messages = outcome[1]
    assert filled == N and len(messages) == 1
    assert "meta.json" in messages[0] and "larger than" in messages[0]
    assert os.path.getsize(directory / "meta.json") < 1 << 20  # refilled, not read


def test_deeply_nested_json_in_meta_json_is_a_damaged_entry(entry):
    root, model, dataset, directory = entry
    (directory / "meta.json").write_text("[" * 200_000 + "]" * 200_000)
    filled, messages = _refill(root, model, dataset)
    assert filled == N and len(messages) == 1 and "meta.json is unreadable" in messages[0]
    assert json.loads((directory / "meta.json").read_text())["format"] >= 2


# --------------------------------------------------------------------------- list and split files


def _nyu_filelist(root: Path):
    for i in range(2):
        save_rgb(root / f"bathroom/rgb_{i:05d}.jpg", pattern_image(SIZE, SIZE, seed=i))
        save_png16(root / f"bathroom/sync_depth_{i:05d}.png", ramp_depth(SIZE, SIZE, seed=i), 1000.0)
    (root / "nyu_test.txt").write_text(
        "".join(f"/bathroom/rgb_{i:05d}.jpg /bathroom/sync_depth_{i:05d}.png 518.8\n" for i in range(2))
    )
    return root / "nyu_test.txt", lambda: NYUDepthV2(root, "test")


def _write_nyu_mat(root: Path, images=None, depths=None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = images if images is not None else np.zeros((2, 3, SIZE, SIZE), np.uint8)
        f["depths"] = depths if depths is not None else np.ones((2, SIZE, SIZE), np.float64)
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array([[1.0]]), "testNdxs": np.array([[2.0]])})


def _nyu_splits(root: Path):
    _write_nyu_mat(root)
    return root / "splits.mat", lambda: NYUDepthV2(root, "test")


def _kitti_list(root: Path):
    write_kitti(root, n_train=1, n_test=1, h=SIZE, w=SIZE)
    return root / "kitti_eigen_test.txt", lambda: KITTIEigen(root, "test")


def _voc_list(root: Path):
    write_voc(root, h=SIZE, w=SIZE)
    return root / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt", lambda: PascalVOC(root)


def _folder_split(root: Path):
    write_folder(root, h=SIZE, w=SIZE)
    (root / "train.txt").write_text("a\nb\n")
    (root / "val.txt").write_text("c\n")
    return root / "train.txt", lambda: FolderDataset(root)


def _folder_classes(root: Path):
    write_folder(root, task="segmentation", h=SIZE, w=SIZE)
    (root / "classes.txt").write_text("sky\nroad\ncar\ntree\nperson\n")
    return root / "classes.txt", lambda: FolderDataset(root, task="segmentation")


LIST_FILES = {
    "nyu_list": _nyu_filelist,
    "nyu_splits_mat": _nyu_splits,
    "kitti_list": _kitti_list,
    "voc_id_list": _voc_list,
    "folder_split_file": _folder_split,  # was: a FIFO or device train.txt was skipped, the hash split used
    "folder_classes": _folder_classes,
}


def _sparse_100_mib(path: Path) -> None:
    path.unlink()
    with open(path, "wb") as f:
        f.truncate(100 << 20)


LIST_DAMAGES = {
    "fifo": (_make_fifo, "not a regular file"),
    "link_to_dev_zero": (_link_to_dev_zero, "not a regular file"),
    "100_mib": (_sparse_100_mib, "larger than"),
}


@pytest.mark.parametrize("damage", LIST_DAMAGES)
@pytest.mark.parametrize("dataset", LIST_FILES)
def test_a_list_file_that_is_not_a_small_regular_file_is_refused(tmp_path, dataset, damage):
    path, build = LIST_FILES[dataset](tmp_path / "data")
    build()  # the layout is right as written
    arrange, words = LIST_DAMAGES[damage]
    if dataset.startswith("folder") and damage == "link_to_dev_zero":
        words = "leads out of data.root"  # the folder dataset refuses links out of its root first (issue 23)
    arrange(path)
    assert_refused(guarded(build), DatasetError, str(path), words)


# --------------------------------------------------------------------------- the NYU .mat


def test_a_mat_declaring_huge_images_is_refused_at_construction(tmp_path):
    """1.6 KB of HDF5 declaring two 20000×20000 frames (chunked, never written): reading sample 0
    allocated 5.8 GB."""
    root = tmp_path / "nyu"
    root.mkdir()
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f.create_dataset("images", shape=(2, 3, 20000, 20000), dtype=np.uint8, chunks=(1, 1, 64, 64))
        f.create_dataset("depths", shape=(2, 20000, 20000), dtype=np.float32, chunks=(1, 64, 64))
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array([[1.0]]), "testNdxs": np.array([[2.0]])})
    assert os.path.getsize(root / "nyu_depth_v2_labeled.mat") < 20_000
    outcome = guarded(lambda: len(NYUDepthV2(root, "test")))
    assert_refused(outcome, DatasetError, str(root / "nyu_depth_v2_labeled.mat"), "20000×20000", "more than")


def test_a_mat_with_images_that_are_not_bytes_is_refused(tmp_path):
    _write_nyu_mat(tmp_path / "nyu", images=np.zeros((2, 3, SIZE, SIZE), np.float64))
    with pytest.raises(DatasetError, match=r"images are float64, expected uint8"):
        NYUDepthV2(tmp_path / "nyu", "test")


# --------------------------------------------------------------------------- the files a sample reads


def _folder(root: Path, task: str = "depth") -> FolderDataset:
    write_folder(root, task=task, h=SIZE, w=SIZE)  # a–d; b's depth is .npy
    (root / "train.txt").write_text("a\nb\n")
    (root / "val.txt").write_text("c\n")
    return FolderDataset(root, task=task, num_classes=5 if task == "segmentation" else None)


SAMPLE_FILES = {
    "depth_png_fifo": ("depth", "depth/a.png", 0, _make_fifo),
    "depth_npy_fifo": ("depth", "depth/b.npy", 1, _make_fifo),
    "depth_npy_links_to_dev_zero": ("depth", "depth/b.npy", 1, _link_to_dev_zero),
    "label_png_fifo": ("segmentation", "masks/a.png", 0, _make_fifo),
    "image_fifo": ("depth", "images/a.png", 0, _make_fifo),
}


@pytest.mark.parametrize("case", SAMPLE_FILES)
def test_a_sample_file_that_is_not_a_regular_file_is_refused(tmp_path, case):
    task, name, index, arrange = SAMPLE_FILES[case]
    dataset = _folder(tmp_path, task)
    arrange(tmp_path / name)  # after construction: a file swapped while training runs
    assert_refused(guarded(lambda: dataset[index]), DatasetError, str(tmp_path / name), "not a regular file")


def _npy_header_only(path: Path, shape, dtype=np.float32, total: int | None = None) -> None:
    """A .npy whose header declares `shape`, with `total` bytes in all (sparse), or just the header."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f,
            {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape},
        )
        f.write(b"\0" * 64)
        if total is not None:
            f.truncate(total)


NPY_LIES = {
    # 192 bytes claiming 3.64 TiB: numpy allocated before reading
    "claims_3_6_tib": (lambda p: _npy_header_only(p, (10**6, 10**6)), "header declares"),
    "claims_more_than_it_holds": (lambda p: _npy_header_only(p, (1000, 1000)), "header declares"),
    # 9000×9000 uint8, every byte there (sparse): over the 64 MP budget, refused before reading it
    "over_the_pixel_budget": (
        lambda p: _npy_header_only(p, (9000, 9000), np.uint8, 128 + 9000 * 9000),
        "pixels",
    ),
}


@pytest.mark.parametrize("case", NPY_LIES)
def test_a_depth_npy_whose_header_lies_or_is_too_large_is_refused(tmp_path, case):
    dataset = _folder(tmp_path)
    arrange, words = NPY_LIES[case]
    arrange(tmp_path / "depth" / "b.npy")
    assert_refused(guarded(lambda: dataset[1]), DatasetError, str(tmp_path / "depth" / "b.npy"), words)


def _grey_png(path: Path, width: int, height: int, valid: bool = True) -> None:
    """A grey 8-bit PNG of zeros, built by hand so that a 144-megapixel one costs no memory here.
    valid=False: the header only (PIL reads the size from it; decoding would fail)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    compressor, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    if valid:
        parts = [compressor.compress(row) for _ in range(height)]
    data = b"".join(parts) + compressor.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


PNG_CASES = {
    # 144 MP: the old reader decoded it (+144 MB here, +300 MB as int64 later) before the shape check
    "label_144_mp": (
        "segmentation",
        "masks/a.png",
        12000,
        True,
        "12000×12000 = 144,000,000 pixels, more than",
    ),
    "depth_144_mp": ("depth", "depth/a.png", 12000, True, "12000×12000 = 144,000,000 pixels, more than"),
    # 225 MP: PIL's own guard raised DecompressionBombError, uncaught
    "label_225_mp_bomb": ("segmentation", "masks/a.png", 15000, False, "more than the pixels allowed"),
}


@pytest.mark.parametrize("case", PNG_CASES)
def test_a_label_or_depth_png_over_the_pixel_budget_is_refused_before_decoding(tmp_path, case):
    task, name, side, valid, words = PNG_CASES[case]
    dataset = _folder(tmp_path, task)
    _grey_png(tmp_path / name, side, side, valid)
    outcome = guarded(lambda: dataset[0], memory=100 << 20)  # less than decoding it takes
    assert_refused(outcome, DatasetError, str(tmp_path / name), words)


# --------------------------------------------------------------------------- a stale cache


def _rewrite_in_place(path: Path, depth: np.ndarray) -> None:
    with open(path, "r+b") as f:  # same inode
        np.save(f, depth)


def _rewrite_as_new_file(path: Path, depth: np.ndarray) -> None:
    np.save(path.with_name("new.npy"), depth)
    os.replace(path.with_name("new.npy"), path)


@pytest.mark.parametrize("rewrite", [_rewrite_in_place, _rewrite_as_new_file])
def test_a_depth_file_regenerated_with_its_size_and_mtime_restored_is_not_served_stale(tmp_path, rewrite):
    root = tmp_path / "data"
    write_folder(root, h=SIZE, w=SIZE, npy=("a", "b", "c", "d"))
    (root / "train.txt").write_text("a\nb\n")
    model, cache_root = seeded_model(), str(tmp_path / "cache")
    first = CachedFeatures(FolderDataset(root), model, cache_root, random_flip=False)
    assert first.filled == 2
    path, before = root / "depth" / "b.npy", os.stat(root / "depth" / "b.npy")
    new_depth = np.full((SIZE, SIZE), 4.25, np.float32)
    rewrite(path, new_depth)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    dataset = FolderDataset(root)
    again = CachedFeatures(dataset, model, cache_root, random_flip=False)
    assert again.directory != first.directory and again.filled == 2
    assert torch.equal(again[1]["depth"], torch.from_numpy(new_depth)[None])
    assert torch.equal(again[1]["depth"], dataset[1]["depth"])


# --------------------------------------------------------------------------- synthetic options


SYNTHETIC_OPTIONS = {
    "image_size_12000": ({"image_size": [12000, 12000]}, "pixels"),
    "image_size_200000": ({"image_size": [200000, 200000]}, "pixels"),
    "image_size_zero": ({"image_size": [0, SIZE]}, "image_size"),
    "num_train_1e9": ({"num_train": 10**9}, "num_train"),
    "num_test_1e9": ({"num_test": 10**9, "split": "test"}, "num_test"),
}


@pytest.mark.parametrize("case", SYNTHETIC_OPTIONS)
def test_absurd_synthetic_options_are_refused_at_construction(case):
    options, words = SYNTHETIC_OPTIONS[case]
    with pytest.raises(DatasetError, match=words) as error:
        SyntheticScenes(**{"split": "train", **options})
    assert "\n" not in str(error.value)


def test_mode_helpers_make_what_they_say(tmp_path):
    """The arrangements above are what their names say (the tests run as root, which has them all)."""
    for arrange, check in ((_make_fifo, stat.S_ISFIFO), (_make_folder, stat.S_ISDIR)):
        path = tmp_path / arrange.__name__
        path.write_text("x")
        arrange(path)
        assert check(os.lstat(path).st_mode)
    (tmp_path / "z").write_text("x")
    _link_to_dev_zero(tmp_path / "z")
    assert stat.S_ISCHR(os.stat(tmp_path / "z").st_mode) and os.path.islink(tmp_path / "z")
