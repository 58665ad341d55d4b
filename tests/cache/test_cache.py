"""The frozen-feature cache: same gradients as the backbone path, never a stale entry, resumable fills."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from dense.cache import CachedFeatures, cache_key, forward_cached
from dense.data import SyntheticScenes
from dense.data.scenes import RENDERER_VERSION
from dense.model import DenseModel, build_model
from dense.tasks.losses import SigLoss
from tests._tiny_run import LEARNING_DEPTH, LEARNING_RUN, metric_rows, series, train_in_process


class Scenes(Dataset):
    """Fixed-size images with a depth ramp: enough to exercise the cache."""

    def __init__(self, n=5, size=(42, 56), split="train", seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, *size, generator=generator)
        self.depths = 1 + torch.rand(n, 1, *size, generator=generator) * 5
        self.names = [f"scene_{i}" for i in range(n)]
        self.split = split

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "depth": self.depths[i], "name": self.names[i]}


class SegScenes(Scenes):
    def __getitem__(self, i):
        return {"image": self.images[i], "mask": (self.depths[i, 0] > 3).long(), "name": self.names[i]}


def head_gradients(model, loss):
    model.head.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.head.parameters()]


@pytest.mark.parametrize("head", ["depth_linear4", "depth_dpt"])
def test_cached_features_give_the_same_head_gradients(head, tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny14", head)
    if head == "depth_dpt":
        # A fresh DPT's output layer has zero weights (heads/depth_dpt.py), which pass no gradient to the
        # layers below it yet: compare the gradients of a head past its first steps.
        torch.nn.init.normal_(model.head.conv_depth.head[-1].weight, std=0.01)
    data = Scenes()
    cache = CachedFeatures(data, model, str(tmp_path), random_flip=False)
    assert cache.complete
    cached = next(iter(DataLoader(cache, batch_size=3)))
    plain = next(iter(DataLoader(data, batch_size=3)))
    loss_fn = SigLoss(warm_up=False)
    out_plain = model(plain["image"])
    out_cached = forward_cached(model, cached, cache.image_size)
    assert torch.equal(cached["depth"], plain["depth"])
    grads_plain = head_gradients(model, loss_fn(out_plain, plain["depth"]))
    grads_cached = head_gradients(model, loss_fn(out_cached, cached["depth"]))
    # float16 storage keeps ~3 significant digits of the features. Measured (seed 0): the whole
    # gradient within 0.3% (linear4) / 0.2% (DPT) relative; single tensors within 1.6% (DPT's ReLUs).
    flat_cached, flat_plain = (
        torch.cat([g.flatten() for g in grads_cached]),
        torch.cat([g.flatten() for g in grads_plain]),
    )
    assert ((flat_cached - flat_plain).norm() / flat_plain.norm()).item() < 1e-2
    for a, b in zip(grads_cached, grads_plain):
        assert ((a - b).norm() / b.norm()).item() < 5e-2


def test_flipped_view_is_the_flipped_image(tmp_path):
    model = build_model("tiny14_reg", "seg_linear", num_classes=3)
    data = SegScenes(n=2)
    cache = CachedFeatures(data, model, str(tmp_path), random_flip=True)
    torch.manual_seed(0)
    views = [cache[0]["view"] for _ in range(20)]
    assert set(views) == {0, 1}  # training draws both views
    flipped = next(item for item in (cache[0] for _ in range(20)) if item["view"] == 1)
    padded, _ = model.pad(data.images[:1].flip(-1))
    expected = model.extract_features(padded).patches[0][0]
    assert torch.allclose(flipped["patches"][0].float(), expected, atol=1e-2 * expected.abs().max().item())
    assert torch.equal(flipped["mask"], (data.depths[0, 0] > 3).long().flip(-1))


def test_any_change_of_backbone_layers_weights_or_data_uses_a_new_entry(tmp_path):
    root = str(tmp_path / "cache")
    data = Scenes(n=3)
    weights = tmp_path / "backbone.pth"
    torch.save(build_model("tiny14", "depth_linear").backbone.state_dict(), weights)

    def cache_for(**kwargs):
        options = {"backbone_weights": weights, **kwargs.pop("model", {})}
        model = build_model(kwargs.pop("backbone", "tiny14"), "depth_linear", **options)
        return CachedFeatures(kwargs.pop("data", data), model, root, random_flip=False)

    first = cache_for()
    again = cache_for()
    assert again.directory == first.directory
    assert again.fill(build_model("tiny14", "depth_linear", backbone_weights=weights), 4, "cpu", "fp32") == 0

    others = [
        cache_for(model={"layers": [2]}),
        cache_for(model={"norm": True}),
        cache_for(data=Scenes(n=3, seed=1)),  # a plain torch Dataset is keyed by its samples' content
        cache_for(data=Scenes(n=3, size=(56, 56))),
    ]
    # a different weights file at the same path: the content hash changes the key
    torch.save(build_model("tiny14", "depth_linear").backbone.state_dict(), weights)
    others.append(cache_for())
    directories = {first.directory} | {c.directory for c in others}
    assert len(directories) == 1 + len(others)


def test_entries_are_keyed_by_what_issue_22_changed_and_only_by_that(tmp_path, monkeypatch):
    """uint8 images normalised on the device give ImageNet backbones the same numbers as before (their
    keys, and entries, stay); a backbone with other statistics is keyed by them (its numbers moved in
    the last bits); synthetic scenes by the renderer that drew them."""
    torch.manual_seed(0)
    plain = build_model("tiny14", "depth_linear")
    key, description = cache_key(plain, Scenes(n=2), (42, 56), target="depth")
    assert "normalisation" not in description
    other = DenseModel(
        plain.backbone, plain.head, task="depth", layers=plain.layers, norm=False, use_cls_token=True,
        image_mean=(0.430, 0.411, 0.296), image_std=(0.213, 0.156, 0.143), config=plain.config,
    )  # fmt: skip
    other_key, other_description = cache_key(other, Scenes(n=2), (42, 56), target="depth")
    assert other_description["normalisation"] == {"mean": [0.430, 0.411, 0.296], "std": [0.213, 0.156, 0.143]}
    assert other_key != key
    scenes = SyntheticScenes(split="train", image_size=28, num_train=2)
    assert scenes.fingerprint()["renderer"] == RENDERER_VERSION
    scenes_key, _ = cache_key(plain, scenes, (28, 28), target="depth")
    # scenes drawn by an earlier renderer (version 1 had other noise) are another entry
    monkeypatch.setattr("dense.data.synthetic.RENDERER_VERSION", RENDERER_VERSION - 1)
    assert cache_key(plain, scenes, (28, 28), target="depth")[0] != scenes_key


def test_random_initialised_backbones_are_told_apart(tmp_path):
    data = Scenes(n=2)
    torch.manual_seed(1)
    a = CachedFeatures(data, build_model("tiny14", "depth_linear"), str(tmp_path), random_flip=False)
    torch.manual_seed(2)
    b = CachedFeatures(data, build_model("tiny14", "depth_linear"), str(tmp_path), random_flip=False)
    assert a.directory != b.directory
    assert not np.array_equal(np.asarray(a.arrays["patches"]), np.asarray(b.arrays["patches"]))


def test_an_interrupted_fill_resumes_with_only_the_missing_images(tmp_path):
    data = Scenes(n=4)
    torch.manual_seed(0)
    model = build_model("tiny14", "depth_linear")
    cache = CachedFeatures(data, model, str(tmp_path), random_flip=False)
    reference = np.array(cache.arrays["patches"])
    done = np.load(f"{cache.directory}/done.npy", mmap_mode="r+")
    patches = np.load(f"{cache.directory}/patches.npy", mmap_mode="r+")
    done[2] = False  # as if killed before image 2's flags were written
    patches[2] = 0
    done.flush(), patches.flush()
    assert cache.fill(model, 2, "cpu", "fp32") == 1
    assert np.array_equal(np.array(cache.arrays["patches"]), reference)


def test_train_py_trains_a_linear_head_on_the_cache(tmp_path):
    """cache.features=true end to end: the cache is filled once, training reads it, the loss falls,
    and a second run with the same backbone finds every entry (nothing recomputed)."""
    cache_dir = tmp_path / "cache"
    options = ["cache.features=true", f"cache.dir={cache_dir}"]
    task, _ = train_in_process(tmp_path / "first", *LEARNING_RUN, *LEARNING_DEPTH, *options)
    (entry,) = list(cache_dir.iterdir())
    assert np.load(entry / "done.npy").all()
    loss = series(metric_rows(tmp_path / "first"), "train/loss")
    assert len(loss) == 24
    # Measured: 0.897 over the first 4 steps → 0.810 over the last 4 (without the cache: 0.894 → 0.814);
    # the threshold keeps about half the gain.
    assert sum(loss[-4:]) < 0.96 * sum(loss[:4]), loss
    modified = (entry / "patches.npy").stat().st_mtime_ns
    # A fresh run with the same (random, seeded) backbone uses the same entry without rewriting it.
    train_in_process(tmp_path / "second", *LEARNING_RUN, *LEARNING_DEPTH, *options, "trainer.max_steps=4")
    assert list(cache_dir.iterdir()) == [entry]
    assert (entry / "patches.npy").stat().st_mtime_ns == modified
