"""DINOv3 ViT backbones: parity with Meta's code, the variant table, loading.

Independent references, all runnable in CI:
- saved outputs of Meta's own DinoVisionTransformer (facebookresearch/dinov3 at the commit recorded in
  the file; tests/reference/make_dinov3_reference.py says how they were made) for tiny configurations
  of each code path (MLP, SwiGLU, SwiGLU64 without qkv bias + local_cls_norm, cls_norm) at square and
  rectangular sizes, norm on and off, n as a list and as an int, class and storage tokens;
- a hand-written RoPE (complex-number rotation from the formula) and torch's FLOP counter;
- the key names and shapes of the 9 official variants, recorded from upstream's hub functions;
- the facts of upstream's hub, layer sets and README, written out below.

The full-size parity against upstream (S, S+, B, L; H+ and the 7B's width) needs a copy of
upstream: `DINOV3_REPO=/path/to/dinov3 pytest -m slow tests/backbones/test_dinov3.py`.
"""

import dataclasses
import json
import math
import os
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dense.backbones import BACKBONES, build_backbone, get_spec, resolve_name
from dense.backbones.dinov3.specs import (
    DINOV3_ACCESS_URL,
    DINOV3_NAMES,
    OFFICIAL_DINOV3_NAMES,
    check_dinov3_compatible,
    dinov3_hub_cache_path,
)
from dense.backbones.dinov3.vit import RopePositionEmbedding, rotate_patch_tokens
from dense.core.errors import WeightsError
from tests._random_weights import official_shapes, seeded_state_dict

HERE = os.path.dirname(os.path.dirname(__file__))  # tests/
REFERENCE = os.path.join(HERE, "reference")
TINY_NAMES = ["tiny16", "tiny16_swiglu", "tiny16_untied", "tiny16_clsnorm"]


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of the expected output."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def reference():
    return torch.load(os.path.join(REFERENCE, "dinov3_tiny.pt"), weights_only=True)


@pytest.fixture(scope="module")
def official_keys():
    with open(os.path.join(REFERENCE, "dinov3_official_keys.json")) as f:
        return json.load(f)


def tiny_weights(entry) -> dict[str, torch.Tensor]:
    """The parameters the reference was made with (regenerated from its seed); no buffers."""
    return seeded_state_dict(entry["param_shapes"], entry["seed"])


def seeded_image(case) -> torch.Tensor:
    return torch.randn(2, 3, *case["size"], generator=torch.Generator().manual_seed(case["image_seed"]))


# ---- parity with upstream's own code (saved outputs) ----------------------------------------------


def test_reference_records_its_upstream_commit(reference, official_keys):
    assert reference["commit"] == official_keys["commit"] == "6876159a11b4df116f30f667f8c9888617df0751"
    assert sorted(reference["variants"]) == sorted(TINY_NAMES)


@pytest.mark.parametrize("name", TINY_NAMES)
def test_matches_upstream_reference_outputs(name, reference, tmp_path):
    entry = reference["variants"][name]
    # Saved without the derived buffers, as a state dict may come: ours must equal upstream's.
    torch.save(tiny_weights(entry), tmp_path / "weights.pth")
    model = build_backbone(name, weights=tmp_path / "weights.pth").eval()
    seen = set()
    for case in entry["cases"]:
        seen.add((case["size"], case["norm"], type(case["n"]).__name__))
        image = seeded_image(case)
        with torch.no_grad():
            layers = model.get_intermediate_layers(
                image, n=case["n"], reshape=case["reshape"], return_class_token=True, norm=case["norm"]
            )
            tokens = model.get_intermediate_tokens(image, n=case["n"], norm=case["norm"])
        assert len(layers) == len(tokens) == len(case["patches"])
        for (patches, cls), block, expected_patches, expected_cls, expected_storage in zip(
            layers, tokens, case["patches"], case["cls"], case["storage"]
        ):
            assert patches.shape == expected_patches.shape
            assert max_rel_error(patches, expected_patches) < 1e-5
            assert max_rel_error(cls, expected_cls) < 1e-5
            assert block.registers.shape == expected_storage.shape == (2, 4, 80)
            assert max_rel_error(block.registers, expected_storage) < 1e-5
    sizes = {(64, 64), (48, 80), (112, 32), (16, 16)}
    assert seen == {(s, norm, "list") for s in sizes for norm in (True, False)} | {
        (s, True, "int") for s in sizes
    }


