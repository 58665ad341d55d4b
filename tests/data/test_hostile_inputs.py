"""Hostile inputs (issue 7): every bad file or option is refused with one line that names it and says
what is wrong (or is a documented skip), nothing crashes deep inside, no code in a file ever runs, and
no partial output is left behind.

Images go through both readers users meet: the datasets (FolderDataset, via dense.data.readers.read_rgb)
and predict.py (dense.core.io.read_image) — the two must agree. Config mistakes run `train.py` as users do.
The case counts in the README's Failure modes table are the parametrised cases of this file.
"""

from __future__ import annotations

import io
import os
import pathlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dense
import dense.losses
import dense.metrics
import heads
from dense.checkpoint import MODEL_KEY, load_model
from dense.cli.predict import outputs
from dense.cli.predict import run as predict
from dense.core.constants import MEAN_FILL
from dense.core.errors import WeightsError
from dense.core.io import read_image
from dense.core.weights_file import load_weights_file
from dense.data import DatasetError, DepthScaleWarning, FolderDataset
from tests._fixtures_data import rgb
from tests._tiny_run import predict_config, run_script

pytestmark = pytest.mark.hostile  # the hostile audit: `python -m pytest -m hostile`


def one_line(message: str) -> str:
    message = str(message)
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


def jpeg_bytes(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---- images --------------------------------------------------------------------------------------------
# Each case writes one file and says what must come of it: ("error", words the message must hold), or
# ("ok", the expected uint8 H×W×3 both readers must return).


def _exif_rotated(path: Path):
    stored = rgb(20, 30, seed=1)  # stored 20×30, EXIF orientation 6 (rotate 90° clockwise to display)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, format="PNG", exif=exif)
    return np.rot90(stored, k=-1)


def _sixteen_bit(path: Path):
    values = np.array([[0, 65535, 32896], [257, 1000, 60000]], np.uint16).repeat(7, 0).repeat(7, 1)
    Image.fromarray(values).save(path)
    grey = np.clip(np.rint(values * (255 / 65535)), 0, 255).astype(np.uint8)  # scaled, not clipped to 255
    return np.repeat(grey[..., None], 3, 2)


def _cmyk(path: Path):
    Image.fromarray(rgb(21, 17)).convert("CMYK").save(path, format="JPEG", quality=100)
    return None  # lossy: checked for shape and agreement between the readers only


def _palette(path: Path):
    image = Image.fromarray(rgb(15, 16)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    image.save(path)
    return np.asarray(image.convert("RGB"))


def _rgba(path: Path):
    colour = rgb(14, 28)
    alpha = np.zeros((14, 28), np.uint8)
    alpha[:, :14] = 255  # left half opaque, right half fully transparent
    Image.fromarray(np.dstack([colour, alpha]), "RGBA").save(path)
    expected = colour.copy()
    expected[:, 14:] = MEAN_FILL  # transparent pixels: the ImageNet mean, not the hidden colours
    return expected


def _truncated_jpeg(path: Path):
    data = jpeg_bytes(rgb(64, 64))
    path.write_bytes(data[: len(data) // 2])


def _truncated_png(path: Path):
    data = png_bytes(Image.fromarray(rgb(64, 64)))
    path.write_bytes(data[: len(data) // 2])


def _corrupt_jpeg(path: Path):
    data = bytearray(jpeg_bytes(rgb(64, 64)))
    data[20:400] = b"\x00" * 380  # header tables destroyed, length intact
    path.write_bytes(bytes(data))


def _corrupt_png(path: Path):
    data = bytearray(png_bytes(Image.fromarray(rgb(64, 64))))
    data[60:90] = b"\xff" * 30  # inside the IDAT stream: CRC and zlib data broken
    path.write_bytes(bytes(data))


def _write(array_fn):
    def make(path: Path):
        array = array_fn()
        Image.fromarray(array).save(path)
        return array

    return make


IMAGE_CASES = {
    # name: (file name, writer, outcome, words)
    "truncated_jpeg": ("x.jpg", _truncated_jpeg, "error", "truncated or corrupt"),
    "truncated_png": ("x.png", _truncated_png, "error", "truncated or corrupt"),
    "corrupt_jpeg": ("x.jpg", _corrupt_jpeg, "error", "x.jpg"),
    "corrupt_png": ("x.png", _corrupt_png, "error", "truncated or corrupt"),
    "zero_bytes": ("x.png", lambda p: p.write_bytes(b""), "error", "not an image file"),
    "text_named_png": (
        "x.png",
        lambda p: p.write_text("hello, I am a text file\n"),
        "error",
        "not an image file",
    ),
    "one_pixel": ("x.png", _write(lambda: rgb(1, 1)), "ok", None),
    "smaller_than_a_patch": ("x.png", _write(lambda: rgb(9, 5)), "ok", None),
    "aspect_14x2000": ("x.png", _write(lambda: rgb(14, 2000)), "ok", None),
    "aspect_2000x3": ("x.png", _write(lambda: rgb(2000, 3)), "ok", None),
    "sixteen_bit": ("x.png", _sixteen_bit, "ok", None),
    "cmyk_jpeg": ("x.jpg", _cmyk, "ok", None),
    "palette": ("x.png", _palette, "ok", None),
    "rgba": ("x.png", _rgba, "ok", None),
    "exif_rotated": ("x.png", _exif_rotated, "ok", None),
}


def write_folder_dataset(root: Path, image_name: str, writer) -> tuple[np.ndarray | None, Path]:
    """A depth folder dataset with one image (written by `writer`) and a depth map of the size the
    image displays at (read with the robust reader when it can be read at all)."""
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    path = root / "images" / image_name
    expected = writer(path)
    try:
        h, w = read_image(path).shape[:2]
    except dense.core.errors.DenseError:
        h, w = 4, 4
    np.save(root / "depth" / "x.npy", np.ones((h, w), np.float32))
    (root / "train.txt").write_text("x\n")
    (root / "val.txt").write_text("x\n")
    return expected, path


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_through_the_dataset(tmp_path, case):
    name, writer, outcome, words = IMAGE_CASES[case]
    expected, path = write_folder_dataset(tmp_path, name, writer)
    dataset = FolderDataset(tmp_path, "train")
    if outcome == "error":
        with pytest.raises(DatasetError) as error:
            dataset[0]
        message = one_line(error.value)
        assert str(path) in message and words in message
        return
    image = dense.data.readers.read_rgb(path)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert np.array_equal(image, read_image(path))  # the datasets read images as predict.py does
    if expected is not None:
        assert np.array_equal(image, expected)
    sample = dataset[0]  # the whole sample contract, depth aligned with the displayed image
    assert tuple(sample["image"].shape) == (3, *image.shape[:2])
    assert tuple(sample["depth"].shape) == (1, *image.shape[:2])


@pytest.fixture
def depth_ckpt(tiny_checkpoints) -> Path:
    """tiny14 depth_linear (0.001-10 m), random backbone stored inside."""
    return tiny_checkpoints["depth"]


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_through_predict(tmp_path, case, depth_ckpt, capsys):
    name, writer, outcome, words = IMAGE_CASES[case]
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    writer(images / name)
    status = predict.predict(predict_config(f"ckpt={depth_ckpt}", f"input={images}", f"output={out}"))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if outcome == "error":
        assert status == predict.EXIT_SKIPPED
        lines = [line for line in err.splitlines() if name in line and "skipped" in line]
        assert len(lines) == 2 and words in lines[0], err  # the reason, then the summary
        assert sorted(p.name for p in out.iterdir()) == []  # nothing written for it, no temporary file
        return
    assert status == 0, err
    h, w = read_image(images / name).shape[:2]
    depth = np.asarray(Image.open(out / "x_depth_mm.png"))
    assert depth.shape == (h, w) and depth.dtype == np.uint16 and depth.max() > 0
    assert np.isfinite(np.load(out / "x.npy")).all()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [outputs.RECORD, "x.npy", "x_depth_mm.png", "x_color.png"]
    )


# ---- depth maps ----------------------------------------------------------------------------------------

H, W = 12, 16


def depth_folder(root: Path, depth, image_size=(H, W), png: bool = False) -> FolderDataset:
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    Image.fromarray(rgb(*image_size)).save(root / "images" / "x.png")
    if png:
        Image.fromarray(depth).save(root / "depth" / "x.png")
    else:
        np.save(root / "depth" / "x.npy", depth)
    (root / "train.txt").write_text("x\n")
    (root / "val.txt").write_text("x\n")
    return FolderDataset(root, "train")


def _with(value):
    depth = np.full((H, W), 2.0, np.float32)
    depth[3, 4] = value
    return depth


DEPTH_ERRORS = {
    "nan": (_with(np.nan), "NaN/inf values; store missing depth as 0"),
    "inf": (_with(np.inf), "NaN/inf values; store missing depth as 0"),
    "minus_inf": (_with(-np.inf), "NaN/inf values"),
    "negative": (_with(-0.5), "negative values"),
    "size_mismatch": (np.ones((H + 2, W), np.float32), f"depth is {H + 2}×{W} but the image is {H}×{W}"),
    "three_dims": (np.ones((2, H, W), np.float32), "expected an H×W float array"),
    "object_array": (np.array([None, 1], dtype=object), "x.npy"),
}


@pytest.mark.parametrize("case", DEPTH_ERRORS)
def test_bad_depth_is_refused_naming_the_file(tmp_path, case):
    depth, words = DEPTH_ERRORS[case]
    with pytest.raises(DatasetError) as error:
        if depth.dtype == object:
            # np.save pickles object arrays; reading must refuse them (allow_pickle=False), not unpickle
            np.save(tmp_path / "probe.npy", depth, allow_pickle=True)
            depth_folder(tmp_path, np.zeros((H, W), np.float32))
            os.replace(tmp_path / "probe.npy", tmp_path / "depth" / "x.npy")
            FolderDataset(tmp_path, "train")[0]
        else:
            depth_folder(tmp_path, depth)[0]
    message = one_line(error.value)
    assert "x.npy" in message and words in message


def test_all_invalid_depth_is_a_documented_skip(tmp_path):
    """A map with no valid pixel is allowed (sensors drop whole frames): the loss gives 0 for it, not
    NaN, and the metrics count it in n_skipped instead of averaging it in."""
    sample = depth_folder(tmp_path, np.zeros((H, W), np.float32))[0]
    assert not sample["depth"].any()
    loss = dense.losses.DepthLoss(max_depth=10.0)
    value = loss(torch.rand(1, 1, H, W) + 0.5, sample["depth"][None])["loss"]
    assert torch.isfinite(value) and float(value) == 0.0
    metrics = dense.metrics.DepthMetrics(min_depth=1e-3, max_depth=10.0)
    metrics.update(torch.rand(1, 1, H, W) + 0.5, sample["depth"][None])
    result = metrics.compute()
    assert int(result["n_skipped"]) == 1 and int(result["n_images"]) == 0


@pytest.mark.parametrize(
    "case, depth, png, words",
    [
        ("png_in_metres", np.full((H, W), 3, np.uint16), True, "looks stored in metres"),
        ("npy_in_millimetres", np.full((H, W), 3000.0, np.float32), False, "looks stored in millimetres"),
    ],
)
def test_depth_in_the_wrong_unit_warns(tmp_path, case, depth, png, words):
    dataset = depth_folder(tmp_path, depth, png=png)
    with pytest.warns(DepthScaleWarning, match=words) as record:
        dataset[0]
    one_line(record[0].message)
    assert "x.png" in str(record[0].message) or "x.npy" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset[0]  # once per dataset, not once per sample


# ---- label maps ----------------------------------------------------------------------------------------


def label_folder(root: Path, labels: Image.Image, image_size=(H, W)) -> FolderDataset:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(rgb(*image_size)).save(root / "images" / "x.png")
    labels.save(root / "masks" / "x.png")
    (root / "train.txt").write_text("x\n")
    (root / "val.txt").write_text("x\n")
    return FolderDataset(root, "train", task="segmentation", num_classes=5, eval_short_side=None)


def _ids(value, dtype=np.uint8, shape=(H, W)):
    labels = np.zeros(shape, dtype)
    labels[2, 3] = value
    return labels


LABEL_ERRORS = {
    "id_equal_num_classes": (Image.fromarray(_ids(5)), "label values [5] are outside [0, 5) and not 255"),
    "id_200": (Image.fromarray(_ids(200)), "label values [200]"),
    "sixteen_bit_ids_over_255": (Image.fromarray(_ids(300, np.uint16)), "values outside 0–255"),
    "rgb_colour_mask": (Image.fromarray(rgb(H, W)), "is a RGB image; expected a single-channel PNG"),
    "grey_alpha_mask": (
        Image.fromarray(_ids(1)).convert("LA"),
        "is a LA image; expected a single-channel PNG",
    ),
    "size_mismatch": (
        Image.fromarray(_ids(1, shape=(H, W + 1))),
        f"label map is {H}×{W + 1} but the image is",
    ),
}


@pytest.mark.parametrize("case", LABEL_ERRORS)
def test_bad_labels_are_refused_naming_the_file(tmp_path, case):
    labels, words = LABEL_ERRORS[case]
    with pytest.raises(DatasetError) as error:
        label_folder(tmp_path, labels)[0]
    message = one_line(error.value)
    assert str(tmp_path / "masks" / "x.png") in message and words in message


def test_ignore_index_255_is_accepted(tmp_path):
    sample = label_folder(tmp_path, Image.fromarray(_ids(255)))[0]
    assert int(sample["mask"][2, 3]) == 255 and int(sample["mask"].max()) == 255


# ---- dataset layouts -----------------------------------------------------------------------------------


def _two_image_folder(root: Path) -> None:
    for stem in ("a", "b"):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "depth").mkdir(exist_ok=True)
        Image.fromarray(rgb(H, W)).save(root / "images" / f"{stem}.png")
        np.save(root / "depth" / f"{stem}.npy", np.ones((H, W), np.float32))


def _layout(arrange):
    def make(root: Path) -> Path:
        _two_image_folder(root)
        arrange(root)
        return root

    return make


DATASET_ERRORS = {
    "missing_root": (lambda r: r / "nowhere", "does not exist or is not a folder"),
    "root_is_a_file": (lambda r: (r / "f").write_text("") or r / "f", "does not exist or is not a folder"),
    "no_images_folder": (lambda r: r, "has no images"),
    "empty_images_folder": (
        _layout(lambda r: [p.unlink() for p in (r / "images").iterdir()]),
        "holds no images",
    ),
    "empty_split_file": (
        _layout(lambda r: (r / "train.txt").write_text("\n") or (r / "val.txt").write_text("a\n")),
        "the train split is empty",
    ),
    "split_names_missing_file": (
        _layout(lambda r: (r / "train.txt").write_text("a\nghost\n") or (r / "val.txt").write_text("a\n")),
        "names 1 stems with no image",
    ),
    "duplicate_stems": (
        _layout(lambda r: Image.fromarray(rgb(H, W)).save(r / "images" / "a.jpg")),
        "two images with stem 'a'",
    ),
    "missing_target": (_layout(lambda r: (r / "depth" / "b.npy").unlink()), "have no depth file"),
    "png_and_npy_for_one_stem": (
        _layout(lambda r: Image.fromarray(np.ones((H, W), np.uint16)).save(r / "depth" / "a.png")),
        "has both a.png and a.npy",
    ),
}


@pytest.mark.parametrize("case", DATASET_ERRORS)
def test_bad_dataset_layout_is_refused_at_construction(tmp_path, case):
    arrange, words = DATASET_ERRORS[case]
    root = arrange(tmp_path)
    with pytest.raises(DatasetError) as error:
        FolderDataset(root, "train")
    message = one_line(error.value)
    assert words in message and (
        "expected" in message or "add" in message or "keep" in message or str(root) in message
    )


def test_file_list_naming_missing_files(tmp_path):
    """BTS-style lists (NYU / KITTI file lists) naming files that are not there."""
    from dense.data.filelist import read_pair_list

    (tmp_path / "rgb").mkdir()
    Image.fromarray(rgb(H, W)).save(tmp_path / "rgb" / "a.png")
    listing = tmp_path / "list.txt"
    listing.write_text("a.png a_depth.png 518.8\n")
    with pytest.raises(DatasetError) as error:
        read_pair_list(listing, tmp_path / "rgb", tmp_path / "gt")
    message = one_line(error.value)
    assert "names 1 files that do not exist" in message and "a_depth.png" in message


def test_empty_synthetic_split_and_nyu_missing_root(tmp_path):
    from dense.data import DenseDataModule

    with pytest.raises(DatasetError) as error:
        DenseDataModule(name="nyu", root=str(tmp_path / "nyu_missing")).dataset("train")
    assert "nyu_missing" in one_line(error.value)
    with pytest.raises(DatasetError) as error:
        DenseDataModule(name="synthetic", num_train=0).dataset("train")
    one_line(error.value)


# ---- checkpoints and weights ---------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs code: it creates `marker`. Safe loading must refuse it, never run it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def code_pickles(folder: Path, marker: Path) -> dict[str, Path]:
    """The payload in torch.save's zip archive, inside a train.py-like checkpoint, and in the legacy
    (pre-1.6, bare pickle) format."""
    files = {
        "zip": folder / "evil_zip.pth",
        "in_state_dict": folder / "evil_state.ckpt",
        "bare_pickle": folder / "evil_bare.pth",
    }
    torch.save({"model": _Payload(marker)}, files["zip"])
    torch.save(
        {"state_dict": {"model.head.w": torch.ones(1)}, MODEL_KEY: _Payload(marker)}, files["in_state_dict"]
    )
    torch.save({"x": _Payload(marker)}, files["bare_pickle"], _use_new_zipfile_serialization=False)
    return files


def test_code_pickles_are_real(tmp_path):
    """Control: unsafe loading of the same files really does run the payload."""
    marker = tmp_path / "ran"
    for path in code_pickles(tmp_path, marker).values():
        torch.load(path, weights_only=False)
        assert marker.exists()
        marker.unlink()


LOADERS = {
    "load_weights_file": lambda p: load_weights_file(p),
    "build_backbone": lambda p: dense.build_backbone("tiny14", weights=p),
    "head_weights": lambda p: dense.build_model("tiny14", "depth_linear", head_weights=p),
    "load_model": lambda p: load_model(p),
    "load_released_head": lambda p: heads.load_released_head(
        dense.build_model("tiny14", "seg_linear", num_classes=3).head, p
    ),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("kind", ["zip", "in_state_dict", "bare_pickle"])
def test_pickle_carrying_code_is_refused_and_never_run(tmp_path, loader, kind):
    marker = tmp_path / "ran"
    path = code_pickles(tmp_path, marker)[kind]
    with pytest.raises(WeightsError) as error:
        LOADERS[loader](path)
    message = one_line(error.value)
    assert str(path) in message and "weights_only" in message
    assert not marker.exists()


def test_predict_refuses_a_code_pickle_checkpoint(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = code_pickles(tmp_path, marker)["in_state_dict"]
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb(14, 14)).save(tmp_path / "in" / "a.png")
    with pytest.raises(SystemExit) as stop:
        predict.predict(
            predict_config(f"ckpt={path}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}")
        )
    assert stop.value.code == 2 and not marker.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(path) in one_line(err) and "weights_only" in err
    assert not (tmp_path / "out").exists()


def _truncated(path: Path, source: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("loader", ["build_backbone", "head_weights", "load_model", "load_released_head"])
def test_truncated_file_is_refused(tmp_path, depth_ckpt, loader):
    path = _truncated(tmp_path / "cut.ckpt", depth_ckpt)
    with pytest.raises(WeightsError) as error:
        LOADERS[loader](path)
    message = one_line(error.value)
    assert str(path) in message and "truncated or corrupt" in message


def test_backbone_file_for_another_variant(tmp_path):
    torch.save(dense.build_backbone("tiny14_reg").state_dict(), tmp_path / "reg.pth")
    with pytest.raises(WeightsError) as error:
        dense.build_backbone("tiny14", weights=tmp_path / "reg.pth")
    assert "choose the backbone tiny14_reg" in one_line(error.value)


@pytest.mark.parametrize(
    "head, options, words",
    [
        ("seg_linear", {"num_classes": 5}, "a linear segmentation head"),  # depth checkpoint loaded as seg
        ("depth_linear4", {}, "a linear depth head"),  # another head of the same task
        ("depth_dpt", {}, "a DPT depth head"),
    ],
)
def test_checkpoint_of_another_head_or_task_is_refused(depth_ckpt, head, options, words):
    with pytest.raises(WeightsError) as error:
        dense.build_model("tiny14", head, head_weights=depth_ckpt, **options)
    message = one_line(error.value)
    assert "does not fit this head" in message and words in message
    assert "a linear depth head for 96 input channels" in message  # what the file holds


def test_head_weights_mismatch_names_the_file(depth_ckpt):
    with pytest.raises(WeightsError) as error:
        dense.build_model("tiny14", "seg_linear", head_weights=depth_ckpt, num_classes=5)
    assert str(depth_ckpt) in str(error.value)


def test_non_train_checkpoint_is_refused_by_load_model(tmp_path):
    torch.save({"decode_head.conv_seg.weight": torch.ones(3, 48, 1, 1)}, tmp_path / "released.pth")
    with pytest.raises(WeightsError) as error:
        load_model(tmp_path / "released.pth")
    assert "not a checkpoint written by train.py" in one_line(error.value)


# ---- configuration mistakes (train.py as users run it) --------------------------------------------------

TINY = ["backbone=tiny14", "trainer=cpu", "data.image_size=[14,14]", "data.num_train=4", "data.num_workers=0"]


def run_train(tmp_path: Path, *overrides: str, tiny=TINY):
    return run_script("train.py", *tiny, f"hydra.run.dir={tmp_path / 'run'}", *overrides, timeout=120)


CONFIG_ERRORS = {
    "unknown_group_option": (["head=nope"], "head=nope is not an option of configs/head/: choose one of"),
    "wrong_type": (["data.batch_size=abc"], "data.batch_size=abc: data.batch_size takes an integer"),
    "negative_batch_size": (["data.batch_size=-3"], "data.batch_size=-3 must be a positive integer"),
    # Lightning builds the optimiser deep inside fit; train.py builds it first, for this one line
    "optimizer_keys": (
        ["task.optimizer._target_=torch.optim.SGD"],
        "task.optimizer: SGD.__init__() got an unexpected",
    ),
    "learning_rate": (["task.optimizer.lr=-1"], "task.optimizer.lr: -1 is not a non-negative finite number"),
    "head_task_mismatch": (
        ["head=seg_linear", "data=nyu"],
        "head=seg_linear is a segmentation head but data=nyu",
    ),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_config_mistakes_exit_with_one_line(tmp_path, case):
    overrides, words = CONFIG_ERRORS[case]
    if case == "head_task_mismatch":  # nyu has no synthetic-only keys (image_size, num_train)
        result = run_train(tmp_path, *overrides, f"data.root={tmp_path}", tiny=["backbone=tiny14"])
    else:
        result = run_train(tmp_path, *overrides)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and words in lines[0], result.stderr
    assert len(lines) == 1 and result.returncode == 2, result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resuming_a_depth_checkpoint_as_segmentation_is_refused(tmp_path, depth_ckpt):
    result = run_train(tmp_path, "head=seg_linear", "data.task=segmentation", f"ckpt_path={depth_ckpt}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "head=depth_linear" in lines[0] and "resume with the same" in lines[0], lines
