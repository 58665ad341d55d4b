"""dense: depth and segmentation heads on frozen DINOv2 backbones."""

from dense.backbone import BACKBONES, OFFICIAL_NAMES, build_backbone
from dense.checkpoint import load_model
from dense.data.registry import list_datasets, register_dataset
from dense.errors import DenseError, WeightsError
from dense.features import FeatureMaps
from dense.model import DenseModel, build_model

__all__ = [
    "BACKBONES",
    "OFFICIAL_NAMES",
    "DenseError",
    "DenseModel",
    "FeatureMaps",
    "WeightsError",
    "build_backbone",
    "build_model",
    "list_datasets",
    "load_model",
    "register_dataset",
]
__version__ = "0.1.0"
