"""Determinism (issue 7): the same seed gives bit-identical head weights and logged values on the CPU
across two independent `python train.py` processes (that another seed gives other weights is
tests/data/test_datamodule.py's and test_train.py's business; a third run here would cost 10+ s).

On a GPU this is not promised: see the README's Failure modes (cuDNN algorithm choice and atomic-add
reductions, e.g. the backward of bilinear upsampling, vary between runs unless `trainer.deterministic=true`,
which makes PyTorch use deterministic kernels or raise where none exists).
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import torch

from dense.core.weights_file import load_weights_file
from tests._tiny_run import QUIET_TINY_RUN, SCENES_28, start_script

TINY = [
    *QUIET_TINY_RUN,
    *SCENES_28,
    "head=depth_linear4",
    "data.augment=true",  # flips and colour jitter drawn from the seed too
    "trainer.max_steps=8",
]


def start(run_dir: Path, seed: int) -> subprocess.Popen:
    return start_script("train.py", *TINY, f"seed={seed}", f"hydra.run.dir={run_dir}")


def head(run_dir: Path, name: str = "last.ckpt") -> dict[str, torch.Tensor]:
    state = load_weights_file(run_dir / "checkpoints" / name)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.head.")}


def logged(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_same_seed_gives_bit_identical_heads_on_cpu(tmp_path):
    runs = {"a": (tmp_path / "a", 0), "b": (tmp_path / "b", 0)}
    processes = {name: start(d, seed) for name, (d, seed) in runs.items()}  # side by side: 2 cores
    for name, process in processes.items():
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: {err[-3000:]}"

    a, b = runs["a"][0], runs["b"][0]
    for checkpoint in ("last.ckpt", "best.ckpt"):
        first, second = head(a, checkpoint), head(b, checkpoint)
        assert first.keys() == second.keys() and first
        for key in first:
            assert torch.equal(first[key], second[key]), (checkpoint, key)  # bit for bit
    assert logged(a) == logged(b)  # every loss, learning rate and metric, as text
