"""dense.tools.export, export.py and predict.py model=FILE.onnx: one dynamic graph equal to PyTorch.

Exporting is slow (about 10 s of CPU for torch.export and 15 s more for the ONNX conversion of a tiny
model), so each model is exported once and checked at many sizes. The default suite exports three:
ONNX for DINOv2 plain + seg_linear (float16 weights), .pt2 for registers + depth_linear (through
export.py) and DINOv3 + seg_linear (uint8 input); and ONNX for DINOv3 + seg_mask (its class scores). `pytest -m slow` adds a uint8-input ONNX depth model
(SwiGLU + depth_linear) run by predict.py, and the full matrix: every head (DPT included) on every
backbone, through both ONNX Runtime and .pt2.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

import heads
from dense.cli import export as export_script
from dense.cli.predict import run as predict
from dense.model import DenseModel, build_model
from dense.tools import export
from tests import _crafted_onnx as crafted
from tests._fixtures_data import rgb
from tests._tiny_run import ROOT, one_line_exit, write_checkpoint
from tests.testers import small_options

HEADS = heads.list_heads()  # each built at its registered test sizes (HeadSpec.test_options)
BACKBONES = ["tiny14", "tiny14_reg", "tiny14_swiglu", "tiny16"]
# Batch 1 and 3, sides below, at and between patch multiples; the export example is 2×35×69 (14) / 2×40×79 (16).
SIZES = [(1, 14, 14), (3, 17, 50), (2, 28, 42), (1, 9, 13), (1, 64, 33)]


def tiny_model(backbone: str, head: str, seed: int = 0) -> DenseModel:
    torch.manual_seed(seed)
    # seg_mask: a small decoder, the same ops, fewer copies of them to export; the DPT: 32 fusion channels.
    model = build_model(backbone, head, **small_options(head, num_classes=5)).eval()
    if hasattr(model.head, "conv_seg"):  # class scores that vary across the image (the init is near uniform)
        torch.nn.init.normal_(model.head.conv_seg.weight, std=1.0)
    return model


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    assert actual.shape == expected.shape
    error = (actual - expected).abs().max().item()
    assert error <= rtol * expected.abs().max().item(), (
        f"max error {error:.3g}, scale {expected.abs().max().item():.3g}"
    )


def run_at_sizes(model: DenseModel, run, uint8: bool = False) -> None:
    """`run` (an exported graph) equals model.forward at every size in SIZES."""
    generator = torch.Generator().manual_seed(1)
    for batch, height, width in SIZES:
        images = torch.randint(0, 256, (batch, 3, height, width), generator=generator, dtype=torch.uint8)
        normalised = (
            images.float() / 255 - torch.tensor(export.IMAGENET_MEAN).view(1, 3, 1, 1)
        ) / torch.tensor(export.IMAGENET_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            expected = model(normalised)
        actual = run(images if uint8 else normalised)
        assert_close_relative(actual, expected)


def onnx_runner(path: Path):
    # Every graph the suite exports uses only the operators predict.py accepts (the slow
    # tests/tools/test_trust_onnx.py re-derives the whole set).
    assert export.graph_operators(onnx.load(path)) <= export.ONNX_OPS
    model = export.load_onnx_model(path)
    session, name = model.session, model.input_name
    return lambda images: torch.from_numpy(session.run(None, {name: images.numpy()})[0])


def rounded_to_fp16(model: DenseModel) -> DenseModel:
    """The model with the weights an fp16_weights file stores (tensors of 16 values or more in float16)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point() and tensor.numel() >= export.FP16_MIN_NUMEL:
                tensor.copy_(tensor.half().float())
    return model


@pytest.fixture(scope="module")
def seg_onnx(tmp_path_factory):
    """tiny14 (plain DINOv2: the +0.1 interpolation rule) + seg_linear, float input, float16 weights;
    with the model it equals: the same weights rounded to float16."""
    model = tiny_model("tiny14", "seg_linear")
    path = tmp_path_factory.mktemp("seg") / "seg.onnx"
    export.to_onnx(model, path, fp16_weights=True, class_names=[f"thing {i}" for i in range(5)])
    return rounded_to_fp16(model), path


