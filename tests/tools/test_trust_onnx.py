"""Trust, round 3 (issue 23), class 1: an ONNX file is data, bounded, checked and refused in one line.

- On load (dense.tools.export.check_graph, before ONNX Runtime sees the file): a graph export.py could not
  have written (control flow, operators outside dense.tools.export.ONNX_OPS or of another domain, functions,
  external data, another input or output than the metadata's) is refused, naming the file.
- At run time (predict.py model=FILE.onnx): a run past onnx_time_limit is stopped (RunOptions.terminate)
  and that image skipped, exit 3; ONNX Runtime's failures are one line per image (an allocation that
  fails takes the out-of-memory skip); outputs unlike the metadata are refused per image; depth is
  clamped to the metadata's range. No traceback, nothing partial, the record lists what was written.

The graphs are crafted here with onnx.helper (tests/_crafted_onnx.py): a few nodes each, milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from PIL import Image

from dense.cli import runner
from dense.cli.predict import outputs
from dense.cli.predict import run as predict
from dense.tools import export
from tests import _crafted_onnx as crafted
from tests._crafted_onnx import BOOL, FLOAT, constant, conv_to, depending_on, metadata, model_file, valid_file
from tests._fixtures_data import rgb
from tests._tiny_run import CONFIGS, predict_config

pytestmark = pytest.mark.trust  # the trust audit: `python -m pytest -m trust`

# ---- refused on load -----------------------------------------------------------------------------------


def _loop(path: Path) -> Path:
    """The issue's file: a valid Loop of 2^62 trips, the depth passed through it unchanged (ONNX Runtime
    loads it, and runs it until killed)."""
    value = helper.make_tensor_value_info
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["x_in"], ["x_out"]),
        ],
        "body",
        [value("i", onnx.TensorProto.INT64, []), value("cond_in", BOOL, []), value("x_in", FLOAT, None)],
        [value("cond_out", BOOL, []), value("x_out", FLOAT, None)],
    )
    nodes, weights = conv_to(1, output="main")
    loop = helper.make_node("Loop", ["trips", "cond", "main"], ["out"], body=body)
    return model_file(
        path, [*nodes, loop], [*weights, constant("trips", 2**62), constant("cond", True, np.bool_)]
    )


def _scan(path: Path) -> Path:
    """A valid Scan over the batch, its body an Identity."""
    value = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Identity", ["s_in"], ["s_out"])],
        "body",
        [value("s_in", FLOAT, None)],
        [value("s_out", FLOAT, None)],
    )
    nodes, weights = conv_to(1, output="main")
    scan = helper.make_node("Scan", ["main"], ["out"], body=body, num_scan_inputs=1)
    return model_file(path, [*nodes, scan], weights)


def _if(path: Path) -> Path:
    branch = helper.make_graph(
        [helper.make_node("Identity", ["main"], ["branch_out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("branch_out", FLOAT, None)],
    )
    nodes, weights = conv_to(1, output="main")
    choose = helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch)
    return model_file(path, [*nodes, choose], [*weights, constant("cond", True, np.bool_)])


def _with_op(op: str, domain: str = "", opsets=(("", 18),)):
    def write(path: Path) -> Path:
        nodes, weights = conv_to(1, output="main")
        extra = helper.make_node(op, ["main"], ["out"], domain=domain)
        return model_file(path, [*nodes, extra], weights, opsets=opsets)

    return write


def _function(path: Path) -> Path:
    """A local function (which could hide any operator) called from the graph."""
    body = onnx.helper.make_function(
        "my.domain", "Hide", ["x"], ["y"], [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_opsetid("", 18)],
    )  # fmt: skip
    nodes, weights = conv_to(1, output="main")
    call = helper.make_node("Hide", ["main"], ["out"], domain="my.domain")

    def add(model):
        model.functions.append(body)

    opsets = (("", 18), ("my.domain", 1))
    return model_file(path, [*nodes, call], weights, opsets=opsets, change=add)


def _external_weights(path: Path) -> Path:
    """Its weights 'stored' in another file: ONNX Runtime would read whatever the path names."""
    nodes, (weight,) = conv_to(1)
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../../../etc/passwd"), ("offset", "0"), ("length", "12")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return model_file(path, nodes, [weight])


def _shaped(**options):
    return lambda path: model_file(path, *conv_to(1), **options)


def _two_inputs(path: Path) -> Path:
    def add(model):
        model.graph.input.append(helper.make_tensor_value_info("more", FLOAT, crafted.ANY_SIZE))

    return model_file(path, *conv_to(1), change=add)


REFUSED_ON_LOAD = {
    "Loop of 2^62 trips": (_loop, "Loop"),
    "If": (_if, "If"),
    "Scan": (_scan, "Scan"),
    "an operator export.py never writes": (_with_op("ReduceMean"), "ReduceMean"),
    "another domain": (_with_op("Gelu", "com.microsoft", (("", 18), ("com.microsoft", 1))), "com.microsoft"),
    "another opset": (_shaped(opsets=(("", 17),)), "operator sets 'ai.onnx' 17"),
    "a local function": (_function, "its own functions"),
    "external weights": (_external_weights, "outside the graph"),
    "input of rank 3": (_shaped(input_dims=(3, "H", "W")), "input is declared 3×?×?"),
    "input of a fixed size": (_shaped(input_dims=(1, 3, 14, 14)), "input is declared 1×3×14×14"),
    "input of another type": (_shaped(input_type=onnx.TensorProto.INT32), "its input is int32"),
    "two inputs": (_two_inputs, "2 inputs"),
    "a bool output": (_shaped(output_type=BOOL), "output is declared bool"),
    "3-channel depth": (_shaped(output_dims=("B", 3, "H", "W")), "not float32 B×1×H×W"),
    "output of rank 2": (_shaped(output_dims=("H", "W")), "output is declared float32 ?×?"),
}


@pytest.mark.parametrize("case", REFUSED_ON_LOAD)
def test_a_graph_export_py_could_not_have_written_is_refused_on_load(tmp_path, case):
    write, words = REFUSED_ON_LOAD[case]
    path = write(tmp_path / "crafted.onnx")
    with pytest.raises(export.ExportError) as error:
        export.load_onnx_model(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and words in message, message


def test_a_graph_as_export_py_writes_it_is_accepted(tmp_path):
    """Control: the crafted graphs differ from an accepted one only in what each case names."""
    for task in ("depth", "segmentation"):
        model = export.load_onnx_model(valid_file(tmp_path / f"{task}.onnx", metadata(task)))
        assert model.task == task


@pytest.mark.slow
def test_the_allowed_operators_are_what_export_writes():
    """Re-derive ONNX_OPS: every registered head on both families, every tiny variant, uint8 input, fp16
    weights (17 exports, about 5 minutes on 2 cores)."""
    assert export.derive_onnx_ops() == export.ONNX_OPS


# ---- at run time: predict.py ---------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path) -> Path:
    """a.png 14×14 and b.png 15×14 (588 and 630 values: only the second splits into 5 rows)."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rgb(14, 14, seed=1)).save(folder / "a.png")
    Image.fromarray(rgb(15, 14, seed=2)).save(folder / "b.png")
    return folder


