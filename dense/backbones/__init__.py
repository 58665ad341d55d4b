"""The backbone registry, and the 8 DINOv2 backbones (ViT-S/B/L/g, patch 14, with and without 4
registers) plus tiny test variants. The DINOv3 family registers itself the same way in
dense/backbones/dinov3/specs.py.

Every variant is a spec (a BackboneSpec subclass) registered by `register_backbone` where it is
defined; `build_backbone(name, pretrained=False, weights=None)` builds any of them and
`list_backbones()` names them. Official checkpoints load as Meta publishes them (strictly: every key
used, every shape checked), also in the chunked `blocks.C.I.*` layout and inside training checkpoints.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

import torch

from dense.backbones.dinov2.vit import DinoVisionTransformer
from dense.core.errors import WeightsError
from dense.core.features import LayerSet
from dense.core.registry import Registry
from dense.core.weights_file import check_state_dict, load_weights_file

DINOV2_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneSpec:
    """What every registered backbone variant states (its subclasses are frozen dataclasses).

    Attributes: name, embed_dim, depth, patch_size, num_register_tokens (DINOv3: its storage tokens),
    four_layers (the FOUR_EVEN_INTERVALS blocks), hub_name (None for test variants), test_only,
    image_mean / image_std (the normalisation its weights were trained with). Methods: create() (the
    randomly initialised module), load_weights(model, path) (strict), official_weights_path() and
    check_official_weights() (the released file for pretrained=True).
    """

    family = "backbone"
    patch_size: int
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    def layer_indices(self, layer_set: LayerSet) -> tuple[int, ...]:
        """The 0-based block indices of `layer_set` on this backbone."""
        if layer_set is LayerSet.LAST:
            return (self.depth - 1,)
        if layer_set is LayerSet.FOUR_LAST:
            return tuple(range(self.depth - 4, self.depth))
        if layer_set is LayerSet.FOUR_EVEN_INTERVALS:
            return tuple(self.four_layers)
        raise ValueError(f"layer_set must be a dense.LayerSet, got {layer_set!r}")

    @property
    def last_layer(self) -> tuple[int, ...]:
        return self.layer_indices(LayerSet.LAST)

    @property
    def last_four_layers(self) -> tuple[int, ...]:
        return self.layer_indices(LayerSet.FOUR_LAST)

    def _official(self):
        if self.hub_name is None:
            raise WeightsError(
                f"backbone {self.name} is a test variant with no official weights; use pretrained=False"
            )
        return self


# The DINOv3 variants register themselves in dense/backbones/dinov3/specs.py, loaded at the first lookup.
BACKBONES: Registry[BackboneSpec] = Registry(
    "backbone", "backbone.name", "dense.register_backbone", builtins=("dense.backbones.dinov3.specs",)
)


def register_backbone(spec: BackboneSpec, aliases: tuple[str, ...] = ()) -> BackboneSpec:
    """Register a backbone variant under `spec.name` (and `aliases`, e.g. upstream's spellings) and
    return it. Called where each variant is defined (the spec tables here and in
    dense/backbones/dinov3/specs.py); a variant of your own is a BackboneSpec subclass instance registered
    the same way."""
    return BACKBONES.add(spec.name, spec, tuple(aliases))


def list_backbones(include_test: bool = True) -> list[str]:
    """The registered backbone names, sorted (the tiny test variants too unless include_test=False)."""
    return [name for name in BACKBONES.names() if include_test or not BACKBONES.get(name).test_only]


def resolve_name(name: str) -> str:
    """Canonical variant name; accepts upstream spellings (`dinov2_vitl14_reg`, `vitl14_reg4`,
    `dinov3_vitl16`, `vitl16_sat493m`) in any case (the registry's one name form)."""
    return BACKBONES.canonical(name)


def get_spec(name: str) -> BackboneSpec:
    return BACKBONES.get(resolve_name(name))


def build_backbone(name: str, pretrained: bool = False, weights: str | os.PathLike | None = None):
    """A registered backbone (DINOv2 or DINOv3) by name.

    weights:    a local checkpoint file (takes precedence over `pretrained`), loaded strictly.
    pretrained: the official weights from the torch hub cache (DINOv2: downloaded there when missing;
                DINOv3: gated, never downloaded: a missing file says where to request it).
    Without either, the weights are randomly initialised as upstream does.
    """
    spec = get_spec(name)
    if weights is None and pretrained:
        weights = spec.official_weights_path()  # before building: a missing file is found at once
    model = spec.create()
    if weights is not None:
        spec.load_weights(model, weights)
    return model


def check_official_weights(spec: BackboneSpec, timeout: float = 10.0) -> None:
    """Refuse in a second what build_backbone(pretrained=True) would refuse after a slow build: the
    official file is neither in the torch hub cache nor obtainable. Nothing is downloaded or built."""
    spec.check_official_weights(timeout)


@dataclass(frozen=True)
class Dinov2Spec(BackboneSpec):
    """One DINOv2 variant. `four_layers` holds the 0-based blocks upstream's linear4 and DPT heads read."""

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

    family = "dinov2"
    patch_size = 14

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

    def load_weights(self, model: DinoVisionTransformer, path) -> None:
        load_backbone_weights(model, self, path)

    def official_weights_path(self) -> str:
        return official_weights_path(self)

    def check_official_weights(self, timeout: float = 10.0) -> None:
        path = hub_cache_path(self._official())
        if os.path.isfile(path):
            return
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url, method="HEAD"), timeout=timeout):
                pass
        except (urllib.error.URLError, OSError, ConnectionError) as error:
            raise _cannot_download(self, path, error) from None


