"""Regenerate tests/reference/dinov3_tiny.pt and dinov3_official_keys.json from Meta's DINOv3 code.

Not run by the test suite (CI has no copy of upstream). How the reference files were made:

    git clone https://github.com/facebookresearch/dinov3 /path/to/dinov3   # the commit is recorded in the file
    DINOV3_REPO=/path/to/dinov3 python tests/reference/make_dinov3_reference.py

or from an exported tree: `git -C MIRROR archive HEAD dinov3 | tar -x -C /tmp/dinov3-src` and
DINOV3_REPO=/tmp/dinov3-src DINOV3_COMMIT=$(git -C MIRROR rev-parse HEAD) (what was done here).

Upstream needs only torch to build its ViTs (no xformers, no weights).

dinov3_tiny.pt: for the four tiny configurations of dense/backbones/dinov3/specs.py, upstream's own
`DinoVisionTransformer` is built with the hub functions' shared options (dinov3/hub/backbones.py:
RoPE base 100, "separate" coordinates, rescale_coords=2, fp32 RoPE, LayerScale 1e-5, "layernormbf16",
4 storage tokens, mask_k_bias) and the tiny sizes, initialised by its `init_weights()` (which sets the
RoPE periods and the qkv bias masks), then given seeded random parameters (tests/_random_weights.py:
the test regenerates them from the same seed instead of storing them). In eval mode it runs
`get_intermediate_layers(..., return_class_token=True, return_extra_tokens=True)` on seeded random
batches of 2 images at 64×64, 48×80, 112×32 and 16×16, with norm on and off, n as a list ([1, 3],
reshaped) and as an int (2, not reshaped). Saved: the commit, the parameter shapes, upstream's
buffers, and the outputs (patches, class tokens, storage tokens).

dinov3_official_keys.json: the state_dict key names and shapes of the 9 official variants, from
upstream's hub functions (pretrained=False) built on the meta device; the SAT-493M ones with
weights=Weights.SAT493M.
"""

import json
import os
import subprocess
import sys

import torch

REPO = os.environ["DINOV3_REPO"]
sys.path.insert(0, REPO)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import dinov3.hub.backbones as hub  # noqa: E402
from dinov3.models.vision_transformer import DinoVisionTransformer  # noqa: E402

from tests._random_weights import seeded_state_dict  # noqa: E402

SIZES = [(64, 64), (48, 80), (112, 32), (16, 16)]
HUB_OPTIONS = dict(
    img_size=224,
    patch_size=16,
    in_chans=3,
    pos_embed_rope_base=100,
    pos_embed_rope_normalize_coords="separate",
    pos_embed_rope_rescale_coords=2,
    pos_embed_rope_dtype="fp32",
    drop_path_rate=0.0,
    layerscale_init=1.0e-05,
    norm_layer="layernormbf16",
    ffn_bias=True,
    proj_bias=True,
    n_storage_tokens=4,
    mask_k_bias=True,
)
TINY_SIZE = dict(embed_dim=80, depth=4, num_heads=4)
TINY = {
    "tiny16": dict(ffn_layer="mlp", ffn_ratio=4, qkv_bias=True),
    "tiny16_swiglu": dict(ffn_layer="swiglu", ffn_ratio=6, qkv_bias=True),
    "tiny16_untied": dict(
        ffn_layer="swiglu64", ffn_ratio=3, qkv_bias=False, untie_global_and_local_cls_norm=True
    ),
    "tiny16_clsnorm": dict(ffn_layer="mlp", ffn_ratio=4, qkv_bias=True, untie_cls_and_patch_norms=True),
}
OFFICIAL = {
    "vits16": (hub.dinov3_vits16, {}),
    "vits16plus": (hub.dinov3_vits16plus, {}),
    "vitb16": (hub.dinov3_vitb16, {}),
    "vitl16": (hub.dinov3_vitl16, {}),
    "vitl16plus": (hub.dinov3_vitl16plus, {}),
    "vith16plus": (hub.dinov3_vith16plus, {}),
    "vit7b16": (hub.dinov3_vit7b16, {}),
    "vitl16_sat": (hub.dinov3_vitl16, {"weights": hub.Weights.SAT493M}),
    "vit7b16_sat": (hub.dinov3_vit7b16, {"weights": hub.Weights.SAT493M}),
}


def outputs(model, image, n, reshape, norm):
    with torch.no_grad():
        out = model.get_intermediate_layers(
            image, n=n, reshape=reshape, return_class_token=True, return_extra_tokens=True, norm=norm
        )
    return {
        "patches": [p.clone() for p, _, _ in out],
        "cls": [c.clone() for _, c, _ in out],
        "storage": [s.clone() for _, _, s in out],
    }


def main():
    # An exported tree (git archive) is no checkout: then DINOV3_COMMIT names the commit it came from.
    commit = (
        os.environ.get("DINOV3_COMMIT")
        or subprocess.run(
            ["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    reference = {"commit": commit, "torch": str(torch.__version__), "sizes": SIZES, "variants": {}}
    for seed, (name, options) in enumerate(TINY.items()):
        model = DinoVisionTransformer(**HUB_OPTIONS, **TINY_SIZE, **options)
        model.init_weights()
        model.eval()  # rescale_coords applies in train mode only
        shapes = {k: list(p.shape) for k, p in model.named_parameters()}
        missing, unexpected = model.load_state_dict(seeded_state_dict(shapes, seed), strict=False)
        assert not unexpected and all(k.endswith(("periods", "bias_mask")) for k in missing), missing
        cases = []
        for image_seed, (height, width) in enumerate(SIZES):
            image = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(image_seed))
            for norm in (True, False):
                cases.append(
                    {
                        "image_seed": image_seed,
                        "size": (height, width),
                        "n": [1, 3],
                        "reshape": True,
                        "norm": norm,
                        **outputs(model, image, [1, 3], True, norm),
                    }
                )
            cases.append(
                {
                    "image_seed": image_seed,
                    "size": (height, width),
                    "n": 2,
                    "reshape": False,
                    "norm": True,
                    **outputs(model, image, 2, False, True),
                }
            )
        reference["variants"][name] = {
            "seed": seed,
            "param_shapes": shapes,
            "buffers": {k: b.clone() for k, b in model.named_buffers()},
            "cases": cases,
        }
    torch.save(reference, os.path.join(HERE, "dinov3_tiny.pt"))

    keys = {"commit": commit, "variants": {}}
    for name, (build, options) in OFFICIAL.items():
        with torch.device("meta"):
            model = build(pretrained=False, **options)
        keys["variants"][name] = {k: list(v.shape) for k, v in model.state_dict().items()}
    with open(os.path.join(HERE, "dinov3_official_keys.json"), "w") as f:
        json.dump(keys, f)


if __name__ == "__main__":
    main()
