"""The DINOv3 ViT variants (patch 16, RoPE, 4 storage tokens), their released files, and strict loading.

Every fact here is read from Meta's code (facebookresearch/dinov3): the architecture of each variant
from its hub function in dinov3/hub/backbones.py, the file names from `_make_dinov3_vit_model_url`
there and `_DINOV3_BASE_URL` in dinov3/hub/utils.py, the default layer sets from `BackboneLayersSet`
in dinov3/eval/depth/models/encoder.py and dinov3/eval/segmentation/models/__init__.py, the image
normalisation from the README's transforms.

Each variant registers itself in the backbone registry (dense.build_backbone builds it). Meta's
downloads are gated (a licence form), so `pretrained=True` never downloads: it uses the file in the
torch hub cache, or says where to request it and where to put it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from dense.backbones.base import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
    load_state_dict_strictly,
    read_backbone_state,
    register_backbone,
)
from dense.backbones.dinov3.vit import Dinov3VisionTransformer, ffn_hidden_features
from dense.core.errors import WeightsError

DINOV3_BASE_URL = "https://dl.fbaipublicfiles.com/dinov3"
DINOV3_ACCESS_URL = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"

# Image normalisation per pretraining set (upstream's README, "Image transforms"): web images use
# ImageNet's, the satellite models their own.
IMAGE_STATS = {
    "lvd1689m": (IMAGENET_MEAN, IMAGENET_STD),
    "sat493m": ((0.430, 0.411, 0.296), (0.213, 0.156, 0.143)),
}


@dataclass(frozen=True)
class Dinov3Spec(BackboneSpec):
    """One DINOv3 ViT variant. `four_layers` is upstream's FOUR_EVEN_INTERVALS layer set (0-based
    blocks): i · (depth // 4) − 1 for i = 1..4, except ViT-L's [4, 11, 17, 23] kept "for backward
    compatibility" (encoder.py calls it incorrect, the segmentation code "used in the paper")."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str = "mlp"  # upstream's ffn_layer: "mlp", "swiglu" (hidden rounded to 8) or "swiglu64"
    ffn_ratio: float = 4.0
    qkv_bias: bool = True  # False for ViT-7B: no qkv bias and so no bias_mask buffer
    n_storage_tokens: int = 4
    untie_global_and_local_cls_norm: bool = False  # adds local_cls_norm (training only)
    untie_cls_and_patch_norms: bool = False  # adds cls_norm (no hub function sets it)
    four_layers: tuple[int, ...] = ()
    hub_name: str | None = None  # upstream's hub function, e.g. "dinov3_vitl16"; None for test variants
    pretrain_data: str = "lvd1689m"  # "lvd1689m" (web images) or "sat493m" (satellite)
    file_hash: str | None = None  # the 8 hex digits in the released file's name
    test_only: bool = False

    family = "dinov3"
    patch_size = 16

    @property
    def num_register_tokens(self) -> int:
        return self.n_storage_tokens

    @property
    def ffn_hidden(self) -> int:
        return ffn_hidden_features(self.embed_dim, self.ffn, self.ffn_ratio)

    @property
    def filename(self) -> str | None:
        """The released file's name, e.g. dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth."""
        if self.hub_name is None:
            return None
        return f"{self.hub_name}_pretrain_{self.pretrain_data}-{self.file_hash}.pth"

    @property
    def url(self) -> str | None:
        """Where upstream's hub looks for the file (gated: Meta e-mails the working links)."""
        if self.hub_name is None:
            return None
        return f"{DINOV3_BASE_URL}/{self.hub_name}/{self.filename}"

    @property
    def image_mean(self) -> tuple[float, float, float]:
        return IMAGE_STATS[self.pretrain_data][0]

    @property
    def image_std(self) -> tuple[float, float, float]:
        return IMAGE_STATS[self.pretrain_data][1]

    def create(self) -> Dinov3VisionTransformer:
        return Dinov3VisionTransformer(
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            ffn=self.ffn,
            ffn_ratio=self.ffn_ratio,
            qkv_bias=self.qkv_bias,
            n_storage_tokens=self.n_storage_tokens,
            untie_cls_and_patch_norms=self.untie_cls_and_patch_norms,
            untie_global_and_local_cls_norm=self.untie_global_and_local_cls_norm,
        )

    def load_weights(self, model: Dinov3VisionTransformer, path) -> None:
        load_dinov3_weights(model, self, path)

    def official_weights_path(self) -> str:
        path = dinov3_hub_cache_path(self._official())
        if not os.path.isfile(path):
            raise WeightsError(gated_weights_message(self))
        return path

    def check_official_weights(self, timeout: float = 10.0) -> None:
        self.official_weights_path()  # gated: nothing to ask the network, the file is there or not


def _add(spec: Dinov3Spec) -> None:
    """Register a variant with upstream's spellings as aliases: the hub function's name (dinov3_vitl16)
    and the pretraining set as a suffix (vitl16_sat493m, dinov3_vit7b16_lvd1689m)."""
    aliases = []
    if spec.hub_name is not None:
        data = spec.pretrain_data
        arch = spec.name.removesuffix("_sat")
        for stem in (arch, spec.hub_name):
            aliases.append(f"{stem}_{data}")
        aliases.append(spec.hub_name if data == "lvd1689m" else f"{spec.hub_name}_sat")
    register_backbone(spec, aliases)


# One row per hub function of dinov3/hub/backbones.py (a `_sat` row: the same function with
# weights=SAT493M). Shared by all: RoPE base 100, 4 storage tokens, LayerScale 1e-5, masked qkv bias.
# dinov3_vit7b16 unties the global/local class norms for both of its weight sets, dinov3_vitl16 only
# for SAT-493M.
for _name, _dim, _depth, _heads, _ffn, _ratio, _qkv_bias, _local_norm, _four, _hash in [
    ("vits16", 384, 12, 6, "mlp", 4, True, False, (2, 5, 8, 11), "08c60483"),
    ("vits16plus", 384, 12, 6, "swiglu", 6, True, False, (2, 5, 8, 11), "4057cbaa"),
    ("vitb16", 768, 12, 12, "mlp", 4, True, False, (2, 5, 8, 11), "73cec8be"),
    ("vitl16", 1024, 24, 16, "mlp", 4, True, False, (4, 11, 17, 23), "8aa4cbdd"),
    ("vitl16plus", 1024, 24, 16, "swiglu", 6, True, False, (4, 11, 17, 23), "46503df0"),
    ("vith16plus", 1280, 32, 20, "swiglu", 6, True, False, (7, 15, 23, 31), "7c1da9a5"),
    ("vit7b16", 4096, 40, 32, "swiglu64", 3, False, True, (9, 19, 29, 39), "a955f4ea"),
    ("vitl16_sat", 1024, 24, 16, "mlp", 4, True, True, (4, 11, 17, 23), "eadcf0ff"),
    ("vit7b16_sat", 4096, 40, 32, "swiglu64", 3, False, True, (9, 19, 29, 39), "a6675841"),
]:
    _add(
        Dinov3Spec(
            _name,
            _dim,
            _depth,
            _heads,
            _ffn,
            ffn_ratio=_ratio,
            qkv_bias=_qkv_bias,
            untie_global_and_local_cls_norm=_local_norm,
            four_layers=_four,
            hub_name="dinov3_" + _name.removesuffix("_sat"),
            pretrain_data="sat493m" if _name.endswith("_sat") else "lvd1689m",
            file_hash=_hash,
        )
    )

# Tiny variants for tests: each code path of the official ones in milliseconds (80 = 4 heads × 20, so
# RoPE turns 5 pairs per axis). tiny16: S/B/L (MLP, masked qkv bias); tiny16_swiglu: S+/L+/H+;
# tiny16_untied: 7B and vitl16_sat (SwiGLU64: 80 · 3 = 240, · 2/3 = 160, rounded up to 192; no qkv bias;
# local_cls_norm); tiny16_clsnorm: upstream's untie_cls_and_patch_norms.
_TINY = dict(embed_dim=80, depth=4, num_heads=4, four_layers=(0, 1, 2, 3), test_only=True)
_add(Dinov3Spec("tiny16", **_TINY))
_add(Dinov3Spec("tiny16_swiglu", ffn="swiglu", ffn_ratio=6, **_TINY))
_add(
    Dinov3Spec(
        "tiny16_untied",
        ffn="swiglu64",
        ffn_ratio=3,
        qkv_bias=False,
        untie_global_and_local_cls_norm=True,
        **_TINY,
    )
)
_add(Dinov3Spec("tiny16_clsnorm", untie_cls_and_patch_norms=True, **_TINY))

DINOV3_NAMES = [name for name in BACKBONES.names() if isinstance(BACKBONES.get(name), Dinov3Spec)]
OFFICIAL_DINOV3_NAMES = [name for name in DINOV3_NAMES if not BACKBONES.get(name).test_only]


# ---- the released files ---------------------------------------------------------------------------


def dinov3_hub_cache_path(spec: Dinov3Spec) -> str:
    """Where torch.hub.load_state_dict_from_url (upstream's loader) keeps the file."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", spec.filename)


def gated_weights_message(spec: Dinov3Spec) -> str:
    return (
        f"the {spec.name} weights are not in the torch hub cache and cannot be downloaded without Meta's "
        f"approval (DINOv3 licence): request access at {DINOV3_ACCESS_URL}, download {spec.filename} "
        f"from the link Meta e-mails (with wget), then place it at {dinov3_hub_cache_path(spec)} or pass "
        "its path with backbone.weights=PATH (train.py, predict.py; in Python: weights=PATH)"
    )


# ---- strict loading -------------------------------------------------------------------------------

# Buffers that upstream saves but that follow from the architecture: a file without them is accepted
# and our own values are kept (a file with them loads them, as upstream does).
OPTIONAL_BUFFERS = re.compile(r"^(rope_embed\.periods|blocks\.\d+\.attn\.qkv\.bias_mask)$")


def spec_signature(spec: Dinov3Spec) -> tuple:
    """(embed dim, blocks, ffn kind, ffn width, qkv bias, storage tokens, local_cls_norm, cls_norm)."""
    return (
        spec.embed_dim,
        spec.depth,
        "mlp" if spec.ffn == "mlp" else "swiglu",
        spec.ffn_hidden,
        spec.qkv_bias,
        spec.n_storage_tokens,
        spec.untie_global_and_local_cls_norm,
        spec.untie_cls_and_patch_norms,
    )


def state_signature(state: dict[str, torch.Tensor]) -> tuple:
    """What a state dict says about its architecture (the number of heads leaves no trace in it)."""
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))})
    if "blocks.0.mlp.w1.weight" in state:
        ffn_kind, ffn_hidden = "swiglu", state["blocks.0.mlp.w1.weight"].shape[0]
    elif "blocks.0.mlp.fc1.weight" in state:
        ffn_kind, ffn_hidden = "mlp", state["blocks.0.mlp.fc1.weight"].shape[0]
    else:
        ffn_kind, ffn_hidden = None, None
    storage = state["storage_tokens"].shape[1] if "storage_tokens" in state else 0
    return (
        state["cls_token"].shape[-1],
        depth,
        ffn_kind,
        ffn_hidden,
        "blocks.0.attn.qkv.bias" in state,
        storage,
        "local_cls_norm.weight" in state,
        "cls_norm.weight" in state,
    )


def describe_signature(signature: tuple) -> str:
    dim, depth, ffn_kind, ffn_hidden, qkv_bias, storage, local_cls_norm, cls_norm = signature
    parts = [f"embed dim {dim}", f"{depth} blocks", f"{ffn_kind} {ffn_hidden}", f"{storage} storage tokens"]
    parts += [] if qkv_bias else ["no qkv bias"]
    parts += ["local_cls_norm"] if local_cls_norm else []
    parts += ["cls_norm"] if cls_norm else []
    return ", ".join(parts)


def guess_dinov3_variants(state: dict[str, torch.Tensor]) -> list[str]:
    """The variants whose architecture the state dict has (vit7b16 and vit7b16_sat share one)."""
    signature = state_signature(state)
    return [name for name in DINOV3_NAMES if spec_signature(BACKBONES.get(name)) == signature]


def check_dinov3_compatible(state: dict[str, torch.Tensor], spec: Dinov3Spec, path) -> None:
    """One line naming the variant a file is for, when it is not `spec`'s, before any key-by-key check."""
    if "cls_token" not in state:
        raise WeightsError(f"{path}: the file has no 'cls_token': it is not a DINOv3 backbone checkpoint")
    if "pos_embed" in state:
        raise WeightsError(
            f"{path}: the file has a learned 'pos_embed': it is a DINOv2 checkpoint, not DINOv3 (RoPE); "
            "choose a DINOv2 backbone"
        )
    signature = state_signature(state)
    if signature == spec_signature(spec):
        return
    guesses = guess_dinov3_variants(state)
    found = " or ".join(guesses) if guesses else "an unknown DINOv3 variant"
    advice = f": choose the backbone {guesses[0]}" if guesses else ""
    raise WeightsError(
        f"{path}: the checkpoint is {found} ({describe_signature(signature)}) but the backbone is {spec.name} "
        f"({describe_signature(spec_signature(spec))}){advice}"
    )


def load_dinov3_weights(model: Dinov3VisionTransformer, spec: Dinov3Spec, path) -> None:
    """Meta's released file (or any state dict in its layout) into `model`, strictly."""
    state = read_backbone_state(model, spec.name, path)
    check_dinov3_compatible(state, spec, path)
    load_state_dict_strictly(model, state, spec.name, path, optional=OPTIONAL_BUFFERS)
