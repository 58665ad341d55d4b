"""Backbone parity and loading.

Independent references, all runnable in CI:
- saved outputs of Meta's own DinoVisionTransformer (tests/reference/make_backbone_reference.py says how
  they were made) for tiny configurations of each code path (plain, registers, SwiGLU) at 4 sizes;
- timm's implementation loading the same official-format state dict through its own checkpoint filter:
  exact for the register models at any size, and for the plain models at 518×518;
- a hand-written bicubic resampler implementing the plain models' "offset 0.1" interpolation rule;
- the official key names and shapes of the 8 variants, recorded from upstream.
"""

import json
import os
import urllib.error

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

import dense
from dense.backbones import OFFICIAL_NAMES, build_backbone, get_spec
from dense.backbones.dinov2.specs import hub_cache_path
from dense.core.errors import WeightsError
from tests._random_weights import random_official_state_dict

HERE = os.path.dirname(os.path.dirname(__file__))  # tests/
REFERENCE = os.path.join(HERE, "reference")


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of the expected output."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def reference():
    return torch.load(os.path.join(REFERENCE, "backbone_tiny.pt"), weights_only=True)


# ---- parity with upstream's own code (saved outputs) ----------------------------------------------


@pytest.mark.parametrize("name", ["tiny14", "tiny14_reg", "tiny14_swiglu"])
def test_matches_upstream_reference_outputs(name, reference, tmp_path):
    entry = reference[name]
    path = tmp_path / "weights.pth"
    torch.save(entry["weights"], path)
    model = build_backbone(name, weights=path).eval()
    sizes_seen = set()
    for case in entry["cases"]:
        height, width = case["size"]
        sizes_seen.add((height, width))
        image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(case["image_seed"]))
        with torch.no_grad():
            out = model.get_intermediate_layers(
                image, n=case["layers"], reshape=True, return_class_token=True, norm=case["norm"]
            )
        for (patches, cls), expected_patches, expected_cls in zip(out, case["patches"], case["cls"]):
            assert patches.shape == expected_patches.shape
            assert max_rel_error(patches, expected_patches) < 1e-5
            assert max_rel_error(cls, expected_cls) < 1e-5
    assert sizes_seen == {(518, 518), (224, 224), (280, 350), (126, 644)}


def test_official_key_layout_loads_strictly_for_all_variants():
    with open(os.path.join(REFERENCE, "official_keys.json")) as f:
        official = json.load(f)
    assert sorted(official) == sorted(OFFICIAL_NAMES)
    for name, shapes in official.items():
        # Building the large variants costs seconds; the meta device checks names and shapes for free.
        with torch.device("meta"):
            model = get_spec(name).create()
        ours = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert ours == shapes, name


# ---- parity with timm -----------------------------------------------------------------------------


def timm_reference(name: str, state: dict[str, torch.Tensor]):
    spec = get_spec(name)
    model = timm.create_model(spec.timm_name, pretrained=False, dynamic_img_size=True, num_classes=0)
    model.load_state_dict(checkpoint_filter_fn(dict(state), model))
    return model.eval()


def timm_features(model, image, layers, norm):
    intermediates = model.forward_intermediates(
        image, indices=layers, norm=norm, output_fmt="NCHW", intermediates_only=True
    )
    return intermediates


ALL_SIZES = [(224, 224), (280, 350), (126, 644), (518, 518)]


