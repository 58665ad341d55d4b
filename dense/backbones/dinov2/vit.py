"""The DINOv2 vision transformer: compact layers whose parameter names are the official checkpoint's.

Why our own module rather than timm's `VisionTransformer`: the official files then load with
`load_state_dict(strict=True)` and no key translation, and the position-embedding interpolation of the
plain (non-register) models can follow upstream exactly (timm's size-based resize differs from it at
every size but 518; see the README, "Backbones"). timm is still the independent reference in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dense.core.install_check import import_torchvision

import_torchvision()  # timm imports torchvision: a torchvision built for another torch is named in one line
from timm.layers import trunc_normal_  # noqa: E402


class PatchEmbed(nn.Module):
    """Non-overlapping patch × patch convolution; B×3×H×W → B×(H/p·W/p)×D."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        # Fused attention (flash / memory-efficient kernels on GPU); same maths as upstream's softmax(qk^T/√d)v.
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """ViT-g's feed-forward: w12 projects to two halves x1, x2; out = w3(silu(x1) · x2)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float = 1.0):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        if ffn == "swiglu":
            # Upstream's SwiGLUFFNFused: hidden = 2/3 of 4·D, rounded up to a multiple of 8 (4096 for ViT-g).
            self.mlp = SwiGLU(dim, (int(4 * dim * 2 / 3) + 7) // 8 * 8)
        else:
            self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


@dataclass
class Tokens:
    """The output tokens of one block, split by kind."""

    cls: torch.Tensor  # B×D
    registers: torch.Tensor  # B×R×D (R = 0 for the plain models)
    patches: torch.Tensor  # B×(h·w)×D


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT with patch 14. Sequence = [CLS, registers, patches]; registers get no position embedding.

    Position embeddings are stored for a 37×37 grid (518×518 input) and interpolated for other sizes
    by one of upstream's two rules:
    - plain models (`interpolate_offset=0.1`, no antialias): bicubic with
      scale_factor = ((h + 0.1) / 37, (w + 0.1) / 37), a historical work-around kept for parity;
    - register models (`interpolate_offset=0`, antialias): bicubic to size (h, w).
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        ffn: str = "mlp",
        num_register_tokens: int = 0,
        patch_size: int = 14,
        img_size: int = 518,
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.n_blocks = depth
        self.num_register_tokens = num_register_tokens
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias
        self.pos_grid = img_size // patch_size

        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid**2, embed_dim))
        if num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        else:
            self.register_tokens = None
        # Unused at inference, kept so that official checkpoints load strictly and round-trip.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, ffn) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.init_weights()

    def init_weights(self):
        """Upstream's random initialisation (only used when no weights are loaded)."""
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    # ---- tokens -------------------------------------------------------------------------------------

    def interpolate_pos_encoding(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings (1 × (1 + h·w) × D) for an h×w patch grid, computed in fp32."""
        M = self.pos_grid
        if (h, w) == (M, M):
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
        grid = patch_pos.reshape(1, M, M, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            scale = ((h + self.interpolate_offset) / M, (w + self.interpolate_offset) / M)
            grid = F.interpolate(
                grid, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias
            )
        else:
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=self.interpolate_antialias)
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat((cls_pos, patch_pos), dim=1).to(self.pos_embed.dtype)

    def check_input_size(self, height: int, width: int) -> None:
        p = self.patch_size
        if height % p or width % p or height < p or width < p:

            def nearest(n: int) -> str:
                lower, upper = (n // p) * p, (n // p + 1) * p
                return f"{upper}" if lower == 0 else f"{lower} or {upper}"

            raise ValueError(
                f"input size {height}×{width} is not a multiple of the patch size {p}: use "
                f"{nearest(height)} for the height and {nearest(width)} for the width, "
                "or use dense.build_model(...), which pads any size"
            )

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        self.check_input_size(H, W)
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(B, -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(H // self.patch_size, W // self.patch_size)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(B, -1, -1)
            tokens = torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)
        return tokens

    def _block_indices(self, n: int | list[int] | tuple[int, ...]) -> list[int]:
        """Upstream semantics: an int n means the last n blocks, a sequence means those 0-based blocks."""
        if isinstance(n, int):
            if not 1 <= n <= self.n_blocks:
                raise ValueError(
                    f"n={n}: this backbone has {self.n_blocks} blocks, ask for 1 to {self.n_blocks}"
                )
            return list(range(self.n_blocks - n, self.n_blocks))
        indices = [int(i) for i in n]
        bad = [i for i in indices if not 0 <= i < self.n_blocks]
        if bad:
            raise ValueError(
                f"block indices {bad} do not exist: this backbone has blocks 0 to {self.n_blocks - 1}"
            )
        return indices

    def get_intermediate_tokens(
        self, x: torch.Tensor, n: int | list[int] | tuple[int, ...] = 1, norm: bool = True
    ) -> list[Tokens]:
        """Tokens (class, registers, patches) of the requested blocks, in the order asked for.

        This is how to get the register tokens, which `get_intermediate_layers` never returns.
        Blocks after the last requested one are not run.
        """
        return self.get_token_sets(x, {bool(norm): n})[bool(norm)]

    def get_token_sets(
        self, x: torch.Tensor, requests: dict[bool, int | list[int]]
    ) -> dict[bool, list[Tokens]]:
        """get_intermediate_tokens for several settings of `norm` from one pass over the blocks:
        {norm: blocks} → {norm: their Tokens} (a multi-head model whose heads differ in `norm`)."""
        wanted = {norm: self._block_indices(n) for norm, n in requests.items()}
        outputs = self.block_outputs(x, {i for blocks in wanted.values() for i in blocks})
        return {
            norm: [self.split_tokens(outputs[i], norm) for i in blocks] for norm, blocks in wanted.items()
        }

    def block_outputs(self, x: torch.Tensor, wanted: set[int]) -> dict[int, torch.Tensor]:
        """The raw output of each block in `wanted` (blocks after the last of them are not run)."""
        x = self.prepare_tokens(x)
        outputs: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            x = block(x)
            if i in wanted:
                outputs[i] = x
        return outputs

    def split_tokens(self, x: torch.Tensor, norm: bool) -> Tokens:
        """One block's output as Tokens, through the final norm when `norm`."""
        x = self.norm(x) if norm else x
        r = 1 + self.num_register_tokens
        return Tokens(cls=x[:, 0], registers=x[:, 1:r], patches=x[:, r:])

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | list[int] | tuple[int, ...] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ):
        """Upstream's API: patch tokens (B×N×D, or B×D×h×w with reshape) of the requested blocks,
        each paired with its class token (B×D) when `return_class_token`. Registers are never returned."""
        B, _, H, W = x.shape
        h, w = H // self.patch_size, W // self.patch_size
        tokens = self.get_intermediate_tokens(x, n, norm)
        patches = [t.patches for t in tokens]
        if reshape:
            patches = [p.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, [t.cls for t in tokens]))
        return tuple(patches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The final normalised class token (B×D), as upstream's backbone returns."""
        return self.get_intermediate_tokens(x, 1, norm=True)[0].cls

    def flops_per_image(self, height: int, width: int) -> float:
        """Forward FLOPs (2·multiply-adds) of the backbone on one image: matmuls and attention."""
        n = 1 + self.num_register_tokens + (height // self.patch_size) * (width // self.patch_size)
        d = self.embed_dim
        mlp = self.blocks[0].mlp
        ffn = sum(m.weight.numel() for m in mlp.modules() if isinstance(m, nn.Linear))
        per_block = 2 * n * (4 * d * d + ffn) + 2 * 2 * n * n * d
        patch = 2 * (n - 1 - self.num_register_tokens) * 3 * self.patch_size**2 * d
        return float(self.n_blocks * per_block + patch)
