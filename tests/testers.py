"""The same tests for every registered head and backbone (smp's tester classes, in our shape).

tests/heads/test_registered.py parametrises these over `dense.list_heads()` and `dense.list_backbones()`, so a
newly registered head or backbone is tested without editing any test: a head on the tiny backbones of
both families, a tiny backbone by a forward pass, a full-size one by its key names and shapes (built on
the meta device, no memory allocated).
"""

from __future__ import annotations

import io

import torch

import dense
import heads
from dense.backbones import get_spec
from dense.core.mask_predictions import MaskPredictions

# One tiny backbone per family: patch 14 (learned position embedding) and patch 16 (RoPE).
TINY_BACKBONES = ("tiny14", "tiny16")


def small_options(head: str, num_classes: int = 3) -> dict:
    """What the suite builds `head` with: the option a head of its task cannot do without (segmentation:
    how many classes; a user's head gets the same) and the small sizes registered with it
    (`@register_head(..., test_options=...)`: the DPT's 256 fusion channels cost seconds on a CPU)."""
    spec = heads.get_head_spec(head)
    required = {"num_classes": num_classes} if spec.task == "segmentation" else {}
    return {**required, **spec.test_options}


def tensor_heads() -> list[str]:
    """The registered heads whose output is a tensor (depth or class logits); a mask-classification head
    (seg_output "scores", seg_mask) answers MaskPredictions in training, tested by HeadTester."""
    return [
        n
        for n in heads.list_heads()
        if getattr(heads.get_head_spec(n).head_class, "seg_output", "logits") == "logits"
    ]


class HeadTester:
    """Forward, backward, input sizes that are no multiple of the patch, bf16 autocast, state-dict round
    trip, on a DenseModel built with `build_model(backbone, head)`."""

    def __init__(self, head: str, backbone: str):
        self.spec = heads.get_head_spec(head)
        self.backbone = backbone
        self.options = small_options(self.spec.name)

    def build(self, seed: int = 0) -> dense.DenseModel:
        torch.manual_seed(seed)
        return dense.build_model(self.backbone, self.spec.name, **self.options)

    def channels(self) -> int:
        return 1 if self.spec.task == "depth" else self.options["num_classes"]

    def check_forward_backward(self, size: tuple[int, int]) -> None:
        model = self.build().train()
        out = model(torch.randn(1, 3, *size))
        if isinstance(out, MaskPredictions):  # a mask-classification head trains on its per-layer logits
            self.check_mask_predictions(out, model)
            scalar = sum(t.square().mean() for t in (*out.class_logits, *out.mask_logits))
        else:
            assert out.shape == (1, self.channels(), *size)
            assert out.dtype == torch.float32 and torch.isfinite(out).all()
            scalar = out.square().mean()
        scalar.backward()
        grads = {name: p.grad for name, p in model.head.named_parameters() if p.requires_grad}
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values()), sorted(grads)
        assert all(p.grad is None for p in model.backbone.parameters())  # frozen
        with torch.no_grad():
            inference = model.eval()(torch.randn(1, 3, *size))
        assert inference.shape == (1, self.channels(), *size) and torch.isfinite(inference).all()
        if self.spec.task == "depth":
            assert model.min_depth <= inference.min() and inference.max() <= model.max_depth

    def check_mask_predictions(self, out: MaskPredictions, model: dense.DenseModel) -> None:
        """Per prediction (decoder layer): class logits 1×Q×(K+1) and mask logits 1×Q×h×w, the same Q
        and grid in every layer, finite; the image's box within the padded frame recorded."""
        assert len(out.class_logits) == len(out.mask_logits) >= 1
        queries, grid = out.class_logits[0].shape[1], out.mask_logits[0].shape[-2:]
        for class_logits, mask_logits in zip(out.class_logits, out.mask_logits):
            assert class_logits.shape == (1, queries, self.channels() + 1)
            assert mask_logits.shape == (1, queries, *grid)
            assert torch.isfinite(class_logits).all() and torch.isfinite(mask_logits).all()
        x0, y0, width, height = out.image_box
        assert 0 <= x0 < 1 and 0 <= y0 < 1 and 0 < width <= 1 - x0 and 0 < height <= 1 - y0

    def check_bf16(self, size: tuple[int, int]) -> None:
        """bf16 weights in the backbone (cast_backbone) under autocast: finite and close to fp32."""
        model = self.build().eval()
        images = torch.randn(1, 3, *size)
        with torch.no_grad():
            reference = model(images)
            model.cast_backbone(torch.bfloat16)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(images)
        assert out.shape == reference.shape and torch.isfinite(out.float()).all()
        scale = reference.abs().max().clamp_min(1e-6)
        assert ((out.float() - reference).abs().max() / scale).item() < 0.1

    def check_state_dict_round_trip(self) -> None:
        """The head's state dict saved and loaded (weights_only) into a head built with another seed gives
        the same outputs: every parameter and buffer that matters is in the state dict."""
        source, target = self.build(seed=1).eval(), self.build(seed=2).eval()
        buffer = io.BytesIO()
        torch.save(source.head.state_dict(), buffer)
        buffer.seek(0)
        target.head.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
        target.backbone.load_state_dict(source.backbone.state_dict())
        images = torch.randn(1, 3, 28, 36)
        with torch.no_grad():
            torch.testing.assert_close(target(images), source(images), rtol=0, atol=0)

    def check_compile(self, **options) -> None:
        """DenseModel.compile (backbone token extraction and head) gives the eager outputs; `options` go
        to torch.compile (backend="eager": Dynamo traces the same code without Inductor's minutes of codegen)."""
        model = self.build().eval()
        images = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            eager = model(images)
            model.compile(**options)
            compiled = model(images)
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4 * eager.abs().max().item())