def run_predict(model: Path, images: Path, out: Path, capsys, *options: str) -> tuple[int, list[str]]:
    status = predict.predict(predict_config(f"model={model}", f"input={images}", f"output={out}", *options))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return status, [line for line in err.splitlines() if line.strip()]


def recorded(out: Path) -> set[str]:
    return set(json.loads((out / outputs.RECORD).read_text())["files"])


def _with_side(side_nodes, side_weights, side: str):
    """A depth graph: a 1×1 convolution, plus 0 × the sum of a side computation."""
    main, main_weights = conv_to(1, output="main")
    tail, tail_weights = depending_on(side)
    return [*side_nodes, *main, *tail], [*side_weights, *main_weights, *tail_weights]


def test_a_run_past_the_time_limit_is_stopped_named_exit_3(tmp_path, images, capsys):
    """A graph of 200 products of 900×900 matrices per image (seconds to minutes): stopped at onnx_time_limit."""
    nodes = [
        helper.make_node("Resize", ["images", "", "scale"], ["wide"]),
        helper.make_node("Transpose", ["wide"], ["wide.t"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["wide", "wide.t"], ["y0"]),  # square from here on
    ]
    for i in range(200):
        nodes.append(helper.make_node("MatMul", [f"y{i}", f"y{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Softmax", [f"m{i}"], [f"y{i + 1}"], axis=-1))
    nodes, weights = _with_side(nodes, [constant("scale", [1, 1, 64, 64], np.float32)], "y200")
    path = model_file(tmp_path / "slow.onnx", nodes, weights)
    status, lines = run_predict(path, images, tmp_path / "out", capsys, "onnx_time_limit=0.2", "batch_size=1")
    assert status == 3
    for name in ("a.png", "b.png"):
        (line,) = [line for line in lines if line.startswith(f"skipped {images / name}")]
        assert str(path) in line and "ran longer than 0.2 s per image" in line and "onnx_time_limit" in line
    assert not [p for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")]


def test_onnx_runtime_failures_are_one_line_per_image(tmp_path, images, capsys):
    """A Reshape into 5 rows fails at run time for a.png (588 values) and works for b.png (630)."""
    nodes, weights = _with_side(
        [helper.make_node("Reshape", ["images", "rows"], ["rows5"])], [constant("rows", [5, -1])], "rows5"
    )
    path = model_file(tmp_path / "reshape.onnx", nodes, weights)
    out = tmp_path / "out"
    status, lines = run_predict(path, images, out, capsys)
    assert status == 3
    (line,) = [line for line in lines if str(images / "a.png") in line and line.startswith("skipped")]
    assert str(path) in line and "ONNX Runtime failed on this input" in line and "Reshape" in line
    written = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert written and not any(name.startswith("a") for name in written)
    assert recorded(out) == written  # b's results, recorded


def test_an_allocation_failure_takes_the_out_of_memory_skip(tmp_path, images, capsys):
    """An Expand to 2^40 × 3 × H × W (13 TB) per image."""
    nodes, weights = _with_side(
        [helper.make_node("Expand", ["images", "huge"], ["huge.out"])],
        [constant("huge", [2**40, 3, 1, 1])],
        "huge.out",
    )
    path = model_file(tmp_path / "huge.onnx", nodes, weights)
    status, lines = run_predict(path, images, tmp_path / "out", capsys, "batch_size=1")
    assert status == 3
    assert len([line for line in lines if line.startswith("skipped") and "out of memory" in line]) == 2


@pytest.mark.parametrize(
    "case, nodes, weights, words",
    [
        ("3 channels", [helper.make_node("Identity", ["images"], ["out"])], [], "float32 1×3×"),
        (
            "1×1",
            [helper.make_node("Slice", ["images", "start", "end"], ["out"])],
            [constant("start", [0, 0, 0, 0]), constant("end", [1, 1, 1, 1])],
            "float32 1×1×1×1",
        ),
    ],
)
def test_outputs_unlike_the_metadata_are_refused_per_image(
    tmp_path, images, capsys, case, nodes, weights, words
):
    """The graph declares B×1×H×W (as export.py does) but returns something else."""
    path = model_file(tmp_path / "lying.onnx", nodes, weights)
    status, lines = run_predict(path, images, tmp_path / "out", capsys, "batch_size=1")
    assert status == 3
    skipped = [line for line in lines if line.startswith("skipped /")]
    assert len(skipped) == 2 and all(words in line and "not float32 1×1×" in line for line in skipped), lines


@pytest.mark.parametrize("value, expected", [(1e30, 10.0), (-1e30, 1e-3)])
def test_depth_is_clamped_to_the_metadata_range(tmp_path, images, capsys, value, expected):
    main, weights = conv_to(1, output="main")
    nodes = [
        *main,
        helper.make_node("Mul", ["main", "zero"], ["flat"]),
        helper.make_node("Add", ["flat", "far"], ["out"]),
    ]
    weights += [constant("zero", 0.0, np.float32), constant("far", value, np.float32)]
    path = model_file(tmp_path / "far.onnx", nodes, weights)
    status, _ = run_predict(path, images, tmp_path / "out", capsys)
    assert status == 0
    depth = np.load(tmp_path / "out" / "a.npy")
    assert depth.dtype == np.float32 and np.all(depth == np.float32(expected))


def test_onnx_time_limit_must_be_positive(tmp_path, images, capsys):
    path = valid_file(tmp_path / "m.onnx")
    # Not a number at all: refused by predict.py's schema (PredictConfig) before anything loads.
    with pytest.raises(SystemExit) as stop:
        runner.check_keys(CONFIGS, "predict", ["onnx_time_limit=abc"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.startswith(
        "error: onnx_time_limit=abc: onnx_time_limit takes a number"
    )
    for limit in ("0", "-1"):
        with pytest.raises(SystemExit) as stop:
            predict.predict(
                predict_config(
                    f"model={path}",
                    f"input={images}",
                    f"output={tmp_path / 'out'}",
                    f"onnx_time_limit={limit}",
                )
            )
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and err.startswith("error: onnx_time_limit=") and "\n" not in err


def test_a_depth_mode_other_than_metric_or_relative_is_refused(tmp_path):
    path = valid_file(tmp_path / "mode.onnx", metadata(depth_mode="absolute"))
    with pytest.raises(export.ExportError, match="depth_mode must be one of metric, relative") as refused:
        export.load_onnx_model(str(path))
    assert "\n" not in str(refused.value)
    # A file from before the field: metric depth, clamped as before.
    assert export.load_onnx_model(str(valid_file(tmp_path / "old.onnx"))).depth_mode == "metric"
