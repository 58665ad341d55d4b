"""dense: depth and segmentation heads on frozen DINOv2 and DINOv3 backbones.

The public names below are imported on first use (PEP 562), not by `import dense`: the entry scripts'
`--help` and configuration errors then come before torch's start-up, and
`dense.build_backbone(...)` loads the backbone code alone, never Lightning, Hydra or albumentations
(the training stack comes with `dense.data` and `dense.tasks`). Backbone names first import
dense.dinov3_specs, where the DINOv3 variants register themselves.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the names are, for readers and type checkers; nothing is imported at run time
    import dense.dinov3_specs  # noqa: F401
    from dense.backbone import BACKBONES, OFFICIAL_NAMES, build_backbone, list_backbones, register_backbone
    from dense.checkpoint import load_model
    from dense.data.registry import list_datasets, register_dataset
    from dense.errors import DenseError, WeightsError
    from dense.features import FeatureMaps, LayerSet
    from dense.model import DenseModel, build_model
    from heads.registry import list_heads, register_head

# Public name → the module that defines it.
_PUBLIC = {
    "BACKBONES": "dense.backbone",
    "OFFICIAL_NAMES": "dense.backbone",
    "build_backbone": "dense.backbone",
    "list_backbones": "dense.backbone",
    "register_backbone": "dense.backbone",
    "load_model": "dense.checkpoint",
    "list_datasets": "dense.data",  # the package: every built-in dataset registers on its import
    "register_dataset": "dense.data",
    "DenseError": "dense.errors",
    "WeightsError": "dense.errors",
    "FeatureMaps": "dense.features",
    "LayerSet": "dense.features",
    "DenseModel": "dense.model",
    "build_model": "dense.model",
    "list_heads": "heads",  # the package: every built-in head registers on its import
    "register_head": "heads",
}

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
assert sorted(__all__) == sorted(_PUBLIC)  # one list of public names, kept in step with the map above
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _PUBLIC:
        if _PUBLIC[name] == "dense.backbone":
            importlib.import_module("dense.dinov3_specs")  # registers the DINOv3 variants
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    try:  # a submodule used as an attribute (dense.viz, dense.model.MS_SCALES) after a bare `import dense`
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