@pytest.fixture(scope="module")
def seg_mask_onnx(tmp_path_factory):
    """tiny16 (DINOv3: RoPE in the backbone and the decoder) + seg_mask, float input. Small, as an export's
    time grows with the graph: the first block read (the backbone stops after it), one decoder block,
    one upsampling: every op of the default model, fewer copies of each."""
    torch.manual_seed(0)
    options = {"num_classes": 5, "layers": [0], "num_queries": 8, "num_blocks": 1, "upscale": 1}
    model = build_model("tiny16", "seg_mask", **options).eval()
    path = tmp_path_factory.mktemp("seg_mask") / "seg_mask.onnx"
    export.to_onnx(model, path)
    return model, path


@pytest.fixture(scope="module")
def depth_onnx_uint8_fp16(tmp_path_factory):
    """tiny14_swiglu + depth_linear, uint8 input normalised in the graph, float16 weights."""
    model = tiny_model("tiny14_swiglu", "depth_linear")
    path = tmp_path_factory.mktemp("depth") / "depth.onnx"
    export.to_onnx(model, path, uint8_input=True, fp16_weights=True)
    return rounded_to_fp16(model), path


# ---- the position encoding as matrices ------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["tiny14", "tiny14_reg"])
def test_position_encoding_by_matrices_equals_interpolate(backbone):
    """Both of upstream's rules (plain: bicubic with +0.1 scale factors, skipped at 37×37; registers:
    antialiased bicubic to the size), down and up, against the backbone's own F.interpolate."""
    net = build_model(backbone, "seg_linear", num_classes=2).backbone
    torch.nn.init.normal_(net.pos_embed)
    for h, w in [(1, 1), (2, 5), (16, 9), (37, 37), (37, 20), (40, 55)]:
        expected = net.interpolate_pos_encoding(h, w)
        actual = export.position_encoding_by_matrices(net, h, w)
        assert_close_relative(actual, expected, rtol=1e-5)


# ---- ONNX Runtime and .pt2 equal PyTorch ------------------------------------------------------------


def test_onnx_equals_pytorch_at_other_sizes(seg_onnx):
    model, path = seg_onnx
    run_at_sizes(model, onnx_runner(path))
    run = onnx_runner(path)  # 518: the 37×37 grid where the plain rule skips the interpolation
    images = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        assert_close_relative(run(images), model(images))


def test_fp16_weights_are_stored_in_float16(seg_onnx):
    stored = onnx.load(seg_onnx[1])
    kinds = {
        init.data_type for init in stored.graph.initializer if np.prod(init.dims) >= export.FP16_MIN_NUMEL
    }
    assert kinds == {onnx.TensorProto.FLOAT16}
    assert stored.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.slow
def test_uint8_input_onnx(depth_onnx_uint8_fp16):
    """The uint8 graph normalises as dense.data.transforms does."""
    model, path = depth_onnx_uint8_fp16
    run_at_sizes(model, onnx_runner(path), uint8=True)
    assert onnx.load(path).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_dinov3_program_with_uint8_input(tmp_path):
    """DINOv3 (RoPE for the actual grid) as a .pt2 program taking uint8 images (ONNX: the slow matrix)."""
    model = tiny_model("tiny16", "seg_linear")
    export.to_torch_export(model, tmp_path / "v3.pt2", uint8_input=True)
    program = torch.export.load(tmp_path / "v3.pt2").module()
    run_at_sizes(model, lambda images: program(images).detach(), uint8=True)


def test_export_py_writes_the_checkpoints_program(tmp_path, capsys):
    """export.py ckpt=... output=FILE.pt2: the checkpoint's model as a .pt2 program (registers: the
    antialiased interpolation) equal to it at other sizes."""
    model = tiny_model("tiny14_reg", "depth_linear")
    ckpt = write_checkpoint(model, tmp_path / "depth.ckpt")
    output = tmp_path / "m.pt2"
    assert export_script.export(export_config(f"ckpt={ckpt}", f"output={output}")) == str(output)
    assert "wrote" in capsys.readouterr().out
    program = torch.export.load(output).module()
    run_at_sizes(model, lambda images: program(images).detach())


