"""What makes a stage stale, as `dvc status` reports it in a scratch clone (seconds-long stages only)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dsm5lab.yaml_edit import set_values
from test_dvc_pipeline import clone, sh  # noqa: F401  (clone is a fixture)


def status(repo: Path, env: dict, *stages: str) -> dict:
    return json.loads(sh("dvc", "status", "--json", *stages, cwd=repo, env=env) or "{}")


def changed(entry: list, kind: str) -> dict:
    """The `changed deps` (or params, outs) mapping of one stage's `dvc status --json` entry."""
    return next((e[kind] for e in entry if isinstance(e, dict) and kind in e), {})


def set_params(repo: Path, **values) -> None:
    set_values(repo / "params.yaml", {k.replace("__", "."): v for k, v in values.items()}, "test", "set")


def test_hpo_stays_up_to_date_when_only_keys_trials_do_not_see_change(clone):
    repo, env = clone
    sh("dvc", "repro", "--single-item", "study", cwd=repo, env=env)  # the committed lock's definition, rebuilt
    assert "stages/study" not in changed(status(repo, env, "hpo").get("hpo", []), "changed deps")
    # the final model's epochs (trials train hpo.trial_overrides' 3) and a patience that cannot stop a 3-epoch trial
    set_params(repo, train__epochs=5, train__early_stopping__patience=4)
    st = status(repo, env, "study", "hpo", "train")
    assert "study" in st and "train" in st
    assert not changed(st.get("hpo", []), "changed params"), st["hpo"]
    sh("dvc", "repro", "--single-item", "study", cwd=repo, env=env)
    hpo = status(repo, env, "hpo").get("hpo", [])
    assert "stages/study" not in changed(hpo, "changed deps") and not changed(hpo, "changed params"), hpo
    # a key every trial trains with: the definition changes, so does the hpo stage
    set_params(repo, train__weight_decay=0.2)
    sh("dvc", "repro", "--single-item", "study", cwd=repo, env=env)
    assert changed(status(repo, env, "hpo")["hpo"], "changed deps").get("stages/study") == "modified"


def test_a_file_edited_in_an_external_csv_folder_makes_prepare_stale(clone, tmp_path):
    repo, env = clone
    folder = tmp_path / "elsewhere"  # outside the repository, as `-S data.csv_dir=/some/folder`
    sh("dsm5lab", "synth", "--out", str(folder), "--set", "data.synthetic.n_posts=120", cwd=repo, env=env)
    set_params(repo, data__source="csv", data__csv_dir=str(folder))
    sh("dvc", "repro", "--single-item", "prepare", cwd=repo, env=env)
    assert status(repo, env, "prepare") == {}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert str(folder) in [d["path"] for d in lock["stages"]["prepare"]["deps"]]
    posts = folder / "redsm5_posts.csv"
    posts.write_text(posts.read_text(encoding="utf-8").replace(" ", "  ", 1), encoding="utf-8")
    deps = changed(status(repo, env, "prepare")["prepare"], "changed deps")
    assert deps == {str(folder): "modified"}, deps
