"""Issue 12, predict.py and dense.core.io: one result per input, nothing of the user's overwritten, no silent
NaN, bounded images, and one line (not a traceback) for an output folder that cannot be used."""

from __future__ import annotations

import builtins
import errno
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import PIL.ImageFile
import pytest
import torch
from PIL import Image

import dense
from dense.cli.predict import outputs, writers
from dense.cli.predict import run as predict
from dense.core.errors import DenseError, ImageReadError
from dense.core.io import read_image
from dense.data.readers import read_rgb
from tests._fixtures_data import rgb
from tests._tiny_run import model_input, predict_config, write_checkpoint

pytestmark = pytest.mark.trust  # the trust audit: `python -m pytest -m trust`

DEPTH_FILES = ("_depth_mm.png", ".npy", "_color.png")
DEPTH_RUN_FILES: list[str] = []  # depth writes no file once per run (each picture carries its colour bar)


def expected_depth(checkpoint: Path, image: Path) -> np.ndarray:
    with torch.no_grad():
        return dense.load_model(checkpoint).predict(model_input(image))[0, 0].numpy()


def run(capsys, *overrides: str) -> tuple[int, str, str]:
    """predict.predict(predict_config(...)) → (exit status, stdout, stderr); set-up refusals give status 2."""
    try:
        status = predict.predict(predict_config(*overrides))
    except SystemExit as exit_info:
        status = exit_info.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_line_error(status: int, err: str) -> str:
    assert status == 2, err
    err = err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def recorded(out: Path) -> list[str]:
    return sorted(json.loads((out / outputs.RECORD).read_text())["files"])


# --------------------------------------------------------------------------- one result per input


