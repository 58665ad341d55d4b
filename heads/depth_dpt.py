"""DPT depth head (Ranftl et al. 2021) as DINOv2 builds it for its "dpt" depth heads.

Same function as upstream's `DPTHead` built by `_make_dinov2_dpt_depther` (readout "project",
post-process channels [D/8, D/4, D/2, D], 256 fusion channels, no norm layers), and same module names,
so the released `decode_head.*` weights load after a prefix strip:

    reassemble_blocks.{projects.i.conv, resize_layers.i, readout_projects.i.0}
    convs.i.conv
    fusion_blocks.i.{project.conv, res_conv_unit1.conv{1,2}.conv, res_conv_unit2.conv{1,2}.conv}
    project.conv
    conv_depth.head.{0,2,4}

Output grid: the four reassembled maps are 4h, 2h, h and ceil(h/2) (stride-2 conv); fusion starts at the
coarsest and doubles four times, then the depth head doubles once more: 32·ceil(h/2) × 32·ceil(w/2),
which is 16h × 16w for even grids and one patch larger (16(h+1)) for odd ones. Upstream just resizes
this to the image size; we keep that behaviour (the model resizes).

Initialisation differs from upstream's in one layer, the last 1×1 conv (`conv_depth.head.4`): upstream
keeps PyTorch's default (random weights and bias), and since the output is relu(x) + min_depth, a fresh
head then starts with many (for some seeds all) pixels at min_depth, where the ReLU passes no gradient:
such a head never learns (measured: 0–100 % of pixels alive depending on the seed and backbone). Here
that conv starts with zero weights and a bias that puts every pixel at one typical depth
(`init_output`): every pixel alive, and the first steps learn the structure around it. train.py then
sets that depth from the data (DepthTask, task.init_depth_from_data). A loaded head (Meta's released
files, a checkpoint) replaces all of this: its forward pass is upstream's.

Training differs in one gradient: a fresh head that starts alive can still be driven below zero by
one large step (a random ViT-S/14 at lr 1e-3 did so at the end of its warm-up, measured), and then no
gradient reaches it again. In training mode the output ReLU therefore passes the gradient through
where its input is negative (`output_relu`, straight-through); its value, and everything in eval mode
(validation, prediction, export), is upstream's relu.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dense.core.features import FeatureMaps, LayerSet
from heads._common import check_features, pointwise_with_global
from heads.registry import register_head

READOUTS = ("project", "add", "ignore")


class Conv(nn.Module):
    """An nn.Conv2d one level down, so that keys read `<name>.conv.weight` as in the released files
    (mmcv's ConvModule). Initialised as ConvModule does: Kaiming normal (fan_out, relu), zero bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if bias:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Reassemble(nn.Module):
    """Per layer: fold the class token in (readout), project to that stage's width, resize to ×4, ×2, ×1, ÷2."""

    def __init__(self, embed_dim: int, out_channels: list[int], readout: str):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.readout = readout
        self.projects = nn.ModuleList(Conv(embed_dim, c, 1) for c in out_channels)
        c0, c1, _, c3 = out_channels
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c0, c0, kernel_size=4, stride=4),
                nn.ConvTranspose2d(c1, c1, kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1),
            ]
        )
        if readout == "project":
            # Linear(2D → D) on concat(patch, class token) + GELU. Kept as a Sequential for the key names
            # (`readout_projects.i.0`), but applied in forward without building the concat.
            self.readout_projects = nn.ModuleList(
                nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU()) for _ in out_channels
            )

    def forward(self, patches: tuple[torch.Tensor, ...], cls_tokens: tuple[torch.Tensor, ...] | None):
        out = []
        for i, x in enumerate(patches):
            if self.readout == "project":
                linear, gelu = self.readout_projects[i]
                d = x.shape[1]
                x = gelu(
                    pointwise_with_global(
                        x, linear.weight[:, :d], linear.bias, cls_tokens[i], linear.weight[:, d:]
                    )
                )
            elif self.readout == "add":
                x = x + cls_tokens[i][:, :, None, None]
            out.append(self.resize_layers[i](self.projects[i](x)))
        return out


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3×3 convs without bias (upstream's PreActResidualConvUnit)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = Conv(channels, channels, 3, bias=False)
        self.conv2 = Conv(channels, channels, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Merge the running (coarser) map with the next stage's skip, refine, upsample ×2, 1×1 project."""

    def __init__(self, channels: int, with_skip: bool):
        super().__init__()
        self.project = Conv(channels, channels, 1)
        # The first (coarsest) block has no skip input, and upstream has no parameters for it.
        self.res_conv_unit1 = ResidualConvUnit(channels) if with_skip else None
        self.res_conv_unit2 = ResidualConvUnit(channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            # Odd grids make the running map one row/column larger than the skip (ceil(h/2)·2 = h + 1);
            # upstream bilinearly stretches the skip to match (align_corners False). Keep that.
            if skip.shape[-2:] != x.shape[-2:]:
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.res_conv_unit1(skip)
        x = self.res_conv_unit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)


def output_relu(x: torch.Tensor, straight_through: bool) -> torch.Tensor:
    """relu(x), upstream's output nonlinearity. With `straight_through` (training) the value is the same,
    bit for bit (x + (0 - x) = 0, x + 0 = x), but the gradient passes where x < 0 too, as if there were
    no ReLU: a pixel at min_depth, where the ReLU would stop every gradient, is pushed back up by the
    loss instead of staying dead for the rest of the run (module docstring)."""
    if straight_through:
        return x + (F.relu(x) - x).detach()
    return F.relu(x)


class DepthOutput(nn.Module):
    """3×3 conv to C/2, ×2 upsample, 3×3 conv to 32, ReLU, 1×1 conv to 1 (upstream's HeadDepth)."""

    def __init__(self, channels: int):
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, kernel_size=3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(channels // 2, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    @torch.no_grad()
    def init_constant(self, value: float) -> None:
        """Make the output `value` at every pixel: the last conv's weights zero, its bias `value`. Its
        input is a ReLU's (>= 0), so the weights still get a gradient in the first step, and the layers
        below from the second step on."""
        last = self.head[-1]
        last.weight.zero_()
        last.bias.fill_(value)


@register_head(
    "depth_dpt",
    task="depth",
    layer_set=LayerSet.FOUR_EVEN_INTERVALS,
    norm=False,
    use_cls_token=True,
    aliases=("depth",),
    # Upstream's DPT recipe. At 1e-3 (the linear heads' default) a random ViT-S/14 at 112² over 120 steps
    # ended, for one seed of two, worse than a constant depth (README: train.py's defaults).
    default_lr=1e-4,
    test_options={"channels": 32},  # 32 fusion channels instead of 256: 25x less compute, same structure
)
class DPTDepthHead(nn.Module):
    """FeatureMaps (exactly 4 layers, with class tokens unless readout="ignore") → depth in metres,
    B×1×32·ceil(h/2)×32·ceil(w/2), = relu(x) + min_depth, with no upper bound. DenseModel clamps it
    to max_depth at inference only (as upstream's encode_decode); in training the losses see it raw,
    so an overshoot above max_depth is still pulled back by the gradient.

    use_cls_token=False is readout "ignore"; None (the default) follows `readout`."""

    num_layers = 4

    def __init__(
        self,
        embed_dim: int,
        channels: int = 256,
        post_process_channels: list[int] | None = None,
        readout: str | None = None,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        num_layers: int = 4,
        use_cls_token: bool | None = None,
    ):
        super().__init__()
        if num_layers != 4:
            raise ValueError(f"DPTDepthHead fuses exactly 4 feature layers, got num_layers={num_layers}")
        if readout is None:
            readout = "ignore" if use_cls_token is False else "project"
        if use_cls_token is not None and (readout != "ignore") != use_cls_token:
            raise ValueError(f"DPTDepthHead: readout={readout!r} contradicts use_cls_token={use_cls_token}")
        if post_process_channels is None:
            post_process_channels = [embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        if len(post_process_channels) != 4:
            raise ValueError(f"DPTDepthHead needs 4 post_process_channels, got {post_process_channels}")
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        self.embed_dim = embed_dim
        self.use_cls_token = readout != "ignore"
        self.min_depth = min_depth
        self.max_depth = max_depth  # unused by the head itself; kept for repr (the model clamps at inference)
        self.reassemble_blocks = Reassemble(embed_dim, list(post_process_channels), readout)
        self.convs = nn.ModuleList(Conv(c, channels, 3, bias=False) for c in post_process_channels)
        self.fusion_blocks = nn.ModuleList(FusionBlock(channels, with_skip=i > 0) for i in range(4))
        self.project = Conv(channels, channels, 3)
        self.conv_depth = DepthOutput(channels)
        # After every other layer is built, so that their random draws are upstream's for a given seed.
        self.init_output(max_depth / 4)

    def init_output(self, depth: float) -> None:
        """Start predicting `depth` metres at every pixel, for any input (module docstring). The default,
        a quarter of max_depth (2.5 m for NYU's 0–10 m, 20 m for KITTI's 0–80 m), is of the order of
        indoor and street scenes' median depths; train.py replaces it with the median depth of the first
        training batch. Clipped to just above min_depth, where the pixels would be dead."""
        depth = max(float(depth), self.min_depth * 1.01)
        self.conv_depth.init_constant(depth - self.min_depth)

    def forward(self, features: FeatureMaps) -> torch.Tensor:
        check_features(
            features,
            head="DPTDepthHead",
            embed_dim=self.embed_dim,
            num_layers=4,
            use_cls_token=self.use_cls_token,
        )
        stages = self.reassemble_blocks(features.patches, features.cls_tokens)
        stages = [conv(x) for conv, x in zip(self.convs, stages, strict=True)]
        out = self.fusion_blocks[0](stages[3])
        for block, skip in zip(self.fusion_blocks[1:], reversed(stages[:3]), strict=True):
            out = block(out, skip)
        out = self.conv_depth(F.relu(self.project(out)))
        # float32 output like the linear head, so the losses and the model's clamp/resize see one dtype.
        return output_relu(out.float(), straight_through=self.training) + self.min_depth

    def extra_repr(self) -> str:
        return f"readout={self.reassemble_blocks.readout}, depth=[{self.min_depth}, {self.max_depth}]"
