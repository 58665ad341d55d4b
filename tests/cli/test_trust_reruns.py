"""Trust, round 3 (issue 23), class 3: interrupted and repeated runs lose nothing and leave nothing stale.

- predict.py killed with SIGKILL (a real one, in a forked child: the same process state as the command,
  without its start-up cost) and rerun over the same folder replaces exactly its own earlier files: each
  result is in the journal (.dense-predict.journal) before it appears under its name.
- A second fresh train.py run into a folder that holds a run is refused in one line, before Hydra writes
  into it (the in-process case is tests/model/test_trust_checkpoints.py's second-run test).
- Feature-cache files swapped between two entries of the same shapes are found (each file names its
  entry) and the entry refilled, never read.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from PIL import Image

from dense.cache import CachedFeatures, CacheEntryWarning
from dense.cli import train as train_script
from dense.cli.predict import outputs
from dense.cli.predict import run as predict
from dense.data import SyntheticScenes
from dense.model import build_model
from tests._fixtures_data import rgb
from tests._tiny_run import predict_config
from tests.cache.test_trust_cache import assert_reads_true_features, seeded_model

pytestmark = pytest.mark.trust  # the trust audit: `python -m pytest -m trust`

# ---- predict.py killed with SIGKILL -----------------------------------------------------------------------


def results(folder: Path) -> list[str]:
    """The result files in `folder` (predict.py's record and journal are hidden)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def killed_after(count: int, config) -> None:
    """Run predict.predict(config) in a forked child that SIGKILLs itself right after the `count`-th
    result file appears (whatever the files are named), and check that it died of it."""
    pid = os.fork()
    if pid == 0:  # the child: nothing after the kill runs, no `finally`, no exit handler
        try:
            torch.set_num_threads(1)  # no thread pool across the fork
            rename, seen = os.replace, []

            def replace_then_maybe_die(src, dst, *args, **kwargs):
                rename(src, dst, *args, **kwargs)
                if not os.path.basename(dst).startswith("."):
                    seen.append(dst)
                    if len(seen) == count:
                        os.kill(os.getpid(), signal.SIGKILL)

            os.replace = replace_then_maybe_die
            predict.predict(config)
        finally:
            os._exit(1)  # only if it was not killed
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_predict_killed_by_sigkill_then_rerun_replaces_exactly_its_own_files(
    tmp_path, tiny_checkpoints, capsys
):
    images = tmp_path / "in"
    images.mkdir()
    for k in range(3):
        Image.fromarray(rgb(20, 24, seed=k)).save(images / f"img{k}.png")
    common = [f"ckpt={tiny_checkpoints['depth']}", f"input={images}"]
    assert predict.predict(predict_config(*common, f"output={tmp_path / 'clean'}")) == 0
    expected = results(tmp_path / "clean")
    out = tmp_path / "out"
    config = predict_config(*common, f"output={out}")
    killed_after(len(expected) // 2 + 1, config)  # half-way, in the middle of an image's files
    left = results(out)
    assert 0 < len(left) < len(expected) and set(left) <= set(expected)
    capsys.readouterr()

    assert predict.predict(config) == 0
    assert "are named" not in capsys.readouterr().err  # no input's results moved to another name
    assert results(out) == expected
    assert sorted(json.loads((out / outputs.RECORD).read_text())["files"]) == expected
    assert not (out / outputs.JOURNAL).exists()  # folded into the record


def test_a_crafted_journal_claims_no_file_of_the_user(tmp_path, tiny_checkpoints, capsys):
    """A journal naming the user's own a_color.png (with another identity), a path elsewhere and garbage: the
    user's file stays, a's results get another name; a journal that is a link stops the run."""
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    out.mkdir()
    Image.fromarray(rgb(20, 24)).save(images / "a.png")
    mine = out / "a_color.png"  # a name predict.py writes for a.png
    mine.write_bytes(b"the user's own file")
    lines = [
        json.dumps({"name": "a_color.png", "identity": [1, 2, 3]}),
        json.dumps({"name": "../elsewhere.png", "identity": [1, 2, 3]}),
        "{not json",
    ]
    (out / outputs.JOURNAL).write_text("\n".join(lines) + "\n")
    config = predict_config(f"ckpt={tiny_checkpoints['depth']}", f"input={images}", f"output={out}")
    assert predict.predict(config) == 0
    assert mine.read_bytes() == b"the user's own file" and (out / "a_1.npy").is_file()
    assert "ignored 2 entries" in capsys.readouterr().err

    (out / outputs.JOURNAL).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SystemExit) as stop:
        predict.predict(config)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and outputs.JOURNAL in err and "is not a plain file" in err


# ---- a second fresh train.py run into a run's folder -------------------------------------------------------


def test_a_fresh_run_into_a_runs_folder_is_refused_before_hydra_writes(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"a run's checkpoint")
    with pytest.raises(SystemExit) as stop:
        train_script.refuse_a_second_run_before_hydra(["experiment=smoke", f"hydra.run.dir={run}"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.startswith("error: ") and "\n" not in err
    assert "already holds a run" in err and f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}" in err
    # Resuming it, another folder, a sweep: no refusal.
    for arguments in (
        [f"hydra.run.dir={run}", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"],
        [f"hydra.run.dir={tmp_path / 'new'}"],
        ["-m", f"hydra.run.dir={run}"],
    ):
        train_script.refuse_a_second_run_before_hydra(arguments)


# ---- feature-cache files swapped between entries -------------------------------------------------------------


def test_cache_files_swapped_between_two_entries_are_found(tmp_path):
    """Two entries of the same shapes (two random backbones, one dataset): their patches.npy files
    swapped are found on open, and the entry refilled with its own backbone's features."""
    name = "patches.npy"
    dataset = SyntheticScenes(split="train", image_size=28, num_train=2)
    first = seeded_model()
    torch.manual_seed(1)
    second = build_model("tiny14", "depth_linear")
    a = CachedFeatures(dataset, first, str(tmp_path), random_flip=False).directory
    b = CachedFeatures(dataset, second, str(tmp_path), random_flip=False).directory
    assert a != b
    os.replace(os.path.join(a, name), tmp_path / "swap")
    os.replace(os.path.join(b, name), os.path.join(a, name))
    shutil.move(tmp_path / "swap", os.path.join(b, name))
    with pytest.warns(CacheEntryWarning, match=f"{name} belongs to the entry {os.path.basename(b)}"):
        cache = CachedFeatures(dataset, first, str(tmp_path), random_flip=False)
    assert cache.directory == a and cache.filled == len(dataset)
    assert_reads_true_features(cache, first, dataset)
