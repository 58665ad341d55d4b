"""What export.py runs: the model as predict.py builds it, written as one ONNX graph or a torch.export program."""

from __future__ import annotations

import os
import time

from omegaconf import DictConfig

from dense.cli import runner
from dense.cli.model import class_names, for_inference, stored_palette  # the model as predict.py builds it
from dense.core.errors import ExportError
from dense.multi_head import MultiHeadModel
from dense.tools.export import check_output, to_onnx, to_torch_export

SUFFIXES = (".onnx", ".pt2")


def main(cfg: DictConfig) -> None:
    """export.py's Hydra main: export() with one-line errors and exit codes (runner.run)."""
    runner.run(export, cfg)


def export(cfg: DictConfig) -> str:
    with runner.setup_errors():
        output = str(cfg.output or "")
        suffix = os.path.splitext(output)[1]
        if suffix not in SUFFIXES:
            raise ExportError(f"output={output or 'null'} must end in .onnx (ONNX) or .pt2 (torch.export)")
        for key in ("fp16", "normalise"):
            if not isinstance(cfg[key], bool):
                raise ExportError(f"{key}={cfg[key]} must be true or false")
        if suffix == ".pt2" and cfg.fp16:
            raise ExportError(
                "fp16=true is for .onnx files; a .pt2 program keeps the model's float32 weights"
            )
        check_output(output, suffix)  # before the model is built: a wrong path fails in a second
        model, stored_names = for_inference(cfg)
        if isinstance(model, MultiHeadModel):  # one graph, one output named by each head
            segmentation = {n: p for n, p in model.parts.items() if p.task == "segmentation"}
            names = {n: class_names(p, stored_names.get(n)) for n, p in segmentation.items()}
            palette = {n: stored_palette(p, stored_names.get(n)) for n, p in segmentation.items()}
        elif model.task == "segmentation":
            names, palette = class_names(model, stored_names), stored_palette(model, stored_names)
        else:
            names = palette = None
    start = time.perf_counter()
    if suffix == ".onnx":
        to_onnx(
            model.cpu(),
            output,
            uint8_input=cfg.normalise,
            fp16_weights=cfg.fp16,
            class_names=names,
            palette=palette,
        )
    else:
        to_torch_export(model.cpu(), output, uint8_input=cfg.normalise)
    size_mb = os.path.getsize(output) / 2**20
    source = "uint8 RGB" if cfg.normalise else "ImageNet-normalised float32"
    if isinstance(model, MultiHeadModel):
        what = ", ".join(f"{n}: {p.config['head']} ({p.task})" for n, p in model.parts.items())
        what = f"heads {what}; one output per head, named by it"
    else:
        what = f"{model.config.get('head')} ({model.task})"
    print(
        f"wrote {output} ({size_mb:.1f} MB, {time.perf_counter() - start:.0f} s): {model.config.get('backbone')} + "
        f"{what}, input {source} B×3×H×W, any batch and size"
    )
    return output
