"""Sizes of the checkpoints train.py writes, per head and backbone size: best.ckpt (weights only), the same
in bf16 (task.best_ckpt_dtype=bf16) and last.ckpt (everything a resume needs).

    python benchmarks/scripts/checkpoint_sizes.py                     # vits14 vitb14 vitl14 vitg14 × every head
    python benchmarks/scripts/checkpoint_sizes.py --backbones vitl14 --heads depth_dpt

Measured, not computed: each head is built for the backbone's width and layers with random weights and
trained for one step by Lightning, and the files are what its ModelCheckpoint callbacks write with
train.py's settings (configs/callbacks/default.yaml) and the run's configuration stored inside. The
frozen backbone never enters a checkpoint when it comes from official weights or a file, so it is not
built: the step runs on random features in its place (the cached-feature path of the training step),
which changes nothing in the files but the time and memory it takes (no 4.5 GB ViT-g).
Segmentation heads predict ADE20K's 150 classes, depth heads use NYU's 0.001–10 m.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import heads  # noqa: E402
from dense.backbones import get_spec  # noqa: E402
from dense.cli import schema  # noqa: E402
from dense.core.plain import plain  # noqa: E402
from dense.model import DenseModel, build_model  # noqa: E402

BACKBONES = ("vits14", "vitb14", "vitl14", "vitg14")
NUM_CLASSES = 150


class NoBackbone(nn.Module):
    """What DenseModel asks of a backbone when the head runs on given features: its patch size."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.patch_size, self.embed_dim, self.num_register_tokens = patch_size, embed_dim, 0


def head_model(backbone: str, head: str) -> DenseModel:
    """The DenseModel train.py builds for (backbone, head) with official weights, its head randomly
    initialised for real and its backbone left out."""
    spec = heads.get_head_spec(head)
    options = {"num_classes": NUM_CLASSES} if spec.task == "segmentation" else {"max_depth": 10.0}
    with torch.device("meta"):  # the description only: layers, norm, class tokens, head options
        skeleton = build_model(backbone, head, **options)
    config = {**skeleton.config, "pretrained": True}  # rebuilt from the official weights: not stored
    head_options = {k: v for k, v in config.items() if k in spec.options and k != "layers"}
    module = heads.build_head(
        head, skeleton.backbone.embed_dim, **{**head_options, "num_layers": len(skeleton.layers)}
    )
    return DenseModel(
        NoBackbone(skeleton.patch_size, skeleton.backbone.embed_dim),
        module,
        task=spec.task,
        layers=skeleton.layers,
        norm=skeleton.norm,
        use_cls_token=skeleton.use_cls_token,
        min_depth=skeleton.min_depth,
        max_depth=skeleton.max_depth,
        config=config,
    )


def one_batch(model: DenseModel, grid: int = 2) -> dict:
    """A batch of 2 as the feature cache gives one: random features for a grid×grid patch grid."""
    side = grid * model.patch_size
    dim, layers = model.backbone.embed_dim, len(model.layers)
    batch = {"patches": torch.randn(2, layers, dim, grid, grid), "name": ["a", "b"]}
    if model.use_cls_token:
        batch["cls"] = torch.randn(2, layers, dim)
    if model.task == "depth":
        batch["depth"] = torch.rand(2, 1, side, side) * 5 + 0.5
    else:
        batch["mask"] = torch.randint(0, NUM_CLASSES, (2, side, side))
    return batch


def measure(backbone: str, head: str) -> dict[str, int]:
    """Bytes of best.ckpt (fp32 and bf16) and last.ckpt after one training step."""
    import lightning as L
    from hydra import compose, initialize_config_dir
    from lightning.pytorch.callbacks import ModelCheckpoint

    from dense.tasks import DepthTask, RunCheckpointIO, SegmentationTask

    sizes = {}
    for dtype in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = head_model(backbone, head)
        with tempfile.TemporaryDirectory() as folder:
            schema.register()  # the config groups' files name their schemas
            with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
                overrides = [f"paths.output_dir={folder}", f"backbone={backbone}", f"head={head}"]
                config = plain(compose("train", overrides=overrides))  # stored in the checkpoints
            common = {"config": config, "best_ckpt_dtype": dtype}
            task = (
                DepthTask(model, **common)
                if model.task == "depth"
                else SegmentationTask(model, class_names=[f"class {i}" for i in range(NUM_CLASSES)], **common)
            )
            # train.py's two checkpoint callbacks (configs/callbacks/default.yaml), best.ckpt monitoring the
            # training loss: there is no validation here, and the metric changes nothing in the files.
            best = ModelCheckpoint(
                dirpath=folder, filename="best", monitor="train/loss", save_top_k=1, save_weights_only=True
            )
            last = ModelCheckpoint(dirpath=folder, filename="last", save_top_k=1)
            trainer = L.Trainer(
                accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                enable_model_summary=False, callbacks=[best, last], plugins=[RunCheckpointIO(folder)],
            )  # fmt: skip
            loader = torch.utils.data.DataLoader([one_batch(model)], batch_size=None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer.fit(task, train_dataloaders=loader)
            sizes[f"best_{dtype}"] = os.path.getsize(Path(folder) / "best.ckpt")
            if dtype == "fp32":
                sizes["last"] = os.path.getsize(Path(folder) / "last.ckpt")
                sizes["head_parameters"] = sum(p.numel() for p in model.head.parameters())
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--heads", nargs="+", default=heads.list_heads())
    args = parser.parse_args()
    print("| head | backbone | head parameters | best.ckpt | best.ckpt (bf16) | last.ckpt |")
    print("|---|---|---|---|---|---|")
    for head in args.heads:
        for backbone in args.backbones:
            get_spec(backbone)  # an unknown name fails here, in one line
            sizes = measure(backbone, head)
            mb = {k: v / 1e6 for k, v in sizes.items()}
            print(
                f"| `{head}` | {backbone} | {sizes['head_parameters'] / 1e6:.2f} M | {mb['best_fp32']:.1f} MB | "
                f"{mb['best_bf16']:.1f} MB | {mb['last']:.1f} MB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
