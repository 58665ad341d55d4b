"""The speed options: channels-last feature maps, the bf16 copy of the frozen backbone, torch.compile,
and the `compile` / precision switches of train.py, eval.py and predict.py.

Stated tolerances (CPU, tiny random models, measured in these tests' set-up):
- channels-last vs NCHW feature maps: every head within 1e-5 relative (float rounding only);
- compile vs eager: within 1e-4 relative (inductor reorders float sums);
- bf16 autocast vs fp32: depth within 3 % of the largest predicted depth (measured: linear heads
  0.04 %, DPT 0.6–1.7 %, whose nine bf16 convolutions add up), class probabilities within 0.02
  absolute (measured 0.0008);
- the bf16 weight copy vs bf16 autocast over fp32 weights: bit-identical.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dense
import heads
from dense.cli import evaluate as eval_script
from dense.cli.predict import model as predict_model
from dense.cli.predict import run as predict_script
from dense.config import apply_speed_options, compile_mode
from dense.core.errors import DenseError
from dense.core.features import FeatureMaps
from dense.core.ops import resize
from dense.model import to_maps
from tests._random_weights import seeded_state_dict
from tests._tiny_run import QUIET_TINY_RUN, SCENES_28, compose_config, predict_config, train_in_process
from tests.testers import tensor_heads

# 28×28 scenes, 4 steps = one epoch: enough to see the options applied (nothing here needs learning).
RUN = [*QUIET_TINY_RUN, *SCENES_28, "trainer.max_steps=4"]
# Every registered head with a tensor output, at its full size, not its registered test sizes: the bf16
# tolerances above are measured at the heads' real widths (the DPT with 32 fusion channels instead of 256
# strays up to 12 % on some seeds: its few channels do not average the bf16 rounding out).
HEADS = tensor_heads()


def seeded_model(head: str, seed: int = 0) -> dense.DenseModel:
    """A tiny model whose head has larger-than-init weights (so outputs vary across the image)."""
    torch.manual_seed(seed)
    options = {"num_classes": 5} if heads.get_head_spec(head).task == "segmentation" else {}
    model = dense.build_model("tiny14", head, **options).eval()
    shapes = {k: tuple(v.shape) for k, v in model.head.state_dict().items() if v.is_floating_point()}
    model.head.load_state_dict(seeded_state_dict(shapes, seed=seed), strict=False)
    return model


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ---- channels-last -------------------------------------------------------------------------------


def test_feature_maps_are_channels_last_views_of_the_tokens():
    tokens = torch.randn(2, 3 * 5, 8)
    maps = to_maps(tokens, 3, 5)
    assert maps.shape == (2, 8, 3, 5) and maps.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(maps, tokens.transpose(1, 2).reshape(2, 8, 3, 5))  # the NCHW way, same values

    model = seeded_model("depth_dpt")
    features = model.extract_features(torch.randn(2, 3, 42, 56))
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in features.patches)


@pytest.mark.parametrize("head", HEADS)
def test_heads_give_the_same_output_on_either_layout(head):
    model = seeded_model(head)
    features = model.extract_features(torch.randn(2, 3, 42, 56))
    nchw = FeatureMaps([p.contiguous() for p in features.patches], features.cls_tokens)
    assert not nchw.patches[0].is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        channels_last = model.head(features)
        plain = model.head(nchw)
    assert relative(channels_last, plain) < 1e-5


def test_resize_is_interpolate_channels_last_for_logits_on_the_cpu():
    x = torch.randn(2, 32, 5, 7)
    out = resize(x, (20, 28))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(
        out, F.interpolate(x, size=(20, 28), mode="bilinear", align_corners=False), atol=1e-6
    )
    assert resize(x, (5, 7)) is x
    image = torch.randn(2, 3, 5, 7)  # images stay NCHW (slower channels-last for 3 channels)
    assert resize(image, (20, 28)).is_contiguous()


# ---- the bf16 copy of the frozen backbone ---------------------------------------------------------


def test_bf16_backbone_copy_is_bit_identical_to_autocast_and_half_the_size():
    model = seeded_model("depth_dpt")
    images = torch.randn(2, 3, 42, 56)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model.predict(images)
    before = sum(p.numel() * p.element_size() for p in model.backbone.parameters())
    matrices = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    matrix_bytes = sum(p.numel() * 4 for m in matrices for p in m.parameters())
    model.cast_backbone(torch.bfloat16)
    after = sum(p.numel() * p.element_size() for p in model.backbone.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = model.predict(images)
    assert torch.equal(cast, reference)
    assert after == before - matrix_bytes // 2  # every matrix weight (and its bias) at 2 bytes instead of 4
    assert model.backbone.norm.weight.dtype == torch.float32  # norms, tokens, position embedding stay fp32
    assert model.backbone.pos_embed.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.head.parameters())  # the head is trained: left alone
    with pytest.raises(DenseError, match=r"stored in torch.bfloat16 \(cast_backbone\): run the model under"):
        model.predict(images)


@pytest.mark.parametrize("head", ["depth_linear4", "depth_dpt", "seg_ms"])
def test_bf16_predictions_stay_close_to_fp32(head):
    model = seeded_model(head)
    images = torch.randn(2, 3, 42, 56)
    full = model.predict(images)
    model.cast_backbone(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model.predict(images)
    assert half.dtype == torch.float32
    if head.startswith("depth"):
        assert relative(half, full) < 0.03
    else:
        assert float((half - full).abs().max()) < 0.02


# ---- torch.compile --------------------------------------------------------------------------------


def test_compiled_model_predicts_what_the_eager_one_does():
    model = seeded_model("depth_dpt")
    images = torch.randn(2, 3, 42, 56)
    eager = model.predict(images)
    keys = list(model.state_dict())
    model.compile()
    assert model._compiled_tokens is not None and model._compiled_head is not None
    compiled = model.predict(images)
    assert relative(compiled, eager) < 1e-4
    assert list(model.state_dict()) == keys  # checkpoints do not change with compile
    torch._dynamo.reset()


def test_the_compiled_head_serves_inference_only():
    """compile() compiles the head for calls without autograd; a training forward runs the eager head
    (its compiled backward was slower: DenseModel.compile). A recording stand-in for the compiled
    head shows which one ran, without compiling anything."""
    model = seeded_model("depth_linear")
    images = torch.randn(2, 3, 28, 28)
    calls = []

    def compiled_head(features):
        calls.append(torch.is_grad_enabled())
        return model.head(features)

    model._compiled_head = compiled_head
    model.train()
    out = model(images)
    assert out.requires_grad and calls == []  # training: the eager head, gradients flow to it
    with torch.no_grad():
        model.eval()(images)
    model.predict(images)
    assert calls == [False, False]


def test_compile_key_values():
    assert compile_mode(False) is None and compile_mode(None) is None
    assert compile_mode(True) == "default" and compile_mode("max-autotune") == "max-autotune"
    with pytest.raises(
        ValueError, match="compile='fast' is not one of true, false, default, reduce-overhead"
    ):
        compile_mode("fast")


# ---- the switches of the entry scripts --------------------------------------------------------------


@pytest.fixture
def compile_calls(monkeypatch):
    """Record DenseModel.compile calls instead of compiling (the real compile is tested above)."""
    calls = []
    monkeypatch.setattr(dense.DenseModel, "compile", lambda self, **options: calls.append(options))
    return calls


def test_train_and_eval_apply_bf16_and_compile(tmp_path, compile_calls):
    task, metrics = train_in_process(
        tmp_path, *RUN, "head=depth_linear", "trainer.precision=bf16-mixed", "compile=max-autotune"
    )
    assert task.model.backbone_dtype == torch.bfloat16
    assert task.model.backbone.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert compile_calls == [{"mode": "max-autotune"}]
    assert np.isfinite(metrics["val/rmse"])
    # The checkpoint stores no bf16 backbone: the model it rebuilds is float32.
    rebuilt = dense.load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert rebuilt.backbone.blocks[0].attn.qkv.weight.dtype == torch.float32

    (tmp_path / "eval").mkdir()
    cfg = compose_config(
        "eval",
        f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}",
        "trainer=cpu",
        "trainer.precision=bf16-mixed",
        "trainer.enable_progress_bar=false",
        "compile=true",
        f"paths.output_dir={tmp_path / 'eval'}",
    )
    results = eval_script.evaluate(cfg)
    assert compile_calls[-1] == {"mode": "default"}
    assert np.isfinite(results["rmse"]) and results["n_images"] == 4  # SCENES_28: 4 test images


def test_a_bf16_run_fills_the_feature_cache_under_autocast(tmp_path):
    # The cache is filled when the datamodule is set up, after the backbone's weights went bf16.
    task, metrics = train_in_process(
        tmp_path,
        *RUN,
        "head=seg_linear",
        "data.task=segmentation",
        "trainer.precision=bf16-mixed",
        "cache.features=true",
        f"cache.dir={tmp_path / 'cache'}",
    )
    assert task.model.backbone_dtype == torch.bfloat16
    assert any((tmp_path / "cache").rglob("patches.npy")) and np.isfinite(metrics["val/mIoU"])


def test_predict_applies_bf16_and_compile(tmp_path, compile_calls, monkeypatch):
    model = seeded_model("depth_linear")
    weights = tmp_path / "head.pth"
    torch.save({"state_dict": {f"decode_head.{k}": v for k, v in model.head.state_dict().items()}}, weights)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (42, 56, 3), dtype=np.uint8)).save(
        tmp_path / "a.png"
    )
    built = []
    apply = predict_model.apply_speed_options
    monkeypatch.setattr(
        predict_model, "apply_speed_options", lambda model, **kw: built.append(model) or apply(model, **kw)
    )
    cfg = predict_config(
        "backbone=tiny14",
        "head=depth_linear",
        f"head.weights={weights}",
        f"input={tmp_path / 'a.png'}",
        f"output={tmp_path / 'out'}",
        "precision=bf16",
        "compile=reduce-overhead",
        "device=cpu",
    )
    assert predict_script.predict(cfg) == 0
    assert built[0].backbone_dtype == torch.bfloat16
    assert compile_calls == [{"mode": "reduce-overhead"}]
    assert np.isfinite(np.load(tmp_path / "out" / "a.npy")).all()


def test_a_wrong_compile_value_stops_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_in_process(tmp_path, *RUN, "head=depth_linear", "compile=fast")
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: compile='fast' is not one of") and "\n" not in err
    assert (
        compose_config("train", f"paths.output_dir={tmp_path}", *RUN).compile is False
    )  # off unless asked for


def test_apply_speed_options_leaves_a_default_run_alone():
    model = seeded_model("seg_linear")
    assert apply_speed_options(model) is model
    assert model.backbone_dtype == torch.float32 and model._compiled_tokens is None
