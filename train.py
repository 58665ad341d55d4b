"""Train a depth or segmentation head on a frozen DINOv2 or DINOv3 backbone (PyTorch Lightning under Hydra).

    python train.py experiment=smoke hydra.run.dir=outputs/smoke   # 1-2 minutes on a CPU, no download
    python train.py experiment=folder_depth data.root=mydata hydra.run.dir=outputs/mine   # your own folder (images/ + depth/), offline
    python train.py experiment=folder_seg data.root=mydata hydra.run.dir=outputs/mine     # ... (images/ + masks/ + classes.txt)
    python train.py head=depth backbone=vitg14                      # DPT depth head on a frozen ViT-g/14 (a GPU job)
    python train.py experiment=nyu_dpt backbone=vitl14 data.root=/data/nyu
    python train.py ckpt_path=DIR/checkpoints/last.ckpt hydra.run.dir=DIR      # resume
    python train.py -m backbone=vits14,vitb14                       # a sweep, one job per backbone
    python train.py experiment=multi_smoke hydra.run.dir=outputs/multi   # depth + segmentation heads on one backbone pass
    python train.py head=multi head.heads.seg.loss_weight=0.5       # several heads: head.heads.<name>.{name,loss_weight,...}

Everything of a run lands in its run folder (hydra.run.dir, default outputs/train/DATE/TIME):
checkpoints/{best,last}.ckpt, csv/version_N/metrics.csv, .hydra/config.yaml, train.log (the loss, the test
table). Then the maps of your images: python predict.py ckpt=outputs/mine/checkpoints/best.ckpt input=mydata/images output=outputs/mine/maps
A configuration mistake: one line on stderr, exit status 2, and no run folder left behind.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from dense.cli import runner

runner.set_root_dir(__file__)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # Imported here: runner.main answers --help and argument mistakes before any of it (torch) loads.
    from dense.cli.train import main as train

    return train(cfg)


if __name__ == "__main__":
    from dense.cli.train import refuse_a_second_run_before_hydra

    refuse_a_second_run_before_hydra(sys.argv[1:])
    runner.main(main, __file__)
