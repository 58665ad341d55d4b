"""How many training samples per second the data pipeline delivers (will the loader keep a GPU fed?).

    python scripts/bench_loader.py [--workers 0,2] [--images 32] [--epochs 3]

NYU-Depth v2 in its file-list layout (480×640 JPEG + 16-bit PNG depth, generated into a temporary
folder by the test fixtures), the NYU recipe's augmentation (crop, rotation, flip, 416×544 random crop,
colour), batch 8, through DenseDataModule's train loader. Prints samples/s per worker count; with
0 workers that is the cost of one core.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dense.data import DenseDataModule  # noqa: E402
from tests._fixtures_data import write_nyu_filelist  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        write_nyu_filelist(Path(tmp), n_train=args.images, n_test=2)
        for workers in (int(w) for w in args.workers.split(",")):
            datamodule = DenseDataModule(
                name="nyu", root=tmp, batch_size=8, num_workers=workers, persistent_workers=True
            )
            datamodule.setup("fit")
            loader = datamodule.train_dataloader()
            for _ in loader:  # warm-up: worker start, first reads
                pass
            start, samples = time.perf_counter(), 0
            for _ in range(args.epochs):
                for batch in loader:
                    samples += len(batch["name"])
            rate = samples / (time.perf_counter() - start)
            print(f"workers {workers}: {rate:.0f} samples/s ({tuple(batch['image'].shape)} per batch)")


if __name__ == "__main__":
    main()
