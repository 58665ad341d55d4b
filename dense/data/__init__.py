"""Datasets, augmentation recipes and the LightningDataModule.

image (uint8 HWC) + target (depth metres | class ids) → dataset reads files → albumentations recipe
(joint image/target) → tensors (the image stays uint8: the model normalises it on the device). See
`base.py` for the dataset contract.
Importing this package registers the built-in datasets (`list_datasets()`).
"""

from dense.core.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from dense.core.errors import DatasetError

from .ade20k import ADE20K, ADE20K_CLASSES
from .base import DenseDataset
from .checks import DepthRangeWarning, DepthScaleWarning
from .datamodule import DenseDataModule, datamodule_from_config, default_num_workers, pad_collate
from .folder import FolderDataset
from .kitti import KITTIEigen
from .nyu import NYUDepthV2
from .registry import DATASETS, list_datasets, register_dataset
from .sample import DatasetInfo, RawSample
from .scenes import SYNTHETIC_CLASSES, render_scene
from .synthetic import SyntheticScenes
from .transforms import denormalize_image, image_tensor, normalize_image
from .voc import VOC_CLASSES, PascalVOC

__all__ = [
    "ADE20K",
    "ADE20K_CLASSES",
    "DATASETS",
    "DatasetError",
    "DatasetInfo",
    "DenseDataModule",
    "DenseDataset",
    "DepthRangeWarning",
    "DepthScaleWarning",
    "FolderDataset",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KITTIEigen",
    "NYUDepthV2",
    "PascalVOC",
    "RawSample",
    "SYNTHETIC_CLASSES",
    "SyntheticScenes",
    "VOC_CLASSES",
    "datamodule_from_config",
    "default_num_workers",
    "denormalize_image",
    "image_tensor",
    "list_datasets",
    "normalize_image",
    "pad_collate",
    "register_dataset",
    "render_scene",
]
