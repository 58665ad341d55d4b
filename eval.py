"""Evaluate a checkpoint written by train.py on a data split and print the metric table.

    python eval.py ckpt_path=DIR/checkpoints/best.ckpt                 # the test split of its data
    python eval.py ckpt_path=... split=val data.root=/data/nyu         # where the data lies now
    python eval.py ckpt_path=... data=kitti data.root=/data/kitti      # another dataset config
    python eval.py ckpt_path=... task.test_flip=true task.test_scales=[1.0,1.32,1.73,2.28,3.0]
    python eval.py ckpt_path=MULTI/checkpoints/best.ckpt             # a head=multi run: one table per head

The model is rebuilt exactly (dense.load_model). The data config and the prediction settings
(task.test_*) are those the checkpoint was trained with, unless overridden. The metrics are printed
and written to the run folder as metrics.json (segmentation: plus the per-class IoU table).
Exit status 2 with one line on stderr for a configuration mistake (a missing checkpoint, a bad split).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dense.cli import runner

runner.set_root_dir(__file__)


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    # Imported here: runner.main answers --help and argument mistakes before any of it (torch) loads.
    from dense.cli.evaluate import main as evaluate

    evaluate(cfg)


if __name__ == "__main__":
    runner.main(main, __file__)
