"""Where a DPT head training step spends its time (benchmarks/BENCHMARKS.md, "What holds the DPT training step back").

    python -m benchmarks.profile_dpt [--device cuda] [--backbone vitl14] [--size 416x544] [--batch 8]
        [--parts split,upsample,matrices,compile,kernels]

bf16 autocast, the frozen backbone's weights in bf16 (as train.py runs with trainer.precision=bf16-mixed),
random weights and inputs; milliseconds per call, median of --repeat calls after warm-up.

- split:    the whole training step, the backbone's forward alone and the head's forward + backward +
            AdamW alone (on features computed once), with cudnn.benchmark off and on.
- upsample: the ×2 bilinear upsampling (align_corners=True) of the DPT head at its largest sizes, NCHW
            against channels-last, forward and forward + backward.
- matrices: the same upsampling as two matrix products on the channels-last tensor (bf16 tensor cores
            instead of PyTorch's bilinear kernel: a candidate for the head, not used by it), with its
            largest difference from F.interpolate (its weights are rounded to bf16).
- compile:  the training step and inference (DenseModel.predict) eager, with the backbone compiled, and
            with the backbone and the head compiled: why DenseModel.compile leaves the head eager in
            training.
- kernels:  torch.profiler's table of the head's step (the 30 most expensive operations).
The CPU runs it too (small sizes advised: --backbone vits14 --size 56x70 --batch 2).
"""

import argparse
import time

import torch
import torch.nn.functional as F

from benchmarks.measure import median_ms
from dense.model import build_model


class Setup:
    """A DPT model in training mode, a batch, its target, and the batch's features computed once."""

    def __init__(self, args):
        self.device, self.size = torch.device(args.device), args.size
        torch.manual_seed(0)
        with self.device:  # initialise on the device (ViT-g on a CPU takes seconds per copy)
            self.model = build_model(args.backbone, "depth_dpt").to(self.device)
        self.model.cast_backbone(torch.bfloat16)
        self.head_state = {k: v.clone() for k, v in self.model.head.state_dict().items()}
        self.images = torch.randn(args.batch, 3, *args.size, device=self.device)
        self.target = torch.rand(args.batch, 1, *args.size, device=self.device) * 9 + 0.1
        self.padded, self.padding = self.model.pad(self.images)
        with torch.no_grad(), self.autocast():
            self.features = self.model.extract_features(self.padded)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def step(self, forward):
        """A training step (loss, backward, AdamW) around forward() → depth."""
        optimizer = torch.optim.AdamW(self.model.head.parameters(), lr=1e-4)

        def run():
            with self.autocast():
                out = forward()
            (out.float() - self.target).abs().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    def train_step(self):
        return self.step(lambda: self.model(self.images))

    def head_step(self):
        return self.step(lambda: self.model.forward_head(self.features, self.padding, tuple(self.size)))

    def backbone_forward(self):
        with torch.no_grad(), self.autocast():
            self.model.extract_features(self.padded)

    def predict(self, images):
        with torch.no_grad(), self.autocast():
            self.model.predict(images)


def part_split(s: Setup, repeat: int) -> None:
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        step = median_ms(s.train_step(), s.device, repeat, warmup=2)
        backbone = median_ms(s.backbone_forward, s.device, repeat, warmup=2)
        head = median_ms(s.head_step(), s.device, repeat, warmup=2)
        print(
            f"cudnn.benchmark={benchmark}: training step {step:.1f} ms ({len(s.images) / step * 1000:.1f} img/s), "
            f"backbone forward {backbone:.1f} ms, head forward+backward+AdamW {head:.1f} ms"
        )
    torch.backends.cudnn.benchmark = False


