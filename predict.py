"""Depth or segmentation maps for an image or a folder of images.

    python predict.py ckpt=RUN/checkpoints/best.ckpt input=photos/ output=results/     # a train.py checkpoint
    python predict.py backbone=vitl14 head=depth_dpt backbone.weights=B.pth head.weights=H.pth input=room.jpg output=results/
    python predict.py ckpt=... input=... output=... depth_range=[0,5] cmap=turbo      # colours over 0-5 m in every image
    python predict.py ckpt=... input=... output=... mode=slide crop_size=518 precision=bf16
    python predict.py model=model.onnx input=photos/ output=results/                  # a file from export.py
    python predict.py ckpt=MULTI/checkpoints/best.ckpt input=photos/ output=results/  # head=multi: every head, one pass

Depth: <stem>_color.png, the depth in colours with its colour bar beside it (each image's own nearest to
farthest depth, or depth_range), <stem>_depth_mm.png (16-bit millimetres, for programs; depth_scale=256:
<stem>_depth_x256.png) and <stem>.npy (float32 metres).
Relative depth (a model trained with task.depth_mode=relative: disparity up to scale and shift):
<stem>_relative.png (16-bit, normalised per image for viewing: 0 = farthest, 65535 = nearest),
<stem>_color.png in the same per-image range, no colour bar (no unit), <stem>.npy the raw output.
Segmentation: <stem>.png (class ids), <stem>_color.png, <stem>_overlay.png, and legend.png + classes.json
(the class colours and names). A multi-head model (train.py head=multi) writes each head's files from
one backbone pass, named <stem>_<head>*: room_depth_color.png, room_depth_depth_mm.png, room_seg.png, ...,
and seg_legend.png, seg_classes.json. A rerun over the same folder replaces only files predict.py wrote there.

Exit status: 0 when every image was written; 2 when nothing could run (a bad option, a missing input
or checkpoint, an output folder that cannot be written: one line on stderr says which); 3 when some
images were skipped (each is named with its reason, the others are written) or writing failed.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dense.cli import runner


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    # Imported here: runner.main answers --help and argument mistakes before any of it (torch) loads.
    from dense.cli.predict.run import main as predict

    predict(cfg)


if __name__ == "__main__":
    runner.main(main, __file__)
