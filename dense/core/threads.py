"""How many threads the main process computes with when a run trains on the CPU.

PyTorch starts one thread per core. When the cores are shared (other jobs, a CI runner, a laptop doing
other work) every parallel operation waits for its slowest thread, and a thread whose core another
process holds stalls the whole step: on 2 shared cores the smoke run took several times longer with
2 threads than with 1 (README, "CPU-only, small or shared machines"). Half the cores leaves room for
the rest of the machine and loses little on idle cores, where small models gain little from more.
"""

from __future__ import annotations

import os

from dense.core.errors import ConfigError


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and `taskset` narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_threads(setting) -> None:
    if setting is not None and (isinstance(setting, bool) or not isinstance(setting, int) or setting < 0):
        raise ConfigError(
            f"threads={setting!r} must be null (half the cores), 0 (PyTorch's default: one per core) "
            "or a number of threads"
        )


def use_cpu_threads(setting: int | None) -> str:
    """Set the main process's thread count for a run on the CPU and say what was chosen and why.
    setting: the `threads` key; None chooses half the cores unless OMP_NUM_THREADS says otherwise;
    0 keeps PyTorch's default."""
    import torch

    check_threads(setting)
    cores = usable_cores()
    if setting:
        torch.set_num_threads(setting)
        why = "threads"
    elif setting == 0 or os.environ.get("OMP_NUM_THREADS"):
        why = "OMP_NUM_THREADS" if setting is None else "threads=0: PyTorch's default"
    else:
        torch.set_num_threads(max(1, cores // 2))
        why = "half the cores: threads waiting on cores that other jobs hold stall every step; threads=N to choose"
    return f"CPU threads: {torch.get_num_threads()} of {cores} cores ({why})"
