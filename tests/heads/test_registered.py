"""Every registered head and backbone gets the same tests (tests/testers.py), and a head of the user's
own module works from the Python API and from train.py / eval.py through `imports=[...]`."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from hydra import compose, initialize_config_dir

import dense
import dense.checkpoint
import heads
from dense.backbones import BACKBONES
from tests.testers import TINY_BACKBONES, BackboneTester, HeadTester

HEADS = dense.list_heads()
TINY = [name for name in dense.list_backbones() if BACKBONES.get(name).test_only]
FULL_SIZE = [name for name in dense.list_backbones() if not BACKBONES.get(name).test_only]
# Sizes that are no multiple of either patch size (14, 16), one square and one not.
SIZES = [(30, 30), (37, 45)]


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
@pytest.mark.parametrize("head", HEADS)
def test_head_forward_backward_any_size(head, backbone):
    tester = HeadTester(head, backbone)
    for size in SIZES:
        tester.check_forward_backward(size)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
@pytest.mark.parametrize("head", HEADS)
def test_head_bf16_and_state_dict(head, backbone):
    tester = HeadTester(head, backbone)
    tester.check_bf16((30, 37))
    tester.check_state_dict_round_trip()


def test_compile_one_case():
    # Inductor itself is tested on the backbones (tests/backbones/test_dinov3.py, tests/model/test_speed_options.py).
    HeadTester("seg_linear", "tiny16").check_compile(backend="eager", fullgraph=True)


@pytest.mark.parametrize("name", TINY)
def test_tiny_backbone_forward_and_weights_file(name, tmp_path):
    tester = BackboneTester(name)
    tester.check_spec(meta=False)
    tester.check_forward((2, 3))
    tester.check_state_dict_round_trip(tmp_path)


@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_backbone_on_the_meta_device(name):
    BackboneTester(name).check_spec(meta=True)


def test_every_family_is_registered():
    families = {BACKBONES.get(name).family for name in dense.list_backbones()}
    assert families == {"dinov2", "dinov3"}
    assert {"tiny14", "tiny16"} <= set(TINY) and len(FULL_SIZE) == 8 + 9


# ---- a head of the user's own module ----------------------------------------------------------------

USER_MODULE = '''
import torch
from torch import nn

import dense


@dense.register_head("user_depth", task="depth", layer_set=dense.LayerSet.LAST, norm=False, use_cls_token=False)
class UserDepthHead(nn.Module):
    """A 1x1 conv and a softplus: depth on the patch grid."""

    def __init__(self, embed_dim, num_layers=1, use_cls_token=False, min_depth=1e-3, max_depth=10.0, width=1):
        super().__init__()
        self.min_depth = min_depth
        self.conv = nn.Conv2d(embed_dim * num_layers, width, 1)

    def forward(self, features):
        x = torch.cat(features.patches, dim=1)
        return nn.functional.softplus(self.conv(x).float()).mean(1, keepdim=True) + self.min_depth
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """`user_heads` on sys.path; the registry and sys.modules as they were afterwards."""
    (tmp_path / "user_heads.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    entries, aliases = dict(heads.HEADS._entries), dict(heads.HEADS._aliases)
    yield "user_heads"
    heads.HEADS._entries.clear(), heads.HEADS._entries.update(entries)
    heads.HEADS._aliases.clear(), heads.HEADS._aliases.update(aliases)
    sys.modules.pop("user_heads", None)


def forget(module: str) -> None:
    """As a fresh process would be: the user's head not registered, its module not imported."""
    heads.HEADS._entries.pop("user_depth", None)
    sys.modules.pop(module, None)


def compose_config(config_name: str, overrides: list[str]):
    from pathlib import Path

    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        return compose(config_name, overrides=overrides)


def error_line(capsys) -> str:
    """The one line an entry script printed for a set-up mistake (log lines before it aside)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert (
        lines and lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1
    ), lines
    return lines[-1]


def test_user_head_from_the_python_api(user_module):
    __import__(user_module)
    assert "user_depth" in dense.list_heads()
    model = dense.build_model("tiny16", "user_depth", width=2)
    assert model.layers == [3] and not model.norm and model.head.conv.out_channels == 2
    assert model(torch.randn(1, 3, 30, 40)).shape == (1, 1, 30, 40)


def test_user_head_through_train_and_eval(user_module, tmp_path, capsys, monkeypatch):
    from dense.cli import evaluate as eval_script
    from dense.cli import train as train_script
    from tests._tiny_run import QUIET_TINY_RUN, SCENES_28

    out = tmp_path / "run"
    overrides = [
        f"paths.output_dir={out}",
        *QUIET_TINY_RUN,
        *SCENES_28,
        "trainer.max_steps=2",
        f"imports=[{user_module}]",
        "head.name=user_depth",
    ]
    task, _ = train_script.train(compose_config("train", overrides))
    assert type(task.model.head).__name__ == "UserDepthHead"
    checkpoint = out / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()

    forget(user_module)
    evaluate = [
        f"ckpt_path={checkpoint}",
        "trainer=cpu",
        f"paths.output_dir={tmp_path / 'eval'}",
        "split=val",
    ]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        eval_script.evaluate(compose_config("eval", evaluate))
    line = error_line(capsys)
    assert exit_.value.code == 2
    assert (
        "trained with the head 'user_depth', which is not registered" in line and "imports=[module]" in line
    )
    assert user_module not in sys.modules  # the checkpoint's name was not imported

    reads = []
    real_load = dense.checkpoint.load_weights_file
    monkeypatch.setattr(
        dense.checkpoint, "load_weights_file", lambda path: reads.append(str(path)) or real_load(path)
    )
    metrics = eval_script.evaluate(compose_config("eval", [*evaluate, f"imports=[{user_module}]"]))
    assert "abs_rel" in metrics and torch.isfinite(torch.tensor(metrics["abs_rel"]))
    assert reads.count(str(checkpoint)) == 1  # the checkpoint is read once


@pytest.mark.parametrize(
    "imports,fragment",
    [
        ("[no_such_module_xyz]", "cannot import no_such_module_xyz: ModuleNotFoundError"),
        (
            "[broken_user_module]",
            "cannot import broken_user_module (it raised while being imported): "
            "ZeroDivisionError: division by zero",
        ),
        ("[os.path/../x]", "is not a module name"),
    ],
)
def test_imports_errors_are_one_line(imports, fragment, tmp_path, monkeypatch, capsys):
    from dense.cli.predict import run as predict_script

    (tmp_path / "broken_user_module.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_config("predict", [f"imports={imports}", "input=x.png", f"output={tmp_path / 'out'}"])
    with pytest.raises(SystemExit) as exit_:
        predict_script.predict(cfg)
    line = error_line(capsys)
    assert exit_.value.code == 2 and fragment in line, line
    sys.modules.pop("broken_user_module", None)
