"""The benchmark runs (so that it does not rot) and reports what it promises. No speed is asserted:
speed is measured by `python -m benchmarks` and recorded in benchmarks/BENCHMARKS.md, never by a timed test."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import cli, loader, paths
from benchmarks.case import WORKS
from benchmarks.loop import OTHER, PHASES
from benchmarks.references import Unavailable, build_upstream_dinov3
from dense.backbones import get_spec
from dense.model import DenseModel
from dense.tasks import DepthTask
from dense.tasks.losses import DepthLoss

RESULT_FIELDS = {
    "work",
    "path",
    "times_s",
    "median_s",
    "first_call_s",
    "images_per_s",
    "best_images_per_s",
    "min_s",
    "backbone_tflops",
    "held_bytes",
    "added_bytes",
    "peak_bytes",
    "memory_method",
}


def test_bench_runs_on_cpu_and_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--backbone", "tiny14", "--head", "depth_linear4", "--size", "28x28", "--batch", "1",
            "--precision", "fp32,bf16", "--compile", "off", "--device", "cpu", "--iters", "1", "--warmup", "0",
            "--json", str(out)]  # fmt: skip
    assert cli.main(argv) == 0

    printed = capsys.readouterr().out
    assert "machine:" in printed
    assert "== tiny14 depth_linear4 28x28 batch 1 fp32 compile off cpu" in printed
    assert "speed ours÷ref" in printed

    report = json.loads(out.read_text())
    assert {"cpu", "torch", "gpu", "date"} <= set(report["machine"])
    assert [c["precision"] for c in report["cases"]] == ["fp32", "bf16"]
    for case in report["cases"]:
        assert case["backbone_flops_per_image"] > 0
        paths = {(r["work"], r["path"]) for r in case["results"]}
        # every work by ours, and the references that apply without an upstream checkout
        assert {("backbone", "ours"), ("backbone", "timm"), ("head", "ours"), ("head", "naive")} <= paths
        assert {("predict", p) for p in ("ours", "naive", "timm+naive")} <= paths
        assert {("train", p) for p in ("ours", "naive", "timm+naive")} <= paths
        for result in case["results"]:
            assert RESULT_FIELDS <= set(result)
            assert result["images_per_s"] > 0 and len(result["times_s"]) == 1
        assert {(r["work"], r["reference"]) for r in case["ratios"]} == paths - {(w, "ours") for w in WORKS}
        assert [s["path"] for s in case["skipped"]] == ["upstream"]  # no --upstream DIR given

    # Not a speed: the naive reference must compute what our head computes, or its ratio means nothing.
    fp32 = report["cases"][0]
    naive = next(c for c in fp32["checks"] if (c["work"], c["reference"]) == ("head", "naive"))
    assert naive["max_rel_diff"] < 1e-4


def test_compile_on_compiles_ours_as_the_entry_scripts_do(tmp_path, monkeypatch):
    """--compile on: our model paths go through DenseModel.compile (what compile=true does in
    train/eval/predict); the references compile their whole call. Recorded, not compiled (fast)."""
    model_compiles, whole_calls = [], []
    monkeypatch.setattr(DenseModel, "compile", lambda self, **options: model_compiles.append(self))

    def record_whole_call(fn, on):
        whole_calls.append(on)
        return fn

    monkeypatch.setattr(paths, "maybe_compile", record_whole_call)
    argv = ["--backbone", "tiny14", "--head", "depth_linear", "--size", "28x28", "--batch", "1",
            "--compile", "on", "--work", "predict,train", "--reference", "naive", "--device", "cpu",
            "--iters", "1", "--warmup", "0", "--json", str(tmp_path / "bench.json")]  # fmt: skip
    assert cli.main(argv) == 0
    case = json.loads((tmp_path / "bench.json").read_text())["cases"][0]
    assert case["compile"] is True
    assert {(r["work"], r["path"]) for r in case["results"]} == {
        (w, p) for w in ("predict", "train") for p in ("ours", "naive")
    }
    # ours: one DenseModel.compile per work, and no whole-call compile (its training step is the task's
    # own, outside Calls); naive: whole-call compiled
    assert len(model_compiles) == 2 and all(isinstance(m, DenseModel) for m in model_compiles)
    assert sorted(whole_calls) == [False, True, True]


def test_dinov3_backbones_take_upstream_from_a_dinov3_checkout(tmp_path):
    """A DINOv3 name picks the DINOv3 references; --upstream must then hold DINOv3's package, and its
    test variants have no hub function: both say so in the skip reason instead of failing the run."""
    assert paths.dinov3_spec("vits14") is None and paths.dinov3_spec("dinov3_vitl16").name == "vitl16"
    with pytest.raises(Unavailable, match="holds no dinov3/hub/backbones.py: vits16 needs a DINOv3 checkout"):
        build_upstream_dinov3(str(tmp_path), get_spec("vits16"), ours=None)
    with pytest.raises(Unavailable, match="tiny16 is a test variant"):
        build_upstream_dinov3(str(tmp_path), get_spec("tiny16"), ours=None)


def test_the_train_work_runs_the_tasks_own_training_step(tmp_path, monkeypatch):
    """Ours: DepthTask.training_step on uint8 images (SigLoss + GradientLoss, the NaN flag) with the
    task's optimiser; the references: the same loss on the same batch."""
    images, losses = [], []
    training_step, loss_forward = DepthTask.training_step, DepthLoss.forward

    def recorded_step(self, batch, batch_idx):
        images.append(batch["image"].dtype)
        return training_step(self, batch, batch_idx)

    def recorded_loss(self, prediction, target):
        out = loss_forward(self, prediction, target)
        losses.append(set(out))
        return out

    monkeypatch.setattr(DepthTask, "training_step", recorded_step)
    monkeypatch.setattr(DepthLoss, "forward", recorded_loss)
    argv = ["--backbone", "tiny14", "--head", "depth_linear", "--size", "28x28", "--batch", "1", "--work", "train",
            "--reference", "naive", "--device", "cpu", "--iters", "2", "--warmup", "1", "--json", str(tmp_path / "b.json")]  # fmt: skip
    assert cli.main(argv) == 0
    assert images == [torch.uint8] * 4  # warm-up, 2 timed calls, the memory call
    assert losses == [{"loss", "loss_sig", "loss_grad"}] * 8  # ours and naive, 4 calls each


