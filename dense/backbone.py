"""The 8 DINOv2 backbones (ViT-S/B/L/g, patch 14, with and without 4 registers), plus tiny test variants.

`build_backbone(name, pretrained=False, weights=None)` is the only entry point. Official checkpoints
load as Meta publishes them (strictly: every key used, every shape checked), also in the chunked
`blocks.C.I.*` layout and inside training checkpoints.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

import torch

from dense._vit import DinoVisionTransformer
from dense.errors import WeightsError, load_weights_file

DINOV2_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"


@dataclass(frozen=True)
class BackboneSpec:
    """One registered variant. `layers` holds the 0-based block indices the official heads read."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str = "mlp"  # "mlp" or "swiglu" (ViT-g)
    num_register_tokens: int = 0
    four_layers: tuple[int, ...] = ()  # linear4 depth and DPT
    hub_name: str | None = None  # e.g. "dinov2_vits14"; None for the test variants (no official file)
    timm_name: str | None = None
    test_only: bool = False

    @property
    def last_layer(self) -> tuple[int, ...]:
        return (self.depth - 1,)

    @property
    def last_four_layers(self) -> tuple[int, ...]:
        return tuple(range(self.depth - 4, self.depth))

    @property
    def url(self) -> str | None:
        if self.hub_name is None:
            return None
        arch = self.hub_name.removesuffix("_reg")
        suffix = "_reg4" if self.num_register_tokens else ""
        return f"{DINOV2_BASE_URL}/{arch}/{arch}{suffix}_pretrain.pth"

    def create(self) -> DinoVisionTransformer:
        registers = self.num_register_tokens > 0
        return DinoVisionTransformer(
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            ffn=self.ffn,
            num_register_tokens=self.num_register_tokens,
            # The two upstream interpolation rules: see DinoVisionTransformer.
            interpolate_offset=0.0 if registers else 0.1,
            interpolate_antialias=registers,
        )


BACKBONES: dict[str, BackboneSpec] = {}


def _register(spec: BackboneSpec) -> None:
    BACKBONES[spec.name] = spec


for _size, _dim, _depth, _heads, _ffn, _four in [
    ("s", 384, 12, 6, "mlp", (2, 5, 8, 11)),
    ("b", 768, 12, 12, "mlp", (2, 5, 8, 11)),
    ("l", 1024, 24, 16, "mlp", (4, 11, 17, 23)),
    ("g", 1536, 40, 24, "swiglu", (9, 19, 29, 39)),
]:
    _timm_arch = {"s": "small", "b": "base", "l": "large", "g": "giant"}[_size]
    for _reg in (False, True):
        _register(
            BackboneSpec(
                name=f"vit{_size}14" + ("_reg" if _reg else ""),
                embed_dim=_dim,
                depth=_depth,
                num_heads=_heads,
                ffn=_ffn,
                num_register_tokens=4 if _reg else 0,
                four_layers=_four,
                hub_name=f"dinov2_vit{_size}14" + ("_reg" if _reg else ""),
                timm_name=f"vit_{_timm_arch}_patch14_{'reg4_' if _reg else ''}dinov2",
            )
        )

# Tiny variants for tests: the same code paths (both interpolation rules, registers, SwiGLU) in milliseconds.
_register(BackboneSpec("tiny14", 48, 4, 3, four_layers=(0, 1, 2, 3), test_only=True))
_register(BackboneSpec("tiny14_reg", 48, 4, 3, num_register_tokens=4, four_layers=(0, 1, 2, 3), test_only=True))
_register(BackboneSpec("tiny14_swiglu", 48, 4, 3, ffn="swiglu", four_layers=(0, 1, 2, 3), test_only=True))

OFFICIAL_NAMES = [name for name, spec in BACKBONES.items() if not spec.test_only]


def resolve_name(name: str) -> str:
    """Canonical variant name; accepts upstream spellings such as `dinov2_vitl14_reg` or `vitl14_reg4`."""
    key = name.strip().lower().removeprefix("dinov2_")
    key = re.sub(r"_reg4$", "_reg", key)
    if key not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}': choose one of {', '.join(BACKBONES)}")
    return key


def get_spec(name: str) -> BackboneSpec:
    return BACKBONES[resolve_name(name)]


def build_backbone(name: str, pretrained: bool = False, weights: str | os.PathLike | None = None):
    """A DINOv2 backbone by name.

    pretrained: download the official weights into the torch hub cache (or use them from there).
    weights:    a local checkpoint file (takes precedence over `pretrained`).
    Without either, the weights are randomly initialised as upstream does.
    """
    spec = get_spec(name)
    model = spec.create()
    if weights is not None:
        load_backbone_weights(model, spec, weights)
    elif pretrained:
        load_backbone_weights(model, spec, official_weights_path(spec))
    return model


# ---- official weights ---------------------------------------------------------------------------------


