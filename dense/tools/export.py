"""Export a DenseModel: one ONNX graph (ONNX Runtime, TensorRT) or one torch.export program (.pt2).

    to_onnx(model, "model.onnx")            # dynamic batch, height and width; metadata for predict.py
    to_torch_export(model, "model.pt2")     # the same graph as an ExportedProgram (torch.export.load)
    load_onnx_model("model.onnx")           # an ONNX file as a DenseModel: predict.py's model=FILE.onnx

The graph is `DenseModel.forward` itself, traced once by torch.export with every size dynamic: pad to
the patch multiple, the position encoding for the actual grid, backbone, head, clamp, resize, crop.
Python branches on sizes (a skipped pad, a resize to the same size) are taken as at the example input
and are no-ops at the other sizes, so the example is chosen to take the general side of each: batch 2,
an odd grid (DPT's skip resize), sides that are not patch multiples with a pad on both sides.

One step is swapped while tracing: DINOv2's learned position embedding. F.interpolate takes its scale
factor ((h + 0.1) / 37, the plain models' rule) as a Python float, which torch.export freezes to the
example's value, so every other size would get a wrong grid. `position_encoding_by_matrices` computes
the same bicubic resampling (both of upstream's rules) as two weight matrices built from the traced grid
size; the tests check it against F.interpolate. DINOv3's RoPE needs no swap.

An ONNX file is data: predict.py reads only our metadata entry, bounded and type-checked, and never
turns a string from it into code (the backbone and head names are only shown). Its graph is checked
before ONNX Runtime sees it (check_graph: only the operators export.py writes, ONNX_OPS; no control
flow, functions or external data; the metadata's input and output), and every run is bounded in time
and its output checked against the metadata (OnnxDenseModel).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from dense.core.errors import ExportError, OnnxRunError, shown
from dense.core.io import atomic_path
from dense.core.ops import imagenet_normalised
from dense.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dense.model import DEPTH_MODES, DenseModel, InferenceModes, build_model
from dense.multi_head import MultiHeadModel, check_head_names

METADATA_KEY = "dense"
FORMAT = "dense export v1"
METADATA_MAX_BYTES = 1 << 20  # 4096 class names of 200 characters fit with room to spare
MAX_CLASSES = 4096
MAX_NAME_CHARS = 200
FP16_MIN_NUMEL = (
    16  # smaller tensors (the normalisation's mean and std, scalars) stay float32: they save nothing
)
OPSET = 18  # Resize with antialias, and what TensorRT 10 parses
# What a segmentation graph outputs (DenseModel.seg_output): logits (softmaxed before views are
# averaged) or class scores (seg_mask, averaged as they are).
SEG_OUTPUTS = ("logits", "scores")
# Batch 2 and an odd grid of non-multiples of the patch: the general side of every size branch.
EXAMPLE_BATCH = 2
EXAMPLE_GRID = (3, 5)


# ---- the graph --------------------------------------------------------------------------------------


class ExportGraph(nn.Module):
    """DenseModel.forward, optionally behind the ImageNet normalisation of uint8 images.

    uint8_input: the graph takes uint8 B×3×H×W RGB and normalises it as dense.data.transforms does
    ((x / 255 − mean) / std); otherwise it takes the normalised float32 images DenseModel takes.
    """

    def __init__(self, model: DenseModel, uint8_input: bool):
        super().__init__()
        self.model = model
        self.uint8_input = uint8_input
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.uint8_input:
            images = (images.float() / 255.0 - self.mean) / self.std
        out = self.model(images)
        # A MultiHeadModel's {head: output}: one graph output per head, in the model's order (named by
        # onnx_proto).
        return tuple(out.values()) if isinstance(out, dict) else out


def example_input(model: DenseModel, uint8_input: bool) -> torch.Tensor:
    p = model.patch_size
    height, width = EXAMPLE_GRID[0] * p - p // 2, EXAMPLE_GRID[1] * p - 3
    if uint8_input:
        return torch.randint(0, 256, (EXAMPLE_BATCH, 3, height, width), dtype=torch.uint8)
    return torch.randn(EXAMPLE_BATCH, 3, height, width)


def _keys_cubic(x: torch.Tensor, a: float) -> torch.Tensor:
    """Keys' cubic convolution kernel at distances x (zero beyond 2)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def bicubic_matrix(
    positions: torch.Tensor, in_len: int, in_per_out: torch.Tensor, antialias: bool
) -> torch.Tensor:
    """len(positions) × in_len matrix W such that W @ v is F.interpolate's 1-D bicubic resampling of v
    (align_corners=False) at output indices `positions`, `in_per_out` input pixels per output pixel.

    Plain (aten upsample_bicubic2d): source = (i + 0.5) · in_per_out − 0.5, four taps around it,
    clamped to the edge, Keys a = −0.75. Antialias (aten _upsample_bicubic2d_aa, PIL's rule): taps
    within 2 · max(in_per_out, 1) of the centre (i + 0.5) · in_per_out, Keys a = −0.5 on the distance
    shrunk by max(in_per_out, 1), taps outside the input dropped and each row normalised to sum 1.
    """
    columns = torch.arange(in_len, dtype=torch.float32)
    if antialias:
        stretch = torch.clamp(in_per_out, min=1.0)
        centre = (positions + 0.5) * in_per_out
        weights = _keys_cubic((columns[None, :] + 0.5 - centre[:, None]) / stretch, a=-0.5)
        return weights / weights.sum(dim=1, keepdim=True)
    source = (positions + 0.5) * in_per_out - 0.5
    base = torch.floor(source)
    fraction = source - base
    matrix = torch.zeros(positions.shape[0], in_len, dtype=torch.float32)
    for tap in (-1, 0, 1, 2):
        index = torch.clamp(base + tap, 0, in_len - 1)
        matrix = matrix + _keys_cubic(fraction - tap, a=-0.75)[:, None] * (index[:, None] == columns[None, :])
    return matrix


