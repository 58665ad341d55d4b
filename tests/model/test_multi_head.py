"""Several heads on one frozen backbone pass (dense/multi_head.py, dense/tasks/multi.py, head=multi):
the model equals its single-head models, runs the backbone once, and trains, evaluates, predicts and
exports end to end; a crafted checkpoint's head names are refused as data."""

from __future__ import annotations

import importlib
import json

import hydra.utils
import numpy as np
import pytest
import torch

import dense
from benchmarks import multi as bench_multi
from dense.checkpoint import MODEL_KEY, load_model
from dense.cli import evaluate as eval_script
from dense.cli import export as export_script
from dense.cli.predict import run as predict_script
from dense.core.errors import WeightsError
from dense.core.io import read_image, save_png
from dense.data.transforms import image_tensor
from dense.model import DenseModel
from dense.model import build_model as build_single_head_model
from tests._tiny_run import (
    QUIET_TINY_RUN,
    SCENES_28,
    compose_config,
    metric_rows,
    one_line_exit,
    predict_config,
    series,
    train_in_process,
)

HEADS = {"depth": "depth_dpt", "seg": "seg_linear", "seg4": "seg_ms"}


@pytest.mark.parametrize("backbone", ["tiny14", "tiny16"])
def test_each_output_equals_the_single_head_model_with_the_same_weights(backbone):
    torch.manual_seed(0)
    model = dense.build_model(backbone, heads=HEADS, num_classes=5).eval()
    # depth_dpt reads four raw blocks, seg_linear the last normalised one, seg_ms four normalised ones.
    assert model.token_requests() == {False: [0, 1, 2, 3], True: [0, 1, 2, 3]}
    blocks_run = []
    model.backbone.blocks[0].register_forward_hook(lambda *_: blocks_run.append(1))
    images = torch.randn(2, 3, 30, 44)  # not a multiple of the patch: padding and cropping included
    with torch.no_grad():
        outputs = model(images)
    assert len(blocks_run) == 1  # one backbone pass for the three heads
    for name, head in HEADS.items():
        options = {} if head.startswith("depth") else {"num_classes": 5}
        single = build_single_head_model(backbone, head, **options).eval()
        single.backbone.load_state_dict(model.backbone.state_dict())
        single.head.load_state_dict(model.heads[name].state_dict())
        with torch.no_grad():
            expected = single(images)
        assert outputs[name].shape == expected.shape
        assert (outputs[name] - expected).abs().max().item() <= 1e-6, name
        with torch.no_grad():  # inference: the one-pass predict equals each head's own
            assert torch.allclose(model.predict(images)[name], single.predict(images), atol=1e-6)
    with pytest.raises(ValueError, match="head_weights: no head"):
        dense.build_model(backbone, heads=HEADS, num_classes=5, head_weights="x.pth")
    # A single head through the public builder is today's DenseModel.
    assert type(dense.build_model(backbone, "depth_linear")) is DenseModel


def test_build_model_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="head name"):
        dense.build_model("tiny14", heads={"Depth.x": "depth_linear"})
    with pytest.raises(ValueError, match="not both"):
        dense.build_model("tiny14", "depth_linear", heads={"depth": "depth_linear"})
    with pytest.raises(ValueError, match="n_bins: no head"):
        dense.build_model("tiny14", heads={"seg": "seg_linear"}, num_classes=3, n_bins=8)


def test_the_multi_smoke_preset_is_a_random_vits_with_two_heads_on_small_synthetic_data():
    cfg = compose_config("train", "experiment=multi_smoke")
    assert (cfg.backbone.name, cfg.backbone.pretrained, cfg.head.name) == ("vits14", False, "multi")
    assert {n: e.name for n, e in cfg.head.heads.items()} == {"depth": "depth_linear4", "seg": "seg_linear"}
    assert cfg.data.name == "synthetic" and cfg.trainer.accelerator == "cpu" and cfg.test


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    """A finished tiny head=multi run: depth_linear (weight 1) and seg_linear (weight 0.5), 4 steps."""
    out = tmp_path_factory.mktemp("multi") / "run"
    task, metrics = train_in_process(
        out,
        *QUIET_TINY_RUN,
        *SCENES_28,
        "head=multi",
        "head.heads.depth.name=depth_linear",
        "head.heads.seg.loss_weight=0.5",
        "trainer.max_steps=4",
    )
    return out, task, metrics


