"""Trust (issue 12): a checkpoint or run folder from someone else is data. Nothing read from one runs
code, reaches `hydra.utils.instantiate`, loads without weights_only, deletes or reads a file outside
the run's own checkpoints/ folder, allocates what its sizes claim before they are checked, or changes
meaning in silence when its backbone file changes.

The checkpoints are crafted here from one real tiny run (train.py in-process); URLs are served by an
HTTP server on 127.0.0.1 that the test starts and stops.
"""

from __future__ import annotations

import http.server
import os
import pathlib
import shutil
import threading
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import dense
from dense.checkpoint import MODEL_KEY, load_model
from dense.cli import evaluate as eval_script
from dense.core.errors import WeightsError
from dense.core.weights_file import load_weights_file
from dense.tasks import RunCheckpointIO
from tests._tiny_run import QUIET_TINY_RUN, ROOT, TINY_RUN, compose_config, run_script, train_in_process

pytestmark = pytest.mark.trust  # the trust audit: `python -m pytest -m trust`

# TINY_RUN: 4 steps = 1 epoch of the 16 scenes of SCENES_28; the finished run (conftest's `tiny_run`) ends there.


def one_line(text: str) -> str:
    text = str(text).strip()
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


def train(out: Path, *overrides: str):
    return train_in_process(out, *TINY_RUN, *overrides)


def evaluate(ckpt: Path, out: Path, *overrides: str) -> dict:
    return eval_script.evaluate(
        compose_config("eval", f"ckpt_path={ckpt}", "trainer=cpu", "trainer.enable_progress_bar=false",
                       f"paths.output_dir={out}", *overrides)
    )  # fmt: skip


def exit_line(capsys, call) -> str:
    """Run `call`, which must stop with exit status 2 and one line on stderr; return that line."""
    with pytest.raises(SystemExit) as stop:
        call()
    assert stop.value.code == 2
    return one_line(capsys.readouterr().err)


@pytest.fixture
def finished_run(tiny_run) -> Path:
    """A tiny run trained to its end (max_steps=4): checkpoints/{best,last}.ckpt + its random backbone.
    Shared by the session: read it, or resume and craft a run_copy of it."""
    return tiny_run


def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run's folder, to resume or to craft its checkpoints."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    # The copied checkpoints point at the original's backbone file; point them at the copy's.
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(ckpt, weights_only=True)
        weights = Path(checkpoint[MODEL_KEY]["backbone_weights"])
        checkpoint[MODEL_KEY]["backbone_weights"] = str(run / "checkpoints" / weights.name)
        torch.save(checkpoint, ckpt)
    return run


def edit_checkpoint(path: Path, change) -> Path:
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)
    return path


