"""Mask-classification segmentation head (`seg_mask`): a plain mask transformer on the frozen backbone.

The design of PMT's decoder (tue-mps/pmt, image/models/pmd.py and pmt.py: a plain mask decoder on a
frozen DINOv3 encoder, 58.5 ADE20K mIoU with ViT-L/16 at 512²) with Mask2Former's outputs:

    FeatureMaps of L blocks (patch maps B×D×h×w, class tokens B×D)
      → per block: BatchNorm over its tokens, x + MLP(x) (D → D/2 → D), × a learned per-channel scale;
        the L blocks summed (PMT's lateral projections)
      → the sequence [Q learned queries, class token, h·w patch tokens] through `num_blocks` pre-norm
        transformer blocks: self-attention over the whole sequence (queries and patches both updated),
        the backbone's axial RoPE on the patch tokens, an MLP of mlp_ratio × D
      → LayerNorm; per query, class logits (K + 1: the last is "no object") and a mask embedding
        (3-layer MLP); the patch tokens upsampled 2^upscale × (ConvTranspose 2×2, GELU, depthwise 3×3,
        LayerNorm per step); mask logits = mask embedding · upsampled pixel embedding, B×Q×(h·2^u)×(w·2^u)

forward returns MaskPredictions (dense/core/mask_predictions.py). In training: one prediction before every
block and one after the last (num_blocks + 1), for the deep supervision of the loss
(dense/tasks/mask_loss.py); in eval mode: the final prediction only. DenseModel turns the final one into
Mask2Former's semantic scores B×K×H×W (softmax over classes without "no object" × sigmoid masks,
summed over queries) at the image size, so evaluation, prediction, sliding windows, scales, flips and
export see a B×K×H×W output as from the linear heads.

Where we differ from PMT's published code, on purpose:
- no masked attention: PMT masks each query's attention to its previous mask in training and anneals
  the masking away by the end of training (attn_mask_annealing_*); its inference runs unmasked, as
  ours always does;
- default blocks: the FOUR_EVEN_INTERVALS set, which is PMT's for ViT-S/B (2, 5, 8, 11); for ViT-L
  PMT reads 5, 11, 17, 23 and the set gives 4, 11, 17, 23 (head.layers=[5,11,17,23] matches it);
- the class token is the only prefix token (FeatureMaps carries no registers / storage tokens; PMT
  feeds all of them through the decoder);
- `upscale` 2 for every patch size (PMT: 2 for patch 16, 1 for patch 14), the decoder's RoPE
  coordinates are not augmented in training, and `num_heads` defaults to D / 64 (the backbone's for
  every size but ViT-7B, which has 32 heads of 128).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dense.core.features import FeatureMaps, LayerSet
from dense.core.mask_predictions import MaskPredictions
from dense.core.ops import RopePositionEmbedding, rotate_patch_tokens
from heads._common import check_features
from heads.registry import register_head

# Bounds on the sizes a config (or a checkpoint's stored config) may ask for, checked before any
# module is built.
MAX_QUERIES = 4096
MAX_BLOCKS = 64
MAX_UPSCALE = 4
MAX_MLP_RATIO = 16.0


class DecoderBlock(nn.Module):
    """Pre-norm transformer block over [queries, prefix tokens, patches]: self-attention with RoPE on
    the patch tokens, then an MLP; both behind a learned per-channel scale (1 at init, as PMT's)."""

    def __init__(self, dim: int, num_heads: int, hidden: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale1 = nn.Parameter(torch.ones(dim))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.scale2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if rope is not None:
            sin, cos = rope
            q, k = rotate_patch_tokens(q, sin, cos), rotate_patch_tokens(k, sin, cos)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
        x = x + self.scale1 * self.proj(attended)
        return x + self.scale2 * self.mlp(self.norm2(x))


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a B×C×H×W map (timm's LayerNorm2d)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def upscale_step(dim: int) -> nn.Sequential:
    """One 2× upsampling of the pixel embedding (PMT's ScaleBlock)."""
    return nn.Sequential(
        nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
        nn.GELU(),
        nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False),
        ChannelNorm(dim),
    )


def _bounded_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} must be an integer from {low} to {high}")
    return value


@register_head(
    "seg_mask",
    task="segmentation",
    layer_set=LayerSet.FOUR_EVEN_INTERVALS,
    norm=True,
    use_cls_token=True,
    test_options={"num_queries": 16, "num_blocks": 2},  # instead of 100 and 6: the same ops, fewer copies
)
class MaskSegHead(nn.Module):
    """FeatureMaps → MaskPredictions: Q queries, each a class (K + "no object") and a mask (module docstring).

    Options: num_classes (K), num_queries (100, PMT's ADE20K config), num_blocks (6), num_heads
    (D / 64), mlp_ratio (1.0: PMT's hidden_dim = D for S, B and L), upscale (2: masks at 1/4 of the
    patch grid's stride), rope (true: the backbone's axial RoPE on the decoder's patch tokens).
    """

    # How DenseModel's inference averages this head's outputs: Mask2Former's scores, as they are
    # (the linear heads' "logits" are softmaxed first). dense/core/mask_predictions.py says why.
    seg_output = "scores"

    def __init__(
        self,
        embed_dim: int,
        num_classes: int | None = None,
        num_layers: int = 4,
        use_cls_token: bool = True,
        num_queries: int = 100,
        num_blocks: int = 6,
        num_heads: int | None = None,
        mlp_ratio: float = 1.0,
        upscale: int = 2,
        rope: bool = True,
    ):
        super().__init__()
        if num_classes is None:
            raise ValueError("MaskSegHead needs num_classes (the number of classes it predicts)")
        _bounded_int("num_classes", num_classes, 1, MAX_QUERIES)
        _bounded_int("num_layers", num_layers, 1, MAX_BLOCKS)
        _bounded_int("num_queries", num_queries, 1, MAX_QUERIES)
        _bounded_int("num_blocks", num_blocks, 1, MAX_BLOCKS)
        _bounded_int("upscale", upscale, 0, MAX_UPSCALE)
        num_heads = max(1, embed_dim // 64) if num_heads is None else num_heads
        _bounded_int("num_heads", num_heads, 1, embed_dim)
        if embed_dim % num_heads or (rope and (embed_dim // num_heads) % 4):
            raise ValueError(
                f"num_heads={num_heads} must divide the {embed_dim}-dim features into heads of a width "
                "divisible by 4 (RoPE's pairs)"
            )
        if (
            isinstance(mlp_ratio, bool)
            or not isinstance(mlp_ratio, int | float)
            or not 0 < mlp_ratio <= MAX_MLP_RATIO
        ):
            raise ValueError(f"mlp_ratio={mlp_ratio!r} must be a number in (0, {MAX_MLP_RATIO:g}]")
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.num_layers = num_layers
        self.use_cls_token = bool(use_cls_token)
        self.num_queries = num_queries
        self.num_prefix = 1 if self.use_cls_token else 0

        # Lateral projections, one per backbone block (PMT: lateral_bn, lateral_projection "mlp",
        # residual_projection, scalers).
        self.lateral_norms = nn.ModuleList(nn.BatchNorm1d(embed_dim) for _ in range(num_layers))
        self.lateral_mlps = nn.ModuleList(
            nn.Sequential(
                nn.Linear(embed_dim, embed_dim // 2), nn.GELU(), nn.Linear(embed_dim // 2, embed_dim)
            )
            for _ in range(num_layers)
        )
        self.lateral_scales = nn.ParameterList(nn.Parameter(torch.ones(embed_dim)) for _ in range(num_layers))

        self.queries = nn.Embedding(num_queries, embed_dim)
        hidden = max(1, int(embed_dim * mlp_ratio))
        self.blocks = nn.ModuleList(DecoderBlock(embed_dim, num_heads, hidden) for _ in range(num_blocks))
        self.rope = RopePositionEmbedding(embed_dim // num_heads) if rope else None
        self.norm = nn.LayerNorm(embed_dim)

        self.class_head = nn.Linear(embed_dim, num_classes + 1)
        self.mask_head = nn.Sequential(
            nn.Linear(embed_dim, embed_dim),
            nn.GELU(),
            nn.Linear(embed_dim, embed_dim),
            nn.GELU(),
            nn.Linear(embed_dim, embed_dim),
        )
        self.upscale = nn.Sequential(*(upscale_step(embed_dim) for _ in range(upscale)))

    def tokens(self, features: FeatureMaps) -> torch.Tensor:
        """[class token,] patch tokens B×(prefix + h·w)×D: the lateral projections of every block, summed."""
        total = None
        for i, patches in enumerate(features.patches):
            B, D = patches.shape[:2]
            # B×D×h×w (channels-last from DenseModel) → B×h·w×D: a view of the tokens' own layout.
            x = patches.permute(0, 2, 3, 1).reshape(B, -1, D)
            if self.use_cls_token:
                x = torch.cat((features.cls_tokens[i][:, None, :], x), dim=1)
            x = self.lateral_norms[i](x.transpose(1, 2)).transpose(1, 2)  # statistics over batch and tokens
            x = (x + self.lateral_mlps[i](x)) * self.lateral_scales[i]
            total = x if total is None else total + x
        return total

    def predict(self, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits B×Q×(K+1) and mask logits B×Q×H'×W' from the decoder's sequence."""
        x = self.norm(x)
        queries = x[:, : self.num_queries]
        B, _, D = x.shape
        h, w = grid
        patches = x[:, self.num_queries + self.num_prefix :].transpose(1, 2).reshape(B, D, h, w)
        pixels = self.upscale(patches)  # B×D×H'×W'
        height, width = pixels.shape[-2:]
        masks = self.mask_head(queries) @ pixels.reshape(B, D, height * width)
        return self.class_head(queries), masks.reshape(B, -1, height, width)

    def forward(self, features: FeatureMaps) -> MaskPredictions:
        check_features(
            features,
            head="MaskSegHead",
            embed_dim=self.embed_dim,
            num_layers=self.num_layers,
            use_cls_token=self.use_cls_token,
        )
        grid = features.grid
        tokens = self.tokens(features)
        queries = self.queries.weight[None].expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        x = torch.cat((queries, tokens), dim=1)
        rope = self.rope(*grid) if self.rope is not None else None
        predictions = []
        for block in self.blocks:
            if self.training:  # deep supervision: every block's input is scored too
                predictions.append(self.predict(x, grid))
            x = block(x, rope)
        predictions.append(self.predict(x, grid))
        class_logits, mask_logits = zip(*predictions)
        return MaskPredictions(tuple(class_logits), tuple(mask_logits))

    def extra_repr(self) -> str:
        return f"layers={self.num_layers}, queries={self.num_queries}, blocks={len(self.blocks)}"
