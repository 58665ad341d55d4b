"""The first hour of a new user (issue 17): cheap checks before heavy work, help that helps, pictures
that can be read, quiet logs."""

import ast
import json
import logging
import re
import time
import urllib.error
import warnings

import matplotlib
import numpy as np
import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from PIL import Image

import benchmarks as bench
from dense import backbones
from dense.backbones.dinov2 import specs as dinov2_specs
from dense.cli import evaluate as eval_script
from dense.cli import help as cli_help
from dense.cli import model as cli_model
from dense.cli import runner
from dense.cli import train as train_script
from dense.cli.predict import run as predict
from dense.core import schema
from dense.data import SYNTHETIC_CLASSES
from dense.tasks.progress import TimedProgressBar
from dense.tools import viz
from tests._fixtures_data import rgb
from tests._tiny_run import (
    CONFIGS,
    QUIET_TINY_RUN,
    ROOT,
    SCENES_28,
    compose_config,
    predict_config,
    run_script,
)

pytestmark = pytest.mark.first_hour  # the first_hour audit: `python -m pytest -m first_hour`

# 2 steps of an epoch of 4: training stops before its first validation.
TWO_STEPS = [*QUIET_TINY_RUN, *SCENES_28, "trainer.max_steps=2"]


def exit_status(function, *args) -> tuple[int | None, object]:
    try:
        return None, function(*args)
    except SystemExit as exit_info:
        return exit_info.code, None


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch hub cache and no network; a download or a backbone build fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(dinov2_specs.urllib.request, "urlopen", no_network)
    monkeypatch.setattr(
        dinov2_specs.torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("a download started")
    )
    monkeypatch.setattr(
        dinov2_specs.Dinov2Spec, "create", lambda self: pytest.fail(f"the {self.name} backbone was built")
    )


# --------------------------------------------------------------------------- 1. cheap checks first


def test_offline_vitg14_says_the_weights_are_missing_without_building_it(offline, tmp_path, capsys):
    cfg = compose_config("train", f"paths.output_dir={tmp_path / 'run'}", "backbone=vitg14", "head=depth")
    start = time.monotonic()
    status, _ = exit_status(train_script.train, cfg)
    seconds = time.monotonic() - start
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.count("\n") == 0, err
    assert "could not download the vitg14 weights" in err and "dinov2_vitg14_pretrain.pth" in err
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "dinov2_vitg14_pretrain.pth") in err
    assert "pass its path with backbone.weights=PATH" in err  # the key train.py takes, not weights=
    # Building the 1.1 B-parameter backbone alone took 20-25 s on these 2 cores (the `offline` fixture
    # fails the test if it is even started).
    assert seconds < 5, seconds


def test_the_data_layout_is_checked_before_the_weights(offline, tmp_path, capsys):
    empty = tmp_path / "nyu"
    empty.mkdir()
    cfg = compose_config(
        "train", f"paths.output_dir={tmp_path / 'run'}", "backbone=vitg14", "data=nyu", f"data.root={empty}"
    )
    status, _ = exit_status(train_script.train, cfg)
    err = capsys.readouterr().err
    assert status == 2
    assert f"{empty} has no nyu_train.txt" in err and "weights" not in err


def test_weights_in_the_hub_cache_need_no_network(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = backbones.get_spec("vitg14")
    monkeypatch.setattr(
        dinov2_specs.urllib.request, "urlopen", lambda *a, **k: pytest.fail("the network was asked")
    )
    cached = tmp_path / "hub" / "checkpoints" / "dinov2_vitg14_pretrain.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK")
    backbones.check_official_weights(spec)  # no error, no request
    with pytest.raises(backbones.WeightsError, match="test variant"):
        backbones.check_official_weights(backbones.get_spec("tiny14"))


