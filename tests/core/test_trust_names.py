"""Trust, round 3 (issue 23), class 5: names and links.

- The registries (backbones, heads, datasets) give a name one form on registration and on lookup alike
  (stripped, lower case: dense.core.registry.Registry.key): `MyViT` can be chosen, `Tiny14` is refused at
  registration instead of silently resolving to the built-in tiny14, and names that are not strings are
  refused.
- The folder dataset reads only files inside its real root: a linked image, depth file, depth folder or
  split file that leads out of data.root is refused in one line; links inside the root are fine.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
from torch import nn

import dense
import heads
from dense.backbones import BACKBONES, get_spec, register_backbone
from dense.core.features import LayerSet
from dense.data import DATASETS, DatasetError, FolderDataset, register_dataset
from dense.data.synthetic import SyntheticScenes
from heads import HEADS, register_head
from tests._fixtures_data import write_folder

pytestmark = pytest.mark.trust  # the trust audit: `python -m pytest -m trust`


@pytest.fixture
def registries():
    """The three registries as they are; whatever a test registers is removed afterwards."""
    saved = [(r, dict(r._entries), dict(r._aliases)) for r in (BACKBONES, HEADS, DATASETS)]
    yield
    for registry, entries, aliases in saved:
        registry._entries, registry._aliases = entries, aliases


def _head(name):
    return register_head(name, task="depth", layer_set=LayerSet.LAST, norm=False, use_cls_token=False)


# ---- registries ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "register, words",
    [
        (
            lambda: register_backbone(dataclasses.replace(get_spec("tiny14"), name="Tiny14")),
            "backbone 'Tiny14'",
        ),
        (
            lambda: register_backbone(dataclasses.replace(get_spec("tiny14"), name=" tiny14 ")),
            "backbone ' tiny14 '",
        ),
        (lambda: _head("Depth_DPT")(nn.Identity), "head 'Depth_DPT'"),
        (lambda: register_dataset("Folder")(SyntheticScenes), "dataset 'Folder'"),
    ],
    ids=["Tiny14", "spaces", "Depth_DPT", "Folder"],
)
def test_a_name_that_differs_from_a_registered_one_only_in_case_is_refused(registries, register, words):
    before = {r: (dict(r._entries), dict(r._aliases)) for r in (BACKBONES, HEADS, DATASETS)}
    with pytest.raises(ValueError) as error:
        register()
    assert words in str(error.value) and "registered twice" in str(error.value)
    assert "compared in lower case" in str(error.value)
    assert before == {r: (dict(r._entries), dict(r._aliases)) for r in (BACKBONES, HEADS, DATASETS)}
    assert dense.build_backbone("tiny14").embed_dim == 48  # still the built-in


def test_a_name_in_capitals_is_found_in_any_case(registries):
    register_backbone(dataclasses.replace(get_spec("tiny14"), name="MyViT"))
    _head("My_Head")(type("MyHead", (nn.Module,), {}))
    assert "myvit" in dense.list_backbones() and "my_head" in heads.list_heads()
    for name in ("MyViT", "myvit", "MYVIT", " myvit"):
        assert get_spec(name).name == "MyViT"
    assert heads.get_head_spec("MY_HEAD").name == "My_Head"
    assert dense.build_model("myvit", "DEPTH_LINEAR").config["backbone"] == "MyViT"


@pytest.mark.parametrize(
    "register",
    [
        lambda: register_backbone(dataclasses.replace(get_spec("tiny14"), name=14)),
        lambda: _head(7)(nn.Identity),
        lambda: register_dataset(None)(SyntheticScenes),
        lambda: register_dataset("")(SyntheticScenes),
        lambda: register_backbone(get_spec("tiny16"), aliases=(3,)),
    ],
    ids=["backbone 14", "head 7", "dataset None", "dataset ''", "alias 3"],
)
def test_names_that_are_not_strings_are_refused(registries, register):
    with pytest.raises(TypeError, match="names are non-empty strings"):
        register()


# ---- the folder dataset and links --------------------------------------------------------------------------


def _linked_image(root, outside, stem):
    os.replace(root / "images" / f"{stem}.png", outside / f"{stem}.png")
    (root / "images" / f"{stem}.png").symlink_to(outside / f"{stem}.png")
    return root / "images" / f"{stem}.png"


def _linked_depth_file(root, outside, stem):
    os.replace(root / "depth" / f"{stem}.png", outside / f"{stem}.png")
    (root / "depth" / f"{stem}.png").symlink_to(outside / f"{stem}.png")
    return root / "depth" / f"{stem}.png"


def _linked_depth_folder(root, outside, stem):
    os.replace(root / "depth", outside / "depth")
    (root / "depth").symlink_to(outside / "depth")
    return root / "depth"


def _linked_split_file(root, outside, stem):
    (outside / "train.txt").write_text("a\nb\nc\n")
    (root / "val.txt").write_text("d\n")
    (root / "train.txt").symlink_to(outside / "train.txt")
    return root / "train.txt"


@pytest.mark.parametrize(
    "link", [_linked_image, _linked_depth_file, _linked_depth_folder, _linked_split_file]
)
def test_the_folder_dataset_refuses_links_out_of_its_root(tmp_path, link):
    """The link is made for a sample of the train split (each split checks the files it reads)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    write_folder(root, npy=())
    stem = FolderDataset(root, "train").sample_names()[-1]
    named = link(root, outside, stem)
    with pytest.raises(DatasetError) as error:
        FolderDataset(root, "train")
    message = str(error.value)
    assert "\n" not in message and str(named) in message and "leads out of data.root" in message, message


def test_links_inside_the_root_and_a_linked_root_are_read(tmp_path):
    """Control: a link that stays inside the real root, and a root that is itself a link."""
    real = tmp_path / "real"
    write_folder(real, npy=())
    (real / "store").mkdir()
    os.replace(real / "images" / "a.png", real / "store" / "a.png")
    (real / "images" / "a.png").symlink_to(real / "store" / "a.png")
    (tmp_path / "root").symlink_to(real)
    names = [
        *FolderDataset(tmp_path / "root", "train").sample_names(),
        *FolderDataset(tmp_path / "root", "val").sample_names(),
    ]
    assert "a" in names
