"""One typed schema per config group (dense/core/schema.py, registered by dense/cli/schema.py): every
group file composes to its schema's type, the schemas say what the code takes, a value of the wrong
type is one line before anything loads, and --help prints the schemas' docs."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
from omegaconf import OmegaConf

from dense.cli import help as cli_help
from dense.cli import runner
from dense.cli import schema as cli_schema
from dense.config import HEAD_BUILD_KEYS
from dense.core import schema
from dense.data import DATASETS
from dense.model import build_model
from tests._tiny_run import CONFIGS, ROOT, compose_config

pytestmark = pytest.mark.first_hour


def option_files(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["backbone", "head", "data"])
def test_every_option_of_a_group_composes_to_its_schema(group):
    for option in option_files(group):
        node = compose_config("train", f"{group}={option}")[group]
        typed = OmegaConf.get_type(node)
        expected = {
            "backbone": schema.BackboneConfig,
            "head": schema.MultiHeadConfig if option == "multi" else schema.HeadConfig,
            "data": schema.DATA_SCHEMAS.get(option),
        }[group]
        assert typed is expected, (group, option, typed)


def test_each_script_s_own_keys_are_typed():
    train = compose_config("train")
    assert OmegaConf.get_type(train) is schema.TrainConfig
    assert OmegaConf.get_type(train.task) is schema.TaskConfig
    assert OmegaConf.get_type(train.data) is schema.SyntheticData  # a group keeps its own schema
    assert OmegaConf.get_type(compose_config("eval")) is schema.EvalConfig
    assert OmegaConf.get_type(compose_config("predict")) is schema.PredictConfig
    assert OmegaConf.get_type(compose_config("export")) is schema.ExportConfig


def test_every_experiment_composes_against_the_schemas():
    """The recipes set keys of several groups: each must be a field of the group's schema with a value
    of its type (Hydra refuses the composition otherwise)."""
    for option in option_files("experiment"):
        compose_config("train", f"experiment={option}")


@pytest.mark.parametrize("name", sorted(schema.DATA_SCHEMAS))
def test_a_data_schema_is_its_format_s_constructor(name):
    """The schema's own fields are the dataset's keyword options (its constructor's and its recipe's),
    with the same defaults; the shared fields are DenseDataModule's keys."""
    typed = schema.DATA_SCHEMAS[name]
    shared = set(schema.field_names(schema.DataConfig))
    parameters = {p.name: p for p in DATASETS.get(name)._parameters() if p.name not in ("split", "root")}
    own = {f.name: f for f in dataclasses.fields(typed) if f.name not in shared or f.name in parameters}
    assert set(own) - shared == set(parameters) - shared, name
    for key, parameter in parameters.items():
        if key in shared or parameter.default is inspect.Parameter.empty:
            continue
        f = own[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        expected = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
        assert default == expected, (name, key, default, expected)


def test_the_head_keys_are_build_model_s_options():
    """Each head key that is not a name, a file or the head's own options reaches build_model: a model
    built with it differs from the default one, so a field cannot be declared and then dropped."""
    assert set(HEAD_BUILD_KEYS) == {
        "layers",
        "norm",
        "use_cls_token",
        "min_depth",
        "max_depth",
        "num_classes",
    }
    model = build_model(
        "tiny14", "depth_linear", layers=[1, 3], norm=False, use_cls_token=False, max_depth=20.0
    )
    assert model.config["layers"] == [1, 3] and model.config["max_depth"] == 20.0
    assert model.config["norm"] is False and model.config["use_cls_token"] is False


def test_the_model_record_schema_holds_what_a_model_records():
    model = build_model("tiny14", "depth_linear", max_depth=20.0)
    assert set(model.config) <= set(schema.field_names(schema.ModelRecord)), model.config
    assert schema.type_problem(model.config, schema.ModelRecord) is None


WRONG_TYPES = {
    "train": [
        ("seed=x", "seed takes an integer (TrainConfig"),
        ("cache.features=sometimes", "cache.features takes true or false (CacheConfig"),
        ("data.batch_size=abc", "data.batch_size takes an integer (SyntheticData"),
        ("head.norm=maybe", "head.norm takes true or false (HeadConfig"),
        ("task.test_scales=abc", "task.test_scales takes a list"),
        ("task.scheduler.power=x", "task.scheduler.power takes a number (SchedulerConfig"),
        ("backbone.pretrained=often", "backbone.pretrained takes true or false (BackboneConfig"),
    ],
    "predict": [("batch_size=x", "batch_size takes an integer (PredictConfig")],
    "eval": [("task.test_flip=maybe", "task.test_flip takes true or false (EvalTaskOverrides")],
    "export": [("fp16=half", "fp16 takes true or false (ExportConfig")],
}


@pytest.mark.parametrize(
    "script,override,words", [(s, o, w) for s, cases in WRONG_TYPES.items() for o, w in cases]
)
def test_a_value_of_the_wrong_type_is_one_line(script, override, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner.check_keys(CONFIGS, script, [override])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == runner.EXIT_USAGE
    assert err.count("\n") == 0 and err.startswith(f"error: {override}: ") and words in err, err


def test_a_value_of_the_right_type_passes(capsys):
    runner.check_keys(CONFIGS, "train", ["data.batch_size=4", "head.norm=true", "task.test_scales=[1.0,2.0]"])
    assert capsys.readouterr().err == ""


def test_help_prints_the_schema_docs_of_the_groups_used():
    text = cli_help.help_text(CONFIGS, "train", "train", [])
    for key, meaning in schema.field_docs(schema.TaskConfig, "task.", shown_only=True).items():
        if key != "task.optimizer":  # a mapping with a YAML comment on its lr
            assert meaning in text, key
    # A group's shown fields are listed; a YAML comment may say what the file's own value means instead.
    for key in schema.field_docs(schema.SyntheticData, "data.", shown_only=True):
        assert f"\n  {key}=" in text, key
    hidden = schema.field_docs(schema.MaskLossConfig)["num_points"]
    assert hidden not in text  # shown=False keeps it out
    predict = cli_help.help_text(CONFIGS, "predict", "predict", [])
    for meaning in schema.field_docs(schema.PredictConfig, shown_only=True).values():
        assert meaning in predict


def test_every_registered_schema_is_named_by_a_config_file():
    """A schema registered and named by no file would check nothing."""
    texts = "\n".join(p.read_text() for p in (ROOT / "configs").rglob("*.yaml"))
    for group, name in cli_schema.SCHEMAS:
        entry = f"- {name}\n" if group != "schema" else f"- schema/{name}@"
        assert entry in texts, (group, name)


def test_a_head_is_added_to_head_multi_as_the_readme_says(capsys):
    """`+head.heads.seg4={name:seg_ms}` (README, Several heads) composes: the entries are checked
    against MultiHeadEntry by dense.config, not refused by Hydra's typing."""
    from dense.config import multi_head_entries

    overrides = ["head=multi", "+head.heads.seg4={name:seg_ms}"]
    runner.check_keys(CONFIGS, "train", overrides)
    assert capsys.readouterr().err == ""
    head = OmegaConf.to_container(compose_config("train", *overrides).head, resolve=True)
    assert set(multi_head_entries(head)) == {"depth", "seg", "seg4"}
    head["heads"]["depth"]["loss_weight"] = "x"
    with pytest.raises(ValueError, match=r"^head.heads.depth.loss_weight='x' must be a number$"):
        multi_head_entries(head)


@pytest.mark.parametrize(
    "arguments,words",
    [
        (
            ["-m", "backbone=tiny14,tiny16", "data.batch_size=2,abc"],
            "error: data.batch_size=abc: data.batch_size takes an integer",
        ),
        (
            ["--multirun", "data.batchsize=2,4"],
            "error: data.batchsize is not a key of the train configuration",
        ),
        (
            ["-m", "head=depth_dpt", "head.layers=[1,2],[a]"],
            "error: head.layers=[a]: head.layers[0] takes an integer",
        ),
    ],
)
def test_a_sweep_s_every_value_is_checked_before_the_jobs_start(arguments, words, capsys):
    """--multirun: a wrong value or key in any job of a sweep is one line, exit 2, before the first job
    (Hydra's own message, several lines and exit 1, came once the jobs had started)."""
    with pytest.raises(SystemExit) as exit_info:
        runner.check_keys(CONFIGS, "train", arguments)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == runner.EXIT_USAGE
    assert err.count("\n") == 0 and err.startswith(words), err


def test_a_sweep_of_right_values_passes(capsys):
    runner.check_keys(
        CONFIGS,
        "train",
        ["-m", "backbone=tiny14,tiny16", "data.batch_size=range(1,3)", "task.test_scales=[1.0],[1.0,2.0]"],
    )
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "override,words",
    [
        (
            "~data.seed",
            "data.seed is a key of its group's schema (SyntheticData in dense/core/schema.py) and cannot be dropped; set it instead (data.seed=VALUE",
        ),
        ("~task.test_flip", "task.test_flip is a key of its group's schema (TaskConfig"),
        ("task.scheduler=3", "task.scheduler takes a mapping (TaskConfig"),
        ("data.batch_size=null", "data.batch_size takes an integer, not null (SyntheticData"),
        ("task.scheduler.power=null", "task.scheduler.power takes a number, not null (SchedulerConfig"),
    ],
)
def test_dropping_a_schema_key_or_replacing_a_nested_one_is_one_clear_line(override, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner.check_keys(CONFIGS, "train", [override])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == runner.EXIT_USAGE
    assert err.count("\n") == 0 and err.startswith(f"error: {override}: {words}"), err


def test_a_key_set_by_a_file_is_not_told_to_be_dropped_when_its_schema_forbids_it(monkeypatch):
    """with_key_origin's advice must work: `~data.batch_size` is refused (a schema's field), `~trainer.x` is not."""
    monkeypatch.setattr(runner, "key_origin", lambda key: "experiment=mine (configs/experiment/mine.yaml)")
    typed = runner.with_key_origin("data.batch_size=0 must be a positive integer")
    assert typed.endswith("override it there, or with data.batch_size=VALUE)") and "~" not in typed
    untyped = runner.with_key_origin("trainer.foo=1 is not a Trainer argument")
    assert untyped.endswith("override it there, or with ~trainer.foo)")
    runner.check_keys(CONFIGS, "train", ["~trainer.max_steps"])  # what it advises there composes


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("layers", "abc", "dense_model.layers='abc' must be a list"),
        ("pretrained", "yes", "dense_model.pretrained='yes' must be true or false"),
        ("max_depth", "10", "dense_model.max_depth='10' must be a number"),
    ],
)
def test_a_crafted_record_of_the_wrong_type_says_what_its_key_takes(key, value, words):
    from dense.checkpoint import check_model_config
    from dense.core.errors import WeightsError

    record = build_model("tiny14", "depth_linear", max_depth=20.0).config
    check_model_config(dict(record), "run.ckpt")  # as written: loads
    check_model_config({**record, "min_depth": 0, "max_depth": 20}, "run.ckpt")  # integers are numbers
    with pytest.raises(WeightsError) as error:
        check_model_config({**record, key: value}, "run.ckpt")
    assert str(error.value) == f"run.ckpt: {words}"