def test_a_refused_run_leaves_no_run_folder(tmp_path):
    outputs = tmp_path / "outputs"
    # A dead proxy: offline even on a machine with a network, and never a 4.5 GB download.
    dead = "http://127.0.0.1:9"
    result = run_script(
        "train.py",
        "backbone=vitg14",
        f"paths.log_dir={outputs}",
        env={
            "TORCH_HOME": str(tmp_path / "torch_home"),
            "https_proxy": dead,
            "HTTPS_PROXY": dead,
            "no_proxy": "",
            "NO_PROXY": "",
        },
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "could not download the vitg14 weights" in result.stderr
    assert not outputs.exists()  # no outputs/train/DATE/TIME, no empty outputs/train or outputs


def test_a_run_folder_with_anything_else_in_it_is_kept(tmp_path):
    cfg = compose_config("train", "paths.log_dir=" + str(tmp_path / "outputs"))
    hydra_cfg = compose_config("train", return_hydra_config=True)  # what HydraConfig holds in a run
    run = tmp_path / "outputs" / "train" / "2026-01-01" / "10-00-00"
    (run / ".hydra").mkdir(parents=True)
    for name in runner.HYDRA_BOOKKEEPING:
        (run / ".hydra" / name).write_text("x")
    (run / "train.log").write_text("")
    with open_dict(hydra_cfg):
        hydra_cfg.hydra.runtime.output_dir = str(run)
        hydra_cfg.hydra.job.name = "train"
    HydraConfig.instance().set_config(hydra_cfg)
    try:
        (run / "notes.txt").write_text("mine")
        runner.discard_unused_run_folder(cfg)
        assert (run / "notes.txt").read_text() == "mine" and (run / ".hydra").is_dir()
        (run / "notes.txt").unlink()
        (tmp_path / "outputs" / "eval").mkdir()  # another script's runs
        runner.discard_unused_run_folder(cfg)
        # The dated folder and outputs/train went with it (nothing else in them); outputs/ holds eval/.
        assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["eval"]
    finally:
        HydraConfig.instance().cfg = None


# --------------------------------------------------------------------------- 2. help


def script_doc(script: str) -> str:
    """The docstring of the entry script (its usage text, the top of its --help), read without running it."""
    return ast.get_docstring(ast.parse((ROOT / f"{script}.py").read_text()), clean=False)


def listed_keys(text: str) -> list[str]:
    section = text.split("Main keys", 1)[1].split("\n\n", 1)[0]
    return [m.group(1) for m in re.finditer(r"^  ([a-z_][\w.]*?)(?:=|\.\*)", section, re.MULTILINE)]


@pytest.mark.parametrize("script", ["train", "eval", "predict"])
def test_help_shows_examples_groups_and_the_meaning_of_each_key(script):
    text = cli_help.help_text(CONFIGS, script, script_doc(script), [])
    assert f"python {script}.py " in text.split("Config groups")[0]  # examples first
    assert f"python {script}.py [key=value ...] --cfg job" in text
    assert len(text.splitlines()) < 125  # Hydra's own --help: 155 lines
    keys = listed_keys(text)
    assert len(keys) >= 10
    full = compose_config(script, return_hydra_config=True)
    leaves = runner.flatten(OmegaConf.to_container(full, resolve=False))
    existing = set(leaves) | {key.rsplit(".", n)[0] for key in leaves for n in range(1, key.count(".") + 1)}
    missing = [key for key in keys if key not in existing]
    assert not missing, f"--help lists keys {script}.py does not have: {missing}"
    main_key = {"train": "ckpt_path", "eval": "split", "predict": "depth_range"}[script]
    # A script's own keys are documented by the fields of its schema (dense/core/schema.py)
    typed = {"train": schema.TrainConfig, "eval": schema.EvalConfig, "predict": schema.PredictConfig}[script]
    meaning = typed.__dataclass_fields__[main_key].metadata["doc"]
    assert meaning and meaning in text


def test_help_lists_only_the_groups_a_script_uses():
    text = cli_help.help_text(CONFIGS, "predict", script_doc("predict"), [])
    groups = re.findall(r"^  (\w+)=\S*\s+.*\n\s+options: ", text, re.MULTILINE)
    assert groups == ["backbone", "head"]
    assert "trainer" not in text and "logger" not in text and "data." not in text
    train_text = cli_help.help_text(CONFIGS, "train", script_doc("train"), [])
    assert re.findall(r"^  (\w+)=\S*\s+.*\n\s+options: ", train_text, re.MULTILINE) == [
        "backbone",
        "head",
        "data",
        "trainer",
        "logger",
        "experiment",
    ]
    options = sorted(p.stem for p in (CONFIGS / "backbone").glob("*.yaml"))
    assert f"options: {', '.join(options)}" in train_text


def test_help_shows_the_values_the_overrides_give():
    text = cli_help.help_text(CONFIGS, "train", script_doc("train"), ["experiment=smoke"])
    assert "experiment=smoke" in text and "trainer.max_steps=24 " in text


def test_predict_refuses_a_group_it_does_not_use_in_one_line(capsys):
    status, _ = exit_status(runner.check_group_choices, CONFIGS, "predict", ["trainer=cpu"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err == "error: trainer= is not a config group of predict.py: its groups are backbone, head"


def test_help_from_the_command_line():
    result = run_script("predict.py", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("Depth or segmentation maps")
    assert "depth_range=auto" in result.stdout and "Hydra's own flags" in result.stdout


def test_bench_help_gives_each_option_a_meaning_and_its_default(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--help"])
    text = capsys.readouterr().out
    options = re.findall(r"^  (--[\w-]+)", text, re.MULTILINE)
    assert len(options) == 20, options
    entries = re.split(r"\n  (?=--)", text.split("options:", 1)[1])[1:]
    for entry in entries:
        assert "(default:" in " ".join(entry.split()), entry


def test_the_dev_extra_installs_what_the_notebook_command_needs():
    readme = (ROOT / "README.md").read_text()
    assert "jupyter nbconvert --to notebook --execute" in readme
    dev = re.search(
        r"^dev = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.MULTILINE | re.DOTALL
    ).group(1)
    names = set(re.findall(r'^\s*"([\w-]+)', dev, re.MULTILINE))
    assert {"nbconvert", "ipykernel"} <= names


# --------------------------------------------------------------------------- 3. pictures


def reference_colours(depth: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """magma_r over [vmin, vmax] in 256 steps, straight from matplotlib."""
    index = np.clip(np.rint((depth - vmin) / (vmax - vmin) * 255), 0, 255) / 255
    return (matplotlib.colormaps["magma_r"](index)[..., :3] * 255).round()


def test_depth_pictures_fit_each_scene_and_carry_their_colour_bar(tmp_path, tiny_checkpoints, capsys):
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    Image.fromarray(rgb(28, 42, seed=1)).save(images / "a.png")
    Image.fromarray(rgb(30, 28, seed=2)).save(images / "b.png")
    common = [f"ckpt={tiny_checkpoints['depth']}", f"input={images}", f"output={out}"]
    assert predict.predict(predict_config(*common)) == 0
    stdout = capsys.readouterr().out
    assert "each image from its own nearest to its farthest depth" in stdout and "_depth_mm.png" in stdout
    for stem, (height, width) in (("a", (28, 42)), ("b", (30, 28))):
        picture = np.asarray(Image.open(out / f"{stem}_color.png")).astype(float)
        depth = np.load(out / f"{stem}.npy")
        # The colour bar beside the map (the 28-30 px maps padded below to the bar's legible height).
        assert picture.shape[0] == max(height, viz.MIN_COLORBAR_HEIGHT) and picture.shape[1] > width
        map_part = picture[:height, :width]
        assert np.abs(map_part - reference_colours(depth, depth.min(), depth.max())).max() <= 2
        bar = picture[:, width:]
        assert (bar == 255).all(axis=-1).mean() > 0.3 and len(np.unique(bar.reshape(-1, 3), axis=0)) > 50
        millimetres = np.asarray(Image.open(out / f"{stem}_depth_mm.png"))
        assert millimetres.dtype == np.uint16 and np.abs(millimetres / 1000 - depth).max() <= 0.5e-3 + 1e-6
    assert not list(out.glob("*colorbar*")) and not (out / "a.png").exists()


def test_a_fixed_depth_range_colours_every_image_alike(tmp_path, tiny_checkpoints, capsys):
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    Image.fromarray(rgb(28, 28, seed=3)).save(images / "a.png")
    common = [f"ckpt={tiny_checkpoints['depth']}", f"input={images}", f"output={out}"]
    assert predict.predict(predict_config(*common, "depth_range=model", "colorbar=false")) == 0
    # tiny14 depth_linear of tiny_checkpoints: the range 0.001-10 m (max_depth=10).
    assert "0.001 to 10 m in every image (the model's depth range)" in capsys.readouterr().out
    depth = np.load(out / "a.npy")
    colour = np.asarray(Image.open(out / "a_color.png")).astype(float)
    assert colour.shape == (28, 28, 3)  # colorbar=false: the map alone, at the image's size
    assert np.abs(colour - reference_colours(depth, 0.001, 10.0)).max() <= 2
    status, _ = exit_status(predict.predict, predict_config(*common, "depth_range=[5,1]"))
    assert status == 2 and "depth_range=[5, 1] must be model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """A train.py segmentation checkpoint of the 7 synthetic classes (2 steps)."""
    out = tmp_path_factory.mktemp("seg_run")
    cfg = compose_config(
        "train", f"paths.output_dir={out}", *TWO_STEPS, "head=seg_linear", "data.task=segmentation"
    )
    train_script.train(cfg)
    return out / "checkpoints" / "last.ckpt"


def test_segmentation_gets_a_legend_and_the_class_names(tmp_path, seg_run, capsys):
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    Image.fromarray(rgb(28, 28, seed=4)).save(images / "scene.png")
    assert predict.predict(predict_config(f"ckpt={seg_run}", f"input={images}", f"output={out}")) == 0
    assert f"class colours: {out / 'legend.png'}" in capsys.readouterr().out
    classes = json.loads((out / "classes.json").read_text())["classes"]
    assert [c["name"] for c in classes] == list(SYNTHETIC_CLASSES)
    assert [c["id"] for c in classes] == list(range(7))
    ids = np.asarray(Image.open(out / "scene.png"))
    colour = np.asarray(Image.open(out / "scene_color.png"))
    for class_id in np.unique(ids):  # the JSON's colours are the map's
        assert (colour[ids == class_id] == classes[class_id]["color"]).all()
    legend = np.asarray(Image.open(out / "legend.png"))
    assert legend.ndim == 3 and legend.shape[0] >= 7 * 20
    for entry in classes:  # every class colour is drawn in the legend
        assert (legend.reshape(-1, 3) == entry["color"]).all(axis=1).sum() > 100, entry


def test_released_heads_get_the_dataset_names_by_class_count(tiny_checkpoints):
    model, names = cli_model.for_inference(predict_config(f"ckpt={tiny_checkpoints['seg']}"))
    assert names == {}  # tiny_checkpoints store no class names
    assert cli_model.class_names(model, names) == [f"class {i}" for i in range(5)]


# --------------------------------------------------------------------------- 4. logs


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """A fresh 2-step depth run through the entry point's wrapper (runner.run), and every warning and log
    record it gave."""
    out = tmp_path_factory.mktemp("two_step")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runner.run(
                train_script.train,
                compose_config("train", f"paths.output_dir={out}", *TWO_STEPS, "head=depth_linear"),
            )
    finally:
        logging.getLogger().removeHandler(handler)
    said = [str(w.message) for w in caught] + [record.getMessage() for record in records]
    return out, "\n".join(said)


def test_a_fresh_tiny_run_prints_none_of_the_noise(two_step_run):
    out, said = two_step_run
    assert list((out / "checkpoints").glob("backbone_init-*.pth"))  # written before training
    assert "GPU available" in said  # the capture works
    assert "exists and is not empty" not in said
    assert "LeafSpec" not in said
    assert "litlogger" not in said
    assert "could not find the monitored key" not in said
    # What the monitored-key warning meant, said in our words.
    assert "training stopped at step 2, before its first validation, so there is no best.ckpt" in said


def test_eval_says_where_the_metrics_went_and_counts_images_in_integers(two_step_run, tmp_path, capsys):
    out, _ = two_step_run
    cfg = compose_config(
        "eval",
        f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
        f"paths.output_dir={tmp_path}",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
    )
    eval_script.evaluate(cfg)
    stdout = capsys.readouterr().out
    assert f"wrote {tmp_path / 'metrics.json'}" in stdout
    assert re.search(r"^n_images\s+4$", stdout, re.MULTILINE), stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_images"] == 4 and isinstance(metrics["n_images"], int)
    assert isinstance(metrics["n_skipped"], int) and isinstance(metrics["rmse"], float)


def test_the_progress_bar_redraws_by_time(monkeypatch):
    bar = compose_config("train").callbacks.progress_bar
    assert bar._target_ == "dense.tasks.progress.TimedProgressBar"
    monkeypatch.setattr(
        "dense.tasks.progress.is_terminal", lambda stream: True
    )  # a file gets lines (test_train.py)
    progress = TimedProgressBar(refresh_seconds=float(bar.refresh_seconds))
    clock = iter([0.0, 0.3, 0.9, 1.2, 1.4, 5.0, 5.1])
    monkeypatch.setattr("dense.tasks.progress.time.monotonic", lambda: next(clock))
    # Batches 1..7 of 100 at those times: the first, then once a second (a slow batch: at once).
    drawn = [progress._should_update(n, 100) for n in range(1, 8)]
    assert drawn == [True, False, False, True, False, True, False]
    monkeypatch.setattr("dense.tasks.progress.time.monotonic", lambda: 5.2)
    assert progress._should_update(100, 100)  # the last batch always