def test_the_loop_work_trains_through_lightning_and_splits_each_step(tmp_path, capsys):
    """The loop: a Lightning Trainer over the real datamodule (here ADE20K files written in their format,
    through the segmentation recipe) and the real task; img/s, its ratio to the training step, and where
    a step goes."""
    out = tmp_path / "bench.json"
    argv = ["--backbone", "tiny14", "--head", "seg_linear", "--num-classes", "150", "--size", "28x28", "--batch",
            "2", "--work", "train,loop", "--reference", "none", "--device", "cpu", "--iters", "1", "--warmup", "0",
            "--data", "ade20k", "--workers", "0", "--loop-steps", "2", "--loop-warmup", "1", "--json", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    loop = json.loads(out.read_text())["cases"][0]["loop"]
    assert (loop["data"], loop["workers"], loop["steps"]) == ("ade20k", 0, 2) and len(
        loop["step_times_s"]
    ) == 2
    assert list(loop["split_s"]) == [*PHASES, OTHER] and loop["split_s"]["step"] > 0
    assert loop["split_s"]["loader wait"] > 0 and loop["split_s"]["host→device"] > 0
    assert sum(loop["split_s"].values()) == pytest.approx(sum(loop["step_times_s"]) / 2)
    assert loop["images_per_s"] > 0 and loop["loop_over_train"] > 0
    printed = capsys.readouterr().out
    assert "loop      ours" in printed and "loop ÷ train ours" in printed and "loader wait" in printed


def test_the_loader_bench_reports_samples_per_second_per_worker_count(tmp_path, capsys):
    out = tmp_path / "loader.json"
    argv = ["--data", "synthetic,nyu", "--workers", "0,1", "--batches", "1", "--repeat", "1", "--batch-size", "2",
            "--size", "28x28", "--json", str(out)]  # fmt: skip
    assert loader.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["data"], r["workers"]) for r in rows] == [
        ("synthetic", 0),
        ("synthetic", 1),
        ("nyu", 0),
        ("nyu", 1),
    ]
    assert all(len(r["samples_per_s"]) == 1 and r["median"] > 0 for r in rows)
    # the loading processes' CPU time per sample (clock_getcpuclockid on Linux), which shared cores hardly change
    assert all(len(r["cpu_ms_per_sample"]) == 1 and r["cpu_ms_per_sample"][0] > 0 for r in rows)
    assert "== nyu" in capsys.readouterr().out
