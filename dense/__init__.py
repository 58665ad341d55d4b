"""dense: depth and segmentation heads on frozen DINOv2 and DINOv3 backbones."""

# Backbones and heads: importing these modules registers the built-in ones.
import dense.dinov3_specs  # noqa: F401  (the DINOv3 variants register themselves)
from dense.backbone import BACKBONES, OFFICIAL_NAMES, build_backbone, list_backbones, register_backbone
from dense.checkpoint import load_model
from dense.data.registry import list_datasets, register_dataset
from dense.errors import DenseError, WeightsError
from dense.features import FeatureMaps, LayerSet
from dense.model import DenseModel, build_model
from heads.registry import list_heads, register_head

__all__ = [
    "BACKBONES",
    "OFFICIAL_NAMES",
    "DenseError",
    "DenseModel",
    "FeatureMaps",
    "LayerSet",
    "WeightsError",
    "build_backbone",
    "build_model",
    "list_backbones",
    "list_datasets",
    "list_heads",
    "load_model",
    "register_backbone",
    "register_dataset",
    "register_head",
]
__version__ = "0.1.0"
