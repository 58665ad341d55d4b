"""predict.py and dense.core.io: reading any image, the result files, round trips, and bad inputs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import dense
from dense.cli.predict import outputs
from dense.cli.predict import run as predict
from dense.core.constants import MEAN_FILL
from dense.core.errors import ImageReadError
from dense.core.io import list_images, read_image
from tests._fixtures_data import rgb
from tests._tiny_run import ROOT, model_input, predict_config, run_script, write_checkpoint

# --------------------------------------------------------------------------- reading images


def test_read_image_converts_every_mode(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert (read_image(tmp_path / "grey.png") == grey[..., None]).all()

    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # 16-bit greyscale PNG
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out.shape == (3, 4, 3)
    assert (out[..., 0] == np.rint(deep / 257.0)).all()  # scaled, not clipped to white

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red stays red
    rgba[0, 1] = (0, 255, 0, 0)  # fully transparent becomes the mean colour
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == MEAN_FILL

    Image.fromarray(rgb(4, 5)).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb(4, 5)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    for name in ("palette.png", "cmyk.jpg"):
        out = read_image(tmp_path / name)
        assert out.shape == (4, 5, 3) and out.dtype == np.uint8


def test_read_image_applies_exif_orientation(tmp_path):
    image = Image.fromarray(rgb(10, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(tmp_path / "rotated.jpg").shape == (30, 10, 3)


def test_unreadable_files_are_named_with_a_reason(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    Image.fromarray(rgb(64, 64)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"notes\.jpg: not an image"):
        read_image(tmp_path / "notes.jpg")
    with pytest.raises(ImageReadError, match=r"cut\.png: cannot decode .*truncated"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ImageReadError, match="does not exist"):
        list_images(tmp_path / "missing")


# --------------------------------------------------------------------------- result files


def test_depth_round_trip(tmp_path, tiny_checkpoints):
    Image.fromarray(rgb(45, 61)).save(tmp_path / "room.png")  # not a multiple of 14
    out = tmp_path / "out"
    assert (
        predict.predict(
            predict_config(
                f"ckpt={tiny_checkpoints['depth']}", f"input={tmp_path / 'room.png'}", f"output={out}"
            )
        )
        == 0
    )

    metres = np.load(out / "room.npy")
    assert metres.dtype == np.float32 and metres.shape == (45, 61)
    png = np.asarray(Image.open(out / "room_depth_mm.png"))
    assert png.dtype == np.uint16
    # the 16-bit PNG holds millimetres: equal to the .npy to its quantisation (half a millimetre)
    assert np.abs(png / 1000.0 - metres).max() <= 0.5e-3 + 1e-6
    with torch.no_grad():
        expected = dense.load_model(tiny_checkpoints["depth"]).predict(model_input(tmp_path / "room.png"))[
            0, 0
        ]
    assert np.allclose(metres, expected.numpy(), atol=1e-5)
    color = np.asarray(Image.open(out / "room_color.png"))
    assert color.shape[0] == 64 and color.shape[1] > 61  # the bar beside it, padded to 64 rows
    assert not list(out.glob(".tmp-*"))  # atomic writes leave no temporary files


def test_depth_scale_and_colorbar(tmp_path, tiny_checkpoints):
    Image.fromarray(rgb(28, 28)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    args = [
        f"ckpt={tiny_checkpoints['depth']}",
        f"input={tmp_path}",
        f"output={out}",
        "depth_scale=256",
        "colorbar=true",
        "save_npy=false",
        "depth_range=[0,10]",
    ]
    assert predict.predict(predict_config(*args)) == 0
    png = np.asarray(Image.open(out / "a_depth_x256.png"))  # named for what it holds: metres × 256
    with torch.no_grad():
        expected = (
            dense.load_model(tiny_checkpoints["depth"]).predict(model_input(tmp_path / "a.png"))[0, 0].numpy()
        )
    assert np.abs(png / 256.0 - expected).max() <= 0.5 / 256 + 1e-6
    assert not (out / "a.npy").exists()
    assert np.asarray(Image.open(out / "a_color.png")).shape[1] > 28  # the bar beside the map
    assert sorted(p.name for p in out.iterdir()) == [outputs.RECORD, "a_color.png", "a_depth_x256.png"]
    assert predict.predict(predict_config(*args, "colorbar=false")) == 0
    assert np.asarray(Image.open(out / "a_color.png")).shape == (28, 28, 3)  # colorbar=false: the map alone


def test_segmentation_ids_equal_argmax_of_logits(tmp_path, tiny_checkpoints):
    Image.fromarray(rgb(40, 50, seed=3)).save(tmp_path / "scene.jpg")
    out = tmp_path / "out"
    assert (
        predict.predict(
            predict_config(f"ckpt={tiny_checkpoints['seg']}", f"input={tmp_path}", f"output={out}")
        )
        == 0
    )
    ids = np.asarray(Image.open(out / "scene.png"))
    assert ids.dtype == np.uint8 and ids.shape == (40, 50)
    with torch.no_grad():
        logits = dense.load_model(tiny_checkpoints["seg"])(model_input(tmp_path / "scene.jpg"))
    assert (ids == logits.argmax(1)[0].numpy()).all()
    assert len(np.unique(ids)) > 1
    for name in ("scene_color.png", "scene_overlay.png"):
        assert np.asarray(Image.open(out / name)).shape == (40, 50, 3)


def test_released_head_files_through_the_config_groups(tmp_path):
    """backbone=... head=... backbone.weights=... head.weights=...: Meta's file layouts (a plain backbone
    state dict, an mmcv head checkpoint with decode_head.* keys) give the same depth as the model."""
    torch.manual_seed(1)
    model = dense.build_model("tiny14", "depth_linear", max_depth=10.0).eval()
    torch.save(model.backbone.state_dict(), tmp_path / "backbone.pth")
    head_state = {f"decode_head.{k}": v for k, v in model.head.state_dict().items()}
    torch.save({"state_dict": head_state}, tmp_path / "head.pth")
    Image.fromarray(rgb(42, 56)).save(tmp_path / "x.png")
    cfg = predict_config(
        "backbone=tiny14",
        "head=depth_linear",
        f"backbone.weights={tmp_path / 'backbone.pth'}",
        f"head.weights={tmp_path / 'head.pth'}",
        f"input={tmp_path / 'x.png'}",
        f"output={tmp_path / 'out'}",
    )
    assert predict.predict(cfg) == 0
    with torch.no_grad():
        expected = model.predict(model_input(tmp_path / "x.png"))[0, 0].numpy()
    assert np.allclose(np.load(tmp_path / "out" / "x.npy"), expected, atol=1e-5)


def test_more_than_255_classes_give_16_bit_ids(tmp_path):
    torch.manual_seed(0)
    model = dense.build_model("tiny14", "seg_linear", num_classes=300)
    torch.nn.init.normal_(model.head.conv_seg.weight, std=1.0)
    ckpt = write_checkpoint(model, tmp_path / "seg300.ckpt")
    Image.fromarray(rgb(28, 42)).save(tmp_path / "x.png")
    assert (
        predict.predict(
            predict_config(f"ckpt={ckpt}", f"input={tmp_path / 'x.png'}", f"output={tmp_path / 'out'}")
        )
        == 0
    )
    ids = np.asarray(Image.open(tmp_path / "out" / "x.png"))
    assert ids.dtype == np.uint16
    with torch.no_grad():
        expected = model.eval()(model_input(tmp_path / "x.png")).argmax(1)[0].numpy()
    assert (ids == expected).all()


def test_batching_and_inference_modes_agree(tmp_path, tiny_checkpoints):
    """Equal-size images batched together give what one at a time gives; slide / flip / bf16 run."""
    for i in range(3):
        Image.fromarray(rgb(30, 40, seed=i)).save(tmp_path / f"img{i}.png")
    Image.fromarray(rgb(20, 25, seed=9)).save(tmp_path / "img3.png")  # another size: its own batch
    common = [f"ckpt={tiny_checkpoints['depth']}", f"input={tmp_path}"]
    assert predict.predict(predict_config(*common, f"output={tmp_path / 'b4'}", "batch_size=4")) == 0
    assert predict.predict(predict_config(*common, f"output={tmp_path / 'b1'}", "batch_size=1")) == 0
    for i in range(4):
        a, b = np.load(tmp_path / "b4" / f"img{i}.npy"), np.load(tmp_path / "b1" / f"img{i}.npy")
        assert np.allclose(a, b, atol=1e-5)
    options = ["mode=slide", "crop_size=28", "stride=14", "flip=true", "scales=[1.0,1.5]", "precision=bf16"]
    one = [
        f"ckpt={tiny_checkpoints['depth']}",
        f"input={tmp_path / 'img3.png'}",
        f"output={tmp_path / 'tta'}",
    ]
    assert predict.predict(predict_config(*one, *options)) == 0
    assert np.load(tmp_path / "tta" / "img3.npy").shape == (20, 25)


def test_setup_mistakes_are_one_line(tmp_path, tiny_checkpoints, capsys):
    Image.fromarray(rgb(14, 14)).save(tmp_path / "a.png")
    good_input, good_ckpt, good_output = (
        f"input={tmp_path}",
        f"ckpt={tiny_checkpoints['depth']}",
        f"output={tmp_path / 'o'}",
    )
    cases = [
        (["input=/nonexistent/folder", good_ckpt, good_output], "input /nonexistent/folder does not exist"),
        ([good_input, "ckpt=/nonexistent.ckpt", good_output], "checkpoint not found: /nonexistent.ckpt"),
        ([good_input, good_ckpt, good_output, "mode=tiles"], "mode=tiles is not one of whole, slide"),
        ([good_input, good_ckpt], "output is not set"),
        ([good_input, good_output], "no trained head"),
    ]
    for overrides, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            predict.predict(predict_config(*overrides))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_folder_with_bad_and_odd_images_from_the_command_line(tmp_path, tiny_checkpoints):
    """The real CLI: outputs for every good image, a named reason for the bad one, exit status 3."""
    images = tmp_path / "in"
    images.mkdir()
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole JPEG")
    Image.fromarray(rgb(30, 40)[..., 0]).save(images / "grey.png")
    rgba = np.dstack([rgb(33, 47), np.full((33, 47), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(images / "alpha.png")
    Image.fromarray(rgb(99, 131)).save(images / "odd.jpg")  # 99×131: not multiples of 14
    (images / "readme.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    result = run_script(
        str(ROOT / "predict.py"),
        f"ckpt={tiny_checkpoints['seg']}",
        f"input={images}",
        f"output={out}",
        cwd=tmp_path,
    )
    assert result.returncode == 3, result.stderr
    assert "broken.jpg" in result.stderr and "truncated or corrupt" in result.stderr
    assert "Traceback" not in result.stderr
    assert "wrote segmentation results for 3 of 4 images" in result.stdout
    sizes = {"grey": (30, 40), "alpha": (33, 47), "odd": (99, 131)}
    for stem, size in sizes.items():
        assert np.asarray(Image.open(out / f"{stem}.png")).shape == size
        assert (out / f"{stem}_color.png").is_file() and (out / f"{stem}_overlay.png").is_file()
    results = sorted(f"{stem}{suffix}" for stem in sizes for suffix in (".png", "_color.png", "_overlay.png"))
    run_files = ["legend.png", "classes.json"]  # once per run: the class colours and names
    assert sorted(p.name for p in out.iterdir()) == sorted([*results, *run_files, outputs.RECORD])
    assert sorted(json.loads((out / outputs.RECORD).read_text())["files"]) == sorted(
        [*results, *run_files]
    )  # what a rerun may replace
    assert not (tmp_path / "outputs").exists()  # Hydra writes no run folder for predict.py
