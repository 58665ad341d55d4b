"""Epoch time of a linear head with and without the frozen-feature cache (issue target: epoch 2+ on
the cache ≥ 10× faster; ViT-S/14, synthetic data, 224×224).

    python benchmarks/scripts/bench_cache.py [--backbone vits14] [--images 64] [--epochs 3] [--head depth_linear]

Random backbone weights (no download); validation and test are off so only training is timed.
Prints one line per epoch and the ratio of the mean epoch-2+ times.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from dense.cli import schema  # noqa: E402
from dense.cli import train as train_script  # noqa: E402
from dense.core.host_memory import keep_large_allocations  # noqa: E402


class EpochTimer(L.Callback):
    def __init__(self):
        self.times = []

    def on_train_epoch_start(self, trainer, module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self.times.append(time.perf_counter() - self.start)


def run(args, cache: bool, workdir: Path) -> list[float]:
    overrides = [
        f"backbone={args.backbone}",
        "backbone.pretrained=false",
        f"head={args.head}",
        f"data.num_train={args.images}",
        "data.image_size=[224,224]",
        "data.batch_size=8",
        "data.num_workers=0",
        f"trainer.max_epochs={args.epochs}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "test=false",
        f"paths.output_dir={workdir / ('cached' if cache else 'plain')}",
        f"cache.features={str(cache).lower()}",
        f"cache.dir={workdir / 'cache'}",
    ]
    if args.head.startswith("seg"):
        overrides.append("data.task=segmentation")
    schema.register()  # the config groups' files name their schemas
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    timer = EpochTimer()
    original = train_script.make_callbacks
    train_script.make_callbacks = lambda config, task_class: [*original(config, task_class), timer]
    try:
        start = time.perf_counter()
        train_script.train(cfg)
        total = time.perf_counter() - start
    finally:
        train_script.make_callbacks = original
    print(
        f"{'cached' if cache else 'images'}: total {total:.1f} s (incl. set-up and cache fill); epochs "
        + ", ".join(f"{t:.2f} s" for t in timer.times),
        flush=True,
    )
    return timer.times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vits14")
    parser.add_argument("--head", default="depth_linear")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    keep_large_allocations()  # as train.py does (dense.cli.runner.main)
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(args, cache=False, workdir=Path(tmp))
        cached = run(args, cache=True, workdir=Path(tmp))
    later_plain = sum(plain[1:]) / len(plain[1:])
    later_cached = sum(cached[1:]) / len(cached[1:])
    print(
        f"epoch 2+: images {later_plain:.2f} s, cache {later_cached:.2f} s → {later_plain / later_cached:.1f}× faster"
    )


if __name__ == "__main__":
    main()
