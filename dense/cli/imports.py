"""The `imports=[...]` config key of train.py, eval.py and predict.py: the user's own modules, imported
before anything is built, so that the heads, backbones and datasets they register (@dense.register_head,
...) can be chosen by name (`head.name=my_head`), as mmcv's custom_imports.

Only names the user gives (config file or command line) are imported: never a name read from a
checkpoint or any other file, which may be crafted. A checkpoint that names a head no module has
registered is refused in one line that says to pass imports=[module].
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence

from dense.core.errors import ImportsError

MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def import_modules(names) -> list[str]:
    """Import each module named in `names` (a list of dotted module names, or None); returns them.
    One line naming the module and why when one cannot be imported."""
    if names is None:
        return []
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ImportsError(
            f"imports={names!r} must be a list of module names, e.g. imports=[my_package.heads]"
        )
    for name in names:
        if not isinstance(name, str) or not MODULE_NAME.match(name):
            raise ImportsError(
                f"imports: {name!r} is not a module name (dotted Python identifiers, e.g. my_package.heads)"
            )
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001  any failure inside the user's module is reported in one line
            reason = " ".join(str(error).split()) or type(error).__name__
            where = "" if isinstance(error, ModuleNotFoundError) else " (it raised while being imported)"
            path = " (is its folder on PYTHONPATH?)" if isinstance(error, ModuleNotFoundError) else ""
            raise ImportsError(
                f"imports: cannot import {name}{where}: {type(error).__name__}: {reason}{path}"
            ) from None
    return list(names)
