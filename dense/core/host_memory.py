"""How the C library hands memory to large CPU tensors (train.py, eval.py, predict.py set it at start).

glibc serves an allocation above its mmap threshold (at most 32 MiB by default) with fresh pages from
the kernel and gives them back when it is freed; the next tensor of that size starts on fresh pages
again, and the kernel zero-fills each 4 KiB page at its first touch (a page fault each). CPU training
allocates such tensors at every step: the linear depth head's 256 bin logits at 64×64 for a batch of 8
are exactly 32 MiB, and so are their ReLU, gradient and mask. On 2 cores that step spent most of its
time in page faults: head forward + backward 55 ms with glibc's defaults, 20 ms with the thresholds
below, and epoch 2+ on the feature cache 0.69 → 0.39 s (benchmarks/BENCHMARKS.md, "Frozen-feature cache").

So the entry scripts raise both thresholds to 256 MiB: tensors up to that size are carved from the
heap and their pages are reused, and up to 256 MiB of freed memory stays with the process instead of
going back to the kernel after every step. The cost is resident memory: a process keeps up to that
much more than it uses at a given moment. Larger tensors are still mapped and unmapped as before.

Nothing happens if the user already chose (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or
GLIBC_TUNABLES in the environment), or where there is no glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import os
import sys

THRESHOLD = 256 * 2**20  # bytes: see the module docstring
# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_large_allocations(threshold: int = THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds to `threshold` bytes for this process (and the data
    loader workers it forks). Returns whether it did."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first, so a failure leaves the defaults alone.
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1 and mallopt(M_TRIM_THRESHOLD, threshold) == 1
