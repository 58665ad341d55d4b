"""The structure the code must keep (README "Design"): modules import one way, datasets register where
they are defined, and every dataset takes the shared constructor arguments through one base class.

The import graph is read from the source with `ast`, imports inside functions (and under
TYPE_CHECKING) included: a lazy import that dodges a cycle is still a cycle."""

from __future__ import annotations

import ast
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import dense
from dense.core.errors import DatasetError, UnknownNameError
from dense.data import DATASETS, DenseDataModule, DenseDataset, RawSample
from tests._tiny_run import ROOT

PACKAGES = ("dense", "heads", "benchmarks")
# Files run by path (`python benchmarks/scripts/bench_cache.py`), as the entry scripts are: no package's modules.
SCRIPT_FOLDERS = ("benchmarks/scripts",)

# Every module of dense/ and heads/ belongs to one layer: a folder ("dense.core" also covers dense.core.*)
# or one of the few modules left on dense's top floor. "dense" is the package's __init__ alone.
LAYER_OF = {
    "dense.core": "core",
    "dense.core.io": "io",
    "dense.core.hashing": "io",
    "dense.backbones": "backbones",
    "heads": "heads",
    "dense.model": "model",
    "dense.config": "model",
    "dense.checkpoint": "model",
    "dense.multi_head": "model",
    "dense.cache": "cache",
    "dense.data": "data",
    "dense.tasks": "tasks",
    "dense.tools": "tools",
    "dense": "api",  # the package's face: dense/__init__.py hands on the public names
    "dense.cli": "entry",  # what the entry scripts (train.py, eval.py, predict.py, export.py) run
    "benchmarks": "bench",  # beside the package: the bench harness (python -m benchmarks)
}

# What each layer may import: its own layer and those listed. Nothing else, lazily or not.
MAY_IMPORT = {
    "core": set(),
    "io": {"core"},
    "backbones": {"core", "io"},
    "heads": {"core"},
    "model": {"core", "io", "backbones", "heads"},
    # The cache and data sit side by side, neither importing the other: the cache wraps any Dataset (it
    # reads `fingerprint()` and `sample_names()`) and hands its wrapper to a DataModule's generic
    # wrap_train_set hook (dense.cache.use_feature_cache, called by the entry), so it needs nothing of
    # dense.data; the DataModule knows nothing of the cache.
    "cache": {"core", "io", "model"},
    "data": {"core", "io"},
    "tasks": {"core", "io", "model", "cache", "data"},
    "tools": {"core", "io", "backbones", "heads", "model", "cache", "data", "tasks"},
    "api": {"core", "io", "backbones", "heads", "model", "cache", "data", "tasks", "tools"},
    "entry": {"core", "io", "backbones", "heads", "model", "cache", "data", "tasks", "tools", "api"},
    # The bench measures the library as a user's code would; what drives the entry scripts stays a script.
    "bench": {"core", "io", "backbones", "heads", "model", "cache", "data", "tasks", "tools", "api"},
}


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if any(path.is_relative_to(ROOT / folder) for folder in SCRIPT_FOLDERS):
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its file. `from a import b` counts as an import
    of a.b when that is a module, else of a; `import a.b` as an import of a.b."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def layer(name: str) -> str:
    """The layer of the longest LAYER_OF entry that is `name` or a package above it; "dense" (the api)
    is dense/__init__.py alone, never a package above dense.anything."""
    owner = max(
        (m for m in LAYER_OF if name == m or (m != "dense" and name.startswith(m + "."))),
        key=len,
        default=None,
    )
    assert owner is not None, f"{name} belongs to no layer: add it to LAYER_OF"
    return LAYER_OF[owner]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def test_the_graph_reader_sees_lazy_and_relative_imports(graph):
    # Controls: a module-level absolute import, a relative one, and one inside a function.
    assert "dense.core.errors" in graph["dense.core.registry"]
    assert "heads.depth_dpt" in graph["heads"]
    assert "dense.cli.help" in graph["dense.cli.runner"]  # imported inside check_arguments()


def test_every_module_has_a_layer(graph):
    for name in graph:
        assert layer(name) in MAY_IMPORT, name