class _Payload:
    """Unpickling this runs code (creates `marker`); only unsafe loading would do it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


# ---- 1. stored configs are data ---------------------------------------------------------------------


def _nested_target(data: dict, victim: Path) -> None:
    data["num_val"] = {"_target_": "shutil.rmtree", "path": str(victim)}


def _replaced_target(data: dict, victim: Path) -> None:
    data.clear()
    data.update({"_target_": "shutil.rmtree", "path": str(victim)})


def _target_in_a_list(data: dict, victim: Path) -> None:
    data["image_size"] = [{"_target_": "shutil.rmtree", "path": str(victim)}, 28]


def _unknown_key(data: dict, victim: Path) -> None:
    data["_args_"] = [str(victim)]


STORED_DATA_PAYLOADS = {
    "nested _target_": (_nested_target, "data.num_val"),
    "another _target_": (_replaced_target, "_target_"),
    "_target_ in a list": (_target_in_a_list, "data.image_size"),
    "hydra key": (_unknown_key, "_args_"),
}


@pytest.mark.parametrize("case", STORED_DATA_PAYLOADS)
def test_eval_never_instantiates_the_stored_data_config(finished_run, tmp_path, capsys, case):
    """eval.py rebuilds the data from the checkpoint's config: a `_target_` in it must not run."""
    change, words = STORED_DATA_PAYLOADS[case]
    run = run_copy(finished_run, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    ckpt = edit_checkpoint(
        run / "checkpoints" / "last.ckpt", lambda c: change(c["hyper_parameters"]["config"]["data"], victim)
    )
    line = exit_line(capsys, lambda: evaluate(ckpt, tmp_path / "eval"))
    assert (victim / "keep.txt").read_text() == "mine"
    assert str(ckpt) in line and words in line, line


def test_eval_still_builds_the_stored_data(finished_run, tmp_path):
    """Control: the plain stored config rebuilds the run's test split (8 synthetic scenes of 28×28)."""
    metrics = evaluate(finished_run / "checkpoints" / "last.ckpt", tmp_path)
    assert metrics["n_images"] == 4


# ---- 2. resume and test touch only the run's own files --------------------------------------------------


def checkpoint_callback_states(checkpoint: dict) -> list[dict]:
    return [state for key, state in checkpoint["callbacks"].items() if key.startswith("ModelCheckpoint")]


class _Server:
    """An HTTP server on 127.0.0.1 serving one file; counts the requests it gets."""

    def __init__(self, body: bytes):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/best.ckpt"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_test_after_fit_never_loads_a_url_from_the_stored_state(finished_run, tmp_path):
    """A checkpoint whose loops say training is over and whose best model is a URL: trainer.test would
    download it and load it with weights_only=False (Lightning's rule for URLs), running its code."""
    run = run_copy(finished_run, tmp_path)
    marker = tmp_path / "ran"
    payload = tmp_path / "payload.ckpt"
    torch.save({"state_dict": {}, "x": _Payload(marker)}, payload)
    with _Server(payload.read_bytes()) as server:

        def point_at_url(checkpoint):
            for state in checkpoint_callback_states(checkpoint):
                state["best_model_path"] = server.url

        ckpt = edit_checkpoint(run / "checkpoints" / "last.ckpt", point_at_url)
        with pytest.warns(UserWarning, match="outside this run's checkpoints folder"):
            _, metrics = train(run, f"ckpt_path={ckpt}", "test=true")
        assert server.hits == [] and not marker.exists()
    assert "test/rmse" in metrics  # the test still ran, on the run's own weights


def test_resume_never_deletes_files_outside_the_run(finished_run, tmp_path):
    """Rotating best/last files deletes what the stored callback state names: a `local://` folder
    (fsspec deletes it recursively) or `<run>/checkpoints/../../x`."""
    run = run_copy(finished_run, tmp_path)
    folder = tmp_path / "victim_folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    victim = tmp_path / "victim.ckpt"
    victim.write_text("mine")
    climbing = f"{run}/checkpoints/../../{victim.name}"

    def point_outside(checkpoint):
        for state in checkpoint_callback_states(checkpoint):
            state["best_model_path"] = f"local://{folder}"
            state["kth_best_model_path"] = climbing
            state["last_model_path"] = climbing
            state["best_k_models"] = {f"local://{folder}": torch.tensor(0.0), climbing: torch.tensor(0.0)}

    ckpt = edit_checkpoint(run / "checkpoints" / "last.ckpt", point_outside)
    with pytest.warns(UserWarning, match="outside this run's checkpoints folder"):
        train(run, f"ckpt_path={ckpt}", "trainer.max_steps=12")  # 2 more epochs: best and last rotate
    assert (folder / "keep.txt").read_text() == "mine" and victim.read_text() == "mine"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12


def test_a_crafted_state_never_deletes_the_runs_other_files(finished_run, tmp_path):
    """Inside the run's checkpoints/ folder too, only .ckpt files are Lightning's to rotate: a state
    naming the backbone file the checkpoints point at must not get it deleted."""
    run = run_copy(finished_run, tmp_path)
    (backbone,) = (run / "checkpoints").glob("backbone_init-*.pth")

    def point_at_backbone(checkpoint):
        for state in checkpoint_callback_states(checkpoint):
            state["best_model_path"] = state["kth_best_model_path"] = str(backbone)
            state["best_k_models"] = {str(backbone): torch.tensor(1e9)}
            state["kth_value"] = state["best_model_score"] = torch.tensor(1e9)

    ckpt = edit_checkpoint(run / "checkpoints" / "last.ckpt", point_at_backbone)
    with pytest.warns(UserWarning, match="not a checkpoint file or score"):
        train(run, f"ckpt_path={ckpt}", "trainer.max_steps=12")
    assert backbone.is_file()
    load_model(run / "checkpoints" / "last.ckpt")  # the run's checkpoints still load


def test_a_checkpoints_folder_outside_a_run_trusts_only_its_own_folder(tmp_path):
    """`~/checkpoints/colleague.ckpt` must not make the whole home folder a place its paths may lead:
    only a train.py run folder (one holding .hydra/) is trusted beyond the checkpoint's own folder."""
    torch.manual_seed(0)
    model = dense.build_model("tiny14", "depth_linear")
    home = tmp_path / "home"
    (home / "private").mkdir(parents=True)
    (home / "checkpoints").mkdir()
    weights = home / "private" / "weights.pth"
    torch.save(model.backbone.state_dict(), weights)
    ckpt = home / "checkpoints" / "colleague.ckpt"
    config = {**model.config, "backbone_weights": str(weights)}
    torch.save({"state_dict": {f"model.head.{k}": v for k, v in model.head.state_dict().items()},
                MODEL_KEY: config}, ckpt)  # fmt: skip
    with pytest.raises(WeightsError, match="outside its run folder"):
        load_model(ckpt)
    (home / ".hydra").mkdir()  # now it is a run folder: its files are the checkpoint's own
    load_model(ckpt)


def test_the_checkpoint_io_refuses_what_lightning_would_trip_over(tmp_path):
    io = RunCheckpointIO(tmp_path)
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "not-a-version"}, path)
    with pytest.raises(WeightsError) as error:
        io.load_checkpoint(path)
    assert "not a version" in one_line(error.value)
    torch.save(
        {"callbacks": {"ModelCheckpoint{}": {"best_model_score": "x", "best_model_path": "\x1b[2Kok"}}}, path
    )
    with pytest.warns(UserWarning) as caught:
        state = io.load_checkpoint(path)["callbacks"]["ModelCheckpoint{}"]
    assert state["best_model_score"] is None and state["best_model_path"] == ""
    assert "\x1b" not in str(caught[0].message)  # escape codes are shown escaped, never sent to the terminal


