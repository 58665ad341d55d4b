"""Tiny ONNX graphs crafted for the tests (onnx.helper): the files someone else could hand predict.py.

Every graph goes from the input `images` to the output `out` and carries our metadata entry (or raw
text, or none). `model_file` writes one; the node helpers build the usual pieces: a valid 1×1
convolution to the metadata's channels, and a side computation the output depends on (so ONNX Runtime
cannot drop it) that fails, allocates or takes long at run time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dense.tools import export

FLOAT, UINT8, BOOL = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.BOOL
ANY_SIZE = ("B", 3, "H", "W")


def metadata(task: str = "depth", **changes) -> dict:
    """Metadata as export.py writes it, for a depth model (0.001-10 m) or a 3-class segmentation one."""
    depth = task == "depth"
    return {
        "format": export.FORMAT,
        "backbone": "tiny14",
        "head": "crafted",
        "task": task,
        "patch_size": 14,
        "min_depth": 1e-3 if depth else None,
        "max_depth": 10.0 if depth else None,
        "num_classes": None if depth else 3,
        "class_names": None,
        "input": "float32",
        "mean": list(export.IMAGENET_MEAN),
        "std": list(export.IMAGENET_STD),
        "weights": "float32",
        **changes,
    }


def channels_of(meta) -> int:
    """The output channels `meta` asks for: num_classes for a segmentation model (when it is a number
    export.py allows: crafted metadata may claim 10^9), else 1."""
    classes = meta.get("num_classes") if isinstance(meta, dict) and meta.get("task") == "segmentation" else 1
    return classes if isinstance(classes, int) and 1 <= classes <= export.MAX_CLASSES else 1


def constant(name: str, values, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def conv_to(channels: int, source: str = "images", output: str = "out") -> tuple[list, list]:
    """(nodes, initialisers): a 1×1 convolution of `source` (float B×3×H×W) to `channels` maps."""
    weight = constant(f"{output}.w", np.full((channels, 3, 1, 1), 1 / 3), np.float32)
    return [helper.make_node("Conv", [source, weight.name], [output])], [weight]


def depending_on(side: str, main: str = "main", output: str = "out") -> tuple[list, list]:
    """`output` = `main` + 0 × sum(`side`): the output depends on the side computation."""
    zero = constant("zero", 0.0, np.float32)
    nodes = [
        helper.make_node("ReduceSum", [side], ["side.sum"], keepdims=0),
        helper.make_node("Mul", ["side.sum", zero.name], ["side.zero"]),
        helper.make_node("Add", [main, "side.zero"], [output]),
    ]
    return nodes, [zero]


def model_file(
    path: Path,
    nodes: Sequence,
    initializers: Sequence = (),
    *,
    meta: dict | str | None = None,
    input_type: int = FLOAT,
    input_dims: Sequence | None = ANY_SIZE,
    output_type: int = FLOAT,
    output_dims: Sequence | None = ...,
    opsets: Sequence[tuple[str, int]] = (("", 18),),
    change: Callable[[onnx.ModelProto], None] | None = None,
) -> Path:
    """Write the graph of `nodes` (input `images`, output `out`) with `meta`: a dict (default:
    metadata()), raw text, or "" for no metadata entry. The output is declared B×C×H×W with the
    metadata's channels unless `output_dims` says otherwise; `change` edits the model before it is saved."""
    meta = metadata() if meta is None else meta
    if output_dims is ...:
        output_dims = ("B", channels_of(meta), "H", "W")
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        list(nodes),
        "crafted",
        [value("images", input_type, input_dims)],
        [value("out", output_type, output_dims)],
        list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    if meta != "":
        entry = model.metadata_props.add()
        entry.key, entry.value = "dense", meta if isinstance(meta, str) else json.dumps(meta)
    if change is not None:
        change(model)
    onnx.save_model(model, path)
    return path


def valid_file(path: Path, meta: dict | str | None = None, input_type: int = FLOAT) -> Path:
    """A graph export.py could have written for `meta`: a 1×1 convolution to its channels (a uint8 input
    cast to float first)."""
    meta = metadata() if meta is None else meta
    source, pre = "images", []
    if input_type == UINT8:
        source, pre = "images.float", [helper.make_node("Cast", ["images"], ["images.float"], to=FLOAT)]
    nodes, weights = conv_to(channels_of(meta), source)
    return model_file(path, pre + nodes, weights, meta=meta, input_type=input_type)
