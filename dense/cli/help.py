"""`--help` of the entry scripts (train.py, eval.py, predict.py), written from the configs themselves.

Hydra's own `--help` prints the whole composed configuration without a word of what the keys mean. Ours
prints what the script does and its common commands (the script's docstring), its config groups with
their options, and its main keys with their one-line meaning: the `doc` of the key's field in its
group's schema (dense/core/schema.py), or else the trailing `# comment` of the key in the YAML file that
defines it (a YAML comment also says what a file's own value means: it wins over the schema's doc). A
key gets into the help by a shown field or a comment, so the help cannot list a key that does not exist
or miss a meaning that the config states.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dense.cli.schema import SCHEMAS
from dense.core.schema import field_docs

# `key: value   # comment`, `- group: option   # comment` (defaults lists); the comment needs a space before #.
_KEY_LINE = re.compile(
    r"^(?P<indent> *)(?P<item>- )?(?P<key>[A-Za-z_]\w*): ?(?P<value>.*?)(?:\s+#\s?(?P<comment>.*))?$"
)
_GLOBAL_PACKAGE = "# @package _global_"
VALUE_WIDTH = 28
# Group keys that mean nothing to a script (eval.py trains nothing): per script, the keys of a group it
# shows; groups not named here show all their documented keys.
SHOWN_GROUP_KEYS = {
    "eval": {"trainer": ("accelerator", "devices", "precision", "deterministic"), "paths": ()}
}


@dataclass
class YamlComments:
    """The trailing comments of one config file: per dotted key, and per group of its defaults list."""

    keys: dict[str, str]
    groups: dict[str, str]
    parents: list[str]  # defaults-list entries of the same group (`- default`): the files it extends
    schemas: list[tuple[str, str]]  # `- schema/<name>@<package>` entries: (name, package)


def read_comments(path: Path) -> YamlComments:
    keys: dict[str, str] = {}
    groups: dict[str, str] = {}
    parents: list[str] = []
    schemas: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings the line is in
    in_defaults = False
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if in_defaults and line.lstrip().startswith("- "):
            entry = line.strip()[2:].split("#", 1)
            name, comment = entry[0].strip(), entry[1].strip() if len(entry) > 1 else ""
            typed = re.fullmatch(r"schema/(\w+)@(\w+)", name)
            if typed:
                schemas.append((typed[1], typed[2]))
            elif ":" in name and not name.startswith("override "):
                groups[name.split(":", 1)[0].strip()] = comment
            elif re.fullmatch(r"[\w.]+", name) and name != "_self_":
                parents.append(name)
            continue
        match = _KEY_LINE.match(line)
        if match is None or match["item"]:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([*(key for _, key in stack), match["key"]])
        in_defaults = dotted == "defaults"
        if match["comment"] and not in_defaults:
            keys[dotted] = match["comment"].strip()
        if not match["value"]:
            stack.append((indent, match["key"]))
    return YamlComments(keys, groups, parents, schemas)


def group_comments(config_dir: Path, group: str, option: str) -> dict[str, str]:
    """The key comments of a group option, with those of the files it extends (`defaults: [- default]`),
    its own first; keys prefixed with the group (`data.root`). Options in the global package (the
    experiment recipes) set other groups' values: their comments are not key meanings."""
    path = config_dir / group / f"{option}.yaml"
    if not path.is_file() or _GLOBAL_PACKAGE in path.read_text():
        return {}
    comments = read_comments(path)
    found: dict[str, str] = {}
    for parent in comments.parents:
        typed = SCHEMAS.get((group, parent))
        if typed is not None:
            found.update(field_docs(typed, f"{group}.", shown_only=True))
        else:
            found.update(group_comments(config_dir, group, parent))
    found.update({f"{group}.{key}": text for key, text in comments.keys.items()})
    return found


