"""The dataset registry: `@register_dataset("name")` where a dataset class is defined, and `data.name`
chooses it (DenseDataModule). A user's own dataset registers the same way, in a module named in
`imports=[...]`."""

from __future__ import annotations

from dense.core.registry import Registry

DATASETS: Registry[type] = Registry("dataset", "data.name", "dense.register_dataset")


def register_dataset(name: str, aliases: tuple[str, ...] = ()):
    """Class decorator: the decorated DenseDataset subclass is chosen by `data.name=<name>`."""
    return DATASETS.decorator_for(name, lambda dataset_cls: dataset_cls, aliases)


def list_datasets() -> list[str]:
    """The names `data.name` accepts, sorted."""
    return DATASETS.names()
