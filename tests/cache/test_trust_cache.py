"""The feature cache never reads a damaged or foreign entry as features (issue 12, parts 3 and 4).

Every test builds an entry, damages or swaps it the way a crash, a full disk or a copied folder would,
and checks that what training then reads equals the backbone's own output for the image, never zeros.
"""

import hashlib
import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import torch

from dense.cache import CachedFeatures, CacheEntryWarning, EntryFolder
from dense.core.hashing import file_sha256
from dense.data import SyntheticScenes
from dense.model import build_model

pytestmark = pytest.mark.trust  # the trust audit: `python -m pytest -m trust`

N = 4


def tiny_scenes(**options) -> SyntheticScenes:
    return SyntheticScenes(split="train", image_size=28, num_train=N, **options)


def seeded_model(head="depth_linear", **options):
    torch.manual_seed(0)
    return build_model("tiny14", head, **options)


def backbone_patches(model, image: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """L×D×h×w: the backbone's own features of one image, computed here without the cache."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        features = model.extract_features(model.pad(model.normalise(image[None]))[0])
    return torch.stack(features.patches, dim=1)[0].float()


def assert_reads_true_features(cache: CachedFeatures, model, dataset, bf16: bool = False) -> None:
    for index in range(len(dataset)):
        sample, item = dataset[index], cache[index]
        expected = backbone_patches(model, sample["image"], bf16)
        got = item["patches"].float()
        assert got.abs().max() > 0, f"sample {index} reads zeros"
        # float16 storage: about 3 significant digits
        assert torch.allclose(got, expected, atol=2e-3 * expected.abs().max().item(), rtol=0), index
        assert torch.equal(item["depth"], sample["depth"]), index


@pytest.fixture()
def entry(tmp_path):
    """A complete entry of 4 synthetic scenes; returns (root, model, dataset, entry folder)."""
    model, dataset = seeded_model(), tiny_scenes()
    cache = CachedFeatures(dataset, model, str(tmp_path), random_flip=False)
    assert cache.filled == N and cache.complete
    return str(tmp_path), model, dataset, cache.directory


def _cut(name, size):
    def damage(directory):
        path = os.path.join(directory, name)
        os.truncate(path, size if size >= 0 else os.path.getsize(path) // 2)

    return damage


DAMAGES = {
    "patches_deleted": (lambda d: os.remove(os.path.join(d, "patches.npy")), "patches.npy is missing"),
    "patches_cut_to_half": (_cut("patches.npy", -1), "patches.npy is"),
    "patches_cut_to_0_bytes": (_cut("patches.npy", 0), "patches.npy has no readable .npy header"),
    "patches_cut_mid_header": (_cut("patches.npy", 30), "patches.npy has no readable .npy header"),
    "target_deleted": (lambda d: os.remove(os.path.join(d, "target.npy")), "target.npy is missing"),
    "done_cut_to_0_bytes": (_cut("done.npy", 0), "done.npy has no readable .npy header"),
}


@pytest.mark.parametrize("case", DAMAGES)
def test_a_damaged_entry_is_refilled_never_read(entry, case):
    root, model, dataset, directory = entry
    damage, words = DAMAGES[case]
    damage(directory)
    with pytest.warns(CacheEntryWarning) as record:
        cache = CachedFeatures(dataset, model, root, random_flip=False)
    message = str(record[0].message)
    assert directory in message and words in message and "\n" not in message
    assert cache.directory == directory and cache.filled == N
    assert_reads_true_features(cache, model, dataset)


def test_an_entry_copied_under_another_key_is_not_read(tmp_path):
    """A folder whose meta.json describes another dataset (copied or renamed by hand): its arrays have
    the right shapes, but are another dataset's features."""
    model = seeded_model()
    first, second = tiny_scenes(), tiny_scenes(base_seed=7)
    a = CachedFeatures(first, model, str(tmp_path / "a"), random_flip=False)
    b = CachedFeatures(second, model, str(tmp_path / "b"), random_flip=False)
    shutil.rmtree(b.directory)
    shutil.copytree(a.directory, b.directory)
    with pytest.warns(CacheEntryWarning, match="meta.json describes another entry"):
        again = CachedFeatures(second, model, str(tmp_path / "b"), random_flip=False)
    assert again.filled == N
    assert_reads_true_features(again, model, second)


def test_training_reads_the_entry_read_only(entry):
    root, model, dataset, _ = entry
    cache = CachedFeatures(dataset, model, root, random_flip=False)
    assert cache.filled == 0
    with pytest.raises(ValueError, match="read-only"):
        cache.arrays["patches"][0] = 0


def _fork_and_get_killed(child) -> None:
    """Runs `child()` in a forked process that SIGKILLs itself inside it; fails if it did not."""
    pid = os.fork()
    if pid == 0:
        try:
            torch.set_num_threads(1)  # the parent's thread pool does not survive a fork
            child()
        finally:
            os._exit(1)  # never return into pytest
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def _kill_at_call(obj, name: str, call: int, before=None):
    """Replace obj.name so that its `call`-th call (1-based) kills the process, after `before(args)`."""
    original, calls = getattr(obj, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            if before is not None:
                before(original, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)


def _half_written_file(original, folder, name, content, *args, **kwargs):
    # What a kill while the header was being written leaves: a temporary file holding part of it.
    fd = os.open(f".tmp-killed-{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, dir_fd=folder.fd)
    os.write(fd, content[:40])
    os.close(fd)


KILL_POINTS = {
    # creating the entry's files (patches, target, done are made in this order)
    "creating_patches": ("create", 1),
    "creating_target": ("create", 2),
    "creating_done": ("create", 3),
    # filling: batch 1 (images 0, 1) is complete, batch 2's first view was being computed
    "filling_batch_2": ("extract_features", 3),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_fill_killed_at_any_moment_resumes_bit_identical(tmp_path, point):
    model, dataset = seeded_model(), tiny_scenes()
    uninterrupted = CachedFeatures(dataset, model, str(tmp_path / "whole"), random_flip=False, batch_size=2)
    name, call = KILL_POINTS[point]

    def child():
        if name == "create":
            _kill_at_call(EntryFolder, "create", call, before=_half_written_file)
        else:
            _kill_at_call(model, "extract_features", call)
        CachedFeatures(dataset, model, str(tmp_path / "killed"), random_flip=False, batch_size=2)

    _fork_and_get_killed(child)
    resumed = CachedFeatures(dataset, model, str(tmp_path / "killed"), random_flip=False, batch_size=2)
    assert resumed.filled == (2 if point == "filling_batch_2" else N)
    for array in ("patches", "target", "done"):
        assert np.array_equal(np.asarray(resumed.arrays[array]), np.asarray(uninterrupted.arrays[array])), (
            array
        )
    assert not [f for f in os.listdir(resumed.directory) if f.startswith(".tmp-")]


class SlowScenes(SyntheticScenes):
    """Synthetic scenes that take a while to read, so that two fills surely overlap."""

    def read(self, index):
        time.sleep(0.05)
        return super().read(index)


def test_two_runs_sharing_a_cache_folder_fill_an_entry_once(tmp_path):
    """Two runs start on the same new entry at once: one fills it, the other waits for it and finds it
    complete. Both read the backbone's features."""
    dataset = SlowScenes(split="train", image_size=28, num_train=N)
    models = [seeded_model(), seeded_model()]
    start, caches, errors = threading.Barrier(2), [None, None], []

    def run(i):
        try:
            start.wait()
            caches[i] = CachedFeatures(dataset, models[i], str(tmp_path), random_flip=False, batch_size=1)
        except Exception as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(c.filled for c in caches) == [0, N]
    for cache in caches:
        assert_reads_true_features(cache, models[0], dataset)


def test_precision_and_target_are_part_of_the_key(tmp_path):
    dataset = tiny_scenes()
    depth_model = seeded_model(norm=True, use_cls_token=False)  # the features seg_linear reads
    fp32 = CachedFeatures(dataset, depth_model, str(tmp_path), random_flip=False)
    bf16 = CachedFeatures(dataset, depth_model, str(tmp_path), random_flip=False, precision="bf16")
    assert bf16.directory != fp32.directory and bf16.filled == N
    assert_reads_true_features(bf16, depth_model, dataset, bf16=True)
    # The same features for a segmentation head: the entry also holds the targets, so the masks get
    # their own entry instead of reading a depth map's.
    seg = CachedFeatures(dataset, seeded_model("seg_linear", num_classes=7), str(tmp_path), random_flip=False)
    assert {k for k in seg.description if seg.description[k] != fp32.description[k]} == {"target"}
    assert seg.directory != fp32.directory and seg.filled == N
    assert all(torch.equal(seg[i]["mask"], dataset[i]["mask"]) for i in range(N))


def test_weights_hash_is_not_stale_after_a_same_size_rewrite_with_the_mtime_restored(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    weights = tmp_path / "backbone.pth"
    weights.write_bytes(b"a" * 1000)
    stat = os.stat(weights)
    assert file_sha256(str(weights)) == hashlib.sha256(b"a" * 1000).hexdigest()
    with open(weights, "r+b") as f:  # in place: same inode, same size
        f.write(b"b" * 1000)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(weights).st_mtime_ns == stat.st_mtime_ns and os.stat(weights).st_size == stat.st_size
    expected = hashlib.sha256(b"b" * 1000).hexdigest()
    assert file_sha256(str(weights)) == expected
    # The memo keeps one record per file, and is used while nothing changes.
    memo = json.loads((tmp_path / "home" / ".cache" / "dense" / "file_hashes.json").read_text())
    assert list(memo) == [str(weights)]
    monkeypatch.setattr(hashlib, "sha256", lambda *args: pytest.fail("an unchanged file was hashed again"))
    assert file_sha256(str(weights)) == expected
