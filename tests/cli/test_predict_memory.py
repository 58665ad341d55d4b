"""Load (issue 7): predict.py over a folder runs in bounded memory — no growth per image.

Runs benchmarks/scripts/bench_predict_memory.py (predict.predict, the CLI's function, in a fresh process
on the CPU) over 60 random images of 112×112 … 120×164 pixels with a tiny14 depth checkpoint, sampling
after every written image both the Python/numpy heap (tracemalloc: exact) and the process RSS (psutil: what
the OS sees, noisy by a few MiB because of the allocator). The full-size benchmark is the same script
with 1,000 images (numbers in the README's Failure modes).
"""

from __future__ import annotations

import json

from tests._tiny_run import run_script

MiB = 2**20

# Measured here (2 CPU cores, torch CPU): traced heap slope 0.07 KiB/image, RSS within ±5 MiB after
# the warm-up. The same run with `--leak` (every result kept, as a leaking loop would) gives a traced
# slope of 50 KiB/image, so 4 KiB/image separates the two by an order of magnitude either way.
MAX_TRACED_GROWTH_PER_IMAGE = 4 * 1024
# RSS also covers torch's own allocations (e.g. a retained autograd graph, which tracemalloc does not
# see); the bound is loose because glibc does not hand freed pages back at once.
MAX_RSS_GROWTH = 32 * MiB
WARMUP = 20


def test_predict_memory_does_not_grow_per_image(tmp_path):
    out = tmp_path / "rss.json"
    result = run_script(
        "benchmarks/scripts/bench_predict_memory.py",
        "--images",
        "60",
        "--scale",
        "4",
        "--warmup",
        str(WARMUP),
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["status"] == 0 and data["files"] == 3 * 60  # _color.png, _depth_mm.png, .npy each
    assert len(data["rss"]) == len(data["traced"]) == 60
    assert data["traced_slope_bytes_per_image"] < MAX_TRACED_GROWTH_PER_IMAGE, result.stdout
    rss = data["rss"]
    assert max(rss[WARMUP:]) - rss[WARMUP] < MAX_RSS_GROWTH, result.stdout
