"""Hostile inputs (issue 7), weights and checkpoints: a truncated file, a pickle carrying code, the
weights of another backbone or head are refused with one line that names the file and says what it holds;
no code in a file ever runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dense
import heads
from dense.checkpoint import load_model
from dense.core.errors import WeightsError
from dense.core.weights_file import load_weights_file
from tests._hostile import code_pickles, one_line

pytestmark = pytest.mark.hostile  # the hostile audit: `python -m pytest -m hostile`


def test_code_pickles_are_real(tmp_path):
    """Control: unsafe loading of the same files really does run the payload."""
    marker = tmp_path / "ran"
    for path in code_pickles(tmp_path, marker).values():
        torch.load(path, weights_only=False)
        assert marker.exists()
        marker.unlink()


LOADERS = {
    "load_weights_file": lambda p: load_weights_file(p),
    "build_backbone": lambda p: dense.build_backbone("tiny14", weights=p),
    "head_weights": lambda p: dense.build_model("tiny14", "depth_linear", head_weights=p),
    "load_model": lambda p: load_model(p),
    "load_released_head": lambda p: heads.load_released_head(
        dense.build_model("tiny14", "seg_linear", num_classes=3).head, p
    ),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("kind", ["zip", "in_state_dict", "bare_pickle"])
def test_pickle_carrying_code_is_refused_and_never_run(tmp_path, loader, kind):
    marker = tmp_path / "ran"
    path = code_pickles(tmp_path, marker)[kind]
    with pytest.raises(WeightsError) as error:
        LOADERS[loader](path)
    message = one_line(error.value)
    assert str(path) in message and "weights_only" in message
    assert not marker.exists()


def _truncated(path: Path, source: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("loader", ["build_backbone", "head_weights", "load_model", "load_released_head"])
def test_truncated_file_is_refused(tmp_path, depth_ckpt, loader):
    path = _truncated(tmp_path / "cut.ckpt", depth_ckpt)
    with pytest.raises(WeightsError) as error:
        LOADERS[loader](path)
    message = one_line(error.value)
    assert str(path) in message and "truncated or corrupt" in message


def test_backbone_file_for_another_variant(tmp_path):
    torch.save(dense.build_backbone("tiny14_reg").state_dict(), tmp_path / "reg.pth")
    with pytest.raises(WeightsError) as error:
        dense.build_backbone("tiny14", weights=tmp_path / "reg.pth")
    assert "choose the backbone tiny14_reg" in one_line(error.value)


@pytest.mark.parametrize(
    "head, options, words",
    [
        ("seg_linear", {"num_classes": 5}, "a linear segmentation head"),  # depth checkpoint loaded as seg
        ("depth_linear4", {}, "a linear depth head"),  # another head of the same task
        ("depth_dpt", {}, "a DPT depth head"),
    ],
)
def test_checkpoint_of_another_head_or_task_is_refused(depth_ckpt, head, options, words):
    with pytest.raises(WeightsError) as error:
        dense.build_model("tiny14", head, head_weights=depth_ckpt, **options)
    message = one_line(error.value)
    assert "does not fit this head" in message and words in message
    assert "a linear depth head for 96 input channels" in message  # what the file holds


def test_head_weights_mismatch_names_the_file(depth_ckpt):
    with pytest.raises(WeightsError) as error:
        dense.build_model("tiny14", "seg_linear", head_weights=depth_ckpt, num_classes=5)
    assert str(depth_ckpt) in str(error.value)


def test_non_train_checkpoint_is_refused_by_load_model(tmp_path):
    torch.save({"decode_head.conv_seg.weight": torch.ones(3, 48, 1, 1)}, tmp_path / "released.pth")
    with pytest.raises(WeightsError) as error:
        load_model(tmp_path / "released.pth")
    assert "not a checkpoint written by train.py" in one_line(error.value)
