"""DenseDataModule: the Hydra configs, the exposed dataset facts, reproducible loading, batching."""

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from threadpoolctl import threadpool_info, threadpool_limits
from torch.utils.data import DataLoader

import dense.data.datamodule as datamodule_module
from dense.core.constants import MEAN_FILL
from dense.core.errors import UnknownNameError
from dense.core.ops import imagenet_normalised
from dense.data import DATASETS, DatasetError, DenseDataModule, SyntheticScenes, pad_collate
from dense.data.base import DenseDataset
from dense.data.datamodule import default_num_workers, seed_worker
from dense.data.sample import RawSample
from dense.data.transforms import GammaBrightnessColor
from tests._fixtures_data import (
    pattern_image,
    write_ade20k,
    write_folder,
    write_kitti,
    write_nyu_filelist,
    write_voc,
)
from tests._tiny_run import CONFIGS

DATA_CONFIGS = CONFIGS / "data"
TINY_SYNTHETIC = {"image_size": [28, 42], "num_train": 6, "num_val": 3, "num_test": 2}


def data_file(name: str):
    """A data config file's keys as written, without its defaults list (which names its schema,
    data/schema_<name>: Hydra's business, not the DataModule's)."""
    cfg = OmegaConf.load(DATA_CONFIGS / f"{name}.yaml")
    assert list(cfg.pop("defaults")) == [f"schema_{name}", "_self_"], name
    return cfg


def load_config(name: str, **overrides):
    cfg = data_file(name)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def test_every_dataset_has_a_config_whose_keys_the_datamodule_accepts():
    assert {p.stem for p in DATA_CONFIGS.glob("*.yaml")} == set(DATASETS)
    generic = {
        "_target_",
        "name",
        "root",
        "task",
        "batch_size",
        "val_batch_size",
        "num_workers",
        "pin_memory",
        "persistent_workers",
        "augment",
        "seed",
        "drop_last",
    }
    for name in DATASETS:
        cls = DATASETS.get(name)
        cfg = data_file(name)
        assert cfg._target_ == "dense.data.DenseDataModule" and cfg.name == name
        assert set(cfg) - generic <= set(cls.option_names()), name


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("datasets")
    write_nyu_filelist(base / "nyu", n_train=2, n_test=1)
    write_kitti(base / "kitti", n_train=2, n_test=1)
    write_ade20k(base / "ade20k")
    write_voc(base / "voc")
    write_folder(base / "folder")
    return base


@pytest.mark.parametrize("name", ["synthetic", "nyu", "kitti", "ade20k", "voc", "folder"])
def test_configs_instantiate_and_load_a_batch(name, roots):
    overrides = {"root": str(roots / name), "batch_size": 2, "num_workers": 0}
    if name == "synthetic":
        overrides.update(TINY_SYNTHETIC, root=None)
    if name in ("ade20k", "voc"):
        overrides.update(crop_size=32, short_side=32)
    dm = instantiate(load_config(name, **overrides))
    assert isinstance(dm, DenseDataModule) and dm.ignore_index == 255
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape[:2] == (
        2,
        3,
    )  # normalised on the device
    key = "mask" if dm.task == "segmentation" else "depth"
    assert batch[key].shape[-2:] == batch["image"].shape[-2:] and len(batch["name"]) == 2
    next(iter(dm.val_dataloader()))


def test_exposed_facts():
    dm = DenseDataModule(task="segmentation", **TINY_SYNTHETIC)
    assert (dm.task, dm.num_classes, dm.class_names[0], dm.min_depth, dm.max_depth, dm.eval_crop) == (
        "segmentation",
        7,
        "floor",
        1e-3,
        10.0,
        None,
    )
    assert DenseDataModule(**TINY_SYNTHETIC).task == "depth"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "imagenet"}, r"unknown dataset 'imagenet' for data\.name; choose one of ade20k, folder"),
        ({"num_trian": 5}, r"data\.num_trian is not an option of the synthetic dataset"),
        ({"name": "nyu"}, r"data\.root is not set"),
        ({"name": "kitti", "root": "/nonexistent/kitti"}, r"/nonexistent/kitti does not exist"),
        ({"task": "normals"}, r"data\.task='normals' is not one of"),
    ],
)
def test_config_mistakes_fail_at_construction(kwargs, match):
    with pytest.raises((DatasetError, UnknownNameError), match=match):
        DenseDataModule(**kwargs)


def test_task_a_dataset_cannot_provide(roots):
    with pytest.raises(DatasetError, match="only provides depth"):
        DenseDataModule(name="nyu", root=str(roots / "nyu"), task="segmentation")


def first_batches(seed: int, num_workers: int = 0, n: int = 2):
    dm = DenseDataModule(batch_size=2, seed=seed, num_workers=num_workers, **TINY_SYNTHETIC)
    loader = dm.train_dataloader()
    return [b for _, b in zip(range(n), loader)]


def test_same_seed_same_batches_other_seed_other_batches():
    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    for x, y in zip(a, b):
        assert (
            x["name"] == y["name"]
            and torch.equal(x["image"], y["image"])
            and torch.equal(x["depth"], y["depth"])
        )
    assert [x["name"] for x in a] != [x["name"] for x in c]


