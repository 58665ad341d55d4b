"""Regenerate tests/reference/backbone_tiny.pt and official_keys.json from Meta's DINOv2 code.

Not run by the test suite (CI has no copy of upstream). How the reference tensors were made:

    git clone https://github.com/facebookresearch/dinov2 /path/to/dinov2   # commit b8931f7 was used
    DINOV2_REPO=/path/to/dinov2 python tests/reference/make_backbone_reference.py

For three tiny configurations of upstream's own `DinoVisionTransformer` (plain: offset 0.1 without
antialias; registers: size-based with antialias; SwiGLU feed-forward), it draws seeded random weights,
runs `get_intermediate_layers` at 518×518, 224×224, 280×350 and 126×644 with norm True/False and class
tokens, and saves weights, inputs and outputs. It also records the key names and shapes of the 8
official variants' state dicts (upstream's hub builders, random init).
"""

import json
import os
import sys
from functools import partial

import torch

sys.path.insert(0, os.environ["DINOV2_REPO"])
import dinov2.hub.backbones as hub  # noqa: E402
from dinov2.layers import MemEffAttention, NestedTensorBlock  # noqa: E402
from dinov2.models.vision_transformer import DinoVisionTransformer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = [(518, 518), (224, 224), (280, 350), (126, 644)]
TINY = {
    "tiny14": dict(
        num_register_tokens=0, interpolate_offset=0.1, interpolate_antialias=False, ffn_layer="mlp"
    ),
    "tiny14_reg": dict(
        num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True, ffn_layer="mlp"
    ),
    "tiny14_swiglu": dict(
        num_register_tokens=0, interpolate_offset=0.1, interpolate_antialias=False, ffn_layer="swiglufused"
    ),
}


def randomise(state, generator):
    """Weights with visible structure: LayerScale ~0.1, norms around 1, large position embeddings."""
    out = {}
    for key, value in state.items():
        if key.endswith("gamma"):
            out[key] = 0.1 + 0.05 * torch.randn(value.shape, generator=generator)
        elif key.endswith(("norm1.weight", "norm2.weight")) or key == "norm.weight":
            out[key] = 1 + 0.1 * torch.randn(value.shape, generator=generator)
        elif key in ("pos_embed", "cls_token", "register_tokens"):
            out[key] = 0.2 * torch.randn(value.shape, generator=generator)
        else:
            out[key] = 0.02 * torch.randn(value.shape, generator=generator)
    return out


def main():
    generator = torch.Generator().manual_seed(2026)
    reference = {}
    for name, options in TINY.items():
        model = DinoVisionTransformer(
            img_size=518,
            patch_size=14,
            embed_dim=48,
            depth=4,
            num_heads=3,
            mlp_ratio=4,
            init_values=1.0,
            block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
            block_chunks=0,
            **options,
        ).eval()
        weights = randomise(model.state_dict(), generator)
        model.load_state_dict(weights)
        cases = []
        for case_seed, (height, width) in enumerate(SIZES):
            # Images are regenerated from their seed in the test rather than stored (they would be 30 MB).
            image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(case_seed))
            for norm in (True, False):
                with torch.no_grad():
                    out = model.get_intermediate_layers(
                        image, n=[1, 3], reshape=True, return_class_token=True, norm=norm
                    )
                cases.append(
                    {
                        "image_seed": case_seed,
                        "size": (height, width),
                        "norm": norm,
                        "layers": [1, 3],
                        "patches": [p.clone() for p, _ in out],
                        "cls": [c.clone() for _, c in out],
                    }
                )
        reference[name] = {"weights": weights, "cases": cases}
    torch.save(reference, os.path.join(HERE, "backbone_tiny.pt"))

    keys = {}
    for variant in ["vits14", "vitb14", "vitl14", "vitg14"]:
        for suffix in ("", "_reg"):
            model = getattr(hub, f"dinov2_{variant}{suffix}")(pretrained=False)
            keys[variant + suffix] = {k: list(v.shape) for k, v in model.state_dict().items()}
    with open(os.path.join(HERE, "official_keys.json"), "w") as f:
        json.dump(keys, f)


if __name__ == "__main__":
    main()