def test_training_logs_each_head_and_the_weighted_loss(multi_run):
    out, task, metrics = multi_run
    assert {"val/depth/rmse", "val/depth/abs_rel_aligned", "val/seg/mIoU"} <= set(metrics)
    rows = metric_rows(out)
    total, depth, seg = (series(rows, f"train/{k}") for k in ("loss", "depth/loss", "seg/loss"))
    assert len(total) == 4 and len(depth) == 4 and len(seg) == 4
    np.testing.assert_allclose(total, np.array(depth) + 0.5 * np.array(seg), rtol=1e-5)
    # best.ckpt follows the first head's main metric.
    assert task.main_metric == "val/depth/rmse"


def test_checkpoint_reloads_the_multi_head_model(multi_run):
    out, task, _ = multi_run
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(k.startswith("model.head.") for k in checkpoint["state_dict"])
    assert {k.split(".")[2] for k in checkpoint["state_dict"] if k.startswith("model.heads.")} == {
        "depth",
        "seg",
    }
    model = dense.load_model(out / "checkpoints" / "last.ckpt")
    assert isinstance(model, dense.MultiHeadModel) and model.names == ["depth", "seg"]
    images = torch.randn(1, 3, 28, 28)
    trained = task.model.eval()
    with torch.no_grad():
        reloaded, expected = model(images), trained(images)
    for name in ("depth", "seg"):
        assert torch.equal(reloaded[name], expected[name])


def test_eval_prints_a_table_per_head(multi_run, capsys):
    out, _, _ = multi_run
    metrics = eval_script.evaluate(
        compose_config(
            "eval",
            f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
            "trainer=cpu",
            f"paths.output_dir={out / 'eval'}",
        )
    )
    printed = capsys.readouterr().out
    assert "head depth" in printed and "head seg" in printed
    assert {"depth/rmse", "depth/a1", "seg/mIoU", "seg/aAcc"} <= set(metrics)
    assert json.loads((out / "eval" / "metrics.json").read_text())["seg/mIoU"] == pytest.approx(
        metrics["seg/mIoU"]
    )


def test_predict_writes_every_head_from_one_pass(multi_run, tmp_path):
    out, task, _ = multi_run
    images = tmp_path / "images"
    images.mkdir()
    picture = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    save_png(picture, images / "room.png")
    status = predict_script.predict(
        predict_config(
            f"ckpt={out / 'checkpoints' / 'last.ckpt'}", f"input={images}", f"output={tmp_path / 'maps'}"
        )
    )
    assert status == 0
    written = {p.name for p in (tmp_path / "maps").iterdir()}
    assert {"room_depth_color.png", "room_depth_depth_mm.png", "room_depth.npy"} <= written
    assert {
        "room_seg.png",
        "room_seg_color.png",
        "room_seg_overlay.png",
        "seg_legend.png",
        "seg_classes.json",
    } <= written
    model = task.model.eval()
    with torch.no_grad():
        expected = model(image_tensor(picture)[None])
    np.testing.assert_allclose(
        np.load(tmp_path / "maps" / "room_depth.npy"), expected["depth"][0, 0].numpy(), atol=1e-6
    )
    labels = np.asarray(read_image(tmp_path / "maps" / "room_seg.png"))
    labels = labels[..., 0] if labels.ndim == 3 else labels
    assert np.array_equal(labels, expected["seg"][0].argmax(0).numpy())


def test_export_writes_one_graph_with_an_output_per_head(multi_run, tmp_path):
    import onnxruntime

    out, task, _ = multi_run
    path = tmp_path / "multi.onnx"
    export_script.export(
        compose_config("export", f"ckpt={out / 'checkpoints' / 'last.ckpt'}", f"output={path}")
    )
    session = onnxruntime.InferenceSession(str(path))
    assert [o.name for o in session.get_outputs()] == ["depth", "seg"]
    images = torch.randn(1, 3, 30, 44)
    results = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        expected = task.model.eval()(images)
    for name, result in zip(("depth", "seg"), results):
        np.testing.assert_allclose(result, expected[name].numpy(), atol=1e-4)