def options(config_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def compose(config_dir: Path, config_name: str, overrides: list[str] | None = None):
    """(the composed config with its hydra node, the chosen option of each of its own groups);
    overrides that do not compose are left out."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from dense.cli import schema

    schema.register()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        try:
            config = hydra_compose(config_name, overrides=overrides or [], return_hydra_config=True)
        except HydraException:
            config = hydra_compose(config_name, return_hydra_config=True)
    choices = OmegaConf.to_container(config.hydra.runtime.choices)
    # The user's groups only, not Hydra's own (hydra/launcher, ...); `hydra` is ours: the run folders.
    chosen = {g: o for g, o in choices.items() if not g.startswith("hydra/")}
    return config, dict(reversed(list(chosen.items())))  # in the order of the defaults list


def documented_keys(config_dir: Path, config_name: str, chosen: dict[str, str | None]) -> dict[str, str]:
    """Every key with a comment: the primary config's (not its own hydra: block, which is set-up), then
    those of the chosen option of each group."""
    primary = read_comments(config_dir / f"{config_name}.yaml")
    keys = {
        key: text for key, text in primary.keys.items() if not key.startswith("hydra.") and key != "hydra"
    }
    for name, package in primary.schemas:
        prefix = "" if package == "_here_" else f"{package}."
        for key, text in field_docs(SCHEMAS[("schema", name)], prefix, shown_only=True).items():
            keys.setdefault(key, text)
    shown = SHOWN_GROUP_KEYS.get(config_name, {})
    for group, option in chosen.items():
        if option is not None and (config_dir / group).is_dir():
            for key, text in group_comments(config_dir, group, option).items():
                if group not in shown or key.split(".", 1)[1] in shown[group]:
                    keys.setdefault(key, text)
    return keys


def shown_values(config) -> dict[str, str]:
    """Every leaf key's value as written (interpolations unresolved), short enough for a column."""
    from omegaconf import OmegaConf

    from dense.core.plain import flatten

    shown = {}
    for key, raw in flatten(OmegaConf.to_container(config, resolve=False)).items():
        text = (
            "null"
            if raw is None
            else str(raw).lower()
            if isinstance(raw, bool)
            else str(raw).replace(" ", "")
        )
        shown[key] = text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 1] + "…"
    return shown


def in_config_order(
    keys: dict[str, str], values: dict[str, str], groups, primary: Path
) -> list[tuple[str, str]]:
    """The documented keys, the script's own first (in the order of its file, `primary`) and then group
    by group (in the defaults list's order, each in the order of the composed configuration): a schema's
    doc and a YAML comment of the same block follow the file."""
    import yaml

    from dense.core.plain import flatten

    own = list(flatten(yaml.safe_load(primary.read_text()) or {}))
    composed = list(values)
    blocks = [None, *(group for group, option in groups.items() if option is not None)]

    def position(item: tuple[str, str]) -> tuple[int, int]:
        key = item[0]
        group = key.split(".", 1)[0]
        block = blocks.index(group) if group in blocks else 0
        order = composed if block else own
        found = (i for i, leaf in enumerate(order) if leaf == key or leaf.startswith(key + "."))
        return block, next(found, len(order))

    return sorted(keys.items(), key=position)


def help_text(config_dir: Path, config_name: str, script_doc: str, overrides: list[str]) -> str:
    """The whole `--help` of the script `config_name`.py (values shown with `overrides` applied)."""
    config, chosen = compose(config_dir, config_name, overrides)
    script = f"python {config_name}.py"
    lines = [
        script_doc.strip(),
        "",
        f"Config groups (group=option, the files in configs/<group>/), with {script} --help:",
    ]
    primary = read_comments(config_dir / f"{config_name}.yaml")
    for group, option in chosen.items():
        choices = options(config_dir, group)
        if len(choices) < 2:
            continue
        meaning = primary.groups.get(group, "")
        lines.append(f"  {group}={option or 'null':<{VALUE_WIDTH - len(group) - 1}}  {meaning}".rstrip())
        lines.append(f"  {'':<{VALUE_WIDTH}}  options: {', '.join(choices)}")
    lines += ["", "Main keys (key=value as set now, and what it means):"]
    values = shown_values(config)
    for key, meaning in in_config_order(
        documented_keys(config_dir, config_name, chosen), values, chosen, config_dir / f"{config_name}.yaml"
    ):
        value = values.get(key)  # None: a mapping (its keys are below it)
        name = f"{key}.*" if value is None else f"{key}={value}"
        if len(name) > VALUE_WIDTH:
            lines.append(f"  {name}")
            name = ""
        lines.append(f"  {name:<{VALUE_WIDTH}}  {meaning}")
    lines += [
        "",
        f"The whole configuration, with your overrides applied: {script} [key=value ...] --cfg job",
        f"Hydra's own flags (multirun, shell completion, ...): {script} --hydra-help",
    ]
    return "\n".join(lines)