def test_a_stored_data_option_of_the_wrong_type_says_what_it_takes():
    from dense.core.errors import DatasetError
    from dense.data.datamodule import datamodule_from_config

    config = {"name": "synthetic", "num_train": 2, "num_val": 2, "num_test": 2, "shadows": "maybe"}
    with pytest.raises(DatasetError) as error:
        datamodule_from_config(config, "run.ckpt")
    assert str(error.value) == "run.ckpt: data.shadows='maybe' must be true or false"


def test_a_list_of_group_options_is_checked_item_by_item(capsys):
    """`logger=[csv,tensorboard]` (README, Configuration keys) passes; an unknown item is named."""
    runner.check_group_choices(CONFIGS, "train", ["logger=[csv,tensorboard]"])
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        runner.check_group_choices(CONFIGS, "train", ["logger=[csv,nope]"])
    assert "logger=nope is not an option of configs/logger/" in capsys.readouterr().err


def test_a_preset_for_other_data_names_the_data_it_would_need(capsys):
    with pytest.raises(SystemExit):
        runner.check_keys(CONFIGS, "train", ["experiment=smoke", "data=nyu"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.image_size is not an option of the nyu dataset")
    assert err.endswith("choose a preset made for data=nyu, or none") and "\n" not in err


def test_an_unknown_key_under_a_typed_node_points_at_its_schema(capsys):
    """Under a schema's node a new key cannot be added with + (the fields are the keys): the line names
    the schema instead; an untyped node (trainer) keeps the + hint."""
    with pytest.raises(SystemExit):
        runner.check_keys(CONFIGS, "train", ["data.batchsize=4"])
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: data.batchsize is not a key of the train configuration (did you mean data.batch_size?); "
        "its keys are the fields of SyntheticData in dense/core/schema.py"
    )
    with pytest.raises(SystemExit):
        runner.check_keys(CONFIGS, "train", ["trainer.max_step=5"])
    assert capsys.readouterr().err.strip().endswith("to add a new key write +trainer.max_step=5")


def test_the_untyped_groups_are_train_s_nodes_no_schema_types():
    """runner.with_key_origin offers `~KEY` only under these (Hydra refuses to drop a schema's field):
    the config groups TrainConfig leaves Any whose files name no schema registered."""
    hints = schema.type_hints(schema.TrainConfig)
    loose = {name for name, hint in hints.items() if hint is Any and (CONFIGS / name).is_dir()}
    grouped = {group for group, _ in cli_schema.SCHEMAS if group != "schema"}
    assert set(schema.UNTYPED_GROUPS) == loose - grouped == {"trainer", "logger", "callbacks", "paths"}
