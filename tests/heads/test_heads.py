"""Heads: parity with upstream DINOv2, key names of the released files, the linear-head shortcut,
every registered head forward/backward (fp32, bf16 autocast), and the one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dense
from dense.core.errors import WeightsError
from dense.core.features import FeatureMaps, LayerSet
from heads import DPTDepthHead, LinearDepthHead, LinearSegHead, build_head, get_head_spec, load_released_head
from tests.testers import small_options, tensor_heads

REFERENCE = Path(__file__).parents[1] / "reference"
DIM = 16  # tiny feature width for the forward tests


def features(num_layers: int, grid=(3, 5), dim: int = DIM, batch: int = 2, cls: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    patches = [torch.randn(batch, dim, *grid, generator=g) for _ in range(num_layers)]
    tokens = [torch.randn(batch, dim, generator=g) for _ in range(num_layers)] if cls else None
    return FeatureMaps(patches, tokens)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5):
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------------
# Parity with upstream (files made by tests/reference/make_head_reference.py from the DINOv2 source)


@pytest.mark.parametrize("name", ["linear", "linear4", "dpt"])
def test_matches_upstream_through_released_file_format(name):
    path = REFERENCE / f"heads_depth_{name}.pt"
    reference = torch.load(path, map_location="cpu", weights_only=True)
    meta = reference["meta"]
    if meta["head"] == "depth_linear":
        head = build_head(
            "depth_linear",
            meta["embed_dim"],
            num_layers=meta["num_layers"],
            min_depth=meta["min_depth"],
            max_depth=meta["max_depth"],
        )
    else:
        head = build_head(
            "depth_dpt",
            meta["embed_dim"],
            channels=meta["channels"],
            min_depth=meta["min_depth"],
            max_depth=meta["max_depth"],
        )
    load_released_head(head, path).eval()  # strict: every upstream key must exist here, same shape
    for case in reference["cases"]:
        with torch.no_grad():
            out = head(FeatureMaps(case["patches"], case["cls_tokens"]))
        assert_close_rel(out, case["output"])


# ---------------------------------------------------------------------------------------------------
# Key names and shapes: what Meta's released files hold, for ViT-S (built on the meta device: no memory)


def _dpt_keys(d: int, c: int = 256) -> dict[str, tuple]:
    post = [d // 8, d // 4, d // 2, d]
    keys = {
        "conv_depth.head.0.weight": (c // 2, c, 3, 3),
        "conv_depth.head.0.bias": (c // 2,),
        "conv_depth.head.2.weight": (32, c // 2, 3, 3),
        "conv_depth.head.2.bias": (32,),
        "conv_depth.head.4.weight": (1, 32, 1, 1),
        "conv_depth.head.4.bias": (1,),
        "reassemble_blocks.resize_layers.0.weight": (post[0], post[0], 4, 4),
        "reassemble_blocks.resize_layers.0.bias": (post[0],),
        "reassemble_blocks.resize_layers.1.weight": (post[1], post[1], 2, 2),
        "reassemble_blocks.resize_layers.1.bias": (post[1],),
        "reassemble_blocks.resize_layers.3.weight": (post[3], post[3], 3, 3),
        "reassemble_blocks.resize_layers.3.bias": (post[3],),
        "project.conv.weight": (c, c, 3, 3),
        "project.conv.bias": (c,),
    }
    for i, p in enumerate(post):
        keys[f"reassemble_blocks.projects.{i}.conv.weight"] = (p, d, 1, 1)
        keys[f"reassemble_blocks.projects.{i}.conv.bias"] = (p,)
        keys[f"reassemble_blocks.readout_projects.{i}.0.weight"] = (d, 2 * d)
        keys[f"reassemble_blocks.readout_projects.{i}.0.bias"] = (d,)
        keys[f"convs.{i}.conv.weight"] = (c, p, 3, 3)
        keys[f"fusion_blocks.{i}.project.conv.weight"] = (c, c, 1, 1)
        keys[f"fusion_blocks.{i}.project.conv.bias"] = (c,)
        for unit in ("res_conv_unit1", "res_conv_unit2") if i > 0 else ("res_conv_unit2",):
            for conv in ("conv1", "conv2"):
                keys[f"fusion_blocks.{i}.{unit}.{conv}.conv.weight"] = (c, c, 3, 3)
    return keys


def _seg_keys(channels: int, classes: int) -> dict[str, tuple]:
    return {
        "bn.weight": (channels,),
        "bn.bias": (channels,),
        "bn.running_mean": (channels,),
        "bn.running_var": (channels,),
        "bn.num_batches_tracked": (),
        "conv_seg.weight": (classes, channels, 1, 1),
        "conv_seg.bias": (classes,),
    }


EXPECTED_KEYS = {
    ("depth_linear", ()): {"conv_depth.weight": (256, 2 * 384, 1, 1), "conv_depth.bias": (256,)},
    ("depth_linear4", ()): {"conv_depth.weight": (256, 2 * 4 * 384, 1, 1), "conv_depth.bias": (256,)},
    ("depth_dpt", ()): _dpt_keys(384),
    ("seg_linear", (("num_classes", 150),)): _seg_keys(384, 150),
    ("seg_ms", (("num_classes", 150),)): _seg_keys(4 * 384, 150),
}


@pytest.mark.parametrize("name,options", list(EXPECTED_KEYS), ids=[n for n, _ in EXPECTED_KEYS])
def test_state_dict_keys_are_upstreams(name, options):
    with torch.device("meta"):
        head = build_head(name, 384, **dict(options))
    found = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert found == EXPECTED_KEYS[(name, options)]


def test_dpt_keys_equal_the_upstream_reference_file():
    upstream = torch.load(REFERENCE / "heads_depth_dpt.pt", weights_only=True)["state_dict"]
    expected = {k.removeprefix("decode_head."): tuple(v.shape) for k, v in upstream.items()}
    assert expected == _dpt_keys(16, 8)


# ---------------------------------------------------------------------------------------------------
# Linear depth head: the conv-before-upsample shortcut equals upstream's order of operations


def naive_linear_depth(head: LinearDepthHead, feats: FeatureMaps) -> torch.Tensor:
    """Upstream's order: concat(patch, cls broadcast) → resize ×upsample → concat → conv → normalise → E[bins]."""
    h, w = feats.grid
    size = (h * head.upsample, w * head.upsample)
    maps = []
    for i, p in enumerate(feats.patches):
        parts = [p]
        if head.use_cls_token:
            parts.append(feats.cls_tokens[i][:, :, None, None].expand(-1, -1, *p.shape[-2:]))
        maps.append(F.interpolate(torch.cat(parts, 1), size=size, mode="bilinear", align_corners=False))
    logit = head.conv_depth(torch.cat(maps, 1))
    if head.bin_weighting == "linear":
        prob = F.relu(logit) + 0.1
    elif head.bin_weighting == "softmax":
        prob = torch.softmax(logit, 1)
    else:
        prob = torch.sigmoid(logit)
    prob = prob / prob.sum(1, keepdim=True)
    if head.bins_strategy == "UD":
        bins = torch.linspace(head.min_depth, head.max_depth, prob.shape[1])
    else:
        bins = torch.logspace(math.log10(head.min_depth), math.log10(head.max_depth), prob.shape[1])
    return torch.einsum("bkhw,k->bhw", prob, bins).unsqueeze(1)


