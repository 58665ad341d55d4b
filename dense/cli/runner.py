"""What the entry scripts share (train.py, eval.py, predict.py, export.py): one-line errors, plain configs,
set-up.

A user who mistypes an option should read one line that names it, not a traceback from deep inside
Lightning. The scripts therefore run in two phases:
- set-up (config checks, building the data, model, callbacks and Trainer) runs inside
  `setup_errors()`: every ValueError/TypeError/KeyError/ImportError raised there, by our code,
  Hydra's instantiate or Lightning's argument checks, is a configuration mistake;
- the run itself (fit/test) lets real bugs keep their traceback; only `DenseError`s (our errors
  meant for users: a corrupt image, a bad checkpoint) are printed as one line there.
Either way the exit status is EXIT_USAGE (2), as predict.py. A training run that failed on its own
(a loss turned NaN, a dead head: dense.core.errors.TrainingFailedError) exits with EXIT_TRAINING_FAILED (3),
its one line saying what to change.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dense.core.errors import (  # ConfigError: used by dense.cli as runner.ConfigError
    ConfigError,
    DenseError,
    TrainingFailedError,
)
from dense.core.host_memory import keep_large_allocations
from dense.core.plain import flatten, plain  # noqa: F401  (dense.cli uses runner.flatten, runner.plain)
from dense.core.schema import UNTYPED_GROUPS

EXIT_USAGE = 2
EXIT_TRAINING_FAILED = 3  # the run started but cannot succeed (diverged, dead head): see TrainingFailedError
# Where the repository (train.py, configs/) lies: `paths.root_dir` reads it from this variable.
ROOT_ENV = "DENSE_ROOT"


def set_root_dir(script: str) -> None:
    """Let `paths.root_dir` (configs/paths/default.yaml) default to the folder of the entry script."""
    os.environ.setdefault(ROOT_ENV, str(Path(script).resolve().parent))


def main(hydra_main: Callable[[], Any], script: str) -> None:
    """Run an entry script's Hydra main, refusing first, in one line, a config-group option or a key
    that does not exist (Hydra's own messages for them span several lines), and with glibc keeping the
    memory of large tensors (dense.core.host_memory). The scripts import their dense.cli module (torch, for
    predict.py and export.py) inside their Hydra main, so this answers before any of it is loaded."""
    from dense.cli import schema

    schema.register()  # before anything composes the configuration: the groups' YAML files name them
    check_arguments(script)
    keep_large_allocations()  # CPU steps reuse the pages of large tensors: see dense/core/host_memory.py
    hydra_main()


def check_arguments(script: str) -> None:
    """`--help`, and the command-line mistakes found without building anything (an unknown group
    option or key, a run folder holding links): answered in a second or two, since nothing here
    imports torch."""
    script_path = Path(script).resolve()
    config_dir = script_path.parent / "configs"
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        from dense.cli.help import help_text

        doc = sys.modules["__main__"].__doc__ or ""
        overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
        print(help_text(config_dir, script_path.stem, doc, overrides))
        sys.exit(0)
    check_data_root(sys.argv[1:])
    check_group_choices(config_dir, script_path.stem, sys.argv[1:])
    check_keys(config_dir, script_path.stem, sys.argv[1:])
    check_run_folder(sys.argv[1:])


def check_data_root(arguments: list[str]) -> None:
    """A `data.root=FOLDER` typed on the command line that is no folder: the first thing to say, before
    any other key is looked at (every other data problem may follow from it)."""
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key.lstrip("+") != "data.root" or value in ("", "null") or "," in value or "${" in value:
            continue
        if not os.path.isdir(os.path.expanduser(value)):
            where = "" if os.path.isabs(value) else f" (read from where the command runs, {os.getcwd()})"
            fail(f"data.root={value}: no such folder{where}; give the folder that holds the dataset")


MAX_RUN_FOLDER_ENTRIES = 100_000


def check_run_folder(arguments: list[str]) -> None:
    """An existing run folder given with hydra.run.dir= (a resume, or someone else's folder) must hold
    no link and no hard-linked file: Hydra and the run write there (.hydra/*.yaml is rewritten, the log
    appended to), and a link planted in a shared folder would make them write through it, into any
    file the user may write. One line, exit 2, before anything is written."""
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key.lstrip("+") != "hydra.run.dir" or not value or not os.path.isdir(value):
            continue
        seen = 0
        for folder, dirs, files in os.walk(value):  # does not follow links to folders
            for name in dirs + files:
                path = os.path.join(folder, name)
                info = os.lstat(path)
                if stat.S_ISLNK(info.st_mode):
                    fail(
                        f"hydra.run.dir={value} holds a link, {path}: a run writes into its folder and would write "
                        "through it; remove the link or choose another folder"
                    )
                if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                    fail(
                        f"hydra.run.dir={value} holds {path}, a file with other names (a hard link): a run writes "
                        "into its folder and would change the other names' file too; copy the folder instead"
                    )
                seen += 1
                if seen > MAX_RUN_FOLDER_ENTRIES:
                    fail(
                        f"hydra.run.dir={value} holds more than {MAX_RUN_FOLDER_ENTRIES} files: not a run folder"
                    )


def check_group_choices(config_dir: Path, config_name: str, overrides: list[str]) -> None:
    """`group=option` overrides (e.g. `head=depht`) whose option file does not exist, or of a group the
    script does not use (`predict.py trainer=cpu`) → one line, exit 2. Multirun lists
    (`backbone=vits14,vitb14`) are checked item by item."""
    from dense.cli.help import read_comments

    used = None
    for override in overrides:
        key, sep, value = override.partition("=")
        group = key.lstrip("+~")
        if not sep or "." in group or "/" in group or not (config_dir / group).is_dir() or not value:
            continue
        # The groups of the script's defaults list, read from its file: no composition needed.
        used = list(read_comments(config_dir / f"{config_name}.yaml").groups) if used is None else used
        if group not in used and not key.startswith("+"):
            fail(f"{group}= is not a config group of {config_name}.py: its groups are {', '.join(used)}")
        # A list of options (logger=[csv,tensorboard]) is checked item by item, as a sweep's values.
        choices = value[1:-1] if value.startswith("[") and value.endswith("]") else value
        for choice in choices.split(","):
            if choice != "null" and not (config_dir / group / f"{choice}.yaml").is_file():
                options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
                fail(
                    f"{group}={choice} is not an option of configs/{group}/: choose one of {', '.join(options)}"
                )


def check_keys(config_dir: Path, config_name: str, arguments: list[str]) -> None:
    """A `key=value` override whose key the config does not have (`data.batchsize=4`) → one line naming
    the closest existing key, exit 2. Found by composing the config as Hydra will; any other problem
    is left to Hydra's own message. Hydra flags other than --multirun (--cfg, --help, ...) skip the check."""
    from dense.cli import schema

    schema.register()
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in arguments):
        return
    multirun = any(a in ("-m", "--multirun") for a in arguments)
    overrides = [a for a in arguments if not a.startswith("-")]
    if multirun:  # a sweep (a=1,2) cannot be composed: each of its values is checked in turn
        for chosen in sweep_choices(overrides):
            check_overrides(config_dir, config_name, chosen)
        return
    check_overrides(config_dir, config_name, overrides)


def sweep_choices(overrides: list[str]) -> list[list[str]]:
    """Override lists that, together, hold every value of every sweep of a --multirun command line
    (`data.batch_size=2,abc` → data.batch_size=2, then data.batch_size=abc; the other sweeps at their
    first value), so that a wrong key or value of any job is refused in one line before the first job
    starts, as without --multirun. An override Hydra's parser cannot read is left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    fixed: list[str] = []
    sweeps: list[tuple[int, list[str]]] = []
    for override in overrides:
        try:
            parsed = parser.parse_overrides([override])[0]
            values = list(parsed.sweep_string_iterator()) if parsed.is_sweep_override() else None
        except (HydraException, ValueError, TypeError):
            continue
        if values is None:
            fixed.append(override)
        elif values:
            fixed.append(f"{parsed.get_key_element()}={values[0]}")
            sweeps.append((len(fixed) - 1, [f"{parsed.get_key_element()}={v}" for v in values[1:]]))
    choices = [fixed]
    for index, others in sweeps:
        for other in others[:MAX_SWEEP_CHECKS]:
            choices.append(fixed[:index] + [other] + fixed[index + 1 :])
    return choices[: MAX_SWEEP_CHECKS + 1]


# The sweep values checked before a --multirun starts (each is one composition, a fraction of a second).
MAX_SWEEP_CHECKS = 32


def check_overrides(config_dir: Path, config_name: str, overrides: list[str]) -> None:
    """check_keys for one composable override list."""
    import difflib
    import re

    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    def composed(chosen: list[str]):
        """(the composed configuration, None) or (None, Hydra's error)."""
        try:
            with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
                return compose(config_name, overrides=chosen), None
        except ConfigCompositionException as error:
            return None, error

    _, error = composed(overrides)
    message = None if error is None else str(error)
    wrong_type = re.match(r"Error merging override (.+)", message or "")
    if wrong_type is not None and error.__cause__ is not None:
        fail(type_error_line(wrong_type.group(1), error.__cause__))
    set_by_a_file = re.match(
        r"In '([\w/]+)': ConfigKeyError raised while composing config:\s*Key '\w+' not in '(\w+)'\s*full_key: ([\w.]+)",
        message or "",
    )
    if set_by_a_file is not None:  # a preset sets a key the chosen group option's schema lacks
        fail(key_of_another_option_line(*set_by_a_file.groups()))
    existing = re.match(r"Could not append to config. An item is already at '([^']+)'", message or "")
    if existing is not None:
        key = existing.group(1)
        override = next(o for o in overrides if o.lstrip("+").split("=", 1)[0] == key)
        fail(
            f"{key} is already a key of the {config_name} configuration: write {override.lstrip('+')} (without the +)"
        )
    match = re.match(r"Could not override '([^']+)'", message or "")
    if match is None:
        return
    key = match.group(1)
    override = next(o for o in overrides if o.split("=", 1)[0] == key)
    parent, _, name = key.rpartition(".")
    hint = ""
    # An untyped node takes new keys with +; a node typed by a schema takes its fields only.
    ending = f"; to add a new key write +{override}"
    config, _ = composed([o for o in overrides if o != override])
    if config is not None:
        node = OmegaConf.select(config, parent) if parent else config
        keys = list(node.keys()) if OmegaConf.is_dict(node) else []
        typed = OmegaConf.get_type(node) if OmegaConf.is_dict(node) else None
        if typed is not None and typed.__module__ == "dense.core.schema":
            ending = f"; its keys are the fields of {typed.__name__} in dense/core/schema.py"
        close = difflib.get_close_matches(name, [str(k) for k in keys], n=1)
        if close:
            hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)"
        elif not parent:  # a key of a group typed without its group (weights= for backbone.weights=)
            nested = nested_keys_named(OmegaConf.to_container(config, resolve=False), name)
            if nested:
                hint = f" (did you mean {' or '.join(nested)}?)"
    fail(f"{key} is not a key of the {config_name} configuration{hint}{ending}")


# OmegaConf's names of the types a schema field takes (its "could not be converted to ..." message).
TYPE_WORDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def type_error_line(override: str, cause: BaseException) -> str:
    """One line for an override whose value does not have its key's type in the group's schema
    (dense/core/schema.py), from OmegaConf's several-line ValidationError."""
    import re

    from dense.core import schema

    key = override.lstrip("+~").split("=", 1)[0]
    text = str(cause)
    full_key = re.search(r"full_key: (\S+)", text)
    key = full_key.group(1) if full_key else key  # head.layers[1] for one item of a list
    typed = re.search(r"object_type=(\w+)", text)
    where = (
        f" ({typed.group(1)} in dense/core/schema.py)" if typed and hasattr(schema, typed.group(1)) else ""
    )
    converted = re.search(r"could not be converted to (\w+)", text)
    kind = TYPE_WORDS.get(converted.group(1)) if converted else None
    if "is not a valid bool" in text:
        kind = TYPE_WORDS["Boolean"]
    elif "is not a ListConfig" in text:
        kind = "a list, e.g. [1.0,2.0]"
    elif "is not a DictConfig" in text:
        kind = "a mapping"
    elif "is not a subclass of" in text:  # a value for a nested schema (task.scheduler=3)
        kind = "a mapping"
    if "is not Optional" in text and typed and hasattr(schema, typed.group(1)):  # key=null
        hint = schema.type_hints(getattr(schema, typed.group(1))).get(key.rpartition(".")[2])
        if hint is not None:
            return f"{override}: {key} takes {schema.describe(hint)}, not null{where}"
    if "does not support deletion" in text:  # ~key of a schema's field
        return (
            f"{override}: {key} is a key of its group's schema{where} and cannot be dropped; "
            f"set it instead ({key}=VALUE, null where the schema allows it)"
        )
    if kind:
        return f"{override}: {key} takes {kind}{where}"
    return f"{override}: {text.splitlines()[0].strip()}{where}"


def key_of_another_option_line(source: str, schema_name: str, key: str) -> str:
    """One line for a config file (a preset: experiment=smoke) that sets a key the schema of the chosen
    group option lacks (data.image_size, a synthetic-scenes key, with data=folder)."""
    from dense.core.schema import DATA_SCHEMAS

    formats = {cls.__name__: name for name, cls in DATA_SCHEMAS.items()}
    what = (
        f"the {formats[schema_name]} dataset"
        if schema_name in formats
        else key.rpartition(".")[0] or "the configuration"
    )
    group, _, option = source.rpartition("/")
    setter = f"{group}={option} (configs/{source}.yaml)" if group else f"configs/{source}.yaml"
    line = (
        f"{key} is not an option of {what} ({schema_name} in dense/core/schema.py): {key} was set by {setter}"
    )
    if group != "experiment":
        return line
    # A preset made for another option of the group (experiment=smoke is the synthetic scenes').
    own = formats.get(schema_name)
    fits = (
        "experiment=folder_depth or folder_seg, made for your own folder"
        if own == "folder"
        else f"a preset made for data={own}, or none"
        if own
        else "a preset made for your choice, or none"
    )
    return f"{line}, a preset for other options: choose {fits}"


def nested_keys_named(config: dict, name: str) -> list[str]:
    """The dotted keys below the top level whose last part is `name`, else is closest to it."""
    import difflib

    keys: set[str] = set()
    for leaf in flatten(config):
        parts = leaf.split(".")
        keys.update(".".join(parts[: n + 1]) for n in range(1, len(parts)))
    last = {key: key.rpartition(".")[2] for key in keys}
    exact = sorted(key for key, part in last.items() if part == name)
    if exact:
        return exact[:3]
    close = difflib.get_close_matches(name, sorted(set(last.values())), n=1)
    return sorted(key for key, part in last.items() if close and part == close[0])[:3]


def absolute_paths(cfg: DictConfig, keys: tuple[str, ...]) -> None:
    """Make the relative paths among `keys` (dotted) absolute, read from where the command was typed:
    with hydra.job.chdir=true the process runs in the run folder, where they would mean something else."""
    from hydra.utils import to_absolute_path
    from omegaconf import OmegaConf, open_dict

    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and value and not os.path.isabs(value) and "://" not in value:
            with open_dict(cfg):
                OmegaConf.update(cfg, key, to_absolute_path(value), merge=False)


def single_log_stream() -> None:
    """Lightning adds its own console handler and also propagates to the root logger that Hydra sets
    up (console + <run>/<job>.log): every message would be printed twice. Keep Hydra's."""
    import logging

    import lightning.pytorch  # noqa: F401  (importing it is what adds the handler)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def one_line(error: BaseException) -> str:
    """A single line for an exception: Hydra's InstantiationException is unwrapped to its cause,
    prefixed with the config key that failed (e.g. `trainer: Precision 'bf17' is invalid ...`)."""
    from hydra.errors import InstantiationException

    prefix = ""
    if isinstance(error, InstantiationException):
        text = str(error)
        if "full_key:" in text:
            prefix = text.rsplit("full_key:", 1)[1].strip() + ": "
        while isinstance(error, InstantiationException) and error.__cause__ is not None:
            error = error.__cause__
    message = str(error).strip() or type(error).__name__
    if isinstance(error, RecursionError):
        message = "values nested too deep to read (a crafted file?)"
    elif isinstance(error, MemoryError):
        message = f"out of memory ({message}): a file or option asks for more than this machine has"
    elif isinstance(error, KeyError | ImportError | TypeError) and not isinstance(error, DenseError):
        message = f"{type(error).__name__}: {message}"
    return printable(prefix + message)


def printable(text: str) -> str:
    """One line: whitespace runs become one space, other control characters (terminal escape codes
    from a crafted file) are shown as \\xNN instead of being sent to the terminal."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in " ".join(text.split()))


def fail(message: str, status: int = EXIT_USAGE) -> None:
    print(f"error: {printable(message)}", file=sys.stderr, flush=True)
    sys.exit(status)


@contextmanager
def setup_errors() -> Iterator[None]:
    """Configuration mistakes found while setting a run up → one line on stderr, exit status 2."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except (
        DenseError,
        ValueError,
        TypeError,
        KeyError,
        ImportError,
        InstantiationException,
        OmegaConfBaseException,
        RecursionError,
        MemoryError,
    ) as error:
        fail(with_key_origin(one_line(error)))


def with_key_origin(message: str) -> str:
    """A message about a key (`data.image_size is not an option ...`, `data.batch_size=0 must be ...`)
    that the user did not type: add which config file set it, so that the fix is found where the key
    came from (an experiment preset, a data config), not searched for on the command line."""
    import re

    match = re.match(r"([a-z_]\w*(?:\.\w+)+)(?:=| is )", message)
    origin = key_origin(match.group(1)) if match else None
    if origin is None:
        return message
    key = match.group(1)
    # A key a schema types (dense/core/schema.py) cannot be dropped (~key): only set to another value.
    fix = f"~{key}" if key.partition(".")[0] in UNTYPED_GROUPS else f"{key}=VALUE"
    return f"{message} ({key} was set by {origin}, not on the command line: override it there, or with {fix})"


def key_origin(key: str) -> str | None:
    """Which of the run's config files set `key` (e.g. `experiment=smoke (configs/experiment/smoke.yaml)`),
    or None when the key was typed on the command line, or no Hydra run is going on. Files are searched
    in the reverse of Hydra's merge order: the experiment (applied last), the primary config, the groups."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    config_dir = Path(os.environ.get(ROOT_ENV, ".")) / "configs"
    for override in hydra.overrides.task:
        typed = override.split("=", 1)[0].lstrip("+~")
        if "." not in typed and (config_dir / typed).is_dir():
            continue  # a group choice (data=folder), not a value
        if key == typed or key.startswith(typed + "."):
            return None
    choices = {g: o for g, o in hydra.runtime.choices.items() if o and not g.startswith("hydra")}
    files = []
    if "experiment" in choices:
        files.append(("experiment", choices.pop("experiment")))
    files.append((None, hydra.job.config_name))
    files.extend(choices.items())
    for group, option in files:
        path = config_dir / (f"{group}/{option}.yaml" if group else f"{option}.yaml")
        try:
            text = path.read_text()
            node = OmegaConf.create(text)
        except (OSError, ValueError, OmegaConfBaseException):
            continue
        packaged = group is None or "@package _global_" in text.split("\n", 1)[0]
        local = key if packaged else key.partition(".")[2] if key.startswith(f"{group}.") else None
        absent = object()
        if (
            local
            and OmegaConf.select(node, local, default=absent, throw_on_resolution_failure=False) is not absent
        ):
            file = path.relative_to(config_dir.parent)
            return f"{group}={option} ({file})" if group else str(file)
    return None


def run(function: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Call an entry point, printing DenseErrors (meant for users) as one line instead of a traceback:
    exit status 3 for a training run that failed (TrainingFailedError), else 2. A run refused that way
    leaves no run folder behind (discard_unused_run_folder)."""
    from dense.core.install_check import import_torchvision

    try:
        import_torchvision()  # before Lightning (single_log_stream) imports it: a broken install in one line
        single_log_stream()
        quiet_library_noise()
        return function(cfg)
    except TrainingFailedError as error:  # the run folder holds its logs and checkpoints: kept
        fail(one_line(error), EXIT_TRAINING_FAILED)
    except DenseError as error:
        discard_unused_run_folder(cfg)
        fail(one_line(error))
    except SystemExit as exit_:
        if exit_.code == EXIT_USAGE:  # a set-up mistake (setup_errors)
            discard_unused_run_folder(cfg)
        raise


ON_BEFORE_BATCH_TRANSFER_NOTE = (
    r"You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in"
)


def quiet_library_noise() -> None:
    """Messages of our libraries that tell the user nothing they can act on, printed on every run:
    torch's deprecation of LeafSpec (used inside Lightning, not by us), Lightning's advertisement for
    its cloud logger, and its note that DenseTask's on_before_batch_transfer (the host-side target
    check) is used rather than the DenseDataModule's: the intent."""
    import logging
    import warnings

    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    warnings.filterwarnings("ignore", message=ON_BEFORE_BATCH_TRANSFER_NOTE)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_litlogger_tip)


def _not_litlogger_tip(record) -> bool:
    return "litlogger" not in str(record.msg)


# What Hydra writes into a run folder before the job starts (its config and the job's log file).
HYDRA_BOOKKEEPING = {"config.yaml", "hydra.yaml", "overrides.yaml"}


def discard_unused_run_folder(cfg: DictConfig | None) -> None:
    """Remove the run folder of a run that was refused before it did anything, when it holds nothing
    but what Hydra wrote at the start (.hydra/ and the job's log): each failed attempt would otherwise
    leave an empty outputs/train/DATE/TIME behind. A folder with anything else in it (an earlier run's
    checkpoints, the user's files) is left as it is; so is predict.py's (it writes no .hydra/)."""
    import shutil

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    if not hydra.output_subdir:
        return
    folder = Path(hydra.runtime.output_dir)
    bookkeeping = folder / hydra.output_subdir
    expected = {hydra.output_subdir, f"{hydra.job.name}.log"}
    try:
        if not bookkeeping.is_dir() or not set(os.listdir(folder)) <= expected:
            return
        if not set(os.listdir(bookkeeping)) <= HYDRA_BOOKKEEPING or any(
            p.is_symlink() for p in folder.iterdir()
        ):
            return
        shutil.rmtree(folder)
        # The folders above it that Hydra made for it (outputs/train/DATE, outputs/train, outputs), as far
        # up as the log folder (paths.log_dir), when nothing else is left in them.
        log_dir = OmegaConf.select(cfg, "paths.log_dir", default=None) if cfg is not None else None
        top = Path(log_dir).resolve() if log_dir else None
        parent = folder.resolve().parent
        while top is not None and (parent == top or top in parent.parents) and not os.listdir(parent):
            parent.rmdir()
            parent = parent.parent
    except OSError:
        pass  # a folder we cannot tidy is no reason to hide the error itself


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
