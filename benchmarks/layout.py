"""Channels-last (NHWC) against the usual NCHW layout for what the heads do on the CPU.

    python -m benchmarks.layout [--batch 8] [--size 224] [--repeat 5]

1. The bilinear resize of many-channel logits (what dense.core.ops.resize is for).
2. Each head's forward + backward on ViT-S/14 feature maps laid out NCHW and channels-last (what
   dense.model.to_maps gives), with the largest difference between the two outputs.
Random weights and inputs; milliseconds per call, median of --repeat calls after one warm-up.
"""

import argparse

import torch
import torch.nn.functional as F

from benchmarks.measure import median_ms
from dense.core.features import FeatureMaps
from dense.model import build_model

CPU = torch.device("cpu")


def as_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def both_layouts(step, repeat: int) -> tuple[float, float, float]:
    """(NCHW ms, NHWC ms, max |difference|) of step(channels_last) -> output."""
    outputs = [step(False), step(True)]
    times = [median_ms(lambda: step(False), CPU, repeat), median_ms(lambda: step(True), CPU, repeat)]
    return times[0], times[1], (outputs[0] - outputs[1]).abs().max().item()


def resize_step(x: torch.Tensor, size: int, channels_last: bool) -> torch.Tensor:
    out = F.interpolate(as_layout(x, channels_last), size=(size, size), mode="bilinear")
    out.sum().backward()
    return out.detach()


def head_step(model, patches, cls, size: int, channels_last: bool) -> torch.Tensor:
    features = FeatureMaps([as_layout(p, channels_last) for p in patches], cls)
    out = model.forward_head(features, (0, 0, 0, 0), (size, size))
    out.float().mean().backward()
    return out.detach().float()


def bench_resize(batch: int, repeat: int) -> None:
    print("bilinear resize, forward + backward (ms)")
    for channels, grid, size in ((256, 16, 64), (150, 16, 224), (256, 37, 148), (3, 224, 448)):
        x = torch.randn(batch, channels, grid, grid, requires_grad=True)
        nchw, nhwc, diff = both_layouts(lambda cl, x=x, size=size: resize_step(x, size, cl), repeat)
        print(
            f"  {batch}×{channels}×{grid}² → {size}²: NCHW {nchw:.1f}, NHWC {nhwc:.1f} ({nchw / nhwc:.1f}×), "
            f"max diff {diff:.1e}"
        )


def bench_heads(batch: int, size: int, repeat: int) -> None:
    print(f"head forward + backward on ViT-S/14 features of {size}² images, batch {batch} (ms)")
    grid = size // 14
    for head in ("depth_linear", "depth_dpt", "seg_linear", "seg_ms"):
        options = {"num_classes": 150} if head.startswith("seg") else {}
        model = build_model("vits14", head, pretrained=False, **options)
        patches = [torch.randn(batch, 384, grid, grid) for _ in model.layers]
        cls = [torch.randn(batch, 384) for _ in model.layers] if model.use_cls_token else None
        step = lambda cl, m=model, p=patches, c=cls: head_step(m, p, c, size, cl)  # noqa: E731
        nchw, nhwc, diff = both_layouts(step, repeat)
        print(f"  {head}: NCHW {nchw:.0f}, NHWC {nhwc:.0f} ({nchw / nhwc:.2f}×), max diff {diff:.1e}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_resize(args.batch, args.repeat)
    bench_heads(args.batch, args.size, args.repeat)


if __name__ == "__main__":
    main()