def position_encoding_by_matrices(backbone: nn.Module, h: int, w: int) -> torch.Tensor:
    """What DinoVisionTransformer.interpolate_pos_encoding returns for an h×w grid, with the bicubic
    resampling written as matrices of the grid size, so a traced h and w stay symbolic."""
    M = backbone.pos_grid
    pos_embed = backbone.pos_embed.float()
    cls_pos, grid = pos_embed[:, :1], pos_embed[0, 1:].reshape(M, M, -1)
    rows = torch.arange(h, dtype=torch.float32)
    cols = torch.arange(w, dtype=torch.float32)
    # The grid sizes as tensors: comparisons on them stay in the graph instead of freezing a branch.
    h_t, w_t = rows[-1] + 1, cols[-1] + 1
    offset = float(backbone.interpolate_offset)
    if offset:
        # Upstream skips the interpolation at 37×37 (its own grid), and only there.
        native = (h_t == M) & (w_t == M)
        h_ratio = torch.where(native, 1.0, M / (h_t + offset))
        w_ratio = torch.where(native, 1.0, M / (w_t + offset))
    else:
        h_ratio, w_ratio = M / h_t, M / w_t
    antialias = bool(backbone.interpolate_antialias)
    rows_matrix = bicubic_matrix(rows, M, h_ratio, antialias)
    cols_matrix = bicubic_matrix(cols, M, w_ratio, antialias)
    patch_pos = torch.einsum("ym,mnd,xn->yxd", rows_matrix, grid, cols_matrix).reshape(1, -1, grid.shape[-1])
    return torch.cat((cls_pos, patch_pos), dim=1).to(backbone.pos_embed.dtype)


@contextlib.contextmanager
def _traceable_position_encoding(model: DenseModel) -> Iterator[None]:
    """While tracing, a DINOv2 backbone computes its position encoding by matrices (module docstring)."""
    backbone = model.backbone
    learned = isinstance(getattr(backbone, "pos_embed", None), torch.Tensor)
    if learned:
        backbone.interpolate_pos_encoding = lambda h, w: position_encoding_by_matrices(backbone, h, w)
    try:
        yield
    finally:
        if learned:
            del backbone.interpolate_pos_encoding


def check_exportable(model: DenseModel | MultiHeadModel) -> None:
    if isinstance(model, MultiHeadModel):
        for part in model.parts.values():
            check_exportable(part)
        return
    if not isinstance(model, DenseModel):
        raise ExportError(
            f"only a DenseModel can be exported (build_model or a train.py checkpoint), got {type(model).__name__}"
        )
    if model.backbone_dtype != torch.float32:
        raise ExportError(
            f"the backbone's weights are stored in {model.backbone_dtype} (cast_backbone, precision=bf16): "
            "export the float32 model (fp16=true stores the file's weights in half precision)"
        )
    if model._compiled_tokens is not None:
        raise ExportError("the model was torch.compile'd (compile=true): export the model without compile")
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ExportError(
            f"export runs on the CPU: move the model there first (model.cpu()), it is on {sorted(devices)}"
        )


