"""The literal command uses a GPU as users expect (issue #21): trainer.precision=auto is bf16-mixed on a
CUDA GPU that computes in bf16, float32 matmuls use TF32 tensor cores ("high") unless the user chose,
and the run's first lines say so. No GPU here: torch.cuda's answers are patched, and the functions
train.py and eval.py call with the trainer config are tested with them."""

from __future__ import annotations

import pytest
import torch

from dense.config import apply_matmul_precision, resolve_precision


@pytest.fixture
def cuda(monkeypatch):
    """Pretend to be on a machine with a CUDA GPU; `cuda(bf16=False)` for one without native bf16 (V100, T4)."""

    def patch(bf16: bool = True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)

    return patch


@pytest.fixture
def matmul_precision():
    """torch's float32 matmul precision, restored after the test."""
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_auto_is_bf16_on_a_bf16_gpu(cuda):
    cuda(bf16=True)
    for accelerator in ("auto", "gpu", "cuda"):
        assert resolve_precision("auto", accelerator) == "bf16-mixed"
    assert resolve_precision("auto", "cpu") == "32-true"  # trainer=cpu on a GPU machine
    # The user's own choice passes unchanged: the opt-out, and any other precision.
    for chosen in ("32-true", "16-mixed", "bf16-mixed", "64-true"):
        assert resolve_precision(chosen, "auto") == chosen


def test_auto_is_float32_without_native_bf16_or_without_a_gpu(cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", "auto") == "32-true"
    cuda(bf16=False)  # a GPU that could only emulate bf16
    assert resolve_precision("auto", "auto") == "32-true"


def test_is_bf16_is_asked_without_emulation(monkeypatch):
    """torch.cuda.is_bf16_supported() says True on GPUs that only emulate bf16 (slowly) unless told not to."""
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(including_emulation)
    )
    resolve_precision("auto", "auto")
    assert asked == [False]


def test_float32_matmuls_use_tensor_cores_on_a_gpu_unless_chosen(cuda, matmul_precision):
    cuda()
    torch.set_float32_matmul_precision("highest")  # torch's default: Lightning's start-up hint
    assert apply_matmul_precision("high", "auto") == "high"
    assert torch.get_float32_matmul_precision() == "high"
    torch.set_float32_matmul_precision("highest")
    assert apply_matmul_precision(None, "auto") == "highest"  # null: torch's own setting
    # A program that chose (a module of imports=) keeps its choice.
    torch.set_float32_matmul_precision("medium")
    assert apply_matmul_precision("high", "gpu") == "medium"


def test_float32_matmuls_are_left_alone_on_the_cpu(matmul_precision, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.set_float32_matmul_precision("highest")
    assert apply_matmul_precision("high", "auto") is None
    assert torch.get_float32_matmul_precision() == "highest"
    with pytest.raises(ValueError, match="float32_matmul_precision='fast'"):
        apply_matmul_precision("fast", "auto")


def test_train_py_asks_for_the_resolved_precision(cuda, matmul_precision, monkeypatch, tmp_path):
    """dense.cli.train.train passes the resolved precision to the Trainer: bf16-mixed on a (patched) bf16 GPU with
    trainer=default, 32-true with the opt-out. The Trainer is stopped as it is made (no GPU to run on)."""
    from dense.cli import train as train_script
    from tests._tiny_run import compose_config

    made = []

    def trainer_made(config, **overrides):
        made.append(overrides)
        raise RuntimeError("stop")

    monkeypatch.setattr("hydra.utils.instantiate", _only_the_trainer(trainer_made))
    cuda()
    for overrides, expected in (([], "bf16-mixed"), (["trainer.precision=32-true"], "32-true")):
        cfg = compose_config(
            "train",
            f"paths.output_dir={tmp_path}",
            "backbone=tiny14",
            "data.num_workers=0",
            "~callbacks",
            *overrides,
        )
        with pytest.raises(RuntimeError, match="stop"):
            train_script.train(cfg)
        assert made[-1]["precision"] == expected
    assert torch.get_float32_matmul_precision() == "high"


def test_eval_py_asks_for_the_resolved_precision(cuda, matmul_precision, monkeypatch, tmp_path, tiny_run):
    from dense.cli import evaluate as eval_script
    from tests._tiny_run import compose_config

    made = []

    def trainer_made(config, **overrides):
        made.append(overrides)
        raise RuntimeError("stop")

    monkeypatch.setattr("hydra.utils.instantiate", _only_the_trainer(trainer_made))
    cuda()
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    for overrides, expected in (([], "bf16-mixed"), (["trainer.precision=32-true"], "32-true")):
        cfg = compose_config("eval", f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path}", *overrides)
        with pytest.raises(RuntimeError, match="stop"):
            eval_script.evaluate(cfg)
        assert made[-1]["precision"] == expected


def _only_the_trainer(replacement):
    """hydra.utils.instantiate, except for the trainer config (its _target_ is Lightning's Trainer)."""
    from hydra.utils import instantiate

    def patched(config, *args, **kwargs):
        if getattr(config, "_target_", None) == "lightning.pytorch.Trainer":
            return replacement(config, **kwargs)
        return instantiate(config, *args, **kwargs)

    return patched
