"""Resident memory of predict.py over a folder of small images: does it grow per image?

    python benchmarks/scripts/bench_predict_memory.py                       # 1,000 images, prints RSS over time
    python benchmarks/scripts/bench_predict_memory.py --images 60 --json rss.json    # what tests/cli/test_predict_memory.py runs

Writes N small random images (sizes cycling through a few odd shapes, so batches break and the model
pads) into a temporary folder, makes a random tiny14 depth checkpoint, and runs
dense.cli.predict.run.predict() — the function the CLI calls — in this process on the CPU. The process's
RSS (psutil) is sampled after every written image (dense.cli.predict.writers.write_depth /
write_segmentation are wrapped). Prints a table of RSS at regular points and the growth per image after a
warm-up; --json writes the raw samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import dense  # noqa: E402
from dense.checkpoint import BACKBONE_PREFIX, HEAD_PREFIX, MODEL_KEY  # noqa: E402
from dense.cli import schema  # noqa: E402
from dense.cli.predict import outputs, writers  # noqa: E402
from dense.cli.predict import run as predict  # noqa: E402

SIZES = [(28, 28), (30, 41), (28, 28), (17, 23)]  # H×W; repeats form batches, the rest run alone


def make_inputs(folder: Path, n: int, task: str, scale: int = 1) -> tuple[Path, Path]:
    images = folder / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = (side * scale for side in SIZES[i % len(SIZES)])
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"img{i:05d}.png")
    torch.manual_seed(0)
    model = (
        dense.build_model("tiny14", "depth_linear", max_depth=10.0)
        if task == "depth"
        else dense.build_model("tiny14", "seg_linear", num_classes=5)
    )
    state = {BACKBONE_PREFIX + k: v for k, v in model.backbone.state_dict().items()}
    state.update({HEAD_PREFIX + k: v for k, v in model.head.state_dict().items()})
    checkpoint = folder / "model.ckpt"
    torch.save({"state_dict": state, MODEL_KEY: model.config}, checkpoint)
    return images, checkpoint


def measure(n: int, task: str = "depth", batch_size: int = 4, scale: int = 1, leak: bool = False) -> dict:
    """RSS in bytes after each written image, plus the wall time. leak=True keeps every result in a
    list, as a leaking predict.py would: the check that the measurement can see a leak."""
    process = psutil.Process()
    samples: list[int] = []
    traced: list[int] = []  # Python + numpy heap (tracemalloc), exact: no allocator noise
    with tempfile.TemporaryDirectory() as tmp:
        images, checkpoint = make_inputs(Path(tmp), n, task, scale)
        for name in ("write_depth", "write_segmentation"):
            original = getattr(writers, name)

            kept = []

            def wrapped(*args, _original=original, kept=kept, **kwargs):
                _original(*args, **kwargs)
                if leak:
                    kept.append([a.copy() for a in args if isinstance(a, np.ndarray)])
                samples.append(process.memory_info().rss)
                traced.append(tracemalloc.get_traced_memory()[0])

            setattr(writers, name, wrapped)
        schema.register()  # the config groups' files name their schemas
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(
                "predict",
                overrides=[
                    f"ckpt={checkpoint}",
                    f"input={images}",
                    f"output={Path(tmp) / 'out'}",
                    "progress=false",
                    "device=cpu",
                    f"batch_size={batch_size}",
                ],
            )
        tracemalloc.start()
        start = time.perf_counter()
        try:
            status = predict.predict(cfg)
        finally:
            seconds = time.perf_counter() - start
            tracemalloc.stop()
        written = len([p for p in (Path(tmp) / "out").iterdir() if p.name != outputs.RECORD])  # result files
    return {
        "status": status,
        "rss": samples,
        "traced": traced,
        "seconds": seconds,
        "files": written,
        "images": n,
    }


def growth_per_image(rss: list[int], warmup: int) -> float:
    """Least-squares slope of RSS (bytes) over image index, after `warmup` images."""
    y = np.asarray(rss[warmup:], np.float64)
    x = np.arange(len(y), dtype=np.float64)
    return float(np.polyfit(x, y, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--task", choices=["depth", "segmentation"], default="depth")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--scale", type=int, default=1, help="multiply the image sides (28×28 … 30×41) by this"
    )
    parser.add_argument(
        "--leak", action="store_true", help="keep every result (shows what a leak looks like)"
    )
    parser.add_argument("--json", type=Path, help="write the raw samples here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = measure(args.images, args.task, scale=args.scale, leak=args.leak)
    rss = result["rss"]
    mib = 1 / 2**20
    step = max(1, len(rss) // 10)
    print(
        f"{args.images} images ({args.task}, tiny14, CPU, sides ×{args.scale}{', LEAKING' if args.leak else ''}): {result['seconds']:.1f} s, exit status {result['status']}"
    )
    print("image  RSS (MiB)")
    for i in [*range(0, len(rss), step), len(rss) - 1]:
        print(f"{i + 1:5d}  {rss[i] * mib:8.1f}")
    slope = growth_per_image(rss, args.warmup)
    print(
        f"after {args.warmup} images: first {rss[args.warmup] * mib:.1f} MiB, last {rss[-1] * mib:.1f} MiB, "
        f"max {max(rss[args.warmup :]) * mib:.1f} MiB, growth {slope / 1024:.2f} KiB/image (least squares)"
    )
    traced_slope = growth_per_image(result["traced"], args.warmup)
    print(
        f"traced Python/numpy heap: {result['traced'][args.warmup] / 1024:.0f} KiB after {args.warmup} images, "
        f"{result['traced'][-1] / 1024:.0f} KiB at the end, growth {traced_slope / 1024:.3f} KiB/image"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {**result, "slope_bytes_per_image": slope, "traced_slope_bytes_per_image": traced_slope}
            )
        )


if __name__ == "__main__":
    main()