def export_program(model: DenseModel, uint8_input: bool = False) -> torch.export.ExportedProgram:
    """The torch.export program of ExportGraph(model) with dynamic batch, height and width."""
    check_exportable(model)
    graph = ExportGraph(model.eval(), uint8_input).eval()
    auto = torch.export.Dim.AUTO
    with _traceable_position_encoding(model), torch.no_grad():
        try:
            program = torch.export.export(
                graph,
                (example_input(model, uint8_input),),
                dynamic_shapes={"images": {0: auto, 2: auto, 3: auto}},
                strict=False,
                prefer_deferred_runtime_asserts_over_guards=True,
            )
        except Exception as error:  # torch.export's errors are pages long; the first line says what
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            name = model.config.get("head", type(model.head).__name__)
            raise ExportError(
                f"torch.export cannot trace {model.config.get('backbone', 'this backbone')} + {name} with "
                f"dynamic sizes: {type(error).__name__}: {first[:300]}"
            ) from error
    return _without_size_asserts(program)


def _without_size_asserts(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """The program without its runtime size assertions, as torch.onnx leaves them out of ONNX graphs.

    torch.export records each size branch it took at the example (a pad that was not zero, a DPT skip
    map that needed resizing, a grid above 1) as an assertion; the other side of each is the same
    computation (a zero pad, a resize to the same size), so the assertions would only refuse sizes the
    graph computes correctly. The tests check the program at those sizes against the model.
    """
    graph = program.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten._assert_scalar.default:
            graph.erase_node(node)
    graph.eliminate_dead_code()
    program.graph_module.recompile()
    return program


def check_output(path: str | os.PathLike, suffix: str) -> str:
    path = os.fspath(path)
    if not path.endswith(suffix):
        raise ExportError(f"output={path} must end in {suffix}")
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise ExportError(f"output={path} is a folder; give a file name ending in {suffix}")
    if not os.path.isdir(directory):
        raise ExportError(f"output={path}: the folder {directory} does not exist; create it first")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ExportError(f"output={path}: the folder {directory} is not writable; choose another output")
    return path


def to_torch_export(model: DenseModel, path: str | os.PathLike, *, uint8_input: bool = False) -> str:
    """Save the dynamic-shape ExportedProgram of `model` as a .pt2 file (torch.export.load reads it)."""
    path = check_output(path, ".pt2")
    program = export_program(model, uint8_input)
    with atomic_path(path) as tmp:
        torch.export.save(program, tmp)
    return path


# ---- ONNX ---------------------------------------------------------------------------------------------


def model_metadata(
    model: DenseModel,
    *,
    uint8_input: bool,
    fp16_weights: bool,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
) -> dict:
    """What predict.py needs to run the file, as plain values (the ONNX file's `dense` metadata entry).
    class_names, palette: a segmentation model's, as its checkpoint stores them (one per class)."""
    num_classes = None
    if model.task == "segmentation":
        num_classes = int(model.num_classes or model.config["num_classes"])
        if class_names is not None and len(class_names) != num_classes:
            class_names = None
        if palette is not None and len(palette) != num_classes:
            palette = None
    else:
        class_names = palette = None
    return {
        "format": FORMAT,
        "backbone": str(model.config.get("backbone", "")),
        "head": str(model.config.get("head", "")),
        "task": model.task,
        "patch_size": int(model.patch_size),
        # relative: the output is a disparity up to scale and shift (no unit, never clamped)
        "depth_mode": model.depth_mode if model.task == "depth" else None,
        "min_depth": None if model.task != "depth" else float(model.min_depth),
        "max_depth": None if model.task != "depth" else float(model.max_depth),
        "num_classes": num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "palette": [[int(v) for v in colour] for colour in palette] if palette is not None else None,
        "seg_output": model.seg_output if model.task == "segmentation" else None,
        "input": "uint8" if uint8_input else "float32",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "weights": "float16" if fp16_weights else "float32",
    }


MULTI_FORMAT = "dense export multi-head v1"


def multi_metadata(model: MultiHeadModel, *, class_names=None, palette=None, **options) -> dict:
    """A multi-head file's metadata: {"format": MULTI_FORMAT, "outputs": the graph's output names
    (the heads, in order), "heads": {head: model_metadata of that head}}."""
    class_names, palette = class_names or {}, palette or {}
    return {
        "format": MULTI_FORMAT,
        "outputs": list(model.names),
        "heads": {
            name: model_metadata(
                part, class_names=class_names.get(name), palette=palette.get(name), **options
            )
            for name, part in model.parts.items()
        },
    }


def check_multi_metadata(metadata: dict, where: str) -> dict:
    """A multi-head file's metadata as multi_metadata writes it (each head's as check_metadata)."""
    outputs = metadata.get("outputs") if isinstance(metadata, dict) else None
    entries = metadata.get("heads") if isinstance(metadata, dict) else None
    if (
        set(metadata) != {"format", "outputs", "heads"}
        or metadata["format"] != MULTI_FORMAT
        or not isinstance(outputs, list)
        or not isinstance(entries, dict)
        or list(entries) != outputs
    ):
        raise ExportError(
            f"{where}: its multi-head metadata is not what export.py writes; export the model again"
        )
    try:
        check_head_names(outputs, f"{where}: its output names")
    except ValueError as error:
        raise ExportError(str(error)) from None
    for entry in entries.values():
        check_metadata(entry, where)
    return metadata


def _store_weights_in_fp16(onnx_model) -> None:
    """Float32 weights (of 16 values or more) stored as float16, each cast back to float32 where the graph reads it: a file
    half the size, computed in float32 (ONNX Runtime's CPU kernels are float32 kernels)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx_model.graph
    casts = []
    for initializer in graph.initializer:
        if initializer.data_type != onnx.TensorProto.FLOAT or math.prod(initializer.dims) < FP16_MIN_NUMEL:
            continue
        name = initializer.name
        half = numpy_helper.from_array(numpy_helper.to_array(initializer).astype(np.float16), f"{name}.fp16")
        initializer.CopyFrom(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [name], to=onnx.TensorProto.FLOAT))
    for node in reversed(casts):
        graph.node.insert(0, node)


def onnx_proto(model: DenseModel, *, uint8_input: bool = False, fp16_weights: bool = False):
    """The ONNX ModelProto of `model` as to_onnx writes it, without the metadata entry."""
    program = export_program(model, uint8_input)
    # A MultiHeadModel's outputs are named by its heads ("depth", "seg"); a DenseModel's keep torch's name.
    names = {"output_names": model.names} if isinstance(model, MultiHeadModel) else {}
    try:
        onnx_program = torch.onnx.export(
            program, dynamo=True, opset_version=OPSET, optimize=False, verbose=False, **names
        )
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(
            f"torch.onnx cannot convert the traced model: {type(error).__name__}: {first[:300]}"
        ) from error
    onnx_model = onnx_program.model_proto
    if fp16_weights:
        _store_weights_in_fp16(onnx_model)
    return onnx_model


def to_onnx(
    model: DenseModel,
    path: str | os.PathLike,
    *,
    uint8_input: bool = False,
    fp16_weights: bool = False,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
) -> str:
    """Write `model` as one ONNX graph with dynamic batch, height and width, and our metadata.

    uint8_input: the graph normalises uint8 RGB itself; fp16_weights: weights stored in float16
    (computed in float32); class_names, palette: stored for predict.py's legend and colours
    (segmentation; a multi-head model: {head: ...}).
    The file is self-contained (weights inside): the 2 GB protobuf limit holds up to ViT-L in float32
    and ViT-g in float16.
    """
    import onnx

    path = check_output(path, ".onnx")
    options = dict(
        uint8_input=uint8_input, fp16_weights=fp16_weights, class_names=class_names, palette=palette
    )
    if isinstance(model, MultiHeadModel):  # class_names, palette: {head: ...}
        metadata = multi_metadata(model, **options)
        check_multi_metadata(metadata, path)
    else:
        metadata = model_metadata(model, **options)
        check_metadata(metadata, path)
    onnx_model = onnx_proto(model, uint8_input=uint8_input, fp16_weights=fp16_weights)
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    if onnx_model.ByteSize() >= 2**31:
        raise ExportError(
            f"{path}: the weights do not fit one ONNX file (2 GB protobuf limit): export with fp16=true"
        )
    with atomic_path(path) as tmp:
        onnx.save_model(onnx_model, tmp)
    return path


# ---- the operators export.py writes --------------------------------------------------------------------

# Every operator export.py's graphs hold (domain ai.onnx, opset 18, no local functions), derived with
# derive_onnx_ops: every registered head on a tiny backbone of each family, every tiny variant, float
# and uint8 input, float32 and float16 weights. predict.py refuses a file with any other operator
# (control flow such as Loop, If or Scan, another domain): it was not written by export.py.
# tests/tools/test_trust_onnx.py checks the graphs the suite exports against it; `pytest -m slow` re-derives it
# (17 exports, 5 min on 2 cores; torch 2.14.1, onnx 1.23).
ONNX_OPS = frozenset(
    """
    Abs Add And BatchNormalization Cast CastLike Clip Concat Constant Conv ConvTranspose Cos Div
    Einsum Equal Erf Expand Floor Gather Gemm Identity LayerNormalization Less LessOrEqual MatMul
    Max Min Mod Mul Neg Pad Range Reciprocal ReduceSum Relu Reshape Resize SequenceAt Shape Sigmoid
    Sin Slice Softmax SplitToSequence Sqrt Squeeze Sub Tile Transpose Unsqueeze Where
    """.split()
)


def graph_operators(onnx_model) -> set[str]:
    """The operators of a graph's nodes: `Name` for the default domain (ai.onnx), `domain:Name` for others."""
    return {
        node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
        for node in onnx_model.graph.node
    }


def derivation_cases() -> list[tuple[str, str, bool]]:
    """(backbone, head, uint8 input) of derive_onnx_ops: every registered head on tiny14 (DINOv2) and
    tiny16 (DINOv3), every other tiny variant with one head, and uint8 input on both families."""
    from dense.backbones import BACKBONES, list_backbones
    from heads import list_heads

    families = ("tiny14", "tiny16")
    cases = [(backbone, head, False) for backbone in families for head in list_heads()]
    others = [n for n in list_backbones() if BACKBONES.get(n).test_only and n not in families]
    cases += [(backbone, "depth_linear", False) for backbone in others]
    cases += [(backbone, "depth_linear", True) for backbone in families]
    return cases


def derive_onnx_ops(cases: Sequence[tuple[str, str, bool]] | None = None) -> set[str]:
    """The operators of the graphs export.py writes for `cases` (derivation_cases()), each with float32
    and with float16 weights. Slow: one export (10-30 s of CPU) per case."""
    import onnx

    from heads import get_head_spec

    found: set[str] = set()
    for backbone, head, uint8_input in cases if cases is not None else derivation_cases():
        torch.manual_seed(0)
        options = {"num_classes": 3} if get_head_spec(head).task == "segmentation" else {}
        proto = onnx_proto(build_model(backbone, head, **options).eval(), uint8_input=uint8_input)
        found |= graph_operators(proto)
        half = onnx.ModelProto()
        half.CopyFrom(proto)
        _store_weights_in_fp16(half)
        found |= graph_operators(half)
    return found


# ---- reading our metadata (a file is data) ---------------------------------------------------------------

_FIELDS = {
    "format": str,
    "backbone": str,
    "head": str,
    "task": str,
    "patch_size": int,
    "depth_mode": (str, type(None)),
    "min_depth": (float, type(None)),
    "max_depth": (float, type(None)),
    "num_classes": (int, type(None)),
    "class_names": (list, type(None)),
    "palette": (list, type(None)),
    "seg_output": (str, type(None)),
    "input": str,
    "mean": list,
    "std": list,
    "weights": str,
}


def check_metadata(metadata: dict, where: str) -> dict:
    """`metadata` as we write it, or a one-line ExportError naming `where` and what is wrong."""

    def refuse(reason: str) -> ExportError:
        return ExportError(f"{where}: {reason}; export the model again with export.py")

    # Fields that older files lack, with what they meant then: files written before seg_mask have no
    # seg_output (their segmentation outputs are logits), before the palette field no palette, before
    # depth_mode metric depth (relative models could not be exported).
    if isinstance(metadata, dict) and set(_FIELDS) - set(metadata) <= {"seg_output", "palette", "depth_mode"}:
        metadata = {
            "seg_output": "logits" if metadata.get("task") == "segmentation" else None,
            "palette": None,
            "depth_mode": "metric" if metadata.get("task") == "depth" else None,
            **metadata,
        }
    if not isinstance(metadata, dict) or set(metadata) != set(_FIELDS):
        raise refuse("its dense metadata does not hold exactly the fields export.py writes")
    for key, kind in _FIELDS.items():
        value = metadata[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise refuse(f"metadata field {key} has the wrong type")
        if isinstance(value, str) and len(value) > MAX_NAME_CHARS:
            raise refuse(f"metadata field {key} is longer than {MAX_NAME_CHARS} characters")
    if metadata["format"] != FORMAT:
        raise refuse(f"it is not a {FORMAT!r} file")
    if metadata["task"] not in ("depth", "segmentation") or metadata["input"] not in ("uint8", "float32"):
        raise refuse("its metadata names an unknown task or input")
    for key in ("mean", "std"):
        values = metadata[key]
        if len(values) != 3 or not all(
            isinstance(v, float) and math.isfinite(v) and 0 < v < 1 for v in values
        ):
            raise refuse(f"metadata field {key} is not three numbers between 0 and 1")
    if metadata["task"] == "depth":
        if metadata["depth_mode"] not in DEPTH_MODES:
            raise refuse(f"metadata field depth_mode must be one of {', '.join(DEPTH_MODES)}")
        low, high = metadata["min_depth"], metadata["max_depth"]
        if (
            low is None
            or high is None
            or not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high)
        ):
            raise refuse("a depth model needs 0 ≤ min_depth < max_depth in its metadata")
    else:
        if metadata["depth_mode"] is not None:
            raise refuse("a segmentation model's metadata has no depth_mode")
        count, names = metadata["num_classes"], metadata["class_names"]
        if metadata["seg_output"] not in SEG_OUTPUTS:
            raise refuse(f"metadata field seg_output must be one of {', '.join(SEG_OUTPUTS)}")
        if count is None or not 1 <= count <= MAX_CLASSES:
            raise refuse(f"a segmentation model needs num_classes between 1 and {MAX_CLASSES}")
        if names is not None and (
            len(names) != count
            or not all(isinstance(n, str) and len(n) <= MAX_NAME_CHARS and n.isprintable() for n in names)
        ):
            raise refuse(
                f"class_names must be {count} printable names of at most {MAX_NAME_CHARS} characters"
            )
        colours = metadata["palette"]
        if colours is not None and (
            len(colours) != count
            or not all(
                isinstance(c, list)
                and len(c) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
                for c in colours
            )
        ):
            raise refuse(f"palette must be {count} colours [r, g, b] of integers 0-255")
    if metadata["task"] == "depth" and metadata["palette"] is not None:
        raise refuse("a depth model's metadata has no palette")
    return metadata


def read_metadata(custom_metadata: dict, where: str) -> dict:
    """Our metadata from an ONNX file's metadata map (as onnxruntime returns it), checked."""
    text = custom_metadata.get(METADATA_KEY) if isinstance(custom_metadata, dict) else None
    if not isinstance(text, str):
        raise ExportError(f"{where}: no dense metadata in this ONNX file; export the model with export.py")
    if len(text.encode()) > METADATA_MAX_BYTES:
        raise ExportError(
            f"{where}: its dense metadata is larger than {METADATA_MAX_BYTES} bytes; not a file of ours"
        )
    try:
        metadata = json.loads(text)
    except (ValueError, RecursionError):
        raise ExportError(f"{where}: its dense metadata is not valid JSON; export the model again") from None
    if isinstance(metadata, dict) and metadata.get("format") == MULTI_FORMAT:
        check_multi_metadata(metadata, where)
        raise ExportError(
            f"{where} is a multi-head file (outputs {', '.join(metadata['outputs'])}): predict.py runs single-head "
            "files; run the checkpoint instead (predict.py ckpt=...), or read the named outputs with onnxruntime"
        )
    return check_metadata(metadata, where)


# ---- checking an ONNX file's graph (a file is data) ---------------------------------------------------------


def _declared(value_info) -> tuple[str, list[int | None] | None]:
    """(element type, dims: a number, or None for a dynamic one; None when no rank is declared) that a
    graph declares for an input or output."""
    import onnx

    if value_info.type.WhichOneof("value") != "tensor_type":
        return "no tensor", None
    tensor = value_info.type.tensor_type
    kind = "unknown"
    with contextlib.suppress(KeyError, ValueError, TypeError):
        kind = str(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    if not tensor.HasField("shape"):
        return kind, None
    return kind, [d.dim_value if d.WhichOneof("value") == "dim_value" else None for d in tensor.shape.dim]


def _any_size(dims: list[int | None] | None, channels: int) -> bool:
    """Declared B×channels×H×W with B, H and W dynamic, as export.py declares its input and output."""
    return dims is not None and len(dims) == 4 and dims[1] == channels and not any(dims[i] for i in (0, 2, 3))


def _dims(dims: list[int | None] | None) -> str:
    if dims is None:
        return "of no known rank"
    return "×".join("?" if d is None else str(d) for d in dims) if dims else "0-d"


def check_graph(onnx_model, metadata: dict, where: str) -> None:
    """Refuse, in one line naming the file, a graph export.py could not have written: an operator outside
    ONNX_OPS or of another domain (control flow such as Loop, If, Scan), a subgraph, a local function,
    weights in other files (a path the file names is never followed), another input than one
    B×3×H×W tensor of the metadata's type, another output than one float32 B×C×H×W with C = 1 (depth)
    or num_classes (segmentation); B, H and W dynamic, as export.py writes them."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    def refuse(reason: str) -> ExportError:
        return ExportError(f"model={where}: {reason}, which export.py never writes; export the model again")

    graph = onnx_model.graph
    if onnx_model.functions:
        raise refuse("it defines its own functions")
    imports = {(o.domain or "ai.onnx", o.version) for o in onnx_model.opset_import}
    if imports != {("ai.onnx", OPSET)}:
        listed = ", ".join(f"{shown(d, 40)} {v}" for d, v in sorted(imports)[:3])
        raise refuse(f"it imports the operator sets {listed} (export.py: ai.onnx {OPSET} alone)")
    unknown = sorted(graph_operators(onnx_model) - ONNX_OPS)
    if unknown:
        listed = ", ".join(shown(name, 40) for name in unknown[:3])
        raise refuse(f"it uses the operator(s) {listed}{' …' if len(unknown) > 3 else ''}")
    subgraphs = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    if any(a.type in subgraphs or a.HasField("g") or a.graphs for node in graph.node for a in node.attribute):
        raise refuse("a node holds a subgraph")
    tensors = [*graph.initializer]
    tensors += [a.t for node in graph.node for a in node.attribute if a.HasField("t")]
    tensors += [t for node in graph.node for a in node.attribute for t in a.tensors]
    if graph.sparse_initializer or any(uses_external_data(t) for t in tensors):
        raise refuse("it keeps weights outside the graph (external data or sparse initialisers)")

    weights = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise refuse(f"it has {len(inputs)} inputs and {len(graph.output)} outputs (export.py: one each)")
    kind, dims = _declared(inputs[0])
    if kind != metadata["input"]:  # "uint8" or "float32", as numpy names them
        raise ExportError(
            f"model={where}: its input is {kind}, its metadata says {metadata['input']}; export the model again"
        )
    if not _any_size(dims, 3):
        raise refuse(f"its input is declared {_dims(dims)}, not B×3×H×W of any size")
    channels = 1 if metadata["task"] == "depth" else metadata["num_classes"]
    kind, dims = _declared(graph.output[0])
    if kind != "float32" or not _any_size(dims, channels):
        raise refuse(
            f"its output is declared {kind} {_dims(dims)}, not float32 B×{channels}×H×W ({metadata['task']})"
        )


# ---- running an ONNX file ----------------------------------------------------------------------------------

DEFAULT_TIME_LIMIT = 600.0  # seconds per image in ONNX Runtime (predict.py onnx_time_limit)
# What ONNX Runtime says when an allocation fails (its CPU allocator, or the C++ runtime's).
ALLOCATION_FAILURES = ("Failed to allocate memory", "bad_alloc", "bad allocation")


class OnnxDenseModel(InferenceModes):
    """An exported ONNX file as predict.py runs it: calling it runs the graph in ONNX Runtime (`forward`),
    and the inference modes (whole, slide, scales, flip: InferenceModes) run around that as around a
    DenseModel's forward.

    It holds no backbone or head, and is no torch module (no weights of its own to move or train): what
    predict.py reads of a model (task, depth range, classes) comes from the file's metadata. Inputs are uint8 or ImageNet-normalised float32, as for DenseModel: each
    is handed to the graph in the form it takes (uint8 as it is to a graph that normalises it itself,
    floats turned back into the uint8 images they came from; uint8 normalised for a float32 graph).

    The graph is data too: every output is checked against the metadata (float32 B×C×H×W of the input's
    batch and size, C = 1 or num_classes) and depth is clamped to the metadata's range, as DenseModel
    clamps. A run is stopped (ONNX Runtime's RunOptions.terminate, set by a timer) once it takes longer
    than `time_limit` seconds per image: per forward call, or within `time_budget(images)`, for all
    the calls made for those images.
    """

    def __init__(self, session, metadata: dict, path: str, time_limit: float | None = DEFAULT_TIME_LIMIT):
        self.session = session
        self.metadata = metadata
        self.path = path
        self.time_limit = time_limit
        self._deadline: float | None = None
        self.task = metadata["task"]
        self.min_depth, self.max_depth = metadata["min_depth"], metadata["max_depth"]
        self.depth_mode = metadata["depth_mode"] or "metric"
        self.config = {
            "backbone": metadata["backbone"],
            "head": metadata["head"],
            "num_classes": metadata["num_classes"],
        }
        self.class_names = metadata["class_names"]
        self.palette = metadata["palette"]
        self._seg_output = metadata["seg_output"]
        self.input_name = session.get_inputs()[0].name
        self.mean = torch.tensor(metadata["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(metadata["std"]).view(1, 3, 1, 1)

    @property
    def patch_size(self) -> int:
        return self.metadata["patch_size"]

    @property
    def num_classes(self) -> int | None:
        return self.metadata["num_classes"]

    @property
    def seg_output(self) -> str:
        return self._seg_output or "logits"

    @property
    def uint8_input(self) -> bool:
        return self.metadata["input"] == "uint8"

    @property
    def channels(self) -> int:
        return 1 if self.task == "depth" else self.metadata["num_classes"]

    @contextlib.contextmanager
    def time_budget(self, images: int) -> Iterator[None]:
        """Every forward call inside the block shares one deadline: time_limit seconds per image."""
        if self.time_limit is None:
            yield
            return
        self._deadline = time.monotonic() + self.time_limit * images
        try:
            yield
        finally:
            self._deadline = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:  # what the inference modes call
        return self.forward(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape B×3×H×W, got {tuple(images.shape)}")
        x = images.detach().cpu()
        if (
            x.dtype == torch.uint8
        ):  # what predict.py hands over: straight in, or normalised as the graph wants
            x = x if self.uint8_input else imagenet_normalised(x)
        elif self.uint8_input:  # ImageNet-normalised floats, turned back into the uint8 images they came from
            x = ((x.float() * self.std + self.mean) * 255).round().clamp(0, 255).to(torch.uint8)
        else:
            x = x.float()
        out = self._run(np.ascontiguousarray(x.numpy()))
        batch, _, height, width = images.shape
        if (
            not isinstance(out, np.ndarray)
            or out.dtype != np.float32
            or out.shape != (batch, self.channels, height, width)
        ):
            found = (
                f"{out.dtype} {'×'.join(map(str, out.shape))}"
                if isinstance(out, np.ndarray)
                else type(out).__name__
            )
            raise OnnxRunError(
                f"model={self.path}: the graph returned {found} for {batch}×3×{height}×{width} images, not float32 "
                f"{batch}×{self.channels}×{height}×{width} ({self.task}); export the model again with export.py"
            )
        result = torch.from_numpy(out)
        if self.task == "depth" and self.depth_mode == "metric":  # a relative map is never clamped
            result = result.clamp(self.min_depth, self.max_depth)
        return result.to(images.device)

    def _run(self, x: np.ndarray):
        """session.run, stopped once the deadline passes; ONNX Runtime's failures as OnnxRunError (an
        allocation that failed as MemoryError, which predict.py treats as out of memory)."""
        import onnxruntime

        options = onnxruntime.RunOptions()
        options.log_severity_level = 4  # its errors become the one line below
        seconds = None
        if self._deadline is not None:
            seconds = self._deadline - time.monotonic()
        elif self.time_limit is not None:
            seconds = self.time_limit * x.shape[0]
        if seconds is not None and seconds <= 0:
            raise self._too_long()
        timer = None
        if seconds is not None:
            timer = threading.Timer(seconds, setattr, (options, "terminate", True))
            timer.daemon = True
            timer.start()
        try:
            return self.session.run(None, {self.input_name: x}, options)[0]
        except Exception as error:  # ONNX Runtime raises its own exception types (Fail, InvalidArgument, …)
            if options.terminate:
                raise self._too_long() from None
            text = " ".join(str(error).split()) or type(error).__name__
            if any(failure in text for failure in ALLOCATION_FAILURES):
                raise MemoryError(f"ONNX Runtime could not allocate memory ({text[:200]})") from None
            raise OnnxRunError(
                f"model={self.path}: ONNX Runtime failed on this input ({text[:200]})"
            ) from None
        finally:
            if timer is not None:
                timer.cancel()

    def _too_long(self) -> OnnxRunError:
        return OnnxRunError(
            f"model={self.path}: ONNX Runtime ran longer than {self.time_limit:g} s per image, so it was stopped "
            "(onnx_time_limit); raise onnx_time_limit for a slow machine, or check the file"
        )


def load_onnx_model(
    path: str | os.PathLike, threads: int | None = None, time_limit: float | None = DEFAULT_TIME_LIMIT
) -> OnnxDenseModel:
    """An ONNX file written by to_onnx, ready to run on the CPU; one-line errors for anything else.

    The file is read and checked (our metadata, then the graph: check_graph) before ONNX Runtime sees
    it: nothing of a graph export.py could not have written is ever run or optimised.
    time_limit: seconds per image a run may take (None: no limit).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ExportError(f"model={path}: no such file")
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ExportError("model=*.onnx needs onnx and onnxruntime: pip install -e '.[export]'") from None
    if os.path.getsize(path) >= 2**31:
        raise ExportError(f"model={path}: larger than the 2 GB an ONNX file of export.py can be")
    with open(path, "rb") as f:
        data = f.read()
    try:
        onnx_model = onnx.load_model_from_string(data)
    except Exception as error:  # protobuf's DecodeError, and whatever else a damaged file raises
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(
            f"model={path}: ONNX Runtime cannot load it: not an ONNX model ({first[:200]})"
        ) from None
    metadata = read_metadata({entry.key: entry.value for entry in onnx_model.metadata_props}, path)
    check_graph(onnx_model, metadata, path)
    del onnx_model
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # fatal only: its errors reach the user as our one line
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable files
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(f"model={path}: ONNX Runtime cannot load it ({first[:200]})") from None
    return OnnxDenseModel(session, metadata, path, time_limit)
