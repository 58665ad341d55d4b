"""Synthetic scenes: contract, determinism, geometric consistency of depth and labels, learnable signal."""

import numpy as np
import pytest
import torch

from dense.data import SYNTHETIC_CLASSES, SyntheticScenes
from dense.data.scenes import CEILING, FLOOR, WALL, camera_rays

SIZE = (96, 128)


@pytest.fixture(scope="module")
def val_set():
    return SyntheticScenes(split="val", image_size=SIZE, num_val=12)


def unproject(scene) -> np.ndarray:
    """World coordinates (H×W×3) of every pixel from depth, intrinsics and pose."""
    rays = camera_rays(scene.K, *scene.depth.shape).transpose(1, 2, 0)
    return scene.origin + scene.depth[..., None] * (rays @ scene.R.T)


def test_sample_contract(val_set):
    s = val_set[0]
    # each in its smallest exact dtype: uint8 RGB (the model normalises it), float32 metres, uint8 ids
    assert s["image"].shape == (3, *SIZE) and s["image"].dtype == torch.uint8
    assert s["depth"].shape == (1, *SIZE) and s["depth"].dtype == torch.float32
    assert s["mask"].shape == SIZE and s["mask"].dtype == torch.uint8
    assert s["name"] == "val_000000"
    assert 0 <= s["mask"].min() and s["mask"].max() < len(SYNTHETIC_CLASSES)
    assert np.array_equal(s["image"].permute(1, 2, 0).numpy(), val_set.scene(0).image)  # the rendered RGB
    assert len(val_set) == 12


def test_same_index_same_sample_different_index_different(val_set):
    a, b = val_set[3], SyntheticScenes(split="val", image_size=SIZE, num_val=12)[3]
    for key in ("image", "depth", "mask"):
        assert torch.equal(a[key], b[key])
    c = val_set[4]
    assert not torch.equal(a["image"], c["image"]) and not torch.equal(a["depth"], c["depth"])
    other_split = SyntheticScenes(split="train", image_size=SIZE)[3]
    assert not torch.equal(a["depth"], other_split["depth"])
    other_seed = SyntheticScenes(split="val", image_size=SIZE, base_seed=1)[3]
    assert not torch.equal(a["depth"], other_seed["depth"])


@pytest.mark.parametrize("index", range(6))
def test_depth_is_metric_and_consistent_with_the_room(val_set, index):
    scene = val_set.scene(index)
    assert 0.5 < scene.depth.min() and scene.depth.max() < 10.0
    world = unproject(scene)
    room = scene.room
    floor, ceiling, wall = scene.mask == FLOOR, scene.mask == CEILING, scene.mask == WALL
    # unprojected labels land on their planes: the depth follows the pinhole camera exactly
    assert np.abs(world[floor][:, 1]).max() < 2e-3
    if ceiling.any():
        assert np.abs(world[ceiling][:, 1] - room.height).max() < 2e-3
    on_wall = np.minimum(
        np.abs(np.abs(world[wall][:, 0]) - room.half_width), np.abs(world[wall][:, 2] - room.z_far)
    )
    assert on_wall.max() < 2e-3
    # along each column, floor depth grows towards the horizon (upwards in the image): one plane,
    # so this holds across the gaps where objects hide the floor
    for col in range(0, SIZE[1], 8):
        d = scene.depth[np.flatnonzero(floor[:, col]), col]
        assert (np.diff(d) < 0).all()  # row index grows downwards → nearer


def test_classes_are_present_and_visually_separable():
    train = SyntheticScenes(split="train", image_size=SIZE)
    val = SyntheticScenes(split="val", image_size=SIZE)
    scenes = [train.scene(i) for i in range(16)]
    counts = np.bincount(np.concatenate([s.mask.ravel() for s in scenes]), minlength=len(SYNTHETIC_CLASSES))
    assert (counts > 0).all(), dict(zip(SYNTHETIC_CLASSES, counts))
    # A per-class Gaussian on pixel colour alone (fit on train scenes) labels val pixels far better
    # than the majority class: colour carries a real, learnable signal (texture and shape add more).
    x = np.concatenate([s.image.reshape(-1, 3) for s in scenes]).astype(float) / 255
    y = np.concatenate([s.mask.ravel() for s in scenes])
    models = []
    for k in range(len(SYNTHETIC_CLASSES)):
        xk = x[y == k]
        cov = np.cov(xk.T) + 1e-4 * np.eye(3)
        models.append((xk.mean(0), np.linalg.inv(cov), np.linalg.slogdet(cov)[1], np.log(len(xk) / len(x))))
    correct = total = majority = 0
    for i in range(6):
        s = val.scene(i)
        xv, yv = s.image.reshape(-1, 3).astype(float) / 255, s.mask.ravel()
        log_lik = np.stack(
            [
                -0.5 * np.einsum("ij,jk,ik->i", xv - mu, inv, xv - mu) - 0.5 * logdet + prior
                for mu, inv, logdet, prior in models
            ],
            -1,
        )
        correct += (log_lik.argmax(-1) == yv).sum()
        total += yv.size
        majority += np.bincount(yv).max()
    assert correct / total > majority / total + 0.15


def test_train_augmentation_flips_targets_with_the_image():
    plain = SyntheticScenes(split="train", image_size=SIZE)
    aug = SyntheticScenes(split="train", image_size=SIZE, augment=True, seed=0)
    flipped = 0
    for i in range(8):
        a, b = plain[i], aug[i]
        if torch.equal(b["depth"], a["depth"].flip(-1)):
            assert torch.equal(b["mask"], a["mask"].flip(-1))
            flipped += 1
        else:
            assert torch.equal(b["depth"], a["depth"]) and torch.equal(b["mask"], a["mask"])
    assert 0 < flipped < 8


def test_empty_split_is_an_error():
    from dense.data import DatasetError

    with pytest.raises(DatasetError, match="num_val"):
        SyntheticScenes(split="val", num_val=0)