@pytest.mark.parametrize(
    "name,sizes",
    [
        ("vits14_reg", ALL_SIZES),  # timm's size-based antialiased resize is upstream's rule for these
        ("vitb14_reg", [(126, 644)]),
        ("vits14", [(518, 518)]),  # for the plain models timm equals upstream only on the native grid
        ("vitb14", [(518, 518)]),
    ],
)
def test_matches_timm(name, sizes, tmp_path):
    spec = get_spec(name)
    state = random_official_state_dict(name)
    torch.save(state, tmp_path / "w.pth")
    ours = build_backbone(name, weights=tmp_path / "w.pth").eval()
    reference = timm_reference(name, state)
    layers = list(spec.four_layers)
    for size in sizes:
        image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
        for norm in (True, False):
            with torch.no_grad():
                expected = timm_features(reference, image, layers, norm)
                actual = ours.get_intermediate_layers(image, n=layers, reshape=True, norm=norm)
            for a, e in zip(actual, expected):
                assert max_rel_error(a, e) < 1e-5, (size, norm)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vitl14", "vitl14_reg", "vitg14", "vitg14_reg"])
def test_large_variants_match_timm(name, tmp_path):
    """The large variants at 224×224 (20–60 s each on 2 cores, so `pytest -m slow`; the SwiGLU and
    40-block paths are also covered by the tiny variants against upstream in every run)."""
    spec = get_spec(name)
    state = random_official_state_dict(name)
    ours = spec.create().eval()
    ours.load_state_dict(state)
    reference = timm_reference(name, state)
    if spec.num_register_tokens == 0:
        # timm resizes position embeddings differently for the plain models; give both the same
        # (already 16×16) table so the comparison covers everything else: blocks, SwiGLU, norms.
        pos = ours.interpolate_pos_encoding(16, 16).detach()
        ours.pos_grid = 16
        ours.pos_embed = torch.nn.Parameter(pos)
        reference.pos_embed = torch.nn.Parameter(pos.clone())
        reference.patch_embed.img_size = (224, 224)
        reference.patch_embed.grid_size = (16, 16)
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    layers = list(spec.four_layers)
    with torch.no_grad():
        expected = timm_features(reference, image, layers, norm=False)
        actual = ours.get_intermediate_layers(image, n=layers, reshape=True, norm=False)
    for a, e in zip(actual, expected):
        assert max_rel_error(a, e) < 1e-5
    del ours, reference, state


# ---- the interpolation rule, written out by hand --------------------------------------------------


def cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights (PyTorch's a = -0.75) for the 4 taps around a fractional offset t."""

    def k(x):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    return [k(t + 1), k(t), k(1 - t), k(2 - t)]


def bicubic_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """Rows of 1-D bicubic resampling with align_corners=False, source = (dst + 0.5) / scale - 0.5,
    taps clamped at the border: what upstream's scale_factor call computes."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) / scale - 0.5
        base = int(np.floor(src))
        for tap, w in zip(range(base - 1, base + 3), cubic_weights(src - base)):
            m[i, min(max(tap, 0), n_in - 1)] += w
    return m


@pytest.mark.parametrize("grid", [(16, 16), (20, 25), (9, 46), (38, 38)])
def test_offset_interpolation_matches_hand_written_bicubic(grid):
    model = build_backbone("tiny14")
    h, w = grid
    pos = model.pos_embed.detach()[0, 1:].reshape(37, 37, -1).double().numpy()
    rows = bicubic_matrix(37, h, (h + 0.1) / 37)
    cols = bicubic_matrix(37, w, (w + 0.1) / 37)
    expected = np.einsum("ij,jkd,lk->ild", rows, pos, cols).reshape(h * w, -1)
    actual = model.interpolate_pos_encoding(h, w)[0, 1:].detach().double().numpy()
    assert np.abs(actual - expected).max() < 1e-5 * np.abs(expected).max()
    # The class token's embedding is never interpolated.
    assert torch.equal(model.interpolate_pos_encoding(h, w)[0, 0], model.pos_embed[0, 0])


def test_native_grid_returns_the_stored_embedding_unchanged():
    model = build_backbone("tiny14_reg")
    assert model.interpolate_pos_encoding(37, 37) is model.pos_embed


# ---- API semantics -----------------------------------------------------------------------------


def test_get_intermediate_layers_semantics():
    model = build_backbone("tiny14_reg").eval()
    image = torch.randn(2, 3, 56, 84)
    with torch.no_grad():
        last_two = model.get_intermediate_layers(image, n=2)
        chosen = model.get_intermediate_layers(image, n=[2, 3])
        tokens = model.get_intermediate_tokens(image, n=[2, 3], norm=True)
        reshaped = model.get_intermediate_layers(
            image, n=[3, 0], reshape=True, return_class_token=True, norm=False
        )
        raw = model.get_intermediate_tokens(image, n=[3, 0], norm=False)
    # int n = the last n blocks; a list = those blocks, in the order asked.
    assert all(torch.equal(a, b) for a, b in zip(last_two, chosen))
    assert last_two[0].shape == (2, 4 * 6, 48)  # registers are never in the patch tokens
    assert tokens[0].registers.shape == (2, 4, 48)
    assert torch.equal(tokens[1].patches, chosen[1])
    (p3, c3), (p0, c0) = reshaped
    assert p3.shape == (2, 48, 4, 6) and c3.shape == (2, 48)
    assert torch.equal(p3.flatten(2).transpose(1, 2), raw[0].patches)
    assert torch.equal(c0, raw[1].cls)
    # norm=True applies the final LayerNorm.
    assert torch.allclose(model.norm(raw[0].patches), chosen[1], atol=1e-6)


def test_attributes_of_every_variant():
    expected = {"vits14": 384, "vitb14": 768, "vitl14": 1024, "vitg14": 1536}
    for name in OFFICIAL_NAMES:
        spec = get_spec(name)
        with torch.device("meta"):
            model = spec.create()
        assert model.embed_dim == expected[name.removesuffix("_reg")]
        assert model.patch_size == 14
        assert model.num_register_tokens == (4 if name.endswith("_reg") else 0)
        assert model.n_blocks == {384: 12, 768: 12, 1024: 24, 1536: 40}[model.embed_dim]


@pytest.mark.parametrize(
    "alias,name",
    [("dinov2_vitl14_reg", "vitl14_reg"), ("vitb14_reg4", "vitb14_reg"), ("DINOv2_ViTS14", "vits14")],
)
def test_upstream_names_are_accepted(alias, name):
    assert dense.backbones.resolve_name(alias) == name


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown backbone 'vitx14'.*vits14"):
        build_backbone("vitx14")


def test_non_multiple_input_names_nearest_sizes():
    model = build_backbone("tiny14")
    with pytest.raises(ValueError, match=r"225×300 .* 224 or 238 .* 294 or 308"):
        model(torch.randn(1, 3, 225, 300))
    with pytest.raises(ValueError, match="use 14 for the height"):
        model(torch.randn(1, 3, 5, 28))


def test_invalid_block_indices_are_refused():
    model = build_backbone("tiny14")
    with pytest.raises(ValueError, match="blocks 0 to 3"):
        model.get_intermediate_layers(torch.randn(1, 3, 28, 28), n=[1, 4])


def test_bf16_autocast_runs_and_stays_close():
    model = build_backbone("tiny14_swiglu").eval()
    image = torch.randn(1, 3, 70, 98)
    with torch.no_grad():
        full = model.get_intermediate_layers(image, n=[3])[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model.get_intermediate_layers(image, n=[3])[0]
    # The final LayerNorm runs in fp32 under CPU autocast; the matmuls before it ran in bf16.
    assert not torch.equal(half.float(), full)
    assert max_rel_error(half.float(), full) < 0.05


# ---- checkpoint layouts and loading errors ---------------------------------------------------------


def tiny_state(name="tiny14"):
    return build_backbone(name).state_dict()


def test_chunked_and_wrapped_checkpoints_load(tmp_path):
    state = tiny_state()
    image = torch.randn(1, 3, 28, 42)
    reference = build_backbone("tiny14").eval()
    reference.load_state_dict(state)
    chunked = {}
    for key, value in state.items():
        if key.startswith("blocks."):
            index = int(key.split(".")[1])
            rest = key.split(".", 2)[2]
            chunked[f"blocks.{index // 2}.{index}.{rest}"] = value
        else:
            chunked[key] = value
    layouts = {
        "chunked": chunked,
        "teacher": {
            "teacher": {f"backbone.{k}": v for k, v in state.items()} | {"dino_head.w": torch.zeros(1)}
        },
        "model": {"model": state},
        "state_dict": {"state_dict": {f"backbone.{k}": v for k, v in chunked.items()}},
    }
    for layout, content in layouts.items():
        torch.save(content, tmp_path / f"{layout}.pth")
        model = build_backbone("tiny14", weights=tmp_path / f"{layout}.pth").eval()
        with torch.no_grad():
            assert torch.equal(model(image), reference(image)), layout


def test_checkpoint_for_another_variant_is_one_clear_line(tmp_path):
    state = random_official_state_dict("vitb14")
    torch.save(state, tmp_path / "b.pth")
    with pytest.raises(WeightsError) as error:
        build_backbone("vits14", weights=tmp_path / "b.pth")
    assert str(error.value) == "checkpoint has embed dim 768 (vitb14) but the backbone is vits14 (384)"

    torch.save(tiny_state("tiny14_reg"), tmp_path / "reg.pth")
    with pytest.raises(
        WeightsError, match=r"4 register tokens \(tiny14_reg\).*choose the backbone tiny14_reg"
    ):
        build_backbone("tiny14", weights=tmp_path / "reg.pth")


def test_missing_key_and_wrong_shape(tmp_path):
    state = tiny_state()
    del state["blocks.1.ls1.gamma"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"missing \['blocks.1.ls1.gamma'\]"):
        build_backbone("tiny14", weights=tmp_path / "missing.pth")
    state = tiny_state()
    state["pos_embed"] = torch.zeros(1, 257, 48)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match=r"'pos_embed' has shape \(1, 257, 48\)"):
        build_backbone("tiny14", weights=tmp_path / "shape.pth")


def test_unreadable_files_give_one_line(tmp_path):
    torch.save(tiny_state(), tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pth").write_text("this is not a checkpoint")
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    cases = {
        "truncated.pth": "not a readable PyTorch checkpoint",
        "text.pth": "is not a PyTorch checkpoint",
        "empty.pth": "is empty",
        "list.pth": "holds no state dict",
        "absent.pth": "weights file not found",
    }
    for filename, message in cases.items():
        with pytest.raises(WeightsError, match=message) as error:
            build_backbone("tiny14", weights=tmp_path / filename)
        assert "\n" not in str(error.value)


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch EXPLOITED",))


def test_pickle_with_code_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"cls_token": Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="refused by safe loading"):
        build_backbone("tiny14", weights=tmp_path / "evil.pth")
    assert not (tmp_path / "EXPLOITED").exists()


def test_pretrained_without_network_names_url_cache_and_option(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, progress=True):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    spec = get_spec("vitl14_reg")
    with pytest.raises(WeightsError) as error:
        build_backbone("vitl14_reg", pretrained=True)
    message = str(error.value)
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth" in message
    assert hub_cache_path(spec) in message and "weights=" in message
    assert "\n" not in message


def test_pretrained_uses_the_file_in_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    state = random_official_state_dict("vits14", seed=3)
    path = hub_cache_path(get_spec("vits14"))
    os.makedirs(os.path.dirname(path))
    torch.save(state, path)
    model = build_backbone("vits14", pretrained=True)
    assert torch.equal(model.pos_embed, state["pos_embed"])


def test_every_family_is_known_whichever_module_is_imported_first():
    """The DINOv3 variants register themselves in their own module; a caller that imports only
    dense.backbones (not `import dense`) still finds them, in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "from dense.backbones import get_spec, list_backbones; "
        "print(get_spec('tiny16').name, 'vitl16' in list_backbones())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tiny16", "True"]
