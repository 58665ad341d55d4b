"""Fixtures the test files share: what costs seconds is made once per session and only read by the
tests (a test that changes a checkpoint or a run folder works on its own copy). Plain helpers (the
repository's paths, Hydra composition, the script runner) are in tests/_tiny_run.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import dense
from dense.cli import schema
from tests._tiny_run import TINY_RUN, train_in_process, write_checkpoint


def pytest_configure(config: pytest.Config) -> None:
    # The config groups' YAML files name their schemas: Hydra finds them in the ConfigStore.
    schema.register()
    # pytest-xdist runs one worker per core: torch's default of a thread per core in each worker would
    # put several threads on every core, which tiny models only pay for in switching.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny14 depth checkpoint (depth_linear, 0.001-10 m) and a tiny14 segmentation one (seg_linear,
    5 classes, no class names), written as train.py writes them, random backbone inside."""
    folder = tmp_path_factory.mktemp("tiny_checkpoints")
    torch.manual_seed(0)
    depth = dense.build_model("tiny14", "depth_linear", max_depth=10.0)
    seg = dense.build_model("tiny14", "seg_linear", num_classes=5)
    # Larger class weights than the near-uniform init, so the argmax varies across the image.
    torch.nn.init.normal_(seg.head.conv_seg.weight, std=1.0)
    return {
        "depth": write_checkpoint(depth, folder / "depth.ckpt"),
        "seg": write_checkpoint(seg, folder / "seg.ckpt"),
    }


@pytest.fixture
def depth_ckpt(tiny_checkpoints) -> Path:
    """tiny14 depth_linear (0.001-10 m), random backbone stored inside."""
    return tiny_checkpoints["depth"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder of train.py (in-process) trained to its end (TINY_RUN: max_steps=4):
    checkpoints/{best,last}.ckpt and the random backbone file they point at."""
    out = tmp_path_factory.mktemp("tiny_run")
    train_in_process(out, *TINY_RUN)
    return out