def test_inputs_whose_results_would_share_a_name_get_distinct_names(tmp_path, tiny_checkpoints, capsys):
    """c.jpg + c.png + c_jpg.png all wanted c_jpg.*; x.png and x_color.png share no result name (x's
    picture is x_color.png, x_color's x_color_color.png)."""
    images = tmp_path / "in"
    images.mkdir()
    names = ["c.jpg", "c.png", "c_jpg.png", "x.png", "x_color.png"]
    for seed, name in enumerate(names):
        Image.fromarray(rgb(28, 28, seed=seed)).save(images / name, quality=95)
    out = tmp_path / "out"
    status, stdout, err = run(capsys, f"ckpt={tiny_checkpoints['depth']}", f"input={images}", f"output={out}")
    assert status == 0, err
    assert "wrote depth results for 5 of 5 images" in stdout
    # The documented rule (a shared stem → the full name), then a number for what still clashes.
    stems = {
        "c.jpg": "c_jpg",
        "c.png": "c_png",
        "c_jpg.png": "c_jpg_1",
        "x.png": "x",
        "x_color.png": "x_color",
    }
    for name, stem in stems.items():
        assert np.allclose(
            np.load(out / f"{stem}.npy"), expected_depth(tiny_checkpoints["depth"], images / name), atol=1e-5
        )
        assert np.asarray(Image.open(out / f"{stem}_depth_mm.png")).dtype == np.uint16
        assert np.asarray(Image.open(out / f"{stem}_color.png")).shape[2] == 3  # a colour picture
    written = sorted(f"{stem}{suffix}" for stem in stems.values() for suffix in DEPTH_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted([*written, *DEPTH_RUN_FILES, outputs.RECORD])
    assert recorded(out) == sorted([*written, *DEPTH_RUN_FILES])
    assert "the results of c_jpg.png are named c_jpg_1.* (c_jpg_color.png is c.jpg's result)" in err
    assert "x_color.png are named" not in err


def test_names_that_differ_only_in_case_do_not_share_results(tmp_path, tiny_checkpoints, capsys):
    """A.png and a.jpg are one file name on macOS and Windows disks: they get a_png-style names."""
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(rgb(28, 28, seed=1)).save(images / "A.png")
    Image.fromarray(rgb(28, 28, seed=2)).save(images / "a.jpg")
    out = tmp_path / "out"
    status, _, err = run(capsys, f"ckpt={tiny_checkpoints['depth']}", f"input={images}", f"output={out}")
    assert status == 0, err
    assert {p.stem for p in out.glob("*.npy")} == {"A_png", "a_jpg"}


# --------------------------------------------------------------------------- nothing of the user's overwritten


def test_files_predict_did_not_write_are_never_replaced(tmp_path, tiny_checkpoints, capsys):
    """Output = input folder: the user's a.npy beside a.jpg, and the input b_color.png itself, stay as
    they are; those inputs get other names, said on stderr. A rerun replaces its own results, creates no
    second copy, and does not read its results as inputs."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(rgb(28, 28, seed=1)).save(folder / "a.jpg", quality=95)
    Image.fromarray(rgb(28, 28, seed=2)).save(folder / "b.png")
    Image.fromarray(rgb(28, 28, seed=3)).save(folder / "b_color.png")  # an input under b.png's picture name
    user_npy = np.arange(6.0).reshape(2, 3)
    np.save(folder / "a.npy", user_npy)
    b_before = (folder / "b_color.png").read_bytes()
    common = [f"ckpt={tiny_checkpoints['depth']}", f"input={folder}", f"output={folder}"]

    status, stdout, err = run(capsys, *common)
    assert status == 0, err
    assert "wrote depth results for 3 of 3 images" in stdout
    assert np.array_equal(np.load(folder / "a.npy"), user_npy)
    assert (folder / "b_color.png").read_bytes() == b_before
    assert f"the results of a.jpg are named a_1.* (a.npy in {folder} was not written by predict.py)" in err
    assert "the results of b.png are named b_1.* (b_color.png is an input image)" in err
    assert np.allclose(
        np.load(folder / "a_1.npy"), expected_depth(tiny_checkpoints["depth"], folder / "a.jpg"), atol=1e-5
    )
    ours = sorted(
        [
            *(f"{stem}{suffix}" for stem in ("a_1", "b_1", "b_color") for suffix in DEPTH_FILES),
            *DEPTH_RUN_FILES,
        ]
    )
    assert recorded(folder) == ours

    np.save(folder / "a_1.npy", np.zeros((1, 1), np.float32))  # an earlier result, as predict.py left it...
    outputs.write_record(folder, set(ours))  # ... (its record says so)
    status, stdout, err = run(capsys, *common)
    assert status == 0, err
    assert (
        "wrote depth results for 3 of 3 images" in stdout
    )  # a_1_color.png, a_1_depth_mm.png, ... not inputs
    assert "6 image files" in err and "predict.py's own results" in err
    assert np.allclose(
        np.load(folder / "a_1.npy"), expected_depth(tiny_checkpoints["depth"], folder / "a.jpg"), atol=1e-5
    )  # replaced: it was predict.py's own, unchanged since
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["a.jpg", "a.npy", "b.png", "b_color.png", *ours, outputs.RECORD]
    )
    assert np.array_equal(np.load(folder / "a.npy"), user_npy)

    # Someone rewrites a result (same name, other content): from then on it is theirs, never replaced.
    (folder / "a_1.npy").write_bytes(b"mine now")
    status, stdout, err = run(capsys, *common)
    assert status == 0, err
    assert (folder / "a_1.npy").read_bytes() == b"mine now"
    assert "the results of a.jpg are named a_2.*" in err


def test_a_record_naming_a_file_predict_did_not_leave_there_does_not_make_it_replaceable(
    tmp_path, tiny_checkpoints, capsys
):
    """A stale or crafted record that names someone's file (the name only, or another file's size,
    mtime and inode) does not let predict.py replace it."""
    folder = tmp_path / "shared"
    folder.mkdir()
    Image.fromarray(rgb(28, 28)).save(folder / "x.jpg")
    mine = folder / "x.npy"
    np.save(mine, np.zeros((2, 2)))
    before = mine.read_bytes()
    record = {"format": outputs.RECORD_FORMAT, "files": {"x.npy": [mine.stat().st_size, 0, 1]}}
    (folder / outputs.RECORD).write_text(json.dumps(record))
    status, _, err = run(capsys, f"ckpt={tiny_checkpoints['depth']}", f"input={folder}", f"output={folder}")
    assert status == 0, err
    assert mine.read_bytes() == before
    assert "the results of x.jpg are named x_1.*" in err


def test_a_crafted_record_only_names_plain_files_in_its_folder(tmp_path, tiny_checkpoints, capsys):
    """The record decides what may be replaced: entries with a folder part, hidden names, other suffixes,
    links and folders are not taken from it; a file that is not a record is refused in one line."""
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    out.mkdir()
    Image.fromarray(rgb(28, 28)).save(images / "a.png")
    outside = tmp_path / "outside.npy"
    outside.write_bytes(b"keep me")
    (out / "a_depth_mm.png").symlink_to(outside)  # a link under a result's name
    (out / "a.npy").mkdir()  # a folder under a result's name
    names = [
        "../outside.npy",
        str(outside),
        "sub/a_color.png",
        ".a_color.png",
        "a.txt",
        "a_depth_mm.png",
        "a.npy",
    ]
    record = {"format": outputs.RECORD_FORMAT, "files": {name: [7, 0, 0] for name in names}}
    (out / outputs.RECORD).write_text(json.dumps(record))
    status, _, err = run(capsys, f"ckpt={tiny_checkpoints['depth']}", f"input={images}", f"output={out}")
    assert status == 0, err
    assert "ignored 5 entries" in err
    assert "the results of a.png are named a_1.*" in err
    assert (
        outside.read_bytes() == b"keep me"
        and (out / "a_depth_mm.png").is_symlink()
        and (out / "a.npy").is_dir()
    )
    assert recorded(out) == sorted([*(f"a_1{suffix}" for suffix in DEPTH_FILES), *DEPTH_RUN_FILES])

    for text in ("not json", json.dumps({"files": ["a_1.png"]}), json.dumps(["a_1.png"]), "[" * 100_000):
        (out / outputs.RECORD).write_text(text)
        status, _, err = run(capsys, f"ckpt={tiny_checkpoints['depth']}", f"input={images}", f"output={out}")
        assert "is not predict.py's record" in one_line_error(status, err)
    (out / outputs.RECORD).unlink()
    (out / outputs.RECORD).symlink_to(outside)
    status, _, err = run(capsys, f"ckpt={tiny_checkpoints['depth']}", f"input={images}", f"output={out}")
    assert "is not a plain file" in one_line_error(status, err)
    assert outside.read_bytes() == b"keep me"


# --------------------------------------------------------------------------- no silent NaN


@pytest.mark.parametrize("task", ["depth", "segmentation"])
def test_a_nan_prediction_is_an_error_for_that_image(tmp_path, task, capsys):
    torch.manual_seed(0)
    head = "depth_linear" if task == "depth" else "seg_linear"
    model = dense.build_model(
        "tiny14", head, **({"max_depth": 10.0} if task == "depth" else {"num_classes": 5})
    )
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.fill_(float("nan"))
    ckpt = write_checkpoint(model, tmp_path / "nan.ckpt")
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    Image.fromarray(rgb(28, 28)).save(images / "room.png")
    status, stdout, err = run(capsys, f"ckpt={ckpt}", f"input={images}", f"output={out}")
    assert status == predict.EXIT_SKIPPED, err
    assert "room.png: the prediction holds NaN or inf" in err
    assert f"wrote {task} results for 0 of 1 images" in stdout
    assert list(out.iterdir()) == []  # no result file, and no record of nothing


# --------------------------------------------------------------------------- the output folder


def test_a_full_disk_stops_the_run_and_says_how_many_were_written(
    tmp_path, tiny_checkpoints, capsys, monkeypatch
):
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    for i in range(3):
        Image.fromarray(rgb(28, 28, seed=i)).save(images / f"img{i}.png")
    real_save_npy = writers.save_npy
    calls = []

    def save_npy_until_full(array, path):
        calls.append(path)
        if len(calls) == 2:  # the second image's .npy, after its two PNGs were written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_save_npy(array, path)

    monkeypatch.setattr(writers, "save_npy", save_npy_until_full)
    status, stdout, err = run(capsys, f"ckpt={tiny_checkpoints['depth']}", f"input={images}", f"output={out}")
    assert status == predict.EXIT_SKIPPED, err
    assert "Traceback" not in err
    assert (
        f"stopped: cannot write the results of {images / 'img1.png'} in {out} (No space left on device)"
        in err
    )
    assert "wrote depth results for 1 of 3 images" in stdout
    first = sorted([*(f"img0{suffix}" for suffix in DEPTH_FILES), *DEPTH_RUN_FILES])
    assert sorted(p.name for p in out.iterdir()) == sorted([*first, outputs.RECORD])  # none of img1's files
    assert recorded(out) == first
    assert len(calls) == 2  # img2 was not tried


def test_result_names_too_long_for_the_disk_skip_that_image(tmp_path, tiny_checkpoints, capsys):
    """A 250-character input name fits, its 255+-character `_color.png` does not (NAME_MAX): that
    image is skipped with its reason and leaves no file, the others are written."""
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    long_name = "a" * 246 + ".png"
    Image.fromarray(rgb(28, 28)).save(images / long_name)
    Image.fromarray(rgb(28, 28, seed=1)).save(images / "b.png")
    status, stdout, err = run(capsys, f"ckpt={tiny_checkpoints['depth']}", f"input={images}", f"output={out}")
    assert status == predict.EXIT_SKIPPED, err
    assert f"{long_name}: its result file names are too long for the disk; rename it" in err
    assert "wrote depth results for 1 of 2 images" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [outputs.RECORD, *(f"b{suffix}" for suffix in DEPTH_FILES), *DEPTH_RUN_FILES]
    )


def test_an_output_that_is_a_file_or_lies_under_one_is_one_line(tmp_path, tiny_checkpoints, capsys):
    Image.fromarray(rgb(28, 28)).save(tmp_path / "a.png")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    common = [f"ckpt={tiny_checkpoints['depth']}", f"input={tmp_path / 'a.png'}"]
    status, _, err = run(capsys, *common, f"output={a_file}")
    assert f"output={a_file} is a file, not a folder" in one_line_error(status, err)
    status, _, err = run(capsys, *common, f"output={a_file / 'sub' / 'dir'}")
    assert f"lies under {a_file}, which is a file" in one_line_error(status, err)
    assert a_file.read_text() == "mine"


def test_a_read_only_output_folder_is_refused_before_any_work(
    tmp_path, tiny_checkpoints, capsys, monkeypatch
):
    Image.fromarray(rgb(28, 28)).save(tmp_path / "a.png")
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:
        # root may write in any folder whatever its mode: refuse file creation there as the kernel
        # refuses it to other users (EACCES), through the call every file creation goes through.
        real_open = os.open

        def open_refusing_out(path, flags, *args, **kwargs):
            if flags & os.O_CREAT and Path(os.fspath(path)).parent == out:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", open_refusing_out)
    monkeypatch.setattr(predict, "read_image", lambda *args, **kwargs: pytest.fail("an image was read"))
    try:
        status, _, err = run(
            capsys, f"ckpt={tiny_checkpoints['depth']}", f"input={tmp_path / 'a.png'}", f"output={out}"
        )
    finally:
        out.chmod(0o755)
    assert f"cannot write in the output folder {out} (Permission denied)" in one_line_error(status, err)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "options, words",
    [
        (["mode=slide", "crop_size=0"], "crop_size=0 must be a positive number of pixels"),
        (["mode=slide", "crop_size=-28"], "crop_size=-28 must be a positive"),
        (["mode=slide", "crop_size=[28,0]"], "crop_size=[28, 0] must be a positive"),
        (["mode=slide", "crop_size=28", "stride=0"], "stride=0 must be a positive"),
        (["mode=slide", "crop_size=28", "stride=-14"], "stride=-14 must be a positive"),
        (["mode=slide", "crop_size=28", "stride=56"], "stride=56 is larger than crop_size=28"),
        (["max_pixels=0"], "max_pixels=0 must be a positive number of pixels"),
    ],
)
def test_window_and_pixel_options_are_checked(tmp_path, tiny_checkpoints, capsys, options, words):
    Image.fromarray(rgb(56, 56)).save(tmp_path / "a.png")
    common = [
        f"ckpt={tiny_checkpoints['depth']}",
        f"input={tmp_path / 'a.png'}",
        f"output={tmp_path / 'out'}",
    ]
    status, _, err = run(capsys, *common, *options)
    assert words in one_line_error(status, err)


# --------------------------------------------------------------------------- bounded images


def big_bilevel_png(path: Path, width: int, height: int) -> Path:
    Image.new("1", (width, height)).save(path)  # 1 bit a pixel, compressed: about 10 KB on disk
    return path


def test_an_image_above_the_pixel_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    """9000×9000 = 81 MP (no PIL warning below 89 MP) and 10000×10000 = 100 MP (PIL only warns):
    refused from the header, in one line, with no warning and without decoding a pixel."""
    paths = [big_bilevel_png(tmp_path / f"{side}.png", side, side) for side in (9000, 10000)]
    assert all(path.stat().st_size < 100_000 for path in paths)
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", lambda self: pytest.fail("the image was decoded"))
    for path in paths:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ImageReadError) as error:
                read_image(path)
        assert time.perf_counter() - start < 0.5
        side = int(path.stem)
        assert str(error.value) == (
            f"{path}: {side}×{side} = {side * side:,} pixels, more than the 64,000,000 allowed "
            "(max_pixels=64000000); downscale it, or in predict.py raise max_pixels"
        )
    with pytest.raises(DenseError, match=r"cannot read image .*9000×9000 = 81,000,000 pixels"):
        read_rgb(paths[0])  # the datasets read through the same function, with the same bound


def test_predict_passes_its_own_pixel_budget_to_the_reader(tmp_path, tiny_checkpoints, capsys):
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    Image.fromarray(rgb(28, 28)).save(images / "small.png")  # 784 pixels
    Image.fromarray(rgb(28, 42)).save(images / "wide.png")  # 1,176 pixels
    common = [f"ckpt={tiny_checkpoints['depth']}", f"input={images}", f"output={out}"]
    status, stdout, err = run(capsys, *common, "max_pixels=1000")
    assert status == predict.EXIT_SKIPPED, err
    assert "wide.png: 42×28 = 1,176 pixels, more than the 1,000 allowed (max_pixels=1000)" in err
    assert "wrote depth results for 1 of 2 images" in stdout and (out / "small.npy").is_file()


def test_a_resized_view_above_the_pixel_budget_is_refused_before_it_is_allocated(
    tmp_path, tiny_checkpoints, capsys
):
    """scales=[14] (within the 16 every scale list may reach) makes a 600×600 image an 8400×8400 view
    (70.6 MP), above the default 64 MP."""
    Image.fromarray(rgb(600, 600)).save(tmp_path / "small.png")
    start = time.perf_counter()
    status, stdout, err = run(
        capsys, f"ckpt={tiny_checkpoints['depth']}", f"input={tmp_path / 'small.png'}", f"output={tmp_path / 'out'}",
        "scales=[14]",
    )  # fmt: skip
    assert time.perf_counter() - start < 30
    assert status == predict.EXIT_SKIPPED, err
    assert (
        "small.png: at scale 14 it becomes 8400×8400 = 70,560,000 pixels, more than the 64,000,000 allowed"
        in err
    )


@pytest.mark.parametrize("error", ["torch_cpu", "numpy"])
def test_cpu_out_of_memory_skips_that_image(tmp_path, tiny_checkpoints, capsys, monkeypatch, error):
    """The CPU allocator's own error (a RuntimeError, not torch.OutOfMemoryError) and numpy's
    MemoryError skip the image that caused them, as CUDA's out-of-memory does."""
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    Image.fromarray(rgb(56, 56)).save(images / "big.png")
    Image.fromarray(rgb(28, 28)).save(images / "small.png")
    real_predict = dense.DenseModel.predict

    def predict_out_of_memory_above_28(self, images, *args, **kwargs):
        if images.shape[-1] > 28:
            if error == "torch_cpu":
                torch.empty(2**62, dtype=torch.uint8)  # raises the allocator's genuine error
            else:
                np.empty(2**62, dtype=np.uint8)
        return real_predict(self, images, *args, **kwargs)

    monkeypatch.setattr(dense.DenseModel, "predict", predict_out_of_memory_above_28)
    status, stdout, err = run(
        capsys, f"ckpt={tiny_checkpoints['depth']}", f"input={images}", f"output={out}", "device=cpu"
    )
    assert status == predict.EXIT_SKIPPED, err
    assert "Traceback" not in err
    assert "big.png: out of memory on cpu at 56×56; try mode=slide crop_size=518 or smaller scales" in err
    assert "wrote depth results for 1 of 2 images" in stdout and (out / "small.npy").is_file()


# --------------------------------------------------------------------------- reading


def test_an_image_that_may_not_be_read_says_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "private.png"
    Image.fromarray(rgb(8, 8)).save(path)
    path.chmod(0o000)
    if os.geteuid() == 0:
        # root reads any file whatever its mode: refuse it as the kernel does for other users.
        real_open = builtins.open

        def open_refusing_path(file, *args, **kwargs):
            if os.fspath(file) == str(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", open_refusing_path)
    try:
        with pytest.raises(ImageReadError) as error:
            read_image(path)
    finally:
        path.chmod(0o644)
    assert str(error.value) == f"{path}: permission denied (this user may not read it; check its permissions)"
