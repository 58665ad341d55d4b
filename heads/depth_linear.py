"""Linear depth head: depth as the expectation of a per-pixel distribution over fixed depth bins.

Same function as DINOv2's `BNHead(classify=True)` (the "linear" and "linear4" depth heads), same
parameter (`conv_depth`), so Meta's released head files load after a prefix strip.

Upstream upsamples every feature map 4× and concatenates them (with the broadcast class token) before
its 1×1 conv: a B×(2·D·layers)×4h×4w tensor, 12k channels for ViT-g linear4. We never build it. A 1×1
conv commutes with bilinear resizing (the interpolation weights of each output pixel sum to 1, so both
the weights and the bias pass through), and the class-token half of the conv is constant over the
grid, i.e. a per-image bias. So: 1×1 conv on the patch grid → add the class-token bias → upsample the
n_bins logits → nonlinearity. Same numbers, a fraction of the memory and time.

Initialisation differs from upstream's in the bias of `conv_depth` only (`init_output`): upstream's
random bias lets a fresh head predict about the middle of the range (5 m for 0–10 m) whatever the data;
here the bias is a bump over the bins that puts the prediction of a pixel at one typical depth (its
features then move it around that). The weights are upstream's (PyTorch's default), and a loaded head
(Meta's released files, a checkpoint) replaces all of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dense.core.features import FeatureMaps, LayerSet
from dense.core.ops import resize
from heads._common import check_features, pointwise_with_global
from heads.registry import register_head

BINS_STRATEGIES = ("UD", "SID")
# How the bin logits become the weights of the expectation (upstream's BinsHead calls it norm_strategy,
# a name that sat beside the model's `norm`, the backbone's final LayerNorm; the old name is accepted).
BIN_WEIGHTINGS = ("linear", "softmax", "sigmoid")


def depth_bins(min_depth: float, max_depth: float, n_bins: int, strategy: str) -> torch.Tensor:
    """Bin centres in metres: "UD" uniform, "SID" log-uniform (spacing-increasing discretisation).

    Upstream's SID is `torch.logspace(min_depth, max_depth)`, i.e. 10**0.001 .. 10**80, which overflows
    to inf in float32: a bug. We implement what SID means, exp(linspace(log min, log max)).
    """
    if strategy == "UD":
        return torch.linspace(min_depth, max_depth, n_bins)
    if strategy == "SID":
        return torch.exp(torch.linspace(math.log(min_depth), math.log(max_depth), n_bins))
    raise ValueError(f"bins_strategy must be one of {BINS_STRATEGIES}, got {strategy!r}")


def bin_expectation(logits: torch.Tensor, bins: torch.Tensor, weighting: str) -> torch.Tensor:
    """Bin logits B×K×H×W → depth B×1×H×W: the logits weight the bins (`weighting`, one of
    BIN_WEIGHTINGS), the depth is the weighted mean of the bin centres."""
    # sum_k w_k·bin_k / sum_k w_k: one division per pixel instead of one per bin. Autocast off, or
    # it would run the einsum (a matmul) in bf16 again.
    with torch.autocast(logits.device.type, enabled=False):
        if weighting == "linear":
            # AdaBins-style weights relu(l_k) + 0.1 (the 0.1 keeps every bin alive). The constant is
            # added to the two sums instead of to all K×H×W weights: one full-size pass fewer.
            weights = F.relu(logits)
            numerator = torch.einsum("bkhw,k->bhw", weights, bins) + 0.1 * bins.sum()
            denominator = weights.sum(dim=1) + 0.1 * len(bins)
        else:
            weights = torch.softmax(logits, dim=1) if weighting == "softmax" else torch.sigmoid(logits)
            numerator, denominator = torch.einsum("bkhw,k->bhw", weights, bins), weights.sum(dim=1)
        depth = numerator / denominator
    return depth.unsqueeze(1)


@register_head(
    "depth_linear4", task="depth", layer_set=LayerSet.FOUR_EVEN_INTERVALS, norm=False, use_cls_token=True
)
@register_head("depth_linear", task="depth", layer_set=LayerSet.LAST, norm=False, use_cls_token=True)
class LinearDepthHead(nn.Module):
    """FeatureMaps (1 or more layers, usually with class tokens) → depth B×1×(upsample·h)×(upsample·w).

    The output is not clamped to [min_depth, max_depth]: DenseModel clamps it at inference only, as
    upstream's DepthEncoderDecoder.encode_decode does; in training the losses see the head's output
    as it is (it lies within the bins anyway). min_depth/max_depth here only place the bins.
    """

    def __init__(
        self,
        embed_dim: int,
        num_layers: int = 1,
        n_bins: int = 256,
        bins_strategy: str = "UD",
        bin_weighting: str = "linear",
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        upsample: int = 4,
        use_cls_token: bool = True,
    ):
        super().__init__()
        if bin_weighting not in BIN_WEIGHTINGS:
            raise ValueError(f"bin_weighting must be one of {BIN_WEIGHTINGS}, got {bin_weighting!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not (isinstance(n_bins, int) and n_bins >= 2):
            raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
        # The logits are upsampled by this factor: bounded, since it sizes every activation after it.
        if not (isinstance(upsample, int) and 1 <= upsample <= 16):
            raise ValueError(f"upsample must be an integer in 1–16 (upstream: 4), got {upsample!r}")
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        self.embed_dim = embed_dim
        self.num_layers = num_layers
        self.use_cls_token = use_cls_token
        self.bin_weighting = bin_weighting
        self.bins_strategy = bins_strategy
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.upsample = upsample
        # Input channel order is upstream's: [patch_0, cls_0, patch_1, cls_1, ...] (cls only if used).
        channels = embed_dim * num_layers * (2 if use_cls_token else 1)
        self.conv_depth = nn.Conv2d(channels, n_bins, kernel_size=1)
        # Not persistent: the bins follow from the constructor arguments, and released files have no such key.
        self.register_buffer(
            "bins", depth_bins(min_depth, max_depth, n_bins, bins_strategy), persistent=False
        )
        self.init_output(max_depth / 4)

    # The bump of init_output: its width over the bins, and the share of the weight it holds (the rest is
    # the 0.1 that every bin keeps under the "linear" weighting, and what the features add).
    BUMP_WIDTH = 1 / 16  # of the bins
    BUMP_SHARE = 0.9

    @torch.no_grad()
    def init_output(self, depth: float) -> None:
        """Set conv_depth's bias so that a pixel whose features add nothing to the logits predicts `depth`
        metres: a Gaussian bump over the bins (1/16 of them wide, holding 90% of the weight under the
        "linear" weighting), its centre placed by bisection so that the expectation over the bins is
        `depth` (the nearest reachable value at the ends of the range). Every bin keeps its weight, so
        the head can still move anywhere in the range."""
        if self.conv_depth.bias.is_meta:
            return  # a head built on the meta device (to check a checkpoint's sizes) holds no values
        # On the CPU, from the constructor's arguments (the head may live on a GPU; under a
        # `with torch.device(...)` block new tensors would go to that device).
        with torch.device("cpu"):
            bins = depth_bins(self.min_depth, self.max_depth, len(self.bins), self.bins_strategy)
            index = torch.arange(len(bins), dtype=torch.float32)
            width = max(len(bins) * self.BUMP_WIDTH, 1.0)
            bump = lambda centre: torch.exp(-0.5 * ((index - centre) / width) ** 2)  # noqa: E731
            share = self.BUMP_SHARE / (1 - self.BUMP_SHARE)
            height = share * 0.1 * len(bins) / float(bump(len(bins) / 2).sum())

            def expectation(centre: float) -> float:
                logits = (height * bump(centre)).view(1, -1, 1, 1)
                return float(bin_expectation(logits, bins, self.bin_weighting))

            low, high = 0.0, float(len(bins) - 1)  # the expectation grows with the bump's centre
            for _ in range(40):
                middle = (low + high) / 2
                low, high = (middle, high) if expectation(middle) < depth else (low, middle)
            bias = height * bump((low + high) / 2)
        self.conv_depth.bias.copy_(bias)

    def forward(self, features: FeatureMaps) -> torch.Tensor:
        check_features(
            features,
            head="LinearDepthHead",
            embed_dim=self.embed_dim,
            num_layers=self.num_layers,
            use_cls_token=self.use_cls_token,
        )
        logits = self.bin_logits(features)
        return self.expected_depth(logits)

    def bin_logits(self, features: FeatureMaps) -> torch.Tensor:
        """Bin logits at upsample× the first map's grid (B×n_bins×H×W), in float32."""
        n_bins, parts = self.conv_depth.out_channels, (2 if self.use_cls_token else 1)
        weight = self.conv_depth.weight.view(n_bins, self.num_layers, parts, self.embed_dim)
        w_patch = weight[:, :, 0].reshape(n_bins, -1)
        w_cls = weight[:, :, 1].reshape(n_bins, -1) if self.use_cls_token else None
        cls = torch.cat(features.cls_tokens, dim=1) if self.use_cls_token else None
        h, w = features.grid
        size = (h * self.upsample, w * self.upsample)

        # Sizes compared, not hashed: a traced (torch.export) size cannot be hashed.
        if all(p.shape[-2:] == features.patches[0].shape[-2:] for p in features.patches):
            # The normal case (all layers of one ViT): one conv, one upsample.
            x = torch.cat(features.patches, dim=1)
            logits = pointwise_with_global(x, w_patch, self.conv_depth.bias, cls, w_cls)
            return self._resize(logits, size)
        # Layers on different grids: upstream resizes each map straight to `size`; the conv commutes with
        # each resize separately, so convolve each layer on its own grid and sum after resizing.
        d = self.embed_dim
        total = pointwise_with_global(features.patches[0], w_patch[:, :d], self.conv_depth.bias, cls, w_cls)
        total = self._resize(total, size)
        for i, patches in enumerate(features.patches[1:], start=1):
            total = total + self._resize(
                pointwise_with_global(patches, w_patch[:, i * d : (i + 1) * d], None), size
            )
        return total

    @staticmethod
    def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # float32 from here on: the bin normalisation and the expectation lose depth resolution in bf16
        # (8 bits of mantissa = centimetres at 10 m), and this part is cheap compared with the backbone.
        return resize(x.float(), size)

    def expected_depth(self, logits: torch.Tensor) -> torch.Tensor:
        """Bin logits B×K×H×W → depth B×1×H×W: normalise over bins, expectation of the bin centres."""
        return bin_expectation(logits, self.bins.float(), self.bin_weighting)

    def extra_repr(self) -> str:
        return (
            f"layers={self.num_layers}, cls_token={self.use_cls_token}, bins={self.bins_strategy}, "
            f"weighting={self.bin_weighting}, depth=[{self.min_depth}, {self.max_depth}], upsample={self.upsample}"
        )
