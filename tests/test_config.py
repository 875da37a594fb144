"""The params schema: the real params.yaml validates; bad keys, types and ranges name the dotted key."""

from __future__ import annotations

import pytest

from conftest import ROOT, default_params
from dsm5lab.config import apply_overrides, load_params, validate
from dsm5lab.errors import UserError


def test_real_params_validate():
    params = load_params(ROOT / "params.yaml")
    assert params.data.source == "synthetic"
    assert params.data.synthetic.n_posts == 1484
    assert params.prepare.split.train + params.prepare.split.val + params.prepare.split.test == pytest.approx(1)


def test_overrides_read_values_as_yaml():
    raw = apply_overrides(default_params(), ["prepare.n_folds=3", "data.hf.revision=null", "data.criteria_file=c.json"])
    params = validate(raw)
    assert params.prepare.n_folds == 3 and params.data.hf.revision is None
    assert params.data.criteria_file == "c.json"


def test_override_cannot_descend_into_a_value():
    with pytest.raises(UserError, match="'seed' is a value, not a section"):
        apply_overrides(default_params(), ["seed.x=1"])


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("prepare.colour=red", "unknown key 'prepare.colour' (allowed here: split, n_folds, alignment, require_all_criteria)"),
        ("data.synthetic.n_posts=5", "data.synthetic.n_posts: Input should be greater than or equal to 20 (got 5)"),
        ("prepare.alignment.fuzzy_threshold=high", "prepare.alignment.fuzzy_threshold: Input should be a valid number"),
        ("prepare.split.val=0", "prepare.split.val: Input should be greater than 0"),
        ("data.source=parquet", "data.source: Input should be 'synthetic', 'csv' or 'hf'"),
        ("prepare.require_all_criteria=maybe", "prepare.require_all_criteria: Input should be a valid boolean"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(UserError) as info:
        validate(apply_overrides(default_params(), [override]), source="params.yaml")
    assert fragment in str(info.value)
    assert str(info.value).startswith("params.yaml: ")


def test_missing_key_is_reported():
    raw = default_params()
    del raw["prepare"]["n_folds"]
    with pytest.raises(UserError, match="missing key 'prepare.n_folds'"):
        validate(raw)


def test_every_error_gets_its_own_line():
    raw = apply_overrides(default_params(), ["seed=-1", "prepare.n_folds=0"])
    with pytest.raises(UserError) as info:
        validate(raw)
    lines = str(info.value).splitlines()
    assert len(lines) == 2 and lines[0].startswith("params: seed") and lines[1].startswith("params: prepare.n_folds")


def test_exponent_floats_as_dvc_writes_them_are_numbers(tmp_path):
    """`dvc exp run -S train.learning_rate=1e-5` writes `1e-05`, a string to YAML 1.1 readers like PyYAML."""
    text = (ROOT / "params.yaml").read_text().replace("learning_rate: 0.003", "learning_rate: 1e-05", 1)
    assert "learning_rate: 1e-05" in text
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.learning_rate == 1e-5


@pytest.mark.parametrize(("text", "where", "problem"), [
    ("seed: 1\ntrain: [unclosed\n", ":3:1:", "expected ',' or ']', but got '<stream end>'"),
    ("seed: 1\ntrain:\n  a: 1\n   b: 2\n", ":4:5:", "mapping values are not allowed here"),
    ("seed: 1\n\ttrain: 1\n", ":2:1:", "found character '\\t' that cannot start any token"),
])
def test_a_yaml_syntax_error_names_the_line_and_column(tmp_path, text, where, problem):
    from dsm5lab.config import read_yaml

    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_yaml(path)
    assert str(err.value) == f"{path}{where} not valid YAML: {problem}"
