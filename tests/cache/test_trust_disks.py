"""Trust, round 3 (issue 23), class 4: full disks and file limits are one line, and leave nothing partial.

- The feature cache allocates its files' disk blocks when it creates them (posix_fallocate, else zeros
  written) instead of leaving them sparse: the fill writes through memory maps, which a full disk kills
  with SIGBUS (exit 135, no message); a full disk is now the cache's one-line CacheError at creation.
- train.py's random-backbone file (checkpoints/backbone_init-*.pth) under a full disk or `ulimit -f`:
  one line, exit 2, no file and no temporary file left (dense.checkpoint.atomic_save).

A full disk is simulated (os.posix_fallocate or the write raising ENOSPC); the file size limit is the
kernel's own (RLIMIT_FSIZE, set around one call; Python ignores SIGXFSZ, so the write fails with EFBIG).
"""

from __future__ import annotations

import errno
import os
import resource

import pytest
import torch

from dense.cache import CachedFeatures, CacheError, EntryFolder
from dense.checkpoint import atomic_save
from dense.core.errors import WriteError
from tests._tiny_run import TINY_RUN, train_in_process
from tests.cache.test_trust_cache import seeded_model, tiny_scenes

pytestmark = pytest.mark.trust  # the trust audit: `python -m pytest -m trust`


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---- the feature cache -----------------------------------------------------------------------------------


def test_a_full_disk_while_the_cache_allocates_is_one_cache_error(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(CacheError) as error:
        CachedFeatures(tiny_scenes(), seeded_model(), str(tmp_path), random_flip=False)
    message = str(error.value)
    assert "\n" not in message and "No space left on device" in message and "free some space" in message
    (entry,) = tmp_path.iterdir()
    assert sorted(p.name for p in entry.iterdir()) == [".lock"]  # no file of it, no temporary file


@pytest.mark.parametrize("how", ["posix_fallocate", "zeros written"])
def test_cache_files_are_created_allocated_on_the_disk_not_sparse(tmp_path, monkeypatch, how):
    """An entry's file has every disk block before a memory map writes into it (8 MiB here, as the
    entry's files are made: header, then zeros up to the array's size); where posix_fallocate cannot
    (EOPNOTSUPP), zeros are written instead."""
    if how == "zeros written":

        def unsupported(*args):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

        monkeypatch.setattr(os, "posix_fallocate", unsupported)
    folder = EntryFolder(str(tmp_path))
    try:
        folder.create("patches.npy", b"a header", 8 << 20)
    finally:
        folder.close()
    info = os.stat(tmp_path / "patches.npy")
    assert info.st_size == 8 << 20 and info.st_blocks * 512 >= info.st_size, info.st_blocks
    assert (tmp_path / "patches.npy").read_bytes() == b"a header" + bytes((8 << 20) - 8)


# ---- train.py's random backbone file -----------------------------------------------------------------------


def test_a_full_disk_while_train_writes_the_random_backbone_is_one_line(tmp_path, monkeypatch, capsys):
    """torch.save writes part of the file, then the disk is full."""

    def half_then_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04" + bytes(4096))
        no_space()

    monkeypatch.setattr(torch, "save", half_then_full)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        train_in_process(run, *TINY_RUN)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.startswith("error: cannot write ") and "\n" not in err, err
    assert "backbone_init-" in err and "No space left on device" in err and "free some space" in err
    assert not any((run / "checkpoints").iterdir())  # neither the file nor its temporary file


def test_a_file_size_limit_while_writing_a_checkpoint_file_is_one_line(tmp_path):
    """ulimit -f 64 (KiB) around atomic_save of a 720 KB state dict: torch's zip writer fails with its
    own RuntimeError, whose context is the EFBIG; one WriteError, nothing left."""
    state = torch.nn.Linear(400, 450).state_dict()
    path = tmp_path / "backbone_init-x.pth"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))
    try:
        with pytest.raises(WriteError) as error:
            atomic_save(state, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(error.value)
    assert (
        "\n" not in message
        and str(path) in message
        and "File too large" in message
        and "ulimit -f" in message
    )
    assert error.value.errno == errno.EFBIG
    assert list(tmp_path.iterdir()) == []