@pytest.mark.parametrize(
    "num_layers,use_cls,bins,norm,grids",
    [
        (1, True, "UD", "linear", [(5, 7)]),
        (4, True, "UD", "linear", [(6, 4)] * 4),
        (4, False, "UD", "linear", [(3, 5)] * 4),
        (4, True, "SID", "softmax", [(5, 7)] * 4),
        (1, True, "SID", "sigmoid", [(4, 4)]),
        (2, True, "UD", "softmax", [(4, 6), (3, 5)]),  # layers on different grids: the per-layer path
    ],
)
def test_linear_depth_equals_naive_path(num_layers, use_cls, bins, norm, grids):
    torch.manual_seed(0)
    head = LinearDepthHead(
        DIM,
        num_layers=num_layers,
        n_bins=64,
        bins_strategy=bins,
        bin_weighting=norm,
        min_depth=0.01,
        max_depth=10.0,
        use_cls_token=use_cls,
    )
    with torch.no_grad():
        head.conv_depth.weight.normal_()  # larger than default init: the normalisation matters
    g = torch.Generator().manual_seed(1)
    feats = FeatureMaps(
        [torch.randn(2, DIM, *grid, generator=g) for grid in grids],
        [torch.randn(2, DIM, generator=g) for _ in grids] if use_cls else None,
    )
    with torch.no_grad():
        out = head(feats)
    assert out.shape == (2, 1, 4 * grids[0][0], 4 * grids[0][1])
    assert_close_rel(out, naive_linear_depth(head, feats))


