"""Regenerate tests/reference/model_depth.pt: outputs of upstream's hub depth models.

Not run by the test suite (CI has no copy of upstream). How it was made:

    DINOV2_REPO=/path/to/dinov2 python tests/reference/make_model_reference.py   # commit b8931f7

For ViT-S/B/L (plain), builds upstream's `dinov2_vit{s,b,l}14_ld` (layers 1 and 4) and
`dinov2_vit{s,b,l}14_dd` with pretrained=False, fills backbone and head with seeded random weights
(tests/_random_weights.py: the test regenerates the same weights from the same seeds and key table),
runs them on seeded random images whose sides are multiples of 14 and saves only the outputs.
Upstream's linear depthers hard-code the depth range (0.001, 80); the DPT depther uses (0.001, 10).
"""

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.environ["DINOV2_REPO"])
import dinov2.hub.depthers as depthers  # noqa: E402

from tests._random_weights import seeded_state_dict  # noqa: E402

SIZE = (140, 182)
CASES = {  # our head name → (upstream builder suffix, builder kwargs)
    "depth_linear": ("ld", {"layers": 1}),
    "depth_linear4": ("ld", {"layers": 4}),
    "depth_dpt": ("dd", {}),
}


def main():
    reference = {}
    for arch in ["vits14", "vitb14", "vitl14"]:
        for head, (suffix, kwargs) in CASES.items():
            model = getattr(depthers, f"dinov2_{arch}_{suffix}")(pretrained=False, **kwargs).eval()
            backbone_shapes = {k: list(v.shape) for k, v in model.backbone.state_dict().items()}
            head_shapes = {k: list(v.shape) for k, v in model.decode_head.state_dict().items()}
            model.backbone.load_state_dict(seeded_state_dict(backbone_shapes, seed=11))
            model.decode_head.load_state_dict(seeded_state_dict(head_shapes, seed=12))
            image = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(13))
            with torch.no_grad():
                out = model.whole_inference(image, img_meta=None, rescale=True)
            reference[f"{arch}/{head}"] = {
                "output": out.clone(),
                "min_depth": model.decode_head.min_depth,
                "max_depth": model.decode_head.max_depth,
            }
            print(arch, head, tuple(out.shape), float(out.mean()))
    reference["size"] = SIZE
    torch.save(reference, os.path.join(HERE, "model_depth.pt"))


if __name__ == "__main__":
    main()
