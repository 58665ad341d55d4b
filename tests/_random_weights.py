"""Seeded random weights in a given key layout, shared by the tests and the reference generators.

The same seed and the same key → shape table give the same tensors on any machine with the same torch,
which is what lets the tests compare against outputs saved from upstream without storing the weights.
"""

import json
import os

import torch

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference")


def seeded_state_dict(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """Weights that keep activations at a visible scale through deep stacks: matrices and kernels with
    std 1/sqrt(fan_in), biases ~0.1, LayerScale ~0.1, BatchNorm variances in [0.5, 1.5], large position
    embeddings."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("gamma"):
            state[key] = 0.1 + 0.05 * torch.randn(shape, generator=generator)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        elif key in ("pos_embed", "cls_token", "register_tokens"):
            state[key] = 0.2 * torch.randn(shape, generator=generator)
        elif len(shape) >= 2:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            state[key] = torch.randn(shape, generator=generator) / fan_in**0.5
        else:
            state[key] = 0.1 * torch.randn(shape, generator=generator)
    return state


def official_shapes(name: str) -> dict[str, list[int]]:
    with open(os.path.join(REFERENCE, "official_keys.json")) as f:
        return json.load(f)[name]


def random_official_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the official key layout of backbone `name`, recorded from upstream."""
    return seeded_state_dict(official_shapes(name), seed)
