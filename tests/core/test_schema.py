"""The typed schemas of the config groups (dense/core/schema.py) as a checker of plain data: what a
checkpoint's stored dicts are compared with, never instantiated."""

from __future__ import annotations

import dataclasses

import pytest

from dense.core import schema


def test_types_of_plain_values():
    S = schema.ModelRecord
    assert schema.type_problem({"backbone": "vits14", "head": "depth_dpt"}, S) is None
    assert (
        schema.type_problem({"backbone": "vits14", "head": "depth_dpt", "min_depth": 1}, S) is None
    )  # an int is a number
    # true/false is not a number, a number is not true/false, a string is neither
    assert "min_depth=True must be a number" in schema.type_problem(
        {"backbone": "a", "head": "b", "min_depth": True}, S
    )
    assert "norm=1 must be true or false" in schema.type_problem({"backbone": "a", "head": "b", "norm": 1}, S)
    assert "backbone=3 must be a string" in schema.type_problem({"backbone": 3, "head": "b"}, S)
    assert schema.type_problem({"head": "b"}, S) == "backbone is missing"
    assert schema.type_problem({"head": "b"}, S, required=False) is None
    # keys the schema lacks are the caller's business (a head's own options)
    assert schema.type_problem({"backbone": "a", "head": "b", "num_queries": "x"}, S) is None


def test_optional_list_and_mapping_fields():
    H = schema.HeadConfig
    assert schema.type_problem({"layers": None, "options": {}}, H, required=False) is None
    assert schema.type_problem({"layers": [1, 2]}, H, required=False) is None
    assert "layers=[1, 'x'] must be a list or null" in schema.type_problem(
        {"layers": [1, "x"]}, H, required=False
    )
    assert "options=[] must be a mapping" in schema.type_problem({"options": []}, H, required=False)
    assert schema.type_problem({"options": {1: 2}}, H, required=False)  # mapping keys are strings
    T = schema.TaskConfig
    assert schema.type_problem({"scheduler": {"decay": "poly"}}, T, required=False) is None
    assert "scheduler=3 must be a mapping" in schema.type_problem({"scheduler": 3}, T, required=False)


ALL_SCHEMAS = [
    schema.BackboneConfig,
    schema.HeadConfig,
    schema.MultiHeadConfig,
    *schema.DATA_SCHEMAS.values(),
    schema.TaskConfig,
    schema.PredictConfig,
    schema.ModelRecord,
]


@pytest.mark.parametrize("typed", ALL_SCHEMAS, ids=lambda c: c.__name__)
def test_every_shown_field_says_what_it_means(typed):
    for f in dataclasses.fields(typed):
        if f.metadata.get("shown", True):
            assert f.metadata.get("doc", "").strip(), f"{typed.__name__}.{f.name} has no doc"


def test_field_docs_descend_into_nested_groups_and_leave_hidden_fields_out():
    docs = schema.field_docs(schema.TaskConfig, "task.")
    assert "task.scheduler.decay" in docs and "task.mask_loss.num_points" in docs
    shown = schema.field_docs(schema.TaskConfig, "task.", shown_only=True)
    assert "task.scheduler.decay" in shown and "task.mask_loss.num_points" not in shown
    assert "task.mask_loss" in shown  # the nested group's own line stays


def test_the_schema_module_imports_only_the_standard_library():
    """The entry scripts read it before torch loads (start-up in a second)."""
    import ast
    import sys

    tree = ast.parse(open(schema.__file__).read())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