DINOV2_NAMES: list[str] = []  # the DINOv2 variants, as registered below
OFFICIAL_NAMES: list[str] = []  # those with official weights (not test_only)


def _register_dinov2(spec: Dinov2Spec) -> None:
    DINOV2_NAMES.append(spec.name)
    if not spec.test_only:
        OFFICIAL_NAMES.append(spec.name)
    aliases = []
    if spec.hub_name is not None:
        aliases.append(spec.hub_name)
        if spec.num_register_tokens:
            aliases += [spec.name + "4", spec.hub_name + "4"]  # vitl14_reg4, dinov2_vitl14_reg4
    register_backbone(spec, aliases)


for _size, _dim, _depth, _heads, _ffn, _four in [
    ("s", 384, 12, 6, "mlp", (2, 5, 8, 11)),
    ("b", 768, 12, 12, "mlp", (2, 5, 8, 11)),
    ("l", 1024, 24, 16, "mlp", (4, 11, 17, 23)),
    ("g", 1536, 40, 24, "swiglu", (9, 19, 29, 39)),
]:
    _timm_arch = {"s": "small", "b": "base", "l": "large", "g": "giant"}[_size]
    for _reg in (False, True):
        _register_dinov2(
            Dinov2Spec(
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
_register_dinov2(Dinov2Spec("tiny14", 48, 4, 3, four_layers=(0, 1, 2, 3), test_only=True))
_register_dinov2(
    Dinov2Spec("tiny14_reg", 48, 4, 3, num_register_tokens=4, four_layers=(0, 1, 2, 3), test_only=True)
)
_register_dinov2(
    Dinov2Spec("tiny14_swiglu", 48, 4, 3, ffn="swiglu", four_layers=(0, 1, 2, 3), test_only=True)
)

DINOV2_NAMES.sort()
OFFICIAL_NAMES.sort()


# ---- official weights ---------------------------------------------------------------------------------


def hub_cache_path(spec: Dinov2Spec) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", spec.url.rsplit("/", 1)[1])


def official_weights_path(spec: Dinov2Spec) -> str:
    """Path of the official file in the torch hub cache, downloading it there if it is not yet present."""
    path = hub_cache_path(spec._official())
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, path, progress=True)
    except (urllib.error.URLError, OSError, ConnectionError) as error:
        raise _cannot_download(spec, path, error) from None
    return path


def _cannot_download(spec: Dinov2Spec, path: str, error: BaseException) -> WeightsError:
    return WeightsError(
        f"could not download the {spec.name} weights ({type(error).__name__}: {error}). Without a network, "
        f"download {spec.url} elsewhere and place it at {path}, or pass its path with "
        "backbone.weights=PATH (train.py, predict.py; in Python: weights=PATH)"
    )


# ---- loading a checkpoint file ------------------------------------------------------------------------

_CHUNKED_KEY = re.compile(r"^blocks\.\d+\.(\d+)\.(.*)$")


def extract_backbone_state_dict(checkpoint: dict, where: str = "the file") -> dict[str, torch.Tensor]:
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
        raise WeightsError(f"{where} holds no state dict of tensors (expected a DINOv2 backbone checkpoint)")
    check_state_dict(state, where)  # names are strings (before they are matched below)
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
    for spec in (BACKBONES.get(name) for name in DINOV2_NAMES):
        if (spec.embed_dim, spec.depth, spec.num_register_tokens, spec.ffn) == (dim, depth, registers, ffn):
            return spec.name
    return "an unknown variant"


def check_compatible(state: dict[str, torch.Tensor], spec: Dinov2Spec) -> None:
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
        raise WeightsError(
            f"checkpoint has {depth} blocks ({guess}) but the backbone is {spec.name} ({spec.depth})"
        )
    if registers != spec.num_register_tokens:
        raise WeightsError(
            f"checkpoint has {registers} register tokens ({guess}) but the backbone is {spec.name} "
            f"({spec.num_register_tokens}): choose the backbone {guess}"
        )
    if ffn != spec.ffn:
        raise WeightsError(
            f"checkpoint uses a {ffn} feed-forward but the backbone {spec.name} uses {spec.ffn}"
        )


def read_backbone_state(model: torch.nn.Module, name: str, path) -> dict[str, torch.Tensor]:
    """The backbone tensors of weights file `path` (any layout extract_backbone_state_dict knows), each
    checked against `model`'s tensor of that name (rank, kind of dtype) before any is looked at: the
    shapes are compared once the file is known to be for this variant (load_state_dict_strictly)."""
    where = os.fspath(path)
    state = extract_backbone_state_dict(load_weights_file(path), where)
    check_state_dict(state, where, model.state_dict(), shape=False, owner=name)
    return state


def load_backbone_weights(model: DinoVisionTransformer, spec: Dinov2Spec, path) -> None:
    state = read_backbone_state(model, spec.name, path)
    check_compatible(state, spec)
    load_state_dict_strictly(model, state, spec.name, path)


def load_state_dict_strictly(model: torch.nn.Module, state: dict, name: str, path, optional=None) -> None:
    """Every key used, every shape checked, one line naming what differs (for any backbone family).
    Keys of the model that match `optional` (a compiled regex) may be absent from `state`: the model's
    own values are kept."""
    expected = model.state_dict()
    absent = set(expected) - set(state)
    missing = sorted(k for k in absent if optional is None or not optional.match(k))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: checkpoint keys do not match {name}: "
            f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}"
        )
    check_state_dict(state, os.fspath(path), expected, owner=name)
    model.load_state_dict({**expected, **state}, strict=True)
