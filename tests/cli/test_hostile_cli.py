"""Hostile inputs (issue 7), the scripts as users run them: predict.py over every hostile image and a
checkpoint that carries code, train.py with config mistakes. Each is refused with one line that names it
(or skipped with its reason), nothing crashes deep inside, and no partial output is left behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dense.cli.predict import outputs
from dense.cli.predict import run as predict
from dense.core.io import read_image
from tests._fixtures_data import rgb
from tests._hostile import IMAGE_CASES, code_pickles, one_line
from tests._tiny_run import predict_config, run_script

pytestmark = pytest.mark.hostile  # the hostile audit: `python -m pytest -m hostile`


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_through_predict(tmp_path, case, depth_ckpt, capsys):
    name, writer, outcome, words = IMAGE_CASES[case]
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    writer(images / name)
    status = predict.predict(predict_config(f"ckpt={depth_ckpt}", f"input={images}", f"output={out}"))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if outcome == "error":
        assert status == predict.EXIT_SKIPPED
        lines = [line for line in err.splitlines() if name in line and "skipped" in line]
        assert len(lines) == 2 and words in lines[0], err  # the reason, then the summary
        assert sorted(p.name for p in out.iterdir()) == []  # nothing written for it, no temporary file
        return
    assert status == 0, err
    h, w = read_image(images / name).shape[:2]
    depth = np.asarray(Image.open(out / "x_depth_mm.png"))
    assert depth.shape == (h, w) and depth.dtype == np.uint16 and depth.max() > 0
    assert np.isfinite(np.load(out / "x.npy")).all()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [outputs.RECORD, "x.npy", "x_depth_mm.png", "x_color.png"]
    )


def test_predict_refuses_a_code_pickle_checkpoint(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = code_pickles(tmp_path, marker)["in_state_dict"]
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb(14, 14)).save(tmp_path / "in" / "a.png")
    with pytest.raises(SystemExit) as stop:
        predict.predict(
            predict_config(f"ckpt={path}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}")
        )
    assert stop.value.code == 2 and not marker.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(path) in one_line(err) and "weights_only" in err
    assert not (tmp_path / "out").exists()


# ---- configuration mistakes (train.py as users run it) --------------------------------------------------

TINY = ["backbone=tiny14", "trainer=cpu", "data.image_size=[14,14]", "data.num_train=4", "data.num_workers=0"]


def run_train(tmp_path: Path, *overrides: str, tiny=TINY):
    return run_script("train.py", *tiny, f"hydra.run.dir={tmp_path / 'run'}", *overrides, timeout=120)


CONFIG_ERRORS = {
    "unknown_group_option": (["head=nope"], "head=nope is not an option of configs/head/: choose one of"),
    "wrong_type": (["data.batch_size=abc"], "data.batch_size=abc: data.batch_size takes an integer"),
    "negative_batch_size": (["data.batch_size=-3"], "data.batch_size=-3 must be a positive integer"),
    # Lightning builds the optimiser deep inside fit; train.py builds it first, for this one line
    "optimizer_keys": (
        ["task.optimizer._target_=torch.optim.SGD"],
        "task.optimizer: SGD.__init__() got an unexpected",
    ),
    "learning_rate": (["task.optimizer.lr=-1"], "task.optimizer.lr: -1 is not a non-negative finite number"),
    "head_task_mismatch": (
        ["head=seg_linear", "data=nyu"],
        "head=seg_linear is a segmentation head but data=nyu",
    ),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_config_mistakes_exit_with_one_line(tmp_path, case):
    overrides, words = CONFIG_ERRORS[case]
    if case == "head_task_mismatch":  # nyu has no synthetic-only keys (image_size, num_train)
        result = run_train(tmp_path, *overrides, f"data.root={tmp_path}", tiny=["backbone=tiny14"])
    else:
        result = run_train(tmp_path, *overrides)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and words in lines[0], result.stderr
    assert len(lines) == 1 and result.returncode == 2, result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resuming_a_depth_checkpoint_as_segmentation_is_refused(tmp_path, depth_ckpt):
    result = run_train(tmp_path, "head=seg_linear", "data.task=segmentation", f"ckpt_path={depth_ckpt}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "head=depth_linear" in lines[0] and "resume with the same" in lines[0], lines