def test_sid_bins_are_log_uniform_between_min_and_max():
    bins = LinearDepthHead(DIM, n_bins=5, bins_strategy="SID", min_depth=0.1, max_depth=1000.0).bins
    torch.testing.assert_close(bins, torch.tensor([0.1, 1.0, 10.0, 100.0, 1000.0]), rtol=1e-5, atol=0)


def test_linear_depth_output_lies_within_bins_and_is_not_clamped_by_the_head():
    head = LinearDepthHead(DIM, min_depth=2.0, max_depth=3.0)
    out = head(features(1))
    assert out.min() >= 2.0 - 1e-5 and out.max() <= 3.0 + 1e-5  # a convex combination of the bins
    dpt = DPTDepthHead(DIM, channels=16, min_depth=0.5, max_depth=0.6)
    with torch.no_grad():
        dpt.conv_depth.head[4].bias.fill_(5.0)
    assert dpt(features(4)).max() > 0.6  # clamping is the model's job, as in upstream


# ---------------------------------------------------------------------------------------------------
# Segmentation head: BatchNorm (eval) + 1×1 conv on the concatenated maps


@pytest.mark.parametrize("num_layers,grids", [(1, [(3, 5)]), (4, [(5, 4)] * 4), (2, [(4, 6), (2, 3)])])
def test_seg_head_equals_batchnorm_and_conv_on_concat(num_layers, grids):
    torch.manual_seed(0)
    head = LinearSegHead(DIM, num_classes=7, num_layers=num_layers)
    with torch.no_grad():
        head.bn.running_mean.normal_()
        head.bn.running_var.uniform_(0.5, 2.0)
        head.bn.weight.normal_()
        head.bn.bias.normal_()
    head.eval()
    g = torch.Generator().manual_seed(1)
    feats = FeatureMaps([torch.randn(2, DIM, *grid, generator=g) for grid in grids])
    x = torch.cat(
        [F.interpolate(p, size=grids[0], mode="bilinear", align_corners=False) for p in feats.patches], 1
    )
    bn = head.bn
    expected = F.conv2d(
        (x - bn.running_mean[:, None, None])
        / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        * bn.weight[:, None, None]
        + bn.bias[:, None, None],
        head.conv_seg.weight,
        head.conv_seg.bias,
    )
    with torch.no_grad():
        assert_close_rel(head(feats), expected)


# ---------------------------------------------------------------------------------------------------
# Every registered head: forward + backward, fp32 and bf16 autocast, rectangular grids


def expected_grid(name: str, h: int, w: int) -> tuple[int, int]:
    task_scale = {"depth_linear": 4, "depth_linear4": 4, "seg_linear": 1, "seg_ms": 1}
    if name == "depth_dpt":
        return 32 * math.ceil(h / 2), 32 * math.ceil(w / 2)
    return task_scale[name] * h, task_scale[name] * w


# Every registered head with a tensor output (seg_mask's MaskPredictions: tests/testers.py), at the small
# sizes registered with it (HeadSpec.test_options).
@pytest.mark.parametrize("name", tensor_heads())
@pytest.mark.parametrize("grid", [(3, 5), (4, 2)])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_forward_backward(name, grid, autocast):
    torch.manual_seed(0)
    spec = get_head_spec(name)
    head = build_head(name, DIM, **small_options(name, num_classes=5)).train()
    feats = features(spec.num_layers, grid, cls=spec.use_cls_token)
    for p in feats.patches:
        p.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = head(feats)
    channels = 1 if spec.task == "depth" else 5
    assert out.shape == (2, channels, *expected_grid(name, *grid))
    if spec.task == "depth":
        assert out.dtype == torch.float32  # depth heads finish in fp32 even under autocast
    out.float().square().mean().backward()
    assert torch.isfinite(out).all()
    for pname, param in head.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
    assert all(p.grad is not None for p in feats.patches)


# ---------------------------------------------------------------------------------------------------
# Registry


