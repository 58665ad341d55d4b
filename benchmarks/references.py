"""The reference implementations the bench compares ours with, and how each is built for a case.

timm        timm's VisionTransformer (forward_intermediates) holding our backbone's weights
naive       upstream's data flow for the linear depth heads, holding our head's weights
upstream    Meta's own code from a local checkout: DINOv2's hub depthers
"""

from __future__ import annotations

import copy
import os
import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from dense.backbones import BackboneSpec
from dense.backbones.dinov3.specs import Dinov3Spec
from dense.core.features import FeatureMaps
from dense.model import DenseModel
from heads import LinearDepthHead


class NaiveLinearDepthHead(nn.Module):
    """Reference for LinearDepthHead: upstream's data flow (BNHead(classify=True)) with the same weights.

    Per layer concat(patch map, class token broadcast over the grid) → bilinear 4× → concatenate the
    layers → 1×1 conv → bin normalisation → expectation, written as upstream writes it. It builds the
    B×(2·D·layers)×4h×4w tensor that LinearDepthHead never builds; its output equals ours to about 1e-5
    relative in fp32 (the bench records the difference).
    """

    def __init__(self, head: LinearDepthHead):
        super().__init__()
        self.upsample = head.upsample
        self.use_cls_token = head.use_cls_token
        self.bin_weighting = head.bin_weighting
        self.conv_depth = copy.deepcopy(head.conv_depth)  # own parameters: trained by its own optimiser
        self.register_buffer("bins", head.bins.clone(), persistent=False)

    def forward(self, features: FeatureMaps) -> torch.Tensor:
        maps = []
        for i, patches in enumerate(features.patches):
            if self.use_cls_token:
                cls = features.cls_tokens[i][:, :, None, None].expand_as(patches)
                patches = torch.cat((patches, cls), dim=1)
            maps.append(patches)
        h, w = features.grid
        size = (h * self.upsample, w * self.upsample)
        x = torch.cat(
            [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], dim=1
        )
        logit = self.conv_depth(x)
        if self.bin_weighting == "linear":
            logit = torch.relu(logit) + 0.1
            logit = logit / logit.sum(dim=1, keepdim=True)
        elif self.bin_weighting == "softmax":
            logit = torch.softmax(logit, dim=1)
        else:
            logit = torch.sigmoid(logit)
            logit = logit / logit.sum(dim=1, keepdim=True)
        return torch.einsum("ikmn,k->imn", [logit, self.bins]).unsqueeze(1)


class TimmDenseModel(DenseModel):
    """Reference: a DenseModel whose frozen features come from timm's ViT instead of ours.

    Padding, head, clamp, resize and predict are DenseModel's own, so a difference to `ours` is the
    backbone's (and the head's, when the head is the naive one).
    """

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_embed.patch_size[0]

    @torch.no_grad()
    def extract_features(self, padded_images: torch.Tensor) -> FeatureMaps:
        outputs = timm_intermediates(self.backbone, padded_images, self.layers, self.norm, self.use_cls_token)
        if not self.use_cls_token:
            return FeatureMaps(outputs)
        return FeatureMaps([p for p, _ in outputs], [prefix[:, 0] for _, prefix in outputs])


def timm_intermediates(model: nn.Module, images: torch.Tensor, layers, norm: bool, with_cls: bool):
    """timm's equivalent of get_intermediate_layers(reshape=True, return_class_token=with_cls).

    stop_early: blocks after the last requested one are not run, as in ours. With prefix tokens each
    entry is (patch map, B×(1+registers)×D); the class token is prefix[:, 0].
    """
    return model.forward_intermediates(
        images,
        indices=list(layers),
        return_prefix_tokens=with_cls,
        norm=norm,
        stop_early=True,
        output_fmt="NCHW",
        intermediates_only=True,
    )


def build_timm_backbone(spec: BackboneSpec, ours: nn.Module) -> nn.Module:
    """timm's DINOv2 ViT holding our backbone's weights (converted by timm's own checkpoint filter)."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    name, overrides = spec.timm_name, {}
    if name is None:
        # The tiny test variants: timm's DINOv2 config of the same kind, shrunk to the same size.
        if spec.ffn == "swiglu":
            name = "vit_giant_patch14_dinov2"
        elif spec.num_register_tokens:
            name = "vit_small_patch14_reg4_dinov2"
        else:
            name = "vit_small_patch14_dinov2"
        overrides = dict(embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads)
    model = timm.create_model(name, pretrained=False, dynamic_img_size=True, num_classes=0, **overrides)
    state = {k: v.detach() for k, v in ours.state_dict().items()}
    model.load_state_dict(checkpoint_filter_fn(state, model))
    return model


# Our head name → (upstream hub entry suffix, its kwargs). Upstream's segmentation heads need mmseg.
UPSTREAM_DEPTHERS = {
    "depth_linear": ("ld", {"layers": 1}),
    "depth_linear4": ("ld", {"layers": 4}),
    "depth_dpt": ("dd", {}),
}


class Unavailable(Exception):
    """A reference path that does not apply to this case; the message says why (recorded in the JSON)."""


def build_upstream(repo_dir: str, spec: BackboneSpec, ours: DenseModel) -> nn.Module:
    """Upstream's hub depther (DepthEncoderDecoder) from a local DINOv2 checkout, with our weights."""
    head = ours.config.get("head")
    if head not in UPSTREAM_DEPTHERS:
        raise Unavailable(f"upstream's hub has no {head} model (only depth_linear, depth_linear4, depth_dpt)")
    if spec.hub_name is None or spec.num_register_tokens:
        raise Unavailable(f"upstream's hub depthers exist for the plain ViT-S/B/L/g only, not {spec.name}")
    suffix, kwargs = UPSTREAM_DEPTHERS[head]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "xFormers is not available": upstream then uses SDPA, as we do
        model = torch.hub.load(
            repo_dir, f"{spec.hub_name}_{suffix}", source="local", pretrained=False, trust_repo=True, **kwargs
        )
    model.backbone.load_state_dict(ours.backbone.state_dict())
    model.decode_head.load_state_dict(ours.head.state_dict())
    # Upstream's linear hub heads hard-code max_depth 80; give it our range so the outputs compare.
    model.decode_head.min_depth, model.decode_head.max_depth = ours.min_depth, ours.max_depth
    model.backbone.requires_grad_(False)
    return model


def build_upstream_dinov3(repo_dir: str, spec: Dinov3Spec, ours: DenseModel) -> nn.Module:
    """Upstream DINOv3's backbone, built by its hub function from a local checkout, with our weights.

    Only the backbone: upstream's dense heads (hub depthers, segmentors) exist for the 7B alone."""
    if spec.hub_name is None:
        raise Unavailable(f"{spec.name} is a test variant: upstream's hub has no function for it")
    if not os.path.isfile(os.path.join(repo_dir, "dinov3", "hub", "backbones.py")):
        raise Unavailable(
            f"--upstream {repo_dir} holds no dinov3/hub/backbones.py: {spec.name} needs a DINOv3 checkout"
        )
    if repo_dir not in sys.path:
        # Its package, not its hubconf.py: that one imports the whole evaluation code and its dependencies.
        sys.path.insert(0, repo_dir)
    from dinov3.hub import backbones as hub

    options = {"weights": hub.Weights.SAT493M} if spec.pretrain_data == "sat493m" else {}
    model = getattr(hub, spec.hub_name)(pretrained=False, **options)
    model.load_state_dict(ours.backbone.state_dict())  # the same keys, buffers included
    return model.eval().requires_grad_(False)