class BackboneTester:
    """A registered backbone: the spec agrees with the module it creates; a tiny one runs forward with
    upstream's get_intermediate_layers semantics; a full-size one is checked on the meta device."""

    def __init__(self, name: str):
        self.spec = get_spec(name)

    def create(self, meta: bool):
        if meta:
            with torch.device("meta"):
                return self.spec.create()
        torch.manual_seed(0)
        return dense.build_backbone(self.spec.name).eval()

    def check_spec(self, meta: bool) -> None:
        model = self.create(meta)
        assert (model.embed_dim, model.n_blocks, model.patch_size) == (
            self.spec.embed_dim,
            self.spec.depth,
            self.spec.patch_size,
        )
        assert model.num_register_tokens == self.spec.num_register_tokens
        for layer_set in dense.LayerSet:
            indices = self.spec.layer_indices(layer_set)
            assert len(indices) == layer_set.num_layers and all(0 <= i < self.spec.depth for i in indices)
        assert len(self.spec.image_mean) == len(self.spec.image_std) == 3
        state = model.state_dict()
        assert "cls_token" in state and state["cls_token"].shape == (1, 1, self.spec.embed_dim)
        # Keys are unique per block and every block has the same ones (the loaders rely on it).
        blocks = [
            {k.split(".", 2)[2] for k in state if k.startswith(f"blocks.{i}.")}
            for i in range(self.spec.depth)
        ]
        assert all(b == blocks[0] and b for b in blocks)

    def check_forward(self, size: tuple[int, int]) -> None:
        """B×D×h×w patch maps and B×D class tokens for n as an int and as a list, sizes multiples of the patch."""
        model = self.create(meta=False)
        p = self.spec.patch_size
        images = torch.randn(2, 3, size[0] * p, size[1] * p)
        with torch.no_grad():
            last_two = model.get_intermediate_layers(images, n=2, reshape=True, return_class_token=True)
            chosen = model.get_intermediate_layers(
                images, n=[self.spec.depth - 2, self.spec.depth - 1], reshape=True
            )
        assert len(last_two) == 2
        for (patches, cls), same in zip(last_two, chosen, strict=True):
            assert patches.shape == (2, self.spec.embed_dim, *size) and cls.shape == (2, self.spec.embed_dim)
            torch.testing.assert_close(patches, same)

    def check_state_dict_round_trip(self, tmp_path) -> None:
        """The backbone's own state dict, saved as a file, loads strictly through weights=PATH."""
        source = self.create(meta=False)
        path = tmp_path / f"{self.spec.name}.pth"
        torch.save(source.state_dict(), path)
        loaded = dense.build_backbone(self.spec.name, weights=path)
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
