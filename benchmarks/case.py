"""What the bench measures: the kinds of work, the references, one case, one timed path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

WORKS = ("backbone", "head", "predict", "train")  # timed call by call, ours against references
LOOP = "loop"  # train.py's loop in a Lightning Trainer, ours alone (benchmarks/loop.py)
REFERENCES = ("timm", "naive", "upstream")
PRECISIONS = ("fp32", "bf16")


@dataclass
class Case:
    backbone: str
    head: str
    size: tuple[int, int]
    batch: int
    precision: str
    compile: bool
    device: str

    def label(self) -> str:
        h, w = self.size
        return (
            f"{self.backbone} {self.head} {h}x{w} batch {self.batch} {self.precision} "
            f"compile {'on' if self.compile else 'off'} {self.device}"
        )


@dataclass
class Path:
    """One way of doing one work: `fn()` processes one batch."""

    work: str
    name: str
    fn: Callable[[], Any]
    modules: list[nn.Module]
    optimizer: torch.optim.Optimizer | None = None
    times: list[float] = field(default_factory=list)
    first_call_s: float | None = None
    memory: dict | None = None
    output: Any = None