class ConstantColourAug(DenseDataset):
    """Every item is the same image through a random colour transform: outputs differ only by RNG."""

    fixed_task = "depth"
    needs_root = False

    def __init__(self, root=None, split="train", **common):
        super().__init__(root, split, **common)
        self.use_recipe([GammaBrightnessColor((0.5, 1.5), (0.5, 1.5), (0.5, 1.5), p=1.0)])

    def __len__(self):
        return 4

    def read(self, index):
        return RawSample(str(index), pattern_image(8, 8), np.ones((8, 8), np.float32))


def test_workers_get_distinct_reproducible_augmentation(monkeypatch):
    monkeypatch.setitem(DATASETS._entries, "constant", ConstantColourAug)  # registered for this test only

    def run():
        dm = DenseDataModule(name="constant", batch_size=1, num_workers=2, seed=3)
        return [b["image"] for b in dm.train_dataloader()]

    first, again = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(first, again))  # reproducible across runs
    # items 0 and 1 come from different workers: a shared (forked) RNG would repeat the colour draw
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize("image_dtype", [torch.uint8, torch.float32])
def test_pad_collate_pads_depth_with_zero_and_mask_with_ignore(image_dtype):
    a = {
        "image": torch.ones(3, 4, 5, dtype=image_dtype),
        "depth": torch.ones(1, 4, 5),
        "mask": torch.zeros(4, 5, dtype=torch.uint8),
        "name": "a",
    }
    b = {
        "image": torch.ones(3, 6, 3, dtype=image_dtype),
        "depth": torch.ones(1, 6, 3),
        "mask": torch.zeros(6, 3, dtype=torch.uint8),
        "name": "b",
    }
    batch = pad_collate([a, b])
    assert batch["image"].shape == (2, 3, 6, 5) and batch["name"] == ["a", "b"]
    assert (batch["depth"][0, 0, 4:] == 0).all() and (batch["mask"][0, 4:] == 255).all()
    assert (batch["mask"][1, :, 3:] == 255).all() and batch["image"].dtype == image_dtype
    assert (batch["image"][1, :, :3, :3] == 1).all() and (batch["image"][0, :, :4, :5] == 1).all()
    padding = batch["image"][1, :, :, 3:]
    if image_dtype == torch.uint8:  # the mean colour, which the model normalises to about 0
        assert padding.tolist() == [[[v] * 2 for _ in range(6)] for v in MEAN_FILL]
        assert imagenet_normalised(padding[None]).abs().max() < 0.01
    else:  # already normalised: 0 is the mean colour
        assert (padding == 0).all()


def test_synthetic_dataset_is_picklable_for_workers():
    import pickle

    ds = SyntheticScenes(split="val", **{k: v for k, v in TINY_SYNTHETIC.items() if k != "num_train"})
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[1]["depth"], ds[1]["depth"])


def test_loader_workers_stay_alive_between_epochs():
    """Every dataset config keeps its loader workers (no re-spawn before each epoch and validation) and
    leaves their number to the machine; the loaders get it, validation starts no more workers than it
    has batches, and pinned memory follows CUDA's presence."""
    for name in DATASETS:
        cfg = data_file(name)
        assert cfg.persistent_workers is True and cfg.num_workers is None and cfg.pin_memory is None, name
    datamodule = DenseDataModule(
        name="synthetic",
        num_train=4,
        num_val=2,
        num_test=2,
        image_size=[28, 28],
        batch_size=2,
        num_workers=2,
        persistent_workers=True,
    )
    datamodule.setup("fit")
    train, val = datamodule.train_dataloader(), datamodule.val_dataloader()
    assert train.persistent_workers and val.persistent_workers and train.num_workers == 2
    assert val.num_workers == 1  # 2 validation scenes in batches of 2: one batch
    assert train.pin_memory == torch.cuda.is_available()
    # Without workers there is nothing to keep: DataLoader refuses persistent_workers with 0 workers.
    assert not DenseDataModule(name="synthetic", num_workers=0, persistent_workers=True).persistent_workers


@pytest.mark.parametrize(
    ("cores", "devices", "expected"), [(2, 0, 1), (1, 0, 0), (16, 1, 15), (16, 2, 7), (64, 1, 16)]
)
def test_default_worker_count_follows_cores_and_devices(monkeypatch, cores, devices, expected):
    """num_workers=null: the cores this process may use, shared by one training process per device, less
    one core each for that process, at most 16."""
    monkeypatch.setattr(datamodule_module.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: devices > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    assert default_num_workers() == expected
    assert DenseDataModule(name="synthetic", num_workers=None).num_workers == expected


def test_a_loader_worker_runs_every_library_on_one_thread():
    """The worker init limits numpy's BLAS (threadpoolctl), OpenCV and PyTorch to one thread each,
    whatever the process that forks the workers uses: the workers are the parallelism (issue 22: 2
    workers on 2 cores loaded at half the speed of one while numpy's BLAS ran a thread per core in each)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        with threadpool_limits(2):  # the parent's settings, which a forked worker would inherit
            loader = DataLoader(ThreadReport(), batch_size=2, num_workers=1, worker_init_fn=seed_worker)
            report = next(iter(loader))
    finally:
        cv2.setNumThreads(threads)
    assert report["blas"].tolist() == [1, 1] and report["cv2"].tolist() == [1, 1]
    assert report["torch"].tolist() == [1, 1]


class ThreadReport(torch.utils.data.Dataset):
    """Each item: how many threads numpy's BLAS, OpenCV and PyTorch would use where it is read."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        # cv2.setNumThreads(0) runs OpenCV's functions sequentially; getNumThreads then says 1
        return {"blas": max(blas), "cv2": cv2.getNumThreads(), "torch": torch.get_num_threads()}