def test_registry_specs():
    builtin = ["depth_dpt", "depth_linear", "depth_linear4", "seg_linear", "seg_ms"]
    assert set(builtin) <= set(dense.list_heads())
    table = {
        name: (s.task, s.layer_set, s.norm, s.use_cls_token, s.num_layers)
        for name, s in ((n, get_head_spec(n)) for n in builtin)
    }
    assert table == {
        "depth_linear": ("depth", LayerSet.LAST, False, True, 1),
        "depth_linear4": ("depth", LayerSet.FOUR_EVEN_INTERVALS, False, True, 4),
        "depth_dpt": ("depth", LayerSet.FOUR_EVEN_INTERVALS, False, True, 4),
        "seg_linear": ("segmentation", LayerSet.LAST, True, False, 1),
        "seg_ms": ("segmentation", LayerSet.FOUR_LAST, True, False, 4),
    }
    assert get_head_spec("depth") is get_head_spec("depth_dpt")
    assert get_head_spec("seg") is get_head_spec("seg_ms")
    assert {"depth", "seg"} <= set(dense.list_heads(with_aliases=True)) - set(dense.list_heads())


def test_a_head_registered_twice_is_refused():
    with pytest.raises(ValueError, match="head 'depth_dpt' is registered twice"):
        dense.register_head(
            "depth_dpt", task="depth", layer_set=LayerSet.LAST, norm=False, use_cls_token=False
        )(LinearDepthHead)
    with pytest.raises(ValueError, match="layer_set must be a dense.LayerSet"):
        dense.register_head("x", task="depth", layer_set="last", norm=False, use_cls_token=False)


def test_a_head_declares_its_test_sizes_at_registration():
    """The per-head tests build each head with `small_options` (tests/testers.py): its registered
    test_options, read-only, options of its own constructor, none of them a change outside the tests."""
    assert dict(get_head_spec("depth_dpt").test_options) == {"channels": 32}
    assert dict(get_head_spec("seg_mask").test_options) == {"num_queries": 16, "num_blocks": 2}
    assert dict(get_head_spec("depth_linear").test_options) == {}
    with pytest.raises(TypeError):
        get_head_spec("depth_dpt").test_options["channels"] = 8  # type: ignore[index]
    assert build_head("depth_dpt", DIM).project.conv.out_channels == 256  # the default is the head's own
    with pytest.raises(ValueError, match="head x: test_options has no option.s. nope"):
        dense.register_head(
            "x",
            task="depth",
            layer_set=LayerSet.LAST,
            norm=False,
            use_cls_token=True,
            test_options={"nope": 1},
        )(LinearDepthHead)
    assert "x" not in dense.list_heads()


def test_former_option_name_still_builds():
    # norm_strategy (upstream's name, in older configs and checkpoints) is bin_weighting now.
    assert build_head("depth_linear", DIM, norm_strategy="softmax").bin_weighting == "softmax"


def test_build_head_options():
    head = build_head(
        "depth_linear4", DIM, n_bins=32, bins_strategy="SID", bin_weighting="softmax", max_depth=80
    )
    assert (head.num_layers, head.bins.shape[0], head.bins_strategy, head.max_depth) == (4, 32, "SID", 80)
    assert (
        build_head("depth_linear", DIM, num_layers=2, use_cls_token=False).conv_depth.in_channels == 2 * DIM
    )
    assert not build_head("depth_dpt", DIM, use_cls_token=False).use_cls_token
    assert not build_head("depth_dpt", DIM, readout="ignore").use_cls_token
    assert build_head("seg", DIM, num_classes=3, num_layers=2, min_depth=None).bn.num_features == 2 * DIM


@pytest.mark.parametrize(
    "name,options,fragment",
    [
        (
            "depth_cnn",
            {},
            "unknown head 'depth_cnn' for head.name; choose one of depth_dpt, depth_linear, depth_linear4",
        ),
        ("depth_dpt", {"num_classes": 3}, "no option(s) num_classes; valid:"),
        ("depth_dpt", {"num_layers": 1}, "exactly 4 feature layers"),
        ("depth_dpt", {"use_cls_token": False, "readout": "project"}, "contradicts"),
        ("seg_linear", {"num_classes": 3, "use_cls_token": True}, "does not use class tokens"),
        ("seg_ms", {}, "needs num_classes"),
        ("depth_linear", {"bins_strategy": "log"}, "bins_strategy must be one of"),
        ("depth_linear", {"bin_weighting": "exp"}, "bin_weighting must be one of"),
        ("depth_linear", {"min_depth": 5.0, "max_depth": 1.0}, "min_depth < max_depth"),
    ],
)
def test_build_head_errors_are_one_line(name, options, fragment):
    with pytest.raises(ValueError) as error:
        build_head(name, DIM, **options)
    assert fragment in one_line(error)


