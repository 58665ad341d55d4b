"""Issue #25 §5: datasets carry their class names and palette into the checkpoint's model record, predict.py
colours with them, and a crafted record is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dense.checkpoint import MODEL_KEY
from dense.cli.predict import run as predict
from dense.data import ADE20K, SYNTHETIC_CLASSES, FolderDataset, PascalVOC, SyntheticScenes
from dense.data.palettes import ADE20K_PALETTE, generic_palette, voc_palette
from tests._fixtures_data import rgb
from tests._tiny_run import (
    QUIET_TINY_RUN,
    SCENES_28,
    compose_config,
    one_line_exit,
    predict_config,
    train_in_process,
)


def test_datasets_state_their_palette():
    assert ADE20K.describe().class_colours == ADE20K_PALETTE.tolist()
    assert PascalVOC.describe().class_colours == voc_palette(21).tolist()
    # A dataset without its own palette (synthetic scenes, folders): the generic one.
    synthetic = SyntheticScenes.describe(task="segmentation")
    assert synthetic.class_colours == generic_palette(len(SYNTHETIC_CLASSES)).tolist()
    folder = FolderDataset.describe(task="segmentation", class_names=["a", "b", "c"])
    assert folder.class_colours == generic_palette(3).tolist()


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory):
    """A train.py segmentation checkpoint of the 7 synthetic classes (2 steps)."""
    out = tmp_path_factory.mktemp("seg_classes")
    train_in_process(
        out, *QUIET_TINY_RUN, *SCENES_28, "trainer.max_steps=2", "head=seg_linear", "data.task=segmentation"
    )
    return out / "checkpoints" / "last.ckpt"


def rewritten(checkpoint, name, drop=(), **record):
    """`checkpoint` with its model record's entries replaced by `record` (`drop`: removed), saved beside it
    as `name` (inside its run folder, where its backbone weights file is trusted)."""
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    stored[MODEL_KEY].update(record)
    for key in drop:
        del stored[MODEL_KEY][key]
    path = checkpoint.with_name(name)
    torch.save(stored, path)
    return path


def one_image(tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(rgb(28, 28, seed=4)).save(images / "scene.png")
    return images


def test_a_seg_checkpoint_carries_names_and_palette_and_predict_uses_them(seg_checkpoint, tmp_path, capsys):
    record = torch.load(seg_checkpoint, map_location="cpu", weights_only=True)[MODEL_KEY]
    assert record["class_names"] == list(SYNTHETIC_CLASSES)
    assert record["palette"] == generic_palette(len(SYNTHETIC_CLASSES)).tolist()
    # Colours of its own, which no palette option would choose: predict.py takes the stored ones.
    own = [[10 * i, 255 - 10 * i, 7] for i in range(len(SYNTHETIC_CLASSES))]
    names = [f"thing {i}" for i in range(len(SYNTHETIC_CLASSES))]
    ckpt = rewritten(seg_checkpoint, "own.ckpt", palette=own, class_names=names)
    out = tmp_path / "out"
    assert (
        predict.predict(predict_config(f"ckpt={ckpt}", f"input={one_image(tmp_path)}", f"output={out}")) == 0
    )
    assert "classes: the checkpoint's names, the checkpoint's palette" in capsys.readouterr().out
    classes = json.loads((out / "classes.json").read_text())["classes"]
    assert [c["name"] for c in classes] == names
    assert [c["color"] for c in classes] == own
    ids = np.asarray(Image.open(out / "scene.png"))
    colour = np.asarray(Image.open(out / "scene_color.png"))
    for class_id in np.unique(ids):
        assert (colour[ids == class_id] == own[class_id]).all()


def test_an_onnx_file_carries_the_checkpoint_s_names_and_palette(seg_checkpoint, tmp_path, capsys):
    """export.py stores the checkpoint's palette beside its class names; predict.py colours an ONNX
    file's maps with it, as it does the checkpoint's."""
    from dense.cli import export as export_script
    from dense.tools.export import load_onnx_model

    own = [[10 * i, 255 - 10 * i, 7] for i in range(len(SYNTHETIC_CLASSES))]
    names = [f"thing {i}" for i in range(len(SYNTHETIC_CLASSES))]
    ckpt = rewritten(seg_checkpoint, "own_onnx.ckpt", palette=own, class_names=names)
    onnx_path = tmp_path / "seg.onnx"
    export_script.export(compose_config("export", f"ckpt={ckpt}", f"output={onnx_path}"))
    assert load_onnx_model(str(onnx_path)).palette == own
    out = tmp_path / "out"
    config = predict_config(f"model={onnx_path}", f"input={one_image(tmp_path)}", f"output={out}")
    assert predict.predict(config) == 0
    assert "classes: the checkpoint's names, the checkpoint's palette" in capsys.readouterr().out
    assert [c["color"] for c in json.loads((out / "classes.json").read_text())["classes"]] == own
    ids = np.asarray(Image.open(out / "scene.png"))
    colour = np.asarray(Image.open(out / "scene_color.png"))
    for class_id in np.unique(ids):
        assert (colour[ids == class_id] == own[class_id]).all()


def test_an_old_checkpoint_says_which_names_and_palette_it_gets(seg_checkpoint, tmp_path, capsys):
    # As written before the record held them.
    old = rewritten(seg_checkpoint, "old.ckpt", drop=("class_names", "palette"))
    out = tmp_path / "out"
    config = predict_config(f"ckpt={old}", f"input={one_image(tmp_path)}", f"output={out}")
    assert predict.predict(config) == 0
    # The names its hyper_parameters kept; the palette as palette=auto chose before.
    assert "classes: the checkpoint's names, the generic palette (palette=auto)" in capsys.readouterr().out
    classes = json.loads((out / "classes.json").read_text())["classes"]
    assert [c["name"] for c in classes] == list(SYNTHETIC_CLASSES)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"palette": [[0, 0, 0]] * 3}, "palette is"),  # wrong length
        ({"palette": [[0, 0, 0.5]] * 7}, "palette[0] is"),  # not ints
        ({"palette": [[0, 0, 256]] * 7}, "palette[0] is"),  # out of range
        ({"palette": [[0, 0]] * 7}, "palette[0] is"),  # not r, g, b
        ({"class_names": ["a"] * 6 + [7]}, "class_names[6] is"),
        ({"class_names": ["x" * 201] * 7}, "class_names[0] is"),
        ({"class_names": ["a"] * 6 + ["\x1b[31mred\nerror: fake"]}, "class_names[6] is"),  # escapes
        ({"class_names": ["\u202eevil"] + ["a"] * 6}, "class_names[0] is"),  # right-to-left override
    ],
)
def test_a_crafted_palette_or_names_is_refused_in_one_line(seg_checkpoint, tmp_path, capsys, record, message):
    ckpt = rewritten(seg_checkpoint, f"{tmp_path.name}.ckpt", **record)
    config = predict_config(f"ckpt={ckpt}", f"input={one_image(tmp_path)}", f"output={tmp_path / 'out'}")
    err = one_line_exit(lambda: predict.predict(config), capsys)
    assert message in err and "dense_model" in err, err
    assert not (tmp_path / "out").exists()
