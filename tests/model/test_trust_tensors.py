"""Trust, round 3 (issue 23), class 2: tensors that are not plain dense tensors.

A weights file or checkpoint is data, and so is every tensor in it. One check (dense.core.errors.
tensor_problem) sees every tensor read from a file before it is used: dense strided layout, values on
the CPU (not the `meta` device), not quantized, a model's dtype; against the model's own tensor also its
rank, kind of dtype and shape. The refusal is one WeightsError line naming the file and the key, in
build_backbone, head weights, checkpoints, and train.py, predict.py and export.py alike. The files are
crafted here, each from a real state dict with one tensor or key replaced.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import dense
from dense.checkpoint import MODEL_KEY, load_model
from dense.cli import export as export_script
from dense.cli.predict import run as predict
from dense.core.errors import WeightsError
from tests._tiny_run import TINY_RUN, compose_config, predict_config, train_in_process

pytestmark = pytest.mark.trust  # the trust audit: `python -m pytest -m trust`


def _quantized(tensor: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensors; files may still hold them
        return torch.quantize_per_tensor(tensor.float(), 0.1, 0, torch.qint8)


def _sparse(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_sparse()


# Each crafted tensor in place of a real one (same shape where it can have one), and the words the one
# line must hold.
REPLACEMENTS = {
    "0-d": (lambda t: torch.tensor(1.0), "is a 0-d tensor"),
    "1-d": (lambda t: t.flatten(), "is a 1-d tensor"),
    "sparse": (_sparse, "sparse_coo tensor"),
    "meta": (lambda t: torch.empty_like(t, device="meta"), "meta device"),
    "quantized": (_quantized, "quantized"),
    "int64": (lambda t: t.long(), "holds int64"),
    "complex": (lambda t: t.to(torch.complex64), "complex64"),
}


def replaced(state: dict, key: str, kind: str) -> dict:
    """`state` with `key`'s tensor replaced as REPLACEMENTS[kind] says, or (kind "int key") an int key
    added beside it."""
    if kind == "int key":
        return {**state, 7: state[key]}
    return {**state, key: REPLACEMENTS[kind][0](state[key])}


def words(kind: str) -> str:
    return "keyed by 7" if kind == "int key" else REPLACEMENTS[kind][1]


KINDS = ["int key", *REPLACEMENTS]


def refused(call, path: Path, *expected: str) -> str:
    with pytest.raises(WeightsError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    for text in expected:
        assert text in message, message
    return message


# ---- backbone files (build_backbone): both families ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny14_state() -> dict:
    """The state dict of a random tiny14 backbone (building one costs a few tenths of a second)."""
    return dense.build_backbone("tiny14").state_dict()


@pytest.mark.parametrize("kind", KINDS)
def test_a_crafted_backbone_tensor_is_refused_naming_file_and_key(tmp_path, tiny14_state, kind):
    path = tmp_path / "backbone.pth"
    torch.save(replaced(tiny14_state, "cls_token", kind), path)
    message = refused(lambda: dense.build_backbone("tiny14", weights=path), path, words(kind))
    assert kind == "int key" or "cls_token" in message


@pytest.mark.parametrize(
    "backbone, key",
    [("tiny14_reg", "register_tokens"), ("tiny16", "storage_tokens"), ("tiny16", "cls_token")],
)
def test_tokens_of_another_rank_are_refused_in_both_families(tmp_path, backbone, key):
    """A 1-D register/storage token tensor or a 0-d class token: today an IndexError while the file is
    described, before any shape is compared."""
    path = tmp_path / "backbone.pth"
    state = dense.build_backbone(backbone).state_dict()
    state[key] = state[key].flatten()[0] if key == "cls_token" else state[key].flatten()
    torch.save(state, path)
    refused(lambda: dense.build_backbone(backbone, weights=path), path, repr(key), "-d tensor but")


# ---- head files and checkpoints -----------------------------------------------------------------------------


# The file-level refusals (sparse, meta, quantized, complex) are one check for every loader (the backbone
# test above has them all); a head file gets one of them and every comparison with the head.
@pytest.mark.parametrize("kind", ["int key", "0-d", "1-d", "sparse", "int64"])
def test_a_crafted_head_tensor_is_refused_naming_file_and_key(tmp_path, kind):
    """A released-head file (decode_head.*) for depth_linear."""
    with torch.device("meta"):
        head = dense.build_model("tiny14", "depth_linear").head
    state = {f"decode_head.{k}": torch.zeros(v.shape, dtype=v.dtype) for k, v in head.state_dict().items()}
    path = tmp_path / "head.pth"
    torch.save({"state_dict": replaced(state, "decode_head.conv_depth.weight", kind)}, path)
    message = refused(
        lambda: dense.build_model("tiny14", "depth_linear", head_weights=path), path, words(kind)
    )
    assert kind == "int key" or "conv_depth.weight" in message


@pytest.mark.parametrize("kind", ["sparse", "meta", "quantized", "int64", "0-d"])
@pytest.mark.parametrize("key", ["model.backbone.cls_token", "model.head.conv_depth.bias"])
def test_a_crafted_checkpoint_tensor_is_refused_naming_file_and_key(tiny_checkpoints, tmp_path, key, kind):
    checkpoint = torch.load(tiny_checkpoints["depth"], weights_only=True)
    checkpoint["state_dict"] = replaced(checkpoint["state_dict"], key, kind)
    path = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, path)
    refused(lambda: load_model(path), path, key.rsplit(".", 1)[-1], words(kind))


# ---- the entry scripts: one line, exit 2 -----------------------------------------------------------------


def exit_line(capsys, call) -> str:
    with pytest.raises(SystemExit) as stop:
        call()
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_predict_and_export_refuse_a_crafted_checkpoint(tiny_checkpoints, tmp_path, capsys):
    checkpoint = torch.load(tiny_checkpoints["depth"], weights_only=True)
    checkpoint["state_dict"] = replaced(checkpoint["state_dict"], "model.backbone.pos_embed", "meta")
    path = tmp_path / "meta.ckpt"
    torch.save(checkpoint, path)
    images = tmp_path / "in"
    images.mkdir()
    dense.core.io.save_png(torch.zeros(14, 14, 3, dtype=torch.uint8).numpy(), images / "a.png")
    config = predict_config(f"ckpt={path}", f"input={images}", f"output={tmp_path / 'out'}")
    err = exit_line(capsys, lambda: predict.predict(config))
    assert str(path) in err and "pos_embed" in err and "meta device" in err
    assert not (tmp_path / "out").exists()
    config = compose_config("export", f"ckpt={path}", f"output={tmp_path / 'm.onnx'}")
    err = exit_line(capsys, lambda: export_script.export(config))
    assert str(path) in err and "pos_embed" in err
    assert not (tmp_path / "m.onnx").exists()


def test_train_refuses_crafted_head_weights_and_a_crafted_resume(tiny_checkpoints, tmp_path, capsys):
    """head.weights= with a sparse tensor; ckpt_path= whose optimiser state holds a quantized moment."""
    checkpoint = torch.load(tiny_checkpoints["depth"], weights_only=True)
    head = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.head.")}
    weights = tmp_path / "head.ckpt"
    torch.save(
        {"state_dict": replaced(head, "model.head.conv_depth.weight", "sparse"), MODEL_KEY: {}}, weights
    )
    err = exit_line(capsys, lambda: train_in_process(tmp_path / "a", *TINY_RUN, f"head.weights={weights}"))
    assert str(weights) in err and "conv_depth.weight" in err and "sparse" in err

    moments = {name: torch.zeros_like(tensor) for name, tensor in head.items()}
    state = {
        i: {"step": torch.tensor(4.0), "exp_avg": m, "exp_avg_sq": m} for i, m in enumerate(moments.values())
    }
    state[0]["exp_avg"] = _quantized(state[0]["exp_avg"])
    checkpoint["optimizer_states"] = [{"state": state, "param_groups": [{"params": list(state)}]}]
    crafted = tmp_path / "last.ckpt"
    torch.save(checkpoint, crafted)
    run = tmp_path / "b"
    err = exit_line(capsys, lambda: train_in_process(run, *TINY_RUN, f"ckpt_path={crafted}"))
    assert str(crafted) in err and "['exp_avg']" in err and "quantized" in err
    assert not (run / "checkpoints").exists()