def part_upsample(s: Setup, repeat: int) -> None:
    grid = [-(-side // s.model.patch_size) for side in s.size]  # patches per side after padding
    batch = len(s.images)
    # The fusion block at 4× the grid (256 channels) and the depth output at 16× (128 channels).
    for channels, scale in ((256, 4), (128, 16)):
        shape = (batch, channels, scale * grid[0], scale * grid[1])
        for layout in ("NCHW", "channels-last"):
            x = torch.randn(shape, device=s.device, dtype=torch.bfloat16)
            if layout == "channels-last":
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_(True)

            def forward(x=x):
                return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)

            grad = torch.randn_like(forward())

            def forward_backward(x=x, forward=forward, grad=grad):
                x.grad = None
                forward().backward(grad)

            f = median_ms(forward, s.device, repeat, warmup=2)
            fb = median_ms(forward_backward, s.device, repeat, warmup=2)
            print(f"upsample ×2 {tuple(shape)} {layout}: forward {f:.2f} ms, forward+backward {fb:.2f} ms")


def align_corners_matrix(n: int, device, dtype) -> torch.Tensor:
    """2n×n: row i holds the weights of F.interpolate(scale_factor=2, bilinear, align_corners=True) for
    output i, which samples input position i·(n−1)/(2n−1) (weights computed in float64)."""
    position = torch.arange(2 * n, dtype=torch.float64) * (n - 1) / max(2 * n - 1, 1)
    low = position.floor().long().clamp(max=n - 1)
    high = (low + 1).clamp(max=n - 1)
    fraction = position - low
    matrix = torch.zeros(2 * n, n, dtype=torch.float64)
    rows = torch.arange(2 * n)
    matrix.index_put_((rows, low), 1 - fraction, accumulate=True)
    matrix.index_put_((rows, high), fraction, accumulate=True)
    return matrix.to(device, dtype)


def upsample_by_matrices(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """F.interpolate(x, scale_factor=2, bilinear, align_corners=True) for a channels-last B×C×H×W x, as
    two matrix products over its B×H×W×C storage (rows: 2H×H, cols: 2W×W align_corners_matrix)."""
    b, c, h, w = x.shape
    y = x.permute(0, 2, 3, 1)  # B×H×W×C, the storage order: no copy
    y = torch.matmul(cols, y.reshape(b * h, w, c))  # along W: (B·H)×2W×C
    y = torch.matmul(rows, y.reshape(b, h, 2 * w * c)).reshape(b, 2 * h, 2 * w, c)
    return y.permute(0, 3, 1, 2)  # channels-last B×C×2H×2W


def part_upsample_matrices(s: Setup, repeat: int) -> None:
    grid = [-(-side // s.model.patch_size) for side in s.size]
    for channels, scale in ((256, 4), (128, 16)):
        shape = (len(s.images), channels, scale * grid[0], scale * grid[1])
        x = torch.randn(shape, device=s.device, dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last
        )
        rows = align_corners_matrix(shape[2], s.device, torch.bfloat16)
        cols = align_corners_matrix(shape[3], s.device, torch.bfloat16)
        x.requires_grad_(True)
        expected = F.interpolate(x.detach().float(), scale_factor=2, mode="bilinear", align_corners=True)
        difference = (upsample_by_matrices(x.detach(), rows, cols).float() - expected).abs().max().item()
        grad = torch.randn(
            shape[0], channels, 2 * shape[2], 2 * shape[3], device=s.device, dtype=torch.bfloat16
        )

        def forward(x=x, rows=rows, cols=cols):
            return upsample_by_matrices(x, rows, cols)

        def forward_backward(x=x, forward=forward, grad=grad):
            x.grad = None
            forward().backward(grad)

        f = median_ms(forward, s.device, repeat, warmup=2)
        fb = median_ms(forward_backward, s.device, repeat, warmup=2)
        print(
            f"upsample ×2 {tuple(shape)} by matrices (bf16): forward {f:.2f} ms, forward+backward {fb:.2f} ms, "
            f"max |difference| from F.interpolate in fp32 {difference:.3g} (inputs of std 1)"
        )


def part_compile(s: Setup, repeat: int) -> None:
    model, batch = s.model, len(s.images)
    # Inference at the size of the target (480×640, twice the batch) only on a GPU.
    images = s.images.repeat(2, 1, 1, 1) if s.device.type == "cuda" else s.images
    if s.device.type == "cuda":
        images = F.interpolate(images, size=(480, 640), mode="bilinear")
    for variant in ("eager", "backbone", "backbone+head"):
        for work in ("train", "predict"):
            torch._dynamo.reset()
            model.head.load_state_dict(s.head_state)
            model._compiled_tokens = model._compiled_head = None
            if variant != "eager":
                model.compile()  # the backbone, and the head for inference (what compile=true does)
            if variant == "backbone":
                model._compiled_head = None
            if variant == "backbone+head" and work == "train":
                # DenseModel.compile never compiles the head for training: measured here to show why
                model.head.forward = torch.compile(model.head.forward)
            start = time.perf_counter()
            fn = s.train_step() if work == "train" else (lambda: s.predict(images))
            model.train(work == "train")
            fn()
            first = time.perf_counter() - start
            ms = median_ms(fn, s.device, repeat, warmup=1)
            n = batch if work == "train" else len(images)
            print(
                f"compile {variant:13} {work:7} batch {n}: {ms:.1f} ms ({n / ms * 1000:.1f} img/s; first call {first:.0f} s)"
            )
            vars(model.head).pop("forward", None)  # back to the eager head
    model._compiled_tokens = model._compiled_head = None
    torch._dynamo.reset()


def part_kernels(s: Setup, repeat: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    step = s.head_step()
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        if s.device.type == "cuda":
            torch.cuda.synchronize(s.device)
    key = "self_cuda_time_total" if s.device.type == "cuda" else "self_cpu_time_total"
    print("the head's step, 3 calls:")
    print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70))


PARTS = {
    "split": part_split,
    "upsample": part_upsample,
    "matrices": part_upsample_matrices,
    "compile": part_compile,
    "kernels": part_kernels,
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="vitl14")
    parser.add_argument("--size", default="416x544", type=lambda t: tuple(int(v) for v in t.split("x")))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--parts", default="split,upsample,matrices,compile,kernels")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}: choose from {', '.join(PARTS)}")
    setup = Setup(args)
    name = torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "CPU"
    print(
        f"{args.backbone} + DPT, {args.size[0]}×{args.size[1]}, batch {args.batch}, bf16, {name}, torch {torch.__version__}"
    )
    for part in parts:
        PARTS[part](setup, args.repeat)


if __name__ == "__main__":
    main()