# Every head on every backbone family, through ONNX Runtime and .pt2. Each case costs 20-90 s of CPU, so
# the default suite runs two of them, which with the four exports above give every head (DPT included; the
# linear heads' four-layer forms depth_linear4 and seg_ms are the same ops) and every family (DINOv3 and
# SwiGLU through ONNX too) at least once; `pytest -m slow` runs all of them (every registered head × the
# four backbones).
IN_EVERY_RUN = {("depth_dpt", "tiny16"), ("depth_linear", "tiny14_swiglu")}
MATRIX = [
    pytest.param(head, backbone, marks=() if (head, backbone) in IN_EVERY_RUN else pytest.mark.slow)
    for head in HEADS
    for backbone in BACKBONES
]


@pytest.mark.parametrize("head, backbone", MATRIX)
def test_every_head_on_every_backbone(backbone, head, tmp_path):
    model = tiny_model(backbone, head)
    export.to_onnx(model, tmp_path / "m.onnx")
    run_at_sizes(model, onnx_runner(tmp_path / "m.onnx"))
    export.to_torch_export(model, tmp_path / "m.pt2")
    program = torch.export.load(tmp_path / "m.pt2").module()
    run_at_sizes(model, lambda images: program(images).detach())


# ---- metadata ----------------------------------------------------------------------------------------


def test_metadata_round_trip(seg_onnx):
    seg = export.load_onnx_model(seg_onnx[1])
    assert seg.metadata == {
        "format": "dense export v1",
        "backbone": "tiny14",
        "head": "seg_linear",
        "task": "segmentation",
        "patch_size": 14,
        "depth_mode": None,
        "min_depth": None,
        "max_depth": None,
        "num_classes": 5,
        "class_names": [f"thing {i}" for i in range(5)],
        "palette": None,
        "seg_output": "logits",
        "input": "float32",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "weights": "float16",
    }


def test_seg_mask_onnx_gives_the_class_scores_of_pytorch(seg_mask_onnx, images, tmp_path):
    """One graph (dynamic batch and size) whose output is seg_mask's Mask2Former scores B×K×H×W, within
    1e-4 of PyTorch; predict.py runs it, averaging the views' scores as the checkpoint does (the
    metadata says they are scores, not logits)."""
    model, path = seg_mask_onnx
    run_at_sizes(model, onnx_runner(path))
    assert export.load_onnx_model(path).metadata["seg_output"] == "scores"
    ckpt = write_checkpoint(model, tmp_path / "seg_mask.ckpt")
    common = [f"input={images}", "flip=true", "scales=[1.0,1.5]"]
    assert predict.predict(predict_config(f"ckpt={ckpt}", f"output={tmp_path / 'ckpt'}", *common)) == 0
    assert predict.predict(predict_config(f"model={path}", f"output={tmp_path / 'onnx'}", *common)) == 0
    for stem in ("a", "b"):
        ids = [np.asarray(Image.open(tmp_path / out / f"{stem}.png")) for out in ("ckpt", "onnx")]
        assert ids[0].shape == ids[1].shape and (ids[0] == ids[1]).mean() > 0.99


@pytest.mark.slow
def test_depth_metadata(depth_onnx_uint8_fp16):
    depth = export.load_onnx_model(depth_onnx_uint8_fp16[1]).metadata
    assert (depth["task"], depth["min_depth"], depth["max_depth"]) == ("depth", 1e-3, 10.0)
    assert (depth["input"], depth["weights"], depth["backbone"]) == ("uint8", "float16", "tiny14_swiglu")


# ---- predict.py model=FILE.onnx ---------------------------------------------------------------------