@pytest.mark.parametrize("name", TINY_NAMES)
def test_buffers_and_parameters_are_upstreams(name, reference):
    entry = reference["variants"][name]
    model = get_spec(name).create()
    assert {k: list(p.shape) for k, p in model.named_parameters()} == entry["param_shapes"]
    buffers = dict(model.named_buffers())
    assert sorted(buffers) == sorted(entry["buffers"])
    for key, value in entry["buffers"].items():
        assert torch.equal(buffers[key], value), key


def test_official_keys_and_shapes_match_upstream(official_keys):
    variants = official_keys["variants"]
    assert sorted(variants) == sorted(OFFICIAL_DINOV3_NAMES)
    for name, shapes in variants.items():
        with torch.device("meta"):
            model = get_spec(name).create()
        assert {k: list(v.shape) for k, v in model.state_dict().items()} == shapes, name


# ---- RoPE, written out by hand ---------------------------------------------------------------------


def rope_by_hand(x: torch.Tensor, h: int, w: int, base: float = 100.0) -> torch.Tensor:
    """Axial RoPE from its formula, in float64 complex numbers: pair j of a head (dims j and j + D/2)
    is the complex number x_j + i·x_{j+D/2}, multiplied by exp(i·2π·c/T_j) with T_j = base^(j/(D/4));
    c is the patch centre's row coordinate for j < D/4 and its column for the rest, each scaled to
    [-1, 1] along its own side."""
    D = x.shape[-1]
    quarter = D // 4
    periods = torch.tensor([base ** (j / quarter) for j in range(quarter)], dtype=torch.float64)
    rows = torch.tensor([(2 * (i + 0.5) / h) - 1 for i in range(h)], dtype=torch.float64)
    cols = torch.tensor([(2 * (i + 0.5) / w) - 1 for i in range(w)], dtype=torch.float64)
    row_of = rows.repeat_interleave(w)  # row-major patch order
    col_of = cols.repeat(h)
    theta = torch.cat(
        (2 * math.pi * row_of[:, None] / periods, 2 * math.pi * col_of[:, None] / periods), dim=1
    )  # hw × D/2
    x = x.double()
    z = torch.complex(x[..., : D // 2], x[..., D // 2 :]) * torch.polar(torch.ones_like(theta), theta)
    return torch.cat((z.real, z.imag), dim=-1)


@pytest.mark.parametrize("head_dim,grid", [(64, (14, 14)), (64, (3, 11)), (20, (7, 2)), (128, (1, 1))])
def test_rope_matches_hand_written_rotation(head_dim, grid):
    h, w = grid
    prefix = 5  # class + 4 storage tokens
    x = torch.randn(2, 3, prefix + h * w, head_dim, generator=torch.Generator().manual_seed(0))
    sin, cos = RopePositionEmbedding(head_dim)(h, w)
    rotated = rotate_patch_tokens(x, sin, cos)
    assert torch.equal(rotated[..., :prefix, :], x[..., :prefix, :])  # class and storage tokens untouched
    expected = rope_by_hand(x[..., prefix:, :], h, w)
    assert (rotated[..., prefix:, :].double() - expected).abs().max() < 1e-5 * expected.abs().max()


def test_rope_periods_follow_the_hub_base():
    # 100^(2j / 32) for the 64-dim heads of S, B, L and H+: 1 … 74.99 (upstream's rope_position_encoding.py).
    periods = RopePositionEmbedding(64).periods
    assert periods.dtype == torch.float32 and periods.shape == (16,)
    assert torch.allclose(
        periods.double(), torch.tensor([100 ** (j / 16) for j in range(16)], dtype=torch.float64)
    )


def test_rope_is_the_same_in_train_mode():
    """Upstream jitters/rescales RoPE coordinates only in training; our frozen backbone never does."""
    model = build_backbone("tiny16")
    image = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        eval_out = model.eval()(image)
        train_out = model.train()(image)
    assert torch.equal(eval_out, train_out)


# ---- the variant table ------------------------------------------------------------------------------

# Upstream's facts, written out: the hub functions (dinov3/hub/backbones.py) and BackboneLayersSet's
# FOUR_EVEN_INTERVALS (dinov3/eval/depth/models/encoder.py: S/B [2, 5, 8, 11], L [4, 11, 17, 23],
# 40 blocks [9, 19, 29, 39]; 32 blocks by its rule i · 8 − 1).
# fmt: off
HUB = {
    # name: (dim, depth, heads, ffn hidden, qkv bias, local_cls_norm, four layers, file)
    "vits16": (384, 12, 6, 1536, True, False, (2, 5, 8, 11),
               "dinov3_vits16/dinov3_vits16_pretrain_lvd1689m-08c60483.pth"),
    "vits16plus": (384, 12, 6, 1536, True, False, (2, 5, 8, 11),
                   "dinov3_vits16plus/dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth"),
    "vitb16": (768, 12, 12, 3072, True, False, (2, 5, 8, 11),
               "dinov3_vitb16/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"),
    "vitl16": (1024, 24, 16, 4096, True, False, (4, 11, 17, 23),
               "dinov3_vitl16/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"),
    "vitl16plus": (1024, 24, 16, 4096, True, False, (4, 11, 17, 23),
                   "dinov3_vitl16plus/dinov3_vitl16plus_pretrain_lvd1689m-46503df0.pth"),
    "vith16plus": (1280, 32, 20, 5120, True, False, (7, 15, 23, 31),
                   "dinov3_vith16plus/dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth"),
    "vit7b16": (4096, 40, 32, 8192, False, True, (9, 19, 29, 39),
                "dinov3_vit7b16/dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth"),
    "vitl16_sat": (1024, 24, 16, 4096, True, True, (4, 11, 17, 23),
                   "dinov3_vitl16/dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth"),
    "vit7b16_sat": (4096, 40, 32, 8192, False, True, (9, 19, 29, 39),
                    "dinov3_vit7b16/dinov3_vit7b16_pretrain_sat493m-a6675841.pth"),
}
# fmt: on


def test_variant_table_matches_the_hub():
    assert sorted(HUB) == sorted(OFFICIAL_DINOV3_NAMES)
    for name, (dim, depth, heads, hidden, qkv_bias, local_norm, four, file) in HUB.items():
        spec = get_spec(name)
        assert (spec.embed_dim, spec.depth, spec.num_heads, spec.ffn_hidden) == (dim, depth, heads, hidden), (
            name
        )
        assert (spec.qkv_bias, spec.untie_global_and_local_cls_norm, spec.untie_cls_and_patch_norms) == (
            qkv_bias,
            local_norm,
            False,
        ), name
        assert spec.four_layers == four and spec.last_layer == (depth - 1,), name
        assert spec.last_four_layers == tuple(range(depth - 4, depth)), name
        assert spec.url == f"https://dl.fbaipublicfiles.com/dinov3/{file}", name
        assert spec.n_storage_tokens == spec.num_register_tokens == 4
        sat = name.endswith("_sat")
        assert spec.image_mean == ((0.430, 0.411, 0.296) if sat else (0.485, 0.456, 0.406)), name
        assert spec.image_std == ((0.213, 0.156, 0.143) if sat else (0.229, 0.224, 0.225)), name


def test_model_attributes_of_every_variant():
    for name, spec in ((n, BACKBONES.get(n)) for n in DINOV3_NAMES):
        with torch.device("meta"):
            model = spec.create()
        assert (model.embed_dim, model.n_blocks, model.patch_size, model.num_register_tokens) == (
            spec.embed_dim,
            spec.depth,
            16,
            4,
        ), name
        norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
        assert all(m.eps == 1e-5 for m in norms), name  # the hub's "layernormbf16"


def test_random_init_is_upstreams():
    model = build_backbone("tiny16")
    block = model.blocks[0]
    assert torch.all(block.ls1.gamma == 1e-5) and torch.all(block.ls2.gamma == 1e-5)
    assert torch.all(model.mask_token == 0)
    assert torch.all(block.attn.qkv.bias == 0)
    assert block.attn.qkv.bias_mask.tolist() == [1.0] * 80 + [0.0] * 80 + [1.0] * 80  # q, k, v
    bound = 1 / math.sqrt(3 * 16 * 16)
    assert model.patch_embed.proj.weight.abs().max() <= bound


@pytest.mark.parametrize(
    "alias,name",
    [
        ("dinov3_vitl16", "vitl16"),
        ("DINOv3_ViTH16Plus", "vith16plus"),
        ("vitl16_sat493m", "vitl16_sat"),
        ("dinov3_vit7b16_sat493m", "vit7b16_sat"),
        ("dinov3_vit7b16_lvd1689m", "vit7b16"),
        ("vits16plus", "vits16plus"),
    ],
)
def test_upstream_names_are_accepted(alias, name):
    assert resolve_name(alias) == name


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown backbone 'vitg16'.*vits16, vits16plus"):
        build_backbone("vitg16")


# ---- API semantics ------------------------------------------------------------------------------


def test_get_intermediate_semantics():
    model = build_backbone("tiny16").eval()
    image = torch.randn(2, 3, 48, 96)
    with torch.no_grad():
        last_two = model.get_intermediate_layers(image, n=2)
        chosen = model.get_intermediate_layers(image, n=[2, 3])
        reshaped = model.get_intermediate_layers(
            image, n=[3, 0], reshape=True, return_class_token=True, norm=False
        )
        raw = model.get_intermediate_tokens(image, n=[3, 0], norm=False)
        final_cls = model(image)
    assert all(torch.equal(a, b) for a, b in zip(last_two, chosen))
    assert last_two[0].shape == (2, 3 * 6, 80)  # storage tokens are never among the patches
    (p3, c3), (p0, c0) = reshaped  # in the order asked for
    assert p3.shape == (2, 80, 3, 6) and c3.shape == (2, 80)
    assert torch.equal(p3.flatten(2).transpose(1, 2), raw[0].patches) and torch.equal(c0, raw[1].cls)
    assert torch.allclose(model.norm(raw[0].patches), chosen[1], atol=1e-6)
    assert torch.allclose(final_cls, model.norm(raw[0].cls), atol=1e-6)


def test_untied_norms_at_inference():
    """cls_norm (untie_cls_and_patch_norms) norms the class and storage tokens; local_cls_norm
    (untie_global_and_local_cls_norm) is never used at inference."""
    image = torch.randn(1, 3, 32, 48)
    model = build_backbone("tiny16_clsnorm").eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.cls_norm.weight)
        normed = model.get_intermediate_tokens(image, 1, norm=True)[0]
        raw = model.get_intermediate_tokens(image, 1, norm=False)[0]
    assert torch.allclose(normed.cls, model.cls_norm(raw.cls), atol=1e-6)
    assert torch.allclose(normed.registers, model.cls_norm(raw.registers), atol=1e-6)
    assert torch.allclose(normed.patches, model.norm(raw.patches), atol=1e-6)

    model = build_backbone("tiny16_untied").eval()
    with torch.no_grad():
        before = model.get_intermediate_tokens(image, 1, norm=True)[0]
        model.local_cls_norm.weight.fill_(123.0)
        after = model.get_intermediate_tokens(image, 1, norm=True)[0]
    assert torch.equal(before.cls, after.cls) and torch.equal(before.registers, after.registers)


def test_non_multiple_input_names_nearest_sizes():
    model = build_backbone("tiny16")
    with pytest.raises(ValueError, match=r"65×100 .* patch size 16: use 64 or 80 .* 96 or 112"):
        model(torch.randn(1, 3, 65, 100))
    with pytest.raises(ValueError, match="use 16 for the height"):
        model(torch.randn(1, 3, 8, 32))


def test_invalid_block_indices_are_refused():
    model = build_backbone("tiny16")
    with pytest.raises(ValueError, match="blocks 0 to 3"):
        model.get_intermediate_layers(torch.randn(1, 3, 32, 32), n=[1, 4])


def test_flops_per_image_matches_torchs_counter():
    for name in ("tiny16", "tiny16_swiglu", "tiny16_untied"):
        model = build_backbone(name).eval()
        # The math backend runs attention as counted matmuls (the fused kernels are not counted).
        with torch.no_grad(), FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            model.get_intermediate_tokens(torch.randn(1, 3, 64, 96), n=4)
        assert model.flops_per_image(64, 96) == counter.get_total_flops(), name


def test_bf16_autocast_runs_and_stays_close():
    model = build_backbone("tiny16_swiglu").eval()
    image = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        full = model.get_intermediate_layers(image, n=[3])[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model.get_intermediate_layers(image, n=[3])[0]
    assert not torch.equal(half.float(), full)
    assert max_rel_error(half.float(), full) < 0.05


def test_bf16_weights_under_autocast_change_nothing():
    """DenseModel.cast_backbone stores every Linear and Conv2d in bf16 (the qkv bias masks with them);
    under autocast that must give exactly what autocast's own casts give. RoPE stays float32."""
    model = build_backbone("tiny16").eval()
    image = torch.randn(1, 3, 48, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model.get_intermediate_tokens(image, [1, 3], norm=False)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                module.to(torch.bfloat16)
        after = model.get_intermediate_tokens(image, [1, 3], norm=False)
    assert model.rope_embed.periods.dtype == torch.float32
    assert model.blocks[0].attn.qkv.bias_mask.dtype == torch.bfloat16
    assert all(torch.equal(a.patches, b.patches) and torch.equal(a.cls, b.cls) for a, b in zip(after, before))


def test_torch_compile_matches_eager():
    """One graph (no breaks: DenseModel.compile compiles this method), equal to eager. Two blocks
    keep the compile to seconds."""
    model = build_backbone("tiny16").eval()
    image = torch.randn(1, 3, 32, 48)
    compiled = torch.compile(model.get_intermediate_tokens, fullgraph=True)
    with torch.no_grad():
        eager = model.get_intermediate_tokens(image, [0, 1], norm=True)
        out = compiled(image, [0, 1], norm=True)
    for a, e in zip(out, eager):
        assert max_rel_error(a.patches, e.patches) < 1e-4 and max_rel_error(a.registers, e.registers) < 1e-4


# ---- loading -------------------------------------------------------------------------------------


def test_files_with_and_without_the_derived_buffers_load(reference, tmp_path):
    params = tiny_weights(reference["variants"]["tiny16"])
    full = build_backbone("tiny16").state_dict() | params  # with periods and bias masks
    image = torch.randn(1, 3, 48, 32)
    variants = {
        "full": full,
        "no_periods": {k: v for k, v in full.items() if k != "rope_embed.periods"},
        "no_masks": {k: v for k, v in full.items() if not k.endswith(".qkv.bias_mask")},
        "neither": params,
    }
    outputs = {}
    for label, state in variants.items():
        torch.save(state, tmp_path / f"{label}.pth")
        model = build_backbone("tiny16", weights=tmp_path / f"{label}.pth").eval()
        with torch.no_grad():
            outputs[label] = model(image)
    assert all(torch.equal(out, outputs["full"]) for out in outputs.values())
    # A file's own buffers are what is used, as upstream's strict load does.
    torch.save(full | {"blocks.0.attn.qkv.bias_mask": torch.ones(240)}, tmp_path / "unmasked.pth")
    unmasked = build_backbone("tiny16", weights=tmp_path / "unmasked.pth").eval()
    assert torch.equal(unmasked.blocks[0].attn.qkv.bias_mask, torch.ones(240))
    with torch.no_grad():
        assert not torch.allclose(unmasked(image), outputs["full"])


def meta_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


def test_another_variants_file_is_one_line_naming_it(official_keys):
    """Every official file against every other official backbone, from upstream's key lists."""
    for file_variant, shapes in official_keys["variants"].items():
        state = meta_state(shapes)
        for backbone in OFFICIAL_DINOV3_NAMES:
            same_architecture = {file_variant, backbone} <= {
                "vit7b16",
                "vit7b16_sat",
            } or file_variant == backbone
            if same_architecture:
                check_dinov3_compatible(state, get_spec(backbone), "w.pth")
                continue
            with pytest.raises(WeightsError) as error:
                check_dinov3_compatible(state, get_spec(backbone), "w.pth")
            message = str(error.value)
            named = "vit7b16 or vit7b16_sat" if file_variant.startswith("vit7b16") else file_variant
            assert (
                f"the checkpoint is {named} (" in message and f"but the backbone is {backbone} (" in message
            )
            assert "\n" not in message


def test_another_variants_file_refused_when_loading(reference, tmp_path):
    torch.save(tiny_weights(reference["variants"]["tiny16_swiglu"]), tmp_path / "swiglu.pth")
    with pytest.raises(WeightsError) as error:
        build_backbone("tiny16", weights=tmp_path / "swiglu.pth")
    assert str(error.value) == (
        f"{tmp_path / 'swiglu.pth'}: the checkpoint is tiny16_swiglu (embed dim 80, 4 blocks, swiglu 320, "
        "4 storage tokens) but the backbone is tiny16 (embed dim 80, 4 blocks, mlp 320, 4 storage tokens): "
        "choose the backbone tiny16_swiglu"
    )


def test_dinov2_file_is_named_as_such():
    state = meta_state(official_shapes("vits14_reg"))
    with pytest.raises(WeightsError, match="it is a DINOv2 checkpoint, not DINOv3"):
        check_dinov3_compatible(state, get_spec("vits16"), "v2.pth")


def test_missing_key_and_wrong_shape(reference, tmp_path):
    params = tiny_weights(reference["variants"]["tiny16"])
    torch.save({k: v for k, v in params.items() if k != "blocks.1.ls1.gamma"}, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"missing \['blocks.1.ls1.gamma'\]"):
        build_backbone("tiny16", weights=tmp_path / "missing.pth")
    torch.save(params | {"blocks.2.norm1.weight": torch.zeros(81)}, tmp_path / "shape.pth")
    with pytest.raises(
        WeightsError, match=r"'blocks.2.norm1.weight' has shape \(81,\) but tiny16 expects \(80,\)"
    ):
        build_backbone("tiny16", weights=tmp_path / "shape.pth")
    torch.save(
        params | {"cls_norm.weight": torch.ones(80), "cls_norm.bias": torch.zeros(80)}, tmp_path / "extra.pth"
    )
    with pytest.raises(WeightsError, match="the checkpoint is tiny16_clsnorm"):
        build_backbone("tiny16", weights=tmp_path / "extra.pth")


def test_pretrained_without_the_file_says_where_to_request_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_download(*args, **kwargs):
        raise AssertionError("the gated files must not be downloaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(WeightsError) as error:
        build_backbone("vitl16_sat", pretrained=True)
    message = str(error.value)
    assert DINOV3_ACCESS_URL == "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
    assert DINOV3_ACCESS_URL in message and "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth" in message
    assert str(tmp_path / "hub" / "checkpoints" / "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth") in message
    assert "weights=PATH" in message and "\n" not in message
    with pytest.raises(WeightsError, match="test variant with no official weights"):
        build_backbone("tiny16", pretrained=True)


def test_entry_scripts_early_check_says_where_to_request_the_file(tmp_path, monkeypatch):
    # train.py and predict.py check the official file before building anything (check_official_weights):
    # for DINOv3 that is the gated-download line at once, with no network request.
    from dense.backbones import check_official_weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise AssertionError("no request for a gated file")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(WeightsError, match="dinov3_vits16_pretrain_lvd1689m-08c60483.pth.*weights=PATH"):
        check_official_weights(get_spec("dinov3_vits16"))


def test_pretrained_uses_the_file_in_the_hub_cache(tmp_path, monkeypatch, reference):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    # A tiny stand-in for a released variant: the same path logic in milliseconds.
    spec = dataclasses.replace(get_spec("tiny16"), hub_name="dinov3_tiny16", file_hash="0123abcd")
    monkeypatch.setitem(BACKBONES._entries, "tiny16", spec)
    path = tmp_path / "hub" / "checkpoints" / "dinov3_tiny16_pretrain_lvd1689m-0123abcd.pth"
    assert dinov3_hub_cache_path(spec) == str(path)
    state = tiny_weights(reference["variants"]["tiny16"])
    os.makedirs(path.parent)
    torch.save(state, path)
    model = build_backbone("tiny16", pretrained=True)
    assert torch.equal(model.storage_tokens, state["storage_tokens"])


# ---- full size against upstream (needs a copy of it) ------------------------------------------------

UPSTREAM = os.environ.get("DINOV3_REPO")
needs_upstream = pytest.mark.skipif(
    not UPSTREAM, reason="set DINOV3_REPO to a copy of facebookresearch/dinov3"
)


def upstream_hub():
    sys.path.insert(0, UPSTREAM)
    import dinov3.hub.backbones as hub

    return hub


def randomised_pair(upstream, spec):
    """Upstream's model with seeded random weights (LayerScale ~0.1, so every block counts), and ours
    holding the same tensors, loaded by name."""
    shapes = {k: list(p.shape) for k, p in upstream.named_parameters()}
    upstream.load_state_dict(seeded_state_dict(shapes, 0), strict=False)
    ours = spec.create()
    ours.load_state_dict(upstream.state_dict(), strict=True)
    return upstream.eval(), ours.eval()


def compare(upstream, ours, size, n, norm):
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = upstream.get_intermediate_layers(
            image, n=n, reshape=True, return_class_token=True, norm=norm
        )
        actual = ours.get_intermediate_layers(image, n=n, reshape=True, return_class_token=True, norm=norm)
    assert len(actual) == len(expected)
    for (p, c), (ep, ec) in zip(actual, expected):
        assert max_rel_error(p, ep) < 1e-5 and max_rel_error(c, ec) < 1e-5, (size, n, norm)


@pytest.mark.slow
@needs_upstream
@pytest.mark.parametrize("name", ["vits16", "vits16plus", "vitb16", "vitl16"])
def test_full_size_matches_upstream(name):
    spec = get_spec(name)
    upstream, ours = randomised_pair(getattr(upstream_hub(), spec.hub_name)(pretrained=False), spec)
    for size in [(224, 224), (160, 288)]:
        for norm in (True, False):
            compare(upstream, ours, size, list(spec.four_layers), norm)
        compare(upstream, ours, size, 2, True)


@pytest.mark.slow
@needs_upstream
def test_huge_plus_forward_matches_upstream():
    spec = get_spec("vith16plus")
    upstream, ours = randomised_pair(upstream_hub().dinov3_vith16plus(pretrained=False), spec)
    compare(upstream, ours, (224, 224), list(spec.four_layers), False)


@pytest.mark.slow
@needs_upstream
def test_7b_width_matches_upstream():
    """The 7B at full width (4096, 32 heads, SwiGLU64, no qkv bias) but 2 of its 40 blocks: the whole
    model needs 27 GB per copy in float32."""
    with torch.device("meta"):
        upstream = upstream_hub().dinov3_vit7b16(pretrained=False)
    upstream.blocks = upstream.blocks[:2]
    upstream.n_blocks = 2
    upstream.to_empty(device="cpu")
    upstream.rope_embed._init_weights()
    upstream, ours = randomised_pair(upstream, dataclasses.replace(get_spec("vit7b16"), depth=2))
    compare(upstream, ours, (160, 96), [0, 1], True)
    compare(upstream, ours, (160, 96), 1, False)
