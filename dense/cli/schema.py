"""The config groups' schemas (dense/core/schema.py) registered with Hydra's ConfigStore.

A group's YAML file names its schema first in its defaults list (`- schema` in configs/backbone and
configs/head, `- schema_multi` in head/multi.yaml, `- schema_<format>` in configs/data); each script's
own file types its keys with `- schema/<script>@_here_` (train, eval, predict, export).
Hydra then refuses, while composing, a key the schema lacks or a value of the wrong type.

`register()` must run before a configuration is composed: the entry scripts call it first
(dense.cli.runner.main), as do `--help` and the tests. Composing dense's configs from your own code:
call `dense.cli.schema.register()` first.
"""

from __future__ import annotations

from dense.core import schema

# (group, name in the group) → the dataclass its files extend.
SCHEMAS: dict[tuple[str | None, str], type] = {
    ("backbone", "schema"): schema.BackboneConfig,
    ("head", "schema"): schema.HeadConfig,
    ("head", "schema_multi"): schema.MultiHeadConfig,
    **{("data", f"schema_{name}"): cls for name, cls in schema.DATA_SCHEMAS.items()},
    ("schema", "train"): schema.TrainConfig,
    ("schema", "eval"): schema.EvalConfig,
    ("schema", "predict"): schema.PredictConfig,
    ("schema", "export"): schema.ExportConfig,
}


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent: storing again replaces the same node)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        store.store(group=group, name=name, node=node)
