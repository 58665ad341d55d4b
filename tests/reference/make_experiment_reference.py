"""Regenerate tests/reference/experiments.json: what every experiment composed to BEFORE the shared
recipes (configs/recipe/) replaced the eight long experiment files.

Not run by the test suite. How the file was made (once, from main at 233beac, the last commit with the
long files):

    python tests/reference/make_experiment_reference.py 233beac

The script exports that commit's configs/ with `git archive` into a temporary folder and composes
train.yaml there with `experiment=NAME` for every experiment file of that commit (no other override:
the old experiments leave the backbone at train.yaml's default, smoke sets its own). Saved per
experiment: the composed config unresolved (interpolations kept as written, so no run folder or
environment enters it) and the option chosen in each config group (Hydra's own groups left out).
"""

import json
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "experiments.json"


def export_configs(commit: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "configs"], capture_output=True,
                             check=True).stdout  # fmt: skip
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "configs"


def compose_experiment(configs: Path, name: str) -> dict:
    from dense.cli import schema

    schema.register()  # the YAML files of later commits name their group schemas
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"], return_hydra_config=True)
    config = OmegaConf.to_container(cfg, resolve=False)
    hydra = config.pop("hydra")
    choices = {
        group: option
        for group, option in hydra["runtime"]["choices"].items()
        if not group.startswith("hydra")
    }
    return {"config": config, "choices": choices}


def main(commit: str) -> None:
    full_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", commit], capture_output=True, text=True,
                                 check=True).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        configs = export_configs(full_commit, Path(tmp))
        names = sorted(p.stem for p in (configs / "experiment").glob("*.yaml"))
        experiments = {name: compose_experiment(configs, name) for name in names}
    OUT.write_text(
        json.dumps({"commit": full_commit, "experiments": experiments}, indent=1, sort_keys=True) + "\n"
    )
    print(f"{OUT}: {len(experiments)} experiments of {full_commit[:10]}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "233beac")
