"""What the tests that compose the real configs or run the entry scripts share: the repository's
paths, Hydra composition, a subprocess runner for train.py / eval.py / predict.py, the tiny-run
overrides, and a checkpoint written the way train.py writes one. Fixtures built on these live in
tests/conftest.py."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import dense
from dense.checkpoint import BACKBONE_PREFIX, HEAD_PREFIX, MODEL_KEY
from dense.cli import train as train_script
from dense.core.io import read_image
from dense.data.transforms import image_tensor

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# A random tiny14 backbone on the CPU (trainer=cpu: deterministic), data in the main process, every
# step logged, no sanity validation, no test split, no progress bar.
QUIET_TINY_RUN = [
    "backbone=tiny14",
    "trainer=cpu",
    "data.num_workers=0",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "test=false",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
]

# 16 synthetic training scenes of 28×28 in batches of 4 (4 steps an epoch), 4 validation and 4 test scenes.
SCENES_28 = [
    "data.image_size=[28,28]",
    "data.num_train=16",
    "data.num_val=4",
    "data.num_test=4",
    "data.batch_size=4",
]

# A finished tiny depth run (conftest's `tiny_run`): 4 steps = 1 epoch of the 16 scenes, one validation.
TINY_RUN = [*QUIET_TINY_RUN, *SCENES_28, "head=depth_linear", "trainer.max_steps=4"]

# Tiny runs that learn: 56×56 synthetic scenes, 4 steps an epoch (32 scenes in batches of 8), validated
# every epoch, 8 validation and 8 test scenes, a learning rate high enough to see the loss fall.
LEARNING_RUN = [
    *QUIET_TINY_RUN,
    "data.image_size=[56,56]",
    "data.num_train=32",
    "data.num_val=8",
    "data.num_test=8",
    "data.batch_size=8",
    "task.optimizer.lr=1e-2",
    "task.scheduler.warmup_steps=3",
]
# 24 steps = 6 epochs. Without the SigLoss warm-up, whose variance-free loss would make the curve jump.
LEARNING_DEPTH = ["head=depth_linear4", "trainer.max_steps=24", "task.depth_loss.warm_up=false"]


def compose_config(name: str, *overrides: str, return_hydra_config: bool = False):
    """configs/<name>.yaml with `overrides`, composed as the entry script would (no run folder)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def train_in_process(out: Path, *overrides: str):
    """dense.cli.train.train (what train.py runs) on configs/train.yaml with `overrides`, writing into the run
    folder `out`; returns its (task, metrics)."""
    return train_script.train(compose_config("train", f"paths.output_dir={out}", *overrides))


def metric_rows(run: Path) -> list[dict]:
    """The rows of a run's CSV log (its first version)."""
    with open(run / "csv" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def series(rows: list[dict], key: str) -> list[float]:
    """The values logged under `key`, in order."""
    return [float(r[key]) for r in rows if r.get(key)]


def predict_config(*overrides: str):
    """configs/predict.yaml with `overrides`, without the progress bar."""
    return compose_config("predict", "progress=false", *overrides)


def script_env(**extra: str) -> dict[str, str]:
    """The environment a script runs in: this checkout first on the path, Hydra's short errors."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0", **extra}


def run_script(
    *args: str, env: dict | None = None, cwd: Path = ROOT, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python ARGS...` as a user types it (scripts named relative to `cwd`), output captured as text."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=script_env(**(env or {})),
    )  # fmt: skip


def start_script(*args: str) -> subprocess.Popen:
    """`python ARGS...` started in the repository root, stdout dropped, stderr kept for the failure message."""
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=script_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def one_line_exit(call, capsys) -> str:
    """What an entry script's configuration mistake must be: exit status 2 and one line on stderr,
    `error: ...` (returned)."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def write_checkpoint(model: dense.DenseModel, path: Path) -> Path:
    """A checkpoint as train.py writes one (dense/checkpoint.py), its random backbone stored inside."""
    state = {BACKBONE_PREFIX + k: v for k, v in model.backbone.state_dict().items()}
    state.update({HEAD_PREFIX + k: v for k, v in model.head.state_dict().items()})
    torch.save({"state_dict": state, MODEL_KEY: model.config}, path)
    return path


def model_input(path: Path) -> torch.Tensor:
    """The batch of one that predict.py makes of the image file at `path` (uint8: the model normalises)."""
    return image_tensor(read_image(path))[None]
