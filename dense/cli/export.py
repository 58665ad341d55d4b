"""Export a model as one ONNX graph (or a torch.export program) for every batch size and image size.

    python export.py ckpt=RUN/checkpoints/best.ckpt output=model.onnx                  # a train.py checkpoint
    python export.py backbone=vitl14 head=depth_dpt backbone.weights=B.pth head.weights=H.pth output=model.onnx
    python export.py ckpt=... output=model.onnx fp16=true normalise=true              # half-size file, uint8 input
    python export.py ckpt=... output=model.pt2                                        # torch.export.load(...)
    python export.py ckpt=MULTI/checkpoints/best.ckpt output=multi.onnx               # head=multi: one output per head
    python predict.py model=model.onnx input=photos/ output=results/                  # run it (ONNX Runtime)

The graph holds everything DenseModel.forward does (padding, position encoding for the actual size,
backbone, head, clamp, resize, crop) with dynamic batch, height and width, and the ONNX file carries
what predict.py needs (task, depth range, class names, normalisation) as metadata.

Exit status: 0 when the file was written; 2 when nothing could be exported (a bad option, a missing
checkpoint, an output that cannot be written, a model that cannot be exported: one line on stderr).
"""

from __future__ import annotations

import os
import time

import hydra
from omegaconf import DictConfig

from dense import _cli
from dense.export import ExportError, check_output, to_onnx, to_torch_export
from dense.multi_head import MultiHeadModel
from predict import build, class_names  # the model exactly as predict.py builds it (ckpt= or the groups)

SUFFIXES = (".onnx", ".pt2")


def export(cfg: DictConfig) -> str:
    with _cli.setup_errors():
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
        model, stored_names = build(cfg)
        if isinstance(model, MultiHeadModel):  # one graph, one output named by each head
            names = {
                n: class_names(p, stored_names.get(n))
                for n, p in model.parts.items()
                if p.task == "segmentation"
            }
        else:
            names = class_names(model, stored_names) if model.task == "segmentation" else None
    start = time.perf_counter()
    if suffix == ".onnx":
        to_onnx(model.cpu(), output, uint8_input=cfg.normalise, fp16_weights=cfg.fp16, class_names=names)
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


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def main(cfg: DictConfig) -> None:
    _cli.run(export, cfg)


if __name__ == "__main__":
    _cli.main(main, __file__)