def crafted(tmp_path, heads: dict, name="crafted.ckpt"):
    """A checkpoint whose multi-head config is `heads` (its state dict holds no tensors of them)."""
    path = tmp_path / name
    config = {"backbone": "tiny14", "pretrained": False, "backbone_weights": None, "heads": heads}
    torch.save({"state_dict": {"model.heads.x.w": torch.zeros(1)}, MODEL_KEY: config}, path)
    return path


@pytest.mark.parametrize(
    "heads, message",
    [
        ({"os.path": {"head": "depth_linear"}}, "head name"),
        ({"__class__": {"head": "depth_linear"}}, "head name"),
        ({"../../x": {"head": "depth_linear"}}, "head name"),
        ({"depth": {"head": "os.system"}}, "not registered"),
        ({"depth": {"head": "depth_linear", "heads": {"a": {"head": "x"}}}}, "not a head's config"),
        ({"depth": {"head": "depth_linear", "_target_": "os.system"}}, "no option"),
        ({"depth": "depth_linear"}, "not a head's config"),
        ({"depth": {"head": "depth_linear", "n_bins": "many"}}, "cannot be built"),
    ],
)
def test_a_crafted_checkpoints_head_names_are_data(tmp_path, monkeypatch, heads, message):
    def never(*args, **kwargs):
        raise AssertionError(f"a checkpoint's config reached a string-to-callable path: {args}")

    monkeypatch.setattr(importlib, "import_module", never)
    monkeypatch.setattr(hydra.utils, "instantiate", never)
    with pytest.raises(WeightsError, match=message):
        load_model(crafted(tmp_path, heads))


def test_a_folder_with_depth_and_masks_trains_both_heads(tmp_path, capsys):
    root = tmp_path / "folder"
    for sub in ("images", "depth", "masks"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        save_png(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), root / "images" / f"{i}.png")
        save_png(rng.integers(500, 5000, (28, 28), dtype=np.uint16), root / "depth" / f"{i}.png")
        save_png(rng.integers(0, 3, (28, 28), dtype=np.uint8), root / "masks" / f"{i}.png")
    run = [
        *QUIET_TINY_RUN,
        "data=folder",
        f"data.root={root}",
        "data.batch_size=2",
        "data.num_classes=3",
        "head=multi",
    ]
    # data.task=depth (the folder config's default) reads depth/ alone: refused in one line.
    err = one_line_exit(lambda: train_in_process(tmp_path / "refused", *run), capsys)
    assert "head.heads.seg is a segmentation head but data=folder carries depth" in err
    _, metrics = train_in_process(tmp_path / "run", *run, "data.task=multi", "trainer.max_steps=2")
    assert {"val/depth/rmse", "val/seg/mIoU", "train/depth/loss", "train/seg/loss"} <= set(metrics)


def test_bench_compares_the_multi_head_model_with_the_single_heads_in_turn(tmp_path, capsys):
    out = tmp_path / "multi.json"
    argv = ["--backbone", "tiny14", "--heads", "depth=depth_linear,seg=seg_linear", "--size", "28x28",
            "--batch", "1", "--num-classes", "3",
            "--iters", "1", "--warmup", "0", "--json", str(out)]  # fmt: skip
    assert bench_multi.main(argv) == 0
    printed = capsys.readouterr().out
    assert "multi ÷ sequential img/s" in printed
    works = json.loads(out.read_text())["works"]
    assert set(works) == {"predict", "train"}
    for result in works.values():
        for path in ("multi", "sequential"):
            assert result[path]["img_per_s"] > 0 and result[path]["peak_added_mib"] >= 0
        assert result["speed_ratio"] == pytest.approx(
            result["multi"]["img_per_s"] / result["sequential"]["img_per_s"]
        )
