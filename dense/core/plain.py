"""Configuration values as plain data: what checkpoints store (so that they load with
torch.load(weights_only=True)) and the check that a value read back from one is nothing else."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dense.core.errors import shown

PLAIN_SCALARS = (type(None), bool, int, float, str)


def plain(config):
    """OmegaConf containers → plain dicts/lists (resolved); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(config, DictConfig | ListConfig):
        return OmegaConf.to_container(config, resolve=True)
    return config


def plain_value_problem(value, key: str) -> str | None:
    """None if `value` is a plain config value (None, a bool, number or string, or a list of them, lists
    nested at most twice); else what is wrong with it, naming `key`. Values read from a checkpoint must
    pass this before they go anywhere: a mapping could carry a `_target_`."""

    def problem(item, depth: int) -> str | None:
        if isinstance(item, PLAIN_SCALARS):
            return None
        if isinstance(item, list | tuple) and depth < 2:
            return next((p for p in (problem(i, depth + 1) for i in item) if p), None)
        if isinstance(item, Mapping):
            keys = ", ".join(shown(k, 20) for k in list(item)[:3])
            return f"{key} holds a mapping (keys {keys}), not a plain value (number, string, bool or list)"
        return f"{key} holds {shown(item)}, not a plain value (number, string, bool or list)"

    return problem(value, 0)


def flatten(config: dict, max_depth: int = 8) -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists stay values. Mappings nested deeper than `max_depth` stay
    values too (a config read from a file may be nested thousands deep). In the mappings' order (what
    --help lists follows the files), without recursion."""
    flat = {}
    stack = [("", iter(config.items()), 0)]
    while stack:
        prefix, items, depth = stack[-1]
        for key, value in items:
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value and depth < max_depth:
                stack.append((name + ".", iter(value.items()), depth + 1))
                break
            flat[name] = value
        else:
            stack.pop()
    return flat


def learning_rate_problem(value, zero: bool = False) -> str | None:
    """Why `value` is not a learning rate (a positive finite number, not a bool; 0 too when `zero`: a
    run that keeps its head still, as a check of where it starts), or None when it is one. Checked where
    a rate is set (task.optimizer.lr, a head's default_lr), so that a negative, NaN or a string is
    refused in one line before a run climbs the loss or fails deep inside."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{value!r} is not a number"
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        return f"{value!r} is not a {'non-negative' if zero else 'positive'} finite number"
    return None
