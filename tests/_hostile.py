"""Helpers of the hostile-inputs audit (issue 7) that its three rooms share: tests/data/test_hostile_data.py
(the datasets), tests/model/test_hostile_model.py (weights and checkpoints) and tests/cli/test_hostile_cli.py
(predict.py, train.py). The images every reader must survive (IMAGE_CASES) and pickles that carry code.
"""

from __future__ import annotations

import io
import pathlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dense.checkpoint import MODEL_KEY
from dense.core.constants import MEAN_FILL
from tests._fixtures_data import rgb


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


# ---- pickles that carry code (the loaders of tests/model, predict.py in tests/cli) ---------------------


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