@pytest.mark.parametrize(
    "feats,fragment",
    [
        (features(4), "expects 1 feature layer(s), got 4"),
        (features(1, dim=8), "expects 16-channel features, got [8]"),
        (features(1, cls=False), "uses class tokens but the FeatureMaps holds none"),
    ],
)
def test_feature_mismatch_errors(feats, fragment):
    with pytest.raises(ValueError) as error:
        build_head("depth_linear", DIM)(feats)
    assert fragment in one_line(error)


# ---------------------------------------------------------------------------------------------------
# Loading released head files


def _mmcv_file(tmp_path, state: dict, name="head.pth") -> Path:
    path = tmp_path / name
    torch.save(
        {"meta": {"mmcv_version": "1.5.0"}, "state_dict": {"decode_head." + k: v for k, v in state.items()}},
        path,
    )
    return path


def test_loader_strips_prefix_ignores_other_modules_and_accepts_bare_state_dicts(tmp_path):
    source = build_head("seg_linear", DIM, num_classes=4)
    target = build_head("seg_linear", DIM, num_classes=4)
    checkpoint = {
        "state_dict": {"backbone.cls_token": torch.zeros(1)}
        | {"decode_head." + k: v for k, v in source.state_dict().items()}
    }
    load_released_head(target, checkpoint)
    torch.testing.assert_close(target.conv_seg.weight, source.conv_seg.weight)
    load_released_head(build_head("seg_linear", DIM, num_classes=4), source.state_dict())  # bare


def test_wrong_backbone_size_is_one_clear_line(tmp_path):
    vitg_linear = {"conv_depth.weight": torch.empty(256, 2 * 1536, 1, 1), "conv_depth.bias": torch.empty(256)}
    path = _mmcv_file(tmp_path, vitg_linear)
    with torch.device("meta"):
        head = build_head("depth_linear", 384)
    with pytest.raises(WeightsError) as error:
        load_released_head(head, path)
    message = one_line(error)
    assert "3072 input channels (ViT-S linear4 or ViT-g linear)" in message
    assert "768 input channels (ViT-S linear)" in message
    assert "conv_depth.weight: file [256, 3072, 1, 1], head [256, 768, 1, 1]" in message


def test_wrong_head_type_is_one_clear_line(tmp_path):
    with torch.device("meta"):
        head = build_head("depth_linear4", 16)
    with pytest.raises(WeightsError) as error:
        load_released_head(head, REFERENCE / "heads_depth_dpt.pt")
    message = one_line(error)
    assert "holds a DPT depth head for 16-dim features" in message
    assert "the head is a linear depth head for 128 input channels" in message
    assert "missing conv_depth.weight" in message


def test_wrong_seg_head_size_is_one_clear_line(tmp_path):
    vitb_ms = _seg_keys(4 * 768, 150)
    counter = "bn.num_batches_tracked"  # an int64 buffer, as in Meta's files
    path = _mmcv_file(
        tmp_path, {k: torch.zeros(s, dtype=torch.int64 if k == counter else None) for k, s in vitb_ms.items()}
    )
    with torch.device("meta"):
        head = build_head("seg_linear", 768, num_classes=150)
    with pytest.raises(WeightsError) as error:
        load_released_head(head, path)
    message = one_line(error)
    assert "3072 input channels (ViT-B ms), 150 classes" in message
    assert "768 input channels (ViT-B linear)" in message


@pytest.mark.parametrize(
    "content,fragment",
    [
        (
            lambda: (REFERENCE / "heads_depth_linear.pt").read_bytes()[:4000],
            "not a readable PyTorch checkpoint",
        ),
        (
            lambda: b"<html>404 Not Found</html>",
            "head.pth",
        ),  # dense.core.errors words this one poorly (see report)
        (lambda: b"", "empty"),
        (None, "holds no state dict of tensors"),
    ],
    ids=["truncated", "html", "empty", "no-tensors"],
)
def test_unreadable_files_are_one_line(tmp_path, content, fragment):
    path = tmp_path / "head.pth"
    if content is None:
        torch.save({"meta": {"epoch": 3}, "state_dict": {"decode_head.x": "not a tensor"}}, path)
    else:
        path.write_bytes(content())
    with pytest.raises(WeightsError) as error:
        load_released_head(LinearDepthHead(DIM), path)
    assert fragment in one_line(error)
