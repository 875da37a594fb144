"""Criterion descriptions: the packaged file and a user's own wording."""

from __future__ import annotations

import json

import pytest

from dsm5lab.data.criteria import load_criteria
from dsm5lab.data.labels import SYMPTOMS
from dsm5lab.errors import UserError


def test_packaged_criteria_cover_a1_to_a9_in_order():
    criteria = load_criteria()
    assert [c.id for c in criteria] == [f"A.{i}" for i in range(1, 10)]
    assert [c.symptom for c in criteria] == list(SYMPTOMS)
    assert all(len(c.description.split()) >= 8 for c in criteria)


def test_custom_file_is_used_by_prepare(workdir, cli):
    doc = {"criteria": [
        {"id": f"A.{i + 1}", "symptom": s, "name": s.title(), "description": f"custom wording for {s}"}
        for i, s in reversed(list(enumerate(SYMPTOMS)))
    ]}
    (workdir / "mine.json").write_text(json.dumps(doc))
    result = cli("prepare", "--set", "data.criteria_file=mine.json", "--set", "data.synthetic.n_posts=120")
    assert result.exit_code == 0, result.output
    written = json.loads((workdir / "stages/prepare/criteria.json").read_text())["criteria"]
    assert [c["symptom"] for c in written] == list(SYMPTOMS)  # put back in DSM-5 order
    assert written[0]["description"] == "custom wording for DEPRESSED_MOOD"


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("not json", "not valid JSON"),
        ('{"items": []}', "expected an object with a 'criteria' list"),
        ('{"criteria": [{"id": "A.1", "symptom": "SADNESS", "name": "x", "description": "y"}]}', "unknown symptom 'SADNESS'"),
    ],
)
def test_bad_criteria_files(tmp_path, content, fragment):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(UserError, match=fragment):
        load_criteria(path)


def test_wrong_id_for_symptom(tmp_path):
    doc = {"criteria": [
        {"id": f"A.{i + 1}", "symptom": s, "name": s, "description": "d"} for i, s in enumerate(SYMPTOMS)
    ]}
    doc["criteria"][0]["id"] = "A.9"
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="DEPRESSED_MOOD must have id 'A.1'"):
        load_criteria(path)
