"""The first hour, round 2 (issue 24): the user's own folder in one command, sizes said, a log that keeps
the loss and the test table, hints that lead to the fix, an install mistake named in one line, and a
start-up that imports only what it needs."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from dense.cli import runner
from dense.cli import train as train_script
from dense.cli.predict import run as predict
from dense.core import threads
from dense.core.errors import ConfigError
from dense.data import DenseDataModule
from tests._fixtures_data import write_folder
from tests._tiny_run import CONFIGS, ROOT, compose_config, predict_config, script_env

pytestmark = pytest.mark.first_hour  # the first_hour audit: `python -m pytest -m first_hour`

STEMS = [f"img{i:02d}" for i in range(10)]
# The documented command with a tiny backbone instead of the preset's ViT-S/14 (the test's only change
# besides the paths), and a cheaper schedule: 2 epochs of 2 steps.
TINY = ["backbone=tiny14", "trainer.max_steps=4", "data.batch_size=4"]


def exit_status(function, *args):
    try:
        return None, function(*args)
    except SystemExit as exit_info:
        return exit_info.code, None


@pytest.mark.parametrize("task", ["depth", "segmentation"])
def test_own_folder_trains_evaluates_and_predicts(tmp_path, task, capsys):
    """experiment=folder_depth / folder_seg on a folder in the real format (dense/data/folder.py), then
    predict.py on its images: the README's own-folder command, offline. train.log keeps the sizes, the
    loss after each validation and the test table."""
    data, run, maps = tmp_path / "mydata", tmp_path / "run", tmp_path / "maps"
    write_folder(data, stems=STEMS, task=task, npy=(), h=42, w=56, num_classes=3)
    if task == "segmentation":
        (data / "classes.txt").write_text("floor\nwall\nbox\n")
    run.mkdir()
    log_file = logging.FileHandler(run / "train.log")  # what Hydra's job logging adds in a real run
    logging.getLogger().addHandler(log_file)
    logging.getLogger().setLevel(logging.INFO)
    try:
        preset = "folder_depth" if task == "depth" else "folder_seg"
        cfg = compose_config(
            "train", f"experiment={preset}", f"data.root={data}", f"paths.output_dir={run}", *TINY
        )
        assert cfg.backbone.pretrained is False  # nothing to download
        _, metrics = train_script.train(cfg)
    finally:
        logging.getLogger().removeHandler(log_file)
        log_file.close()
    main_metric = "test/rmse" if task == "depth" else "test/mIoU"
    assert np.isfinite(metrics[main_metric])
    log = (run / "train.log").read_text()
    # Segmentation keeps the images' own scale (42 px short side), not ADE20K's 512.
    size = "42×56" if task == "depth" else "42×42"
    assert f"training size {size} (the first training image is 42×56" in log
    assert "CPU threads: " in log
    assert log.count("train/loss=") >= 2 and ("val/rmse=" in log if task == "depth" else "val/mIoU=" in log)
    table = log.split("test metrics:", 1)[1]
    assert re.search(rf"^ +{re.escape(main_metric)} +{metrics[main_metric]:.6g}$", table, re.MULTILINE), table

    status = predict.predict(
        predict_config(
            f"ckpt={run / 'checkpoints' / 'best.ckpt'}", f"input={data / 'images'}", f"output={maps}"
        )
    )
    assert status == 0
    suffixes = (
        ("_color.png", "_depth_mm.png", ".npy") if task == "depth" else (".png", "_color.png", "_overlay.png")
    )
    assert all((maps / f"{stem}{suffix}").is_file() for stem in STEMS for suffix in suffixes)
    if task == "segmentation":
        classes = json.loads((maps / "classes.json").read_text())["classes"]
        assert [c["name"] for c in classes] == ["floor", "wall", "box"]  # the folder's classes.txt


def test_a_key_set_by_a_preset_is_named_with_its_file_and_a_wrong_root_comes_first(tmp_path, capsys):
    data = tmp_path / "mydata"
    write_folder(data, stems=STEMS[:4], npy=())
    overrides = [
        "experiment=smoke",
        "data=folder",
        f"data.root={data}",
        f"paths.output_dir={tmp_path / 'run'}",
    ]
    # The folder's schema (FolderData) has no image_size: Hydra refuses the composition, in one line.
    status, _ = exit_status(runner.check_keys, CONFIGS, "train", overrides)
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err
    assert err.startswith("error: data.image_size is not an option of the folder dataset")
    assert "data.image_size was set by experiment=smoke (configs/experiment/smoke.yaml)" in err
    assert "experiment=folder_depth" in err

    # A wrong data.root typed on the command line is said before anything else is looked at...
    status, _ = exit_status(
        runner.check_data_root, ["experiment=smoke", "data=folder", "data.root=no/such/dir"]
    )
    assert status == 2 and "data.root=no/such/dir: no such folder" in capsys.readouterr().err
    # ...and the data module checks the folder before the options, naming the layout it expects.
    for name, layout in (("folder", "images/<stem>"), ("nyu", "nyu_depth_v2_labeled.mat")):
        with pytest.raises(ValueError, match="does not exist or is not a folder") as refused:
            DenseDataModule(name=name, root=str(tmp_path / "missing"), image_size=[8, 8])
        assert layout in str(refused.value)


def test_a_group_key_typed_without_its_group_gets_the_full_name(capsys):
    status, _ = exit_status(runner.check_keys, CONFIGS, "train", ["weights=dinov2_vitg14_pretrain.pth"])
    err = capsys.readouterr().err
    assert status == 2 and "weights is not a key of the train configuration" in err
    assert "did you mean backbone.weights" in err


def test_the_default_thread_count_is_half_the_cores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert threads.use_cpu_threads(None) == (
            "CPU threads: 2 of 4 cores (half the cores: threads waiting on cores that other jobs hold stall "
            "every step; threads=N to choose)"
        )
        assert torch.get_num_threads() == 2
        assert threads.use_cpu_threads(3).startswith("CPU threads: 3 of 4 cores (threads)")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert "(OMP_NUM_THREADS)" in threads.use_cpu_threads(None) and torch.get_num_threads() == 1
        with pytest.raises(ConfigError, match="threads=-1 must be null"):
            threads.use_cpu_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_a_torchvision_built_for_another_torch_is_one_line(tmp_path):
    """A torchvision whose compiled operators do not load (as pip leaves it after installing torch and
    torchvision from two indexes) fails at import as the real one does; dense says so in one line."""
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    result = subprocess.run(
        [sys.executable, "-c", "import dense; dense.build_backbone('tiny14')"],
        capture_output=True, text=True, timeout=120,
        env={**script_env(), "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])},
    )  # fmt: skip
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dense.core.errors.InstallError: torchvision ") and "does not fit torch " in last
    assert "pip install --force-reinstall" in last and "download.pytorch.org/whl/cpu" in last
    assert "_meta_registrations" not in result.stderr  # torchvision's own traceback is not shown


def test_help_and_the_backbone_load_no_more_than_they_need():
    """--help answers before torch is imported; building a backbone imports neither Lightning, Hydra
    nor albumentations (the training stack)."""
    help_only = [
        f"import atexit, runpy, sys; sys.argv = ['{script}', '--help']; "
        "atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr)); "
        f"runpy.run_path('{script}', run_name='__main__')"
        for script in ("train.py", "eval.py", "predict.py", "export.py")
    ]
    backbone_only = (
        "import sys, dense; dense.build_backbone('tiny14'); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'hydra', 'albumentations'}))"
    )
    for code, expected in [*((code, "False") for code in help_only), (backbone_only, "[]")]:
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env=script_env(),
        )
        assert result.returncode == 0, result.stderr[-2000:]
        said = (result.stderr if code in help_only else result.stdout).strip().splitlines()[-1]
        assert said == expected, (code, result.stderr[-2000:])
