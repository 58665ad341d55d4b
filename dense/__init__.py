"""dense: depth and segmentation heads on frozen DINOv2 and DINOv3 backbones.

The public names below are imported on first use (PEP 562), not by `import dense`: the entry scripts'
`--help` and configuration errors then come before torch's start-up, and
`dense.build_backbone(...)` loads the backbone code alone, never Lightning, Hydra or albumentations
(the training stack comes with `dense.data` and `dense.tasks`). The backbone registry imports
dense.backbones.dinov3.specs, where the DINOv3 variants register themselves, at its first lookup.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the names are, for readers and type checkers; nothing is imported at run time
    import dense.backbones.dinov3.specs  # noqa: F401
    from dense.backbones import BACKBONES, OFFICIAL_NAMES, build_backbone, list_backbones, register_backbone
    from dense.checkpoint import load_model
    from dense.core.errors import DenseError, WeightsError
    from dense.core.features import FeatureMaps, LayerSet
    from dense.data.registry import list_datasets, register_dataset
    from dense.model import DenseModel
    from dense.multi_head import MultiHeadModel, build_model
    from dense.tasks.metrics import align_least_squares
    from heads.registry import list_heads, register_head

# Public name → the module that defines it.
_PUBLIC = {
    "BACKBONES": "dense.backbones",
    "OFFICIAL_NAMES": "dense.backbones",
    "build_backbone": "dense.backbones",
    "list_backbones": "dense.backbones",
    "register_backbone": "dense.backbones",
    "load_model": "dense.checkpoint",
    "list_datasets": "dense.data",  # the package: every built-in dataset registers on its import
    "register_dataset": "dense.data",
    "DenseError": "dense.core.errors",
    "WeightsError": "dense.core.errors",
    "FeatureMaps": "dense.core.features",
    "LayerSet": "dense.core.features",
    "DenseModel": "dense.model",
    "MultiHeadModel": "dense.multi_head",
    "build_model": "dense.multi_head",  # one head (dense.model.build_model) or several (heads={...})
    "list_heads": "heads",  # the package: every built-in head registers on its import
    "register_head": "heads",
    "align_least_squares": "dense.tasks.metrics",  # relative depth's scale and shift (loads the training stack)
}

__all__ = [
    "BACKBONES",
    "OFFICIAL_NAMES",
    "DenseError",
    "DenseModel",
    "FeatureMaps",
    "LayerSet",
    "MultiHeadModel",
    "WeightsError",
    "align_least_squares",
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
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    try:  # a submodule as an attribute (dense.tasks, dense.model.MS_SCALES) after a bare `import dense`
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