def test_a_module_outside_every_entry_has_no_layer():
    """Control: a new module on dense's top floor is not the api's ("dense" is dense/__init__.py alone)."""
    assert layer("dense") == "api" and layer("dense.core.errors") == "core" and layer("dense.core.io") == "io"
    with pytest.raises(AssertionError, match="dense.newcomer belongs to no layer"):
        layer("dense.newcomer")


def test_no_module_imports_a_higher_layer(graph):
    wrong = sorted(
        f"{name} ({layer(name)}) imports {target} ({layer(target)})"
        for name, targets in graph.items()
        for target in targets
        if layer(target) != layer(name) and layer(target) not in MAY_IMPORT[layer(name)]
    )
    assert not wrong, "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as a path (its first module repeated at the end), or None: depth-first
    search for an edge back to a module still open."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "open"
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[name] = "done"
        path.pop()
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def test_there_is_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_search_finds_a_cycle():
    """Control for the search, on made-up graphs."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_only_dense_cli_imports_dense_cli(graph):
    """dense.cli is the top: the library never depends on what the scripts run."""
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        for target in targets
        if layer(target) == "entry" and layer(name) != "entry"
    )
    assert not wrong, "\n".join(wrong)


def library_imports_of_the_bench(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        for target in targets
        if layer(target) == "bench" and layer(name) != "bench"
    )


def test_the_library_never_imports_the_bench(graph):
    """benchmarks/ is not installed with dense: nothing of dense/ or heads/ may need it."""
    assert any(name.startswith("benchmarks.") for name in graph)  # the bench is in the graph
    assert "dense.tasks" in graph["benchmarks.paths"] and "benchmarks.case" in graph["benchmarks.paths"]
    assert not library_imports_of_the_bench(graph)
    # Control: a library module that imported the bench would be caught.
    assert library_imports_of_the_bench({**graph, "dense.model": {"benchmarks.cli"}}) == [
        "dense.model imports benchmarks.cli"
    ]


def test_the_bench_scripts_drive_the_library_and_the_entry_only():
    """benchmarks/scripts/ may use dense.cli (they run train.py's and predict.py's logic), which no module
    of the bench package may; they are files run by path, so no module imports them."""
    assert "entry" not in MAY_IMPORT["bench"] and layer("benchmarks.cli") == "bench"
    modules = set(module_files())
    scripts = sorted((ROOT / "benchmarks" / "scripts").glob("*.py"))
    assert scripts and not any(f"benchmarks.scripts.{path.stem}" in modules for path in scripts)
    for path in scripts:
        imported = imports_of(path.stem, path, modules)
        allowed = MAY_IMPORT["entry"] | {"entry"}
        assert imported and all(layer(name) in allowed for name in imported), (path.name, imported)


def test_the_entry_scripts_are_thin():
    """train.py, eval.py, predict.py and export.py are their usage docstring, a Hydra main and a call into
    dense.cli, which holds (and the tests call) everything they do."""
    modules = set(module_files())
    for script in ("train.py", "eval.py", "predict.py", "export.py"):
        path = ROOT / script
        assert len(path.read_text().splitlines()) <= 60, script
        imported = imports_of(path.stem, path, modules)
        assert imported and all(layer(name) == "entry" for name in imported), (script, imported)


def test_private_modules_are_imported_only_inside_their_package(graph):
    """A `_name` module is its package's business: heads/_common.py is the heads'."""
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        for target in targets
        if target.rpartition(".")[2].startswith("_")
        and not (name + ".").startswith(target.rpartition(".")[0] + ".")
    )
    assert not wrong, "\n".join(wrong)


def module_level_warning_filters(path: Path) -> list[int]:
    """Lines of `path` that change the warning filters when the module is imported: a
    warnings.filterwarnings/simplefilter call outside every function."""
    lines = []
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for call in ast.walk(node):
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr in ("filterwarnings", "simplefilter")
            ):
                lines.append(call.lineno)
    return lines


def test_importing_the_library_installs_no_warning_filter(tmp_path):
    found = {
        name: lines for name, path in module_files().items() if (lines := module_level_warning_filters(path))
    }
    assert not found, found
    control = tmp_path / "control.py"
    control.write_text(
        "import warnings\n\nwarnings.filterwarnings('ignore')\n\n\ndef f():\n    warnings.simplefilter('ignore')\n"
    )
    assert module_level_warning_filters(control) == [3]


def test_the_entry_scripts_filter_lightnings_note_about_our_own_hook():
    """The filter that dense/tasks/base.py installed at import time is the entry path's now."""
    from dense.cli import runner

    def filtered() -> bool:
        return any(
            f[0] == "ignore" and f[1] is not None and f[1].pattern == runner.ON_BEFORE_BATCH_TRANSFER_NOTE
            for f in warnings.filters
        )

    with warnings.catch_warnings():
        warnings.resetwarnings()
        assert not filtered()
        runner.quiet_library_noise()
        assert filtered()


