"""From the `backbone` and `head` config groups (configs/backbone, configs/head) to a DenseModel.

One function, used by train.py, eval.py and predict.py alike, so the same keys mean the same thing
everywhere: backbone.{name, pretrained, weights}, head.{name, weights, layers, norm, use_cls_token,
min_depth, max_depth, num_classes, options}.
"""

from __future__ import annotations

from collections.abc import Mapping

from dense.model import DenseModel, build_model

BACKBONE_KEYS = {"name", "pretrained", "weights"}
HEAD_KEYS = {"name", "weights", "layers", "norm", "use_cls_token", "min_depth", "max_depth", "num_classes", "options"}


def plain(config):
    """OmegaConf containers → plain dicts/lists (resolved); anything else unchanged. Checkpoints store
    only plain containers, so that they load with torch.load(weights_only=True)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(config, DictConfig | ListConfig):
        return OmegaConf.to_container(config, resolve=True)
    return config


def model_from_config(backbone: Mapping, head: Mapping) -> DenseModel:
    backbone, head = dict(plain(backbone)), dict(plain(head))
    for group, config, known in (("backbone", backbone, BACKBONE_KEYS), ("head", head, HEAD_KEYS)):
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(f'{group}.{k}' for k in unknown)}; valid: {sorted(known)}")
    options = dict(head.get("options") or {})
    for key in ("layers", "norm", "use_cls_token", "min_depth", "max_depth", "num_classes"):
        if head.get(key) is not None:
            options[key] = head[key]
    return build_model(
        backbone["name"],
        head["name"],
        pretrained=bool(backbone.get("pretrained", False)) and not backbone.get("weights"),
        backbone_weights=backbone.get("weights"),
        head_weights=head.get("weights"),
        **options,
    )