def hub_cache_path(spec: BackboneSpec) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", spec.url.rsplit("/", 1)[1])


def official_weights_path(spec: BackboneSpec) -> str:
    """Path of the official file in the torch hub cache, downloading it there if it is not yet present."""
    path = hub_cache_path(_official(spec))
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, path, progress=True)
    except (urllib.error.URLError, OSError, ConnectionError) as error:
        raise _cannot_download(spec, path, error) from None
    return path


def check_official_weights(spec: BackboneSpec, timeout: float = 10.0) -> None:
    """Refuse in a second what official_weights_path would refuse after the backbone was built: the file
    is neither in the torch hub cache nor downloadable (a HEAD request to its URL, through the same
    proxies as the download). Nothing is downloaded or built here."""
    path = hub_cache_path(_official(spec))
    if os.path.isfile(path):
        return
    try:
        with urllib.request.urlopen(urllib.request.Request(spec.url, method="HEAD"), timeout=timeout):
            pass
    except (urllib.error.URLError, OSError, ConnectionError) as error:
        raise _cannot_download(spec, path, error) from None


def _official(spec: BackboneSpec) -> BackboneSpec:
    if spec.url is None:
        raise WeightsError(f"backbone {spec.name} is a test variant with no official weights; use pretrained=False")
    return spec


def _cannot_download(spec: BackboneSpec, path: str, error: BaseException) -> WeightsError:
    return WeightsError(
        f"could not download the {spec.name} weights ({type(error).__name__}: {error}). Without a network, "
        f"download {spec.url} elsewhere and place it at {path}, or pass its path with "
        "weights=PATH (config: backbone.weights=PATH)"
    )


# ---- loading a checkpoint file ------------------------------------------------------------------------

_CHUNKED_KEY = re.compile(r"^blocks\.\d+\.(\d+)\.(.*)$")


def extract_backbone_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The plain official key layout from any of the shapes a DINOv2 checkpoint comes in.

    - a plain state dict (the published files);
    - a training checkpoint holding it under "model", "teacher" or "state_dict";
    - keys prefixed with `backbone.` (training checkpoints also hold heads: only the backbone is kept);
    - the chunked layout `blocks.C.I.*` of FSDP training runs (I is the global block index).
    """
    state = checkpoint
    for wrapper in ("teacher", "model", "state_dict"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError("the file holds no state dict of tensors (expected a DINOv2 backbone checkpoint)")
    for prefix in ("module.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    unchunked = {}
    for key, value in state.items():
        match = _CHUNKED_KEY.match(key)
        unchunked[f"blocks.{match.group(1)}.{match.group(2)}" if match else key] = value
    return unchunked


def describe_state_dict(state: dict[str, torch.Tensor]) -> tuple[int | None, int, int, str]:
    """(embed dim, number of blocks, register tokens, ffn) of a checkpoint, for error messages."""
    dim = state["cls_token"].shape[-1] if "cls_token" in state else None
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))}
    registers = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    ffn = "swiglu" if any(".mlp.w12." in k for k in state) else "mlp"
    return dim, len(blocks), registers, ffn


def _guess_variant(dim, depth, registers, ffn) -> str:
    for spec in BACKBONES.values():
        if (spec.embed_dim, spec.depth, spec.num_register_tokens, spec.ffn) == (dim, depth, registers, ffn):
            return spec.name
    return "an unknown variant"


def check_compatible(state: dict[str, torch.Tensor], spec: BackboneSpec) -> None:
    """One clear line when a checkpoint is for another variant, before any key-by-key comparison."""
    dim, depth, registers, ffn = describe_state_dict(state)
    if dim is None:
        raise WeightsError("the file has no 'cls_token': it is not a DINOv2 backbone checkpoint")
    guess = _guess_variant(dim, depth, registers, ffn)
    if dim != spec.embed_dim:
        raise WeightsError(
            f"checkpoint has embed dim {dim} ({guess}) but the backbone is {spec.name} ({spec.embed_dim})"
        )
    if depth != spec.depth:
        raise WeightsError(f"checkpoint has {depth} blocks ({guess}) but the backbone is {spec.name} ({spec.depth})")
    if registers != spec.num_register_tokens:
        raise WeightsError(
            f"checkpoint has {registers} register tokens ({guess}) but the backbone is {spec.name} "
            f"({spec.num_register_tokens}): choose the backbone {guess}"
        )
    if ffn != spec.ffn:
        raise WeightsError(f"checkpoint uses a {ffn} feed-forward but the backbone {spec.name} uses {spec.ffn}")


def load_backbone_weights(model: DinoVisionTransformer, spec: BackboneSpec, path) -> None:
    state = extract_backbone_state_dict(load_weights_file(path))
    check_compatible(state, spec)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: checkpoint keys do not match {spec.name}: "
            f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise WeightsError(
                f"{path}: '{key}' has shape {tuple(value.shape)} but {spec.name} expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=True)
