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

import hydra
from omegaconf import DictConfig

from dense.cli import runner


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def main(cfg: DictConfig) -> None:
    # Imported here: runner.main answers --help and argument mistakes before any of it (torch) loads.
    from dense.cli.export import main as export

    export(cfg)


if __name__ == "__main__":
    runner.main(main, __file__)
