"""Datasets, augmentation recipes and the LightningDataModule.

image (uint8 HWC) + target (depth metres | class ids) → dataset reads files → albumentations recipe
(joint image/target) → ImageNet normalisation → tensors. See `base.py` for the sample contract.
"""

from .ade20k import ADE20K, ADE20K_CLASSES
from .base import DatasetError, DatasetInfo, DenseDataset, DepthRangeWarning, DepthScaleWarning
from .datamodule import DATASETS, DenseDataModule, datamodule_from_config, pad_collate
from .folder import FolderDataset
from .kitti import KITTIEigen
from .nyu import NYUDepthV2
from .synthetic import SYNTHETIC_CLASSES, SyntheticScenes, render_scene
from .transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, denormalize_image, normalize_image
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
    "SYNTHETIC_CLASSES",
    "SyntheticScenes",
    "VOC_CLASSES",
    "datamodule_from_config",
    "denormalize_image",
    "normalize_image",
    "pad_collate",
    "render_scene",
]
