"""Make tests/reference/heads_*.pt: outputs of the upstream DINOv2 depth heads on seeded random inputs.

CI cannot import upstream (it needs the DINOv2 source), so we run the upstream heads once here and
store, per head, an mmcv-style checkpoint plus the test cases, in one file:

    {"state_dict": {"decode_head.<key>": tensor, ...},    # the upstream head's weights
     "meta": {"head": ..., "embed_dim": ..., ...},         # how to build the same head with ours
     "cases": [{"patches": [B×D×h×w, ...], "cls_tokens": [B×D, ...], "output": B×1×H×W}, ...]}

tests/heads/test_heads.py loads each file through heads.load_released_head (so the key names must match
upstream's exactly) and checks our head's output against "output".

How the tensors were made:
- heads: built with the arguments upstream's hub uses (dinov2/hub/depthers.py):
  linear / linear4 through `_make_dinov2_linear_depth_head` itself (which hard-codes the depth range to
  0.001..80 whatever it is given), DPT with `_make_dinov2_dpt_depth_head`'s arguments except `channels`
  (256 there; small here so the file stays small: the code path is the same);
- small widths: D=16 (DPT post-process channels [2, 4, 8, 16], fusion channels 8);
- weights: every parameter ~ N(0, 1/fan_in) (biases N(0, 0.1²)), torch.manual_seed(0), float32;
  the DPT output conv bias is set to -1.5 so that relu(·) clips some pixels (to min_depth) but not most;
- inputs: B=2, patch maps and class tokens ~ N(0, 1), torch.manual_seed(1), grids 5×7 and 4×6 (linear),
  3×5 (odd, rectangular: DPT takes its skip-resize path) and 2×4 (even; DPT);
- outputs: upstream forward in float32 on CPU, torch.no_grad(), eval mode.

Usage:  python tests/reference/make_head_reference.py [--upstream /path/to/dinov2] [--out DIR]
        (default upstream: $DINOV2_UPSTREAM, else /work/upstream)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

EMBED_DIM = 16
DPT_CHANNELS = 8
LINEAR_GRIDS = [(5, 7), (4, 6)]
DPT_GRIDS = [(3, 5), (2, 4)]  # smaller: the DPT output is 16-32× the grid
BATCH = 2


def randomise(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=generator) / fan_in**0.5)


def make_cases(head, num_layers: int, grids, call) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    cases = []
    for h, w in grids:
        patches = [torch.randn(BATCH, EMBED_DIM, h, w, generator=generator) for _ in range(num_layers)]
        cls_tokens = [torch.randn(BATCH, EMBED_DIM, generator=generator) for _ in range(num_layers)]
        with torch.no_grad():
            output = call(head, [(p, c) for p, c in zip(patches, cls_tokens, strict=True)])
        cases.append({"patches": patches, "cls_tokens": cls_tokens, "output": output.contiguous()})
    return cases


def save(path: Path, head, meta: dict, cases: list[dict]) -> None:
    state = {"decode_head." + k: v.detach().clone().contiguous() for k, v in head.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta, "cases": cases}, path)
    print(
        f"{path}: {path.stat().st_size / 1024:.0f} KiB, {len(state)} tensors, outputs "
        f"{[tuple(c['output'].shape) for c in cases]}, "
        f"range {min(c['output'].min().item() for c in cases):.3f}..{max(c['output'].max().item() for c in cases):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", default=os.environ.get("DINOV2_UPSTREAM", "/work/upstream"))
    parser.add_argument("--out", default=str(Path(__file__).parent))
    args = parser.parse_args()
    sys.path.insert(0, args.upstream)
    from dinov2.hub.depth import DPTHead  # the mmcv-free copies used by torch.hub
    from dinov2.hub.depthers import _make_dinov2_linear_depth_head

    out = Path(args.out)
    for layers in (1, 4):
        head = _make_dinov2_linear_depth_head(
            embed_dim=EMBED_DIM, layers=layers, min_depth=0.001, max_depth=10.0
        )
        randomise(head, seed=0)
        head.eval()
        meta = {
            "head": "depth_linear",
            "embed_dim": EMBED_DIM,
            "num_layers": layers,
            "min_depth": head.min_depth,
            "max_depth": head.max_depth,  # 0.001, 80: upstream's hard-coded range
        }
        name = "linear" if layers == 1 else "linear4"
        save(
            out / f"heads_depth_{name}.pt",
            head,
            meta,
            make_cases(head, layers, LINEAR_GRIDS, lambda m, x: m(x)),
        )

    dim = EMBED_DIM
    head = DPTHead(  # = _make_dinov2_dpt_depth_head(embed_dim=dim, ...) with channels 8 instead of 256
        in_channels=[dim] * 4,
        channels=DPT_CHANNELS,
        embed_dims=dim,
        post_process_channels=[dim // 2 ** (3 - i) for i in range(4)],
        readout_type="project",
        min_depth=0.001,
        max_depth=10.0,
        loss_decode=(),
    )
    randomise(head, seed=0)
    with torch.no_grad():
        head.conv_depth.head[4].bias.fill_(-1.5)
    head.eval()
    meta = {
        "head": "depth_dpt",
        "embed_dim": dim,
        "channels": DPT_CHANNELS,
        "min_depth": 0.001,
        "max_depth": 10.0,
    }
    save(out / "heads_depth_dpt.pt", head, meta, make_cases(head, 4, DPT_GRIDS, lambda m, x: m(x, None)))


if __name__ == "__main__":
    main()