def predict_config(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("predict", overrides=["progress=false", *overrides])


def export_config(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("export", overrides=list(overrides))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(rgb(30, 40, seed=1)).save(folder / "a.png")
    Image.fromarray(rgb(20, 25, seed=2)).save(folder / "b.png")
    return folder


@pytest.mark.parametrize(
    "options",
    [[], ["mode=slide", "crop_size=28", "stride=21", "flip=true", "scales=[1.0,1.5]"]],
    ids=["whole", "slide-flip-scales"],
)
def test_predict_segmentation_from_onnx_equals_checkpoint(seg_onnx, images, tmp_path, options):
    model, onnx_path = seg_onnx
    ckpt = write_checkpoint(model, tmp_path / "seg.ckpt")
    common = [f"input={images}", *options]
    assert predict.predict(predict_config(f"ckpt={ckpt}", f"output={tmp_path / 'ckpt'}", *common)) == 0
    assert predict.predict(predict_config(f"model={onnx_path}", f"output={tmp_path / 'onnx'}", *common)) == 0
    for stem in ("a", "b"):
        ids = [np.asarray(Image.open(tmp_path / out / f"{stem}.png")) for out in ("ckpt", "onnx")]
        assert ids[0].shape == ids[1].shape and (ids[0] == ids[1]).mean() > 0.99
        assert len(np.unique(ids[0])) > 1
    names = json.loads((tmp_path / "onnx" / "classes.json").read_text())
    assert "thing 3" in json.dumps(names)


@pytest.mark.slow
def test_predict_depth_from_uint8_onnx_equals_checkpoint(depth_onnx_uint8_fp16, images, tmp_path):
    """The fp16-weight file against a checkpoint of the same weights rounded to float16."""
    rounded = depth_onnx_uint8_fp16[0]
    ckpt = write_checkpoint(rounded, tmp_path / "depth.ckpt")
    common = [f"input={images}", "flip=true"]
    assert predict.predict(predict_config(f"ckpt={ckpt}", f"output={tmp_path / 'ckpt'}", *common)) == 0
    onnx_path = depth_onnx_uint8_fp16[1]
    assert predict.predict(predict_config(f"model={onnx_path}", f"output={tmp_path / 'onnx'}", *common)) == 0
    for stem in ("a", "b"):
        expected, actual = (np.load(tmp_path / out / f"{stem}.npy") for out in ("ckpt", "onnx"))
        assert (
            expected.shape == actual.shape
            and np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()
        )
        assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == sorted(
            p.name for p in (tmp_path / "ckpt").iterdir()
        )


# ---- one-line errors ------------------------------------------------------------------------------------


def test_export_refusals_are_one_line(seg_onnx, tmp_path, capsys):
    ckpt = write_checkpoint(seg_onnx[0], tmp_path / "seg.ckpt")
    cases = [
        ([f"output={tmp_path / 'model.txt'}"], "must end in .onnx (ONNX) or .pt2"),
        ([f"output={tmp_path / 'missing' / 'model.onnx'}"], "does not exist; create it first"),
        ([f"output={tmp_path}/"], "must end in .onnx"),
        ([f"output={tmp_path / 'm.pt2'}", "fp16=true"], "fp16=true is for .onnx files"),
        ([f"output={tmp_path / 'm.onnx'}", "ckpt=/nonexistent.ckpt"], "checkpoint not found"),
    ]
    for overrides, message in cases:
        overrides = (
            overrides if any(o.startswith("ckpt=") for o in overrides) else [f"ckpt={ckpt}", *overrides]
        )
        err = one_line_exit(lambda o=overrides: export_script.main(export_config(*o)), capsys)
        assert message in err, err
    model = tiny_model("tiny14", "seg_linear")
    model.cast_backbone(torch.bfloat16)
    with pytest.raises(export.ExportError, match="stored in torch.bfloat16"):
        export.to_onnx(model, tmp_path / "bf16.onnx")
    assert not any(tmp_path.glob("*.onnx"))


def write_onnx(path: Path, metadata: dict | str | None, dtype: int = onnx.TensorProto.FLOAT) -> Path:
    """A valid tiny graph (a 1×1 convolution) carrying `metadata` (a dict, raw text, or none)."""
    return crafted.valid_file(path, "" if metadata is None else metadata, dtype)


def test_crafted_onnx_files_are_refused_in_one_line(seg_onnx, images, tmp_path, capsys):
    good = export.load_onnx_model(seg_onnx[1]).metadata
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x01not a protobuf" * 10)
    cases = {
        "plain.onnx": (None, "no dense metadata in this ONNX file"),
        "huge.onnx": ("[" + " " * (2 << 20) + "]", "larger than 1048576 bytes"),
        "json.onnx": ("{not json", "not valid JSON"),
        "extra.onnx": ({**good, "_target_": "os.system"}, "exactly the fields"),
        "type.onnx": ({**good, "patch_size": "14"}, "patch_size has the wrong type"),
        "classes.onnx": ({**good, "num_classes": 10**9}, "num_classes between 1 and 4096"),
        "format.onnx": ({**good, "format": "dense export v999"}, "not a 'dense export v1' file"),
        "input.onnx": ({**good, "input": "uint8"}, "its metadata says uint8"),
        "output.onnx": ({**good, "seg_output": "probabilities"}, "seg_output must be one of logits, scores"),
        "palette_count.onnx": ({**good, "palette": [[1, 2, 3]]}, "palette must be 5 colours [r, g, b]"),
        "palette_256.onnx": ({**good, "palette": [[1, 2, 256]] * 5}, "palette must be 5 colours [r, g, b]"),
        "palette_bool.onnx": ({**good, "palette": [[True, 2, 3]] * 5}, "palette must be 5 colours [r, g, b]"),
        "palette_rg.onnx": ({**good, "palette": [[1, 2]] * 5}, "palette must be 5 colours [r, g, b]"),
        "palette_text.onnx": ({**good, "palette": "red"}, "palette has the wrong type"),
        "seg_mode.onnx": (
            {**good, "depth_mode": "relative"},
            "a segmentation model's metadata has no depth_mode",
        ),
        "garbage.onnx": (..., "ONNX Runtime cannot load it"),
    }
    for name, (metadata, message) in cases.items():
        path = tmp_path / name
        if metadata is not ...:
            write_onnx(path, metadata)
        overrides = [f"model={path}", f"input={images}", f"output={tmp_path / 'out'}"]
        err = one_line_exit(lambda o=overrides: predict.predict(predict_config(*o)), capsys)
        assert message in err and name in err, err
    assert not (tmp_path / "out").exists()


def test_files_from_before_the_palette_field_have_none(seg_onnx, tmp_path):
    older = {k: v for k, v in export.load_onnx_model(seg_onnx[1]).metadata.items() if k != "palette"}
    assert export.load_onnx_model(write_onnx(tmp_path / "older.onnx", older)).palette is None


def test_files_from_before_seg_output_hold_logits(seg_onnx, tmp_path):
    """A file written before the seg_output field: its segmentation outputs are logits (softmaxed)."""
    older = {k: v for k, v in export.load_onnx_model(seg_onnx[1]).metadata.items() if k != "seg_output"}
    model = export.load_onnx_model(write_onnx(tmp_path / "older.onnx", older))
    assert model.metadata["seg_output"] == "logits" and model.seg_output == "logits"


def test_predict_onnx_option_mistakes(seg_onnx, images, tmp_path, capsys):
    common = [f"input={images}", f"output={tmp_path / 'out'}"]
    uint8 = write_onnx(
        tmp_path / "uint8.onnx",
        {**export.load_onnx_model(seg_onnx[1]).metadata, "input": "uint8"},
        onnx.TensorProto.UINT8,
    )
    cases = [
        ([f"model={seg_onnx[1]}", f"ckpt={tmp_path / 'x.ckpt'}"], "not both"),
        ([f"model={tmp_path / 'model.pt2'}"], "runs .onnx files"),
        ([f"model={seg_onnx[1]}", "precision=bf16"], "leave precision=fp32"),
        ([f"model={uint8}", "scales=[1.0,2.0]"], "export with normalise=false"),
        ([f"model={tmp_path / 'missing.onnx'}"], "no such file"),
    ]
    for overrides, message in cases:
        err = one_line_exit(lambda o=overrides: predict.predict(predict_config(*o, *common)), capsys)
        assert message in err, err


def test_tensorrt_command_builds_a_shape_profile_from_our_input():
    """The GPU script's TensorRT step: trtexec gets the graph's input name with min/opt/max shapes."""
    from benchmarks.onnx import tensorrt_command

    command = tensorrt_command("/x/m.onnx", (1, 3, 224, 224), (16, 3, 480, 640), (16, 3, 640, 640))
    assert command[0] == "trtexec" and "--onnx=/x/m.onnx" in command and "--fp16" in command
    assert "--minShapes=images:1x3x224x224" in command and "--maxShapes=images:16x3x640x640" in command
    assert "--optShapes=images:16x3x480x640" in command and "--shapes=images:16x3x480x640" in command
    assert "--saveEngine=/x/m.plan" in command