def test_the_checkpoint_io_loads_and_deletes_only_local_files_of_the_run(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    io = RunCheckpointIO(checkpoints)
    marker = tmp_path / "ran"
    evil = checkpoints / "evil.ckpt"
    torch.save({"x": _Payload(marker)}, evil)
    with pytest.raises(WeightsError, match="weights_only"):
        io.load_checkpoint(evil)
    assert not marker.exists()
    with pytest.raises(WeightsError, match="not a local file"):
        io.load_checkpoint("http://127.0.0.1:9/best.ckpt")

    outside = tmp_path / "outside.ckpt"
    outside.write_text("mine")
    folder = checkpoints / "folder"
    folder.mkdir()
    link = checkpoints / "link.ckpt"
    link.symlink_to(outside)
    for path in (outside, f"{checkpoints}/../outside.ckpt", f"local://{outside}", folder, link):
        with pytest.warns(UserWarning, match="not deleting"):
            io.remove_checkpoint(path)
    assert outside.read_text() == "mine" and folder.is_dir() and link.is_symlink()
    own = checkpoints / "old.ckpt"
    own.write_text("x")
    io.remove_checkpoint(own)
    assert not own.exists()


def test_every_load_passes_weights_only(finished_run, tmp_path, monkeypatch):
    """fit (resume), test, eval.py and load_model: every torch.load call says weights_only=True."""
    calls = []
    original = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    run = run_copy(finished_run, tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    train(run, f"ckpt_path={ckpt}", "trainer.max_steps=8", "test=true")
    evaluate(ckpt, tmp_path / "eval")
    load_model(ckpt)
    assert len(calls) >= 5 and all(value is True for value in calls), calls


# ---- 5. a reused run folder never changes what its checkpoints mean -------------------------------------


def test_a_second_fresh_run_in_the_same_folder_is_refused_and_the_first_left_alone(
    finished_run, tmp_path, capsys
):
    """A fresh run (no ckpt_path) into a folder that holds a run would replace its last.ckpt: refused in
    one line that says how to resume it; nothing of the first run changes (issue 23)."""
    run = run_copy(finished_run, tmp_path)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    line = exit_line(capsys, lambda: train(run, "seed=1"))  # same folder, another random backbone
    assert str(run) in line and "already holds a run" in line and "ckpt_path=" in line, line
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


def test_a_changed_backbone_file_is_refused(finished_run, tmp_path, capsys):
    run = run_copy(finished_run, tmp_path)
    ckpt = run / "checkpoints" / "best.ckpt"
    weights = Path(torch.load(ckpt, weights_only=True)[MODEL_KEY]["backbone_weights"])
    state = torch.load(weights, weights_only=True)
    state["norm.weight"] = state["norm.weight"] + 1
    stat = weights.stat()
    torch.save(state, weights)
    os.utime(
        weights, ns=(stat.st_atime_ns, stat.st_mtime_ns)
    )  # same size, same mtime: only the content differs
    with pytest.raises(WeightsError) as error:
        load_model(ckpt)
    message = one_line(error.value)
    assert str(weights) in message and "changed" in message and "sha256" in message
    line = exit_line(capsys, lambda: evaluate(ckpt, tmp_path / "eval"))
    assert "changed" in line


# ---- 7. bounded resources ---------------------------------------------------------------------------


def test_a_checkpoint_that_inflates_far_beyond_its_size_is_refused_before_inflating(tmp_path):
    """A zip member deflated from 256 MiB of zeros to a few hundred KB (torch.save itself stores, never
    compresses)."""
    path = tmp_path / "bomb.ckpt"
    torch.save({"w": torch.zeros(4)}, path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("bomb/data/1", "w", force_zip64=True) as member:
            chunk = bytes(1 << 24)
            for _ in range(16):
                member.write(chunk)
    size = path.stat().st_size
    assert size < 2 << 20
    start = time.perf_counter()
    with pytest.raises(WeightsError) as error:
        load_weights_file(path)
    assert time.perf_counter() - start < 1.0
    message = one_line(error.value)
    assert str(path) in message and "expand" in message


# ---- 8. crafted model configs and state dicts: one line naming the file --------------------------------


def _set_model(key, value):
    def change(checkpoint):
        checkpoint[MODEL_KEY][key] = value

    return change


PLACEHOLDER = "NESTED_PLACEHOLDER_0123456789"


def nested_lists(depth: int) -> bytes:
    """Pickle opcodes of a list nested `depth` deep ([[[...]]]): torch's weights_only unpickler builds
    it (no recursion), a Python pickler could not even write it."""
    return b"]" * depth + b"a" * (depth - 1)


def save_with_opcodes(checkpoint: dict, path: Path, opcodes: bytes) -> None:
    """torch.save `checkpoint`, with the one PLACEHOLDER string in it replaced by raw pickle opcodes."""
    import io
    import struct

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    placeholder = b"X" + struct.pack("<I", len(PLACEHOLDER)) + PLACEHOLDER.encode()  # BINUNICODE
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert data.count(placeholder) == 1
                data = data.replace(placeholder, opcodes)
            target.writestr(info.filename, data)


def _wrong_backbone_shape(checkpoint):
    state = checkpoint["state_dict"]
    state["model.backbone.norm.weight"] = torch.ones(7)


CRAFTED_CHECKPOINTS = {
    "layers out of range": (_set_model("layers", [99]), "layers"),
    "negative layer": (_set_model("layers", [-9]), "layers"),
    "absurd n_bins": (_set_model("n_bins", 10**9), "1000000000 bins"),
    "max_depth not a number": (_set_model("max_depth", "far"), "max_depth"),
    "layers not a list": (_set_model("layers", "0,1"), "layers"),
    "list as state_dict": (lambda c: c.__setitem__("state_dict", [1, 2]), "state_dict"),
    "dense_model not a dict": (lambda c: c.__setitem__(MODEL_KEY, "vits14"), MODEL_KEY),
    "dense_model empty": (lambda c: c.__setitem__(MODEL_KEY, {}), MODEL_KEY),
    "unknown backbone": (_set_model("backbone", "vit_huge_evil"), "vit_huge_evil"),
    "unknown model key": (_set_model("_target_", "os.system"), "_target_"),
    "a path as a model option": (_set_model("head_weights", "/etc/passwd"), "head_weights"),
    "dense_model nested 100,000 deep": (lambda c: c.__setitem__(MODEL_KEY, PLACEHOLDER), MODEL_KEY),
    "layers nested 100,000 deep": (_set_model("layers", PLACEHOLDER), "layers"),
    "stored backbone tensor of the wrong shape": (_wrong_backbone_shape, "norm.weight"),
}


@pytest.mark.parametrize("case", CRAFTED_CHECKPOINTS)
def test_a_crafted_checkpoint_is_refused_in_one_line_naming_it(tmp_path, case):
    change, words = CRAFTED_CHECKPOINTS[case]
    torch.manual_seed(0)
    model = dense.build_model("tiny14", "depth_linear")
    state = {f"model.head.{k}": v for k, v in model.head.state_dict().items()}
    if case.startswith("stored backbone"):
        state.update({f"model.backbone.{k}": v for k, v in model.backbone.state_dict().items()})
    checkpoint = {"state_dict": state, MODEL_KEY: dict(model.config)}
    change(checkpoint)
    path = tmp_path / "crafted.ckpt"
    if "nested" in case:
        save_with_opcodes(checkpoint, path, nested_lists(100_000))
    else:
        torch.save(checkpoint, path)
    start = time.perf_counter()
    with pytest.raises(WeightsError) as error:
        load_model(path)
    assert time.perf_counter() - start < 5.0  # nothing of the claimed size was allocated
    message = one_line(error.value)
    assert str(path) in message and words in message, message


# ---- 8. configuration mistakes stop before training ------------------------------------------------------


@pytest.mark.parametrize(
    "override, words",
    [
        ("task.test_scales=[]", "task.test_scales"),
        ("task.test_scales=[1.0,-0.5]", "task.test_scales"),
        ("task.test_crop_size=-4", "task.test_crop_size"),
    ],
)
def test_bad_test_settings_stop_before_training(tmp_path, capsys, override, words):
    line = exit_line(capsys, lambda: train(tmp_path, override))
    assert words in line
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("override", ["data.batch_size=0", "data.val_batch_size=-1", "data.num_workers=-2"])
def test_eval_refuses_bad_loader_settings(finished_run, tmp_path, capsys, override):
    line = exit_line(capsys, lambda: evaluate(finished_run / "checkpoints" / "last.ckpt", tmp_path, override))
    assert override.split("=")[0] in line


def test_hydra_job_chdir(tmp_path):
    """`+hydra.job.chdir=true` (the key exists: Hydra's own multi-line refusal) gets one line; the
    right spelling works, with relative paths still read from where the command was typed."""
    script = str(ROOT / "train.py")
    plus = run_script(script, "+hydra.job.chdir=true", cwd=tmp_path)
    assert plus.returncode == 2
    assert "hydra.job.chdir=true" in one_line(plus.stderr) and "without the +" in plus.stderr
    result = run_script(script, *TINY_RUN, "hydra.job.chdir=true", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    resumed = run_script(
        script, *TINY_RUN, "hydra.job.chdir=true", "hydra.run.dir=run", "ckpt_path=run/checkpoints/last.ckpt",
        "trainer.max_steps=8", cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]


# ---- 9. resuming with other settings says what is ignored and what changed --------------------------------


def test_resume_with_other_settings_warns(finished_run, tmp_path):
    run = run_copy(finished_run, tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(run, f"ckpt_path={ckpt}", "trainer.max_steps=8", "task.optimizer.lr=0.5", "data.base_seed=7")
    messages = [str(w.message) for w in caught if "resum" in str(w.message)]
    text = " ".join(messages)
    # The optimiser's state (its learning rate included) comes from the checkpoint: the new lr is ignored.
    assert "task.optimizer.lr" in text and "0.5" in text and "ignored" in text, messages
    assert "data.base_seed" in text and "7" in text, messages  # the data changed: said, not ignored
    assert "trainer.max_steps" not in text  # what a resume is for is not reported


def test_an_identical_resume_warns_of_nothing_and_a_changed_option_of_itself(finished_run):
    """The run's own configuration again: no warning (main warned `head.options '<a dict of 0>' → a dict
    of 0` about the empty options section); a head option added: that option, named."""
    from dense.cli import runner
    from dense.cli import train as train_script

    ckpt = finished_run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    model = load_model(ckpt)

    def warned(*overrides: str) -> list[str]:
        cfg = compose_config(
            "train", f"paths.output_dir={finished_run}", *TINY_RUN, f"ckpt_path={ckpt}", *overrides
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_script.warn_about_resume_changes(checkpoint, runner.plain(cfg), model)
        return [str(w.message) for w in caught]

    assert warned() == []
    (message,) = warned("+head.options.n_bins=128")
    assert message.startswith("resuming with other head settings (head.options.n_bins None → 128): ignored")


def test_resume_with_another_optimiser_is_refused(finished_run, tmp_path, capsys):
    run = run_copy(finished_run, tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    line = exit_line(
        capsys,
        lambda: train(
            run, f"ckpt_path={ckpt}", "trainer.max_steps=8", "task.optimizer._target_=torch.optim.SGD"
        ),
    )
    assert "task.optimizer._target_" in line and "torch.optim.SGD" in line


# ---- the hostile review's second round: run folders, stored roots, crafted values ------------------------


@pytest.mark.parametrize("link", [".hydra/config.yaml", "train.log", "checkpoints"])
def test_a_run_folder_with_links_is_refused_before_anything_is_written(finished_run, tmp_path, link):
    """Hydra rewrites .hydra/*.yaml and appends to the log of the run folder it is given, following
    links: a shared folder with a planted link would have it write into the victim's files."""
    run = run_copy(finished_run, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "bashrc").write_text("precious")
    target = run / link
    if target.is_dir():
        shutil.rmtree(target)
        target.symlink_to(victim, target_is_directory=True)
    else:
        target.parent.mkdir(exist_ok=True)
        target.unlink(missing_ok=True)
        target.symlink_to(victim / "bashrc")
    result = run_script("train.py", *TINY_RUN, "trainer.max_steps=8", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                        f"hydra.run.dir={run}")  # fmt: skip
    assert result.returncode == 2
    assert "holds a link" in one_line(result.stderr)
    assert (victim / "bashrc").read_text() == "precious" and sorted(p.name for p in victim.iterdir()) == [
        "bashrc"
    ]


def test_a_run_folder_with_a_hard_linked_file_is_refused(finished_run, tmp_path):
    run = run_copy(finished_run, tmp_path)
    victim = tmp_path / "notes.txt"
    victim.write_text("mine")
    (run / "train.log").unlink(missing_ok=True)
    os.link(victim, run / "train.log")
    result = run_script(
        "train.py", *TINY_RUN, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={run}"
    )
    assert result.returncode == 2 and "hard link" in one_line(result.stderr)
    assert victim.read_text() == "mine"


def test_eval_follows_a_stored_data_root_only_inside_the_run_or_the_data_folder(tmp_path, capsys):
    from tests._fixtures_data import write_folder

    data = tmp_path / "elsewhere" / "folder"
    write_folder(data, h=28, w=28)
    run = tmp_path / "run"
    train_in_process(run, *QUIET_TINY_RUN, "head=depth_linear", "trainer.max_steps=2", "data=folder",
                     f"data.root={data}", "data.batch_size=2")  # fmt: skip
    ckpt = run / "checkpoints" / "last.ckpt"
    line = exit_line(capsys, lambda: evaluate(ckpt, tmp_path / "eval"))
    assert "outside its run folder and paths.data_dir" in line and "data.root=" in line
    assert evaluate(ckpt, tmp_path / "eval", f"data.root={data}")["n_images"] > 0  # given by you: followed
    assert (
        evaluate(ckpt, tmp_path / "eval", f"paths.data_dir={data.parent}")["n_images"] > 0
    )  # your data folder


def test_crafted_config_values_in_a_resumed_checkpoint_give_one_line(finished_run, tmp_path):
    """A config nested 100,000 deep, or a tensor where a number was, in the stored hyper-parameters;
    an optimiser state that does not fit the head: one line, exit 2 (Lightning would trip deep inside)."""
    run = run_copy(finished_run, tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["config"]["task"]["x"] = PLACEHOLDER
    save_with_opcodes(checkpoint, ckpt, b"}" + (b"X\x01\x00\x00\x00k}" * 99_999) + b"s" * 99_999)
    train(run, f"ckpt_path={ckpt}", "trainer.max_steps=8")  # compared by its description, never walked
    assert torch.load(ckpt, weights_only=True)["global_step"] == 8

    def wrong_state(c):
        c["optimizer_states"][0]["state"][0]["exp_avg"] = torch.zeros(3)
        c["hyper_parameters"]["config"]["data"]["num_val"] = torch.zeros(3)

    ckpt = edit_checkpoint(run_copy(finished_run, tmp_path / "b") / "checkpoints" / "last.ckpt", wrong_state)
    result = run_script(
        "train.py", *TINY_RUN, "trainer.max_steps=8", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'c'}"
    )
    assert result.returncode == 2 and "optimiser state does not fit the head" in one_line(result.stderr)


def test_one_line_errors_show_control_characters_escaped():
    from dense.cli.runner import one_line as cli_one_line

    line = cli_one_line(ValueError("evil\x1b[2K\x1b[32mok\nsecond"))
    assert "\x1b" not in line and "\\x1b[2K" in line and "\n" not in line


@pytest.mark.parametrize(
    "override, words",
    [
        ("data.num_workers=100000", "data.num_workers=100000 must be"),
        ("task.test_scales=[" + ",".join(["1.0"] * 17) + "]", "1 to 16"),
    ],
)
def test_sizes_a_config_asks_for_are_bounded(finished_run, tmp_path, capsys, override, words):
    line = exit_line(capsys, lambda: evaluate(finished_run / "checkpoints" / "last.ckpt", tmp_path, override))
    assert words in line
