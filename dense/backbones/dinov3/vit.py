"""The DINOv3 vision transformer: our own compact layers whose parameter and buffer names are the keys
of Meta's released files, so they load with `load_state_dict(strict=True)` and no translation.

What differs from DINOv2 (dense/backbones/dinov2/vit.py), as Meta's code builds it (facebookresearch/dinov3,
dinov3/models/vision_transformer.py and dinov3/layers/):
- patch 16 and no learned position embedding: rotary embeddings (RoPE) on the patch tokens' queries
  and keys, with a fixed `rope_embed.periods` buffer;
- 4 "storage" tokens (DINOv2's registers) after the class token: [CLS, storage×4, patches];
- a `bias_mask` buffer on the qkv projection that zeroes the key bias (with RoPE the key bias is not
  a no-op, since it is rotated with the key);
- LayerScale 1e-5 at init, LayerNorm eps 1e-5 ("layernormbf16"), SwiGLU with separate w1/w2/w3;
- optional extra norms: `local_cls_norm` (training only, never used at inference) and `cls_norm`
  (class and storage tokens normed apart from the patches).

The parts that do not depend on how positions are encoded (the size check, block selection,
get_intermediate_layers, the FLOP count) are DINOv2's, shared rather than copied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dense.backbones.dinov2.vit import DinoVisionTransformer, LayerScale, Mlp, PatchEmbed, Tokens
from dense.core.ops import RopePositionEmbedding, rotate_patch_tokens

# The ffn_layer names of upstream's hub functions and the multiple their SwiGLU hidden width is
# rounded up to (dinov3/models/vision_transformer.py, ffn_layer_dict; dinov3/layers/ffn_layers.py).
SWIGLU_ALIGN = {"swiglu": 8, "swiglu64": 64}
LAYERNORM_EPS = 1e-5  # every hub function asks for "layernormbf16", which is nn.LayerNorm(eps=1e-5)


def ffn_hidden_features(dim: int, ffn: str, ffn_ratio: float) -> int:
    """Hidden width of a block's feed-forward, as upstream derives it from the ratio.

    SelfAttentionBlock (dinov3/layers/block.py) passes int(dim · ratio); SwiGLUFFN then keeps 2/3 of
    it (the gated pair costs what one MLP layer would) and rounds up to its alignment. ViT-7B:
    int(int(4096 · 3) · 2/3) = 8192, already a multiple of 64.
    """
    hidden = int(dim * ffn_ratio)
    if ffn == "mlp":
        return hidden
    if ffn not in SWIGLU_ALIGN:
        raise ValueError(f"unknown DINOv3 ffn '{ffn}': choose mlp, {', '.join(SWIGLU_ALIGN)}")
    d = int(hidden * 2 / 3)
    return d + (-d % SWIGLU_ALIGN[ffn])


# ---- layers ---------------------------------------------------------------------------------------


class MaskedKeyBiasLinear(nn.Linear):
    """The qkv projection with upstream's `bias_mask` buffer (LinearKMaskedBias in
    dinov3/layers/attention.py): bias · mask, where the mask is 1 for q and v and 0 for k."""

    def __init__(self, dim: int):
        super().__init__(dim, 3 * dim)
        self.register_buffer("bias_mask", self.default_bias_mask(), persistent=True)

    def default_bias_mask(self) -> torch.Tensor:
        dim = self.in_features
        mask = torch.ones(3 * dim)
        mask[dim : 2 * dim] = 0
        return mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias * self.bias_mask.to(self.bias.dtype))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        # Every hub function sets mask_k_bias=True; with qkv_bias=False (ViT-7B) there is no bias to mask.
        self.qkv = MaskedKeyBiasLinear(dim) if qkv_bias else nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        sin, cos = rope
        q, k = rotate_patch_tokens(q, sin, cos), rotate_patch_tokens(k, sin, cos)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class SwiGLU(nn.Module):
    """out = w3(silu(w1 x) · w2 x), with separate w1 and w2 (DINOv2's ViT-g fused them as w12)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class Block(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, ffn: str, ffn_ratio: float, qkv_bias: bool, layerscale: float
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ls1 = LayerScale(dim, layerscale)
        self.norm2 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        hidden = ffn_hidden_features(dim, ffn, ffn_ratio)
        self.mlp = Mlp(dim, hidden) if ffn == "mlp" else SwiGLU(dim, hidden)
        self.ls2 = LayerScale(dim, layerscale)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


# ---- the model ------------------------------------------------------------------------------------


class Dinov3VisionTransformer(nn.Module):
    """DINOv3 ViT, patch 16. Sequence = [CLS, storage tokens, patches]; no position embedding is
    added: positions enter through RoPE in every attention layer. Any input whose sides are multiples
    of 16 works (RoPE coordinates are normalised to the grid, nothing is interpolated).

    untie_cls_and_patch_norms: a separate `cls_norm` for the class and storage tokens, as upstream's
        option of that name (no hub function sets it).
    untie_global_and_local_cls_norm: adds upstream's `local_cls_norm`, which training applies to the
        local crops' class tokens and inference never uses (vitl16 SAT-493M and both ViT-7B files
        hold it). The features are those of the plain model.
    """

    # Shared with DINOv2: they only use patch_size, n_blocks, embed_dim, num_register_tokens, blocks
    # and get_intermediate_tokens.
    check_input_size = DinoVisionTransformer.check_input_size
    _block_indices = DinoVisionTransformer._block_indices
    get_intermediate_layers = DinoVisionTransformer.get_intermediate_layers
    flops_per_image = DinoVisionTransformer.flops_per_image

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        ffn: str = "mlp",
        ffn_ratio: float = 4.0,
        qkv_bias: bool = True,
        n_storage_tokens: int = 4,
        untie_cls_and_patch_norms: bool = False,
        untie_global_and_local_cls_norm: bool = False,
        patch_size: int = 16,
        rope_base: float = 100.0,
        layerscale_init: float = 1e-5,
    ):
        super().__init__()
        if embed_dim % (4 * num_heads):
            raise ValueError(
                f"embed_dim {embed_dim} must be a multiple of 4 × num_heads ({4 * num_heads}) for RoPE"
            )
        if n_storage_tokens < 1:
            raise ValueError("every DINOv3 ViT has storage tokens: n_storage_tokens must be at least 1")
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.n_blocks = depth
        self.num_heads = num_heads
        self.n_storage_tokens = n_storage_tokens
        self.num_register_tokens = n_storage_tokens  # the name DenseModel and the DINOv2 code use
        self.layerscale_init = layerscale_init

        # Registered in upstream's order, so that state_dict() lists the keys as Meta's files do.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, n_storage_tokens, embed_dim))
        # Unused at inference (upstream adds 0 · mask_token to the class token), kept for strict loading.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.rope_embed = RopePositionEmbedding(embed_dim // num_heads, rope_base)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, ffn, ffn_ratio, qkv_bias, layerscale_init) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LAYERNORM_EPS)
        self.cls_norm = nn.LayerNorm(embed_dim, eps=LAYERNORM_EPS) if untie_cls_and_patch_norms else None
        self.local_cls_norm = (
            nn.LayerNorm(embed_dim, eps=LAYERNORM_EPS) if untie_global_and_local_cls_norm else None
        )
        self.init_weights()

    def init_weights(self):
        """Upstream's random initialisation (DinoVisionTransformer.init_weights, init_weights_vit);
        only used when no weights are loaded."""
        self.rope_embed.periods.copy_(self.rope_embed.default_periods())
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.storage_tokens, std=0.02)
        nn.init.zeros_(self.mask_token)
        # PatchEmbed.reset_parameters: weight and bias uniform in ±1/sqrt(fan_in).
        bound = 1 / math.sqrt(3 * self.patch_size**2)
        nn.init.uniform_(self.patch_embed.proj.weight, -bound, bound)
        nn.init.uniform_(self.patch_embed.proj.bias, -bound, bound)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
                if isinstance(module, MaskedKeyBiasLinear):
                    module.bias_mask.copy_(module.default_bias_mask())
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
            elif isinstance(module, LayerScale):
                nn.init.constant_(module.gamma, self.layerscale_init)

    # ---- tokens -------------------------------------------------------------------------------------

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        self.check_input_size(H, W)
        patches = self.patch_embed(x)
        return torch.cat(
            (self.cls_token.expand(B, -1, -1), self.storage_tokens.expand(B, -1, -1), patches), dim=1
        )

    def split_tokens(self, x: torch.Tensor, norm: bool) -> Tokens:
        """One block's output as Tokens, through the final norm(s) when `norm` (upstream's
        get_intermediate_layers: cls_norm for class and storage tokens when untied, else norm for all)."""
        r = 1 + self.n_storage_tokens
        prefix, patches = x[:, :r], x[:, r:]
        if norm:
            prefix = (self.cls_norm if self.cls_norm is not None else self.norm)(prefix)
            patches = self.norm(patches)
        return Tokens(cls=prefix[:, 0], registers=prefix[:, 1:], patches=patches)

    # Tokens (class, storage, patches) of the requested blocks: upstream's `return_extra_tokens`.
    get_intermediate_tokens = DinoVisionTransformer.get_intermediate_tokens
    get_token_sets = DinoVisionTransformer.get_token_sets

    def block_outputs(self, x: torch.Tensor, wanted: set[int]) -> dict[int, torch.Tensor]:
        """The raw output of each block in `wanted` (blocks after the last of them are not run)."""
        H, W = x.shape[-2:]
        x = self.prepare_tokens(x)
        rope = self.rope_embed(H // self.patch_size, W // self.patch_size)
        outputs: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            x = block(x, rope)
            if i in wanted:
                outputs[i] = x
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The final normalised class token (B×D), as upstream's backbone returns at inference."""
        return self.get_intermediate_tokens(x, 1, norm=True)[0].cls