# ---- datasets: registered where defined, one contract --------------------------------------------


def test_every_built_in_dataset_is_registered_where_it_is_defined():
    assert dense.list_datasets() == ["ade20k", "folder", "kitti", "nyu", "synthetic", "voc"]
    for name in dense.list_datasets():
        cls = DATASETS.get(name)
        assert issubclass(cls, DenseDataset)
        source = Path(sys.modules[cls.__module__].__file__).read_text()
        assert f'@register_dataset("{name}")\nclass {cls.__name__}(' in source, name


class Checkerboard(DenseDataset):
    """A dataset written as a user would: its own options, the shared ones passed on."""

    fixed_task = "depth"
    needs_root = False

    def __init__(self, root=None, split: str = "train", *, count: int = 3, **common):
        super().__init__(root, split, **common)
        self.items = [(f"{self.split}_{i}",) for i in range(count)]

    def __len__(self) -> int:
        return len(self.items)

    def read(self, index: int) -> RawSample:
        image = np.kron(np.indices((4, 4)).sum(0) % 2, np.ones((7, 7))).astype(np.uint8) * 255
        depth = np.full(image.shape, 1.0 + index, np.float32)
        return RawSample(self.items[index][0], np.repeat(image[..., None], 3, axis=2), depth)


@pytest.fixture
def registry_copy(monkeypatch):
    """DATASETS as it is, restored after the test (a registration cannot be undone otherwise)."""
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))
    monkeypatch.setattr(DATASETS, "_aliases", dict(DATASETS._aliases))


def test_a_registered_dataset_is_found_by_name(registry_copy):
    dense.register_dataset("checkerboard")(Checkerboard)
    assert "checkerboard" in dense.list_datasets()
    datamodule = DenseDataModule(name="checkerboard", count=5, batch_size=2, augment=False)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (2, 3, 28, 28) and datamodule.task == "depth"
    assert sorted(datamodule.dataset("val").sample_names()) == [f"val_{i}" for i in range(5)]
    with pytest.raises(ValueError, match="checkerboard.*registered twice"):
        dense.register_dataset("checkerboard")(Checkerboard)


def test_an_unknown_dataset_name_lists_the_registered_ones():
    with pytest.raises(
        UnknownNameError, match=r"unknown dataset 'nyu2' for data.name; choose one of ade20k, folder"
    ):
        DenseDataModule(name="nyu2")


def test_the_base_class_checks_the_shared_arguments_once():
    with pytest.raises(DatasetError, match=r"split 'training' is not one of \('train', 'val', 'test'\)"):
        Checkerboard(split="training")
    with pytest.raises(DatasetError, match="this dataset only provides depth"):
        Checkerboard(task="segmentation")
    with pytest.raises(TypeError, match="unexpected keyword argument 'crop'"):
        Checkerboard(crop=3)
    data = Checkerboard(split="val", augment=True, seed=4, count=2)
    assert (data.split, data.task, data.augment, data.seed) == ("val", "depth", True, 4)
    assert Checkerboard.option_names() == ["count", "augment", "task", "seed"]


def test_the_fingerprint_holds_the_options_but_not_the_seed():
    a, b = Checkerboard(count=2, seed=1), Checkerboard(count=2, seed=2)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint()["options"] == {"count": 2, "augment": False, "task": None}
    assert Checkerboard(count=3).fingerprint() != a.fingerprint()
    assert Checkerboard(count=2, augment=True).fingerprint() != a.fingerprint()
