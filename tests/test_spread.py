"""The spread stage: the train config under several seeds, and cross-validated over prepare's folds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY, copy_project, sets
from dsm5lab.evaluation import spread

FAST = TINY + ["train.epochs=1", "evaluate.bootstrap_resamples=50"]


@pytest.fixture
def project(tiny_prepared, tmp_path, monkeypatch):
    return copy_project(tiny_prepared, tmp_path, monkeypatch)


def test_off_by_default_it_measures_nothing_and_touches_nothing(project, cli):
    result = cli("spread", *sets(FAST))
    assert result.exit_code == 0, result.output
    assert json.loads(Path("metrics/spread.json").read_text()) == {"seeds": {"n": 0}, "cv": {"enabled": False}}
    assert "No seed study" in Path("reports/spread/summary.md").read_text()
    assert not Path("stages/train").exists() and not Path("checkpoints").exists()


def test_seeds_report_mean_std_min_max_beside_the_single_run_interval(project, cli):
    result = cli("spread", *sets(FAST + ["spread.seeds=[3, 4, 5]"]))
    assert result.exit_code == 0, result.output
    full = json.loads(Path("reports/spread/spread.json").read_text())
    assert [r["seed"] for r in full["runs"]] == [3, 4, 5]
    values = [r["values"]["test.macro_f1"] for r in full["runs"]]
    assert len(set(values)) > 1, "three seeds gave the same number: the seed did not reach training"
    got = json.loads(Path("metrics/spread.json").read_text())["seeds"]
    assert got["n"] == 3
    assert got["test.macro_f1"] == {"mean": round(statistics.fmean(values), 6), "std": round(statistics.stdev(values), 6),
                                    "min": round(min(values), 6), "max": round(max(values), 6)}
    assert {"val.macro_f1", "paper.micro_f1", "evidence.sentence_macro_f1"} <= set(got)
    assert full["seeds"]["metrics"]["test.macro_f1"]["single_run_ci_width"] > 0
    assert "single-run 95% CI width" in Path("reports/spread/summary.md").read_text()
    # the project's own outputs are untouched: every run happened in a scratch copy
    assert not Path("stages/train").exists() and not Path("checkpoints").exists()


def test_cv_scores_each_train_val_post_once_and_never_reads_test(project, cli, monkeypatch):
    from dsm5lab.evaluation import views

    seen: list[set[str]] = []
    real = views.predict_split

    def spy(name, model, windower, part, *args, **kwargs):
        seen.append(set(part["post_id"]))
        return real(name, model, windower, part, *args, **kwargs)

    monkeypatch.setattr(views, "predict_split", spy)
    result = cli("spread", *sets(FAST + ["spread.cv=true"]))
    assert result.exit_code == 0, result.output
    cv = json.loads(Path("reports/spread/spread.json").read_text())["cv"]
    from dsm5lab.data.schema import read_table

    table = read_table(Path("stages/prepare"), "posts")
    folds = table.loc[table["fold"] >= 0, "fold"].nunique()
    assert cv["folds"] == folds >= 3 and len(seen) == 2 * folds  # per fold: the tuning fold, the held-out fold
    held = seen[1::2]
    assert all(not a & b for i, a in enumerate(held) for b in held[i + 1:])  # each post held out once
    pool = set(table.loc[table["fold"] >= 0, "post_id"])
    assert set().union(*held) == pool and cv["posts"] == len(pool)
    assert not set().union(*seen) & set(table.loc[table["split"] == "test", "post_id"])
    for tune, out in zip(seen[0::2], held):  # thresholds tuned on another fold, of the training part
        assert tune and not tune & out
    got = json.loads(Path("metrics/spread.json").read_text())["cv"]
    assert got == {"enabled": True, "folds": folds, **cv["out_of_fold"]}


def test_cv_needs_three_folds():
    posts = pd.DataFrame({"post_id": list("abcd"), "fold": [0, 1, 0, 1]})
    with pytest.raises(Exception, match="spread.cv needs prepare.n_folds >= 3"):
        spread.fold_plan(posts)
    plan = spread.fold_plan(pd.DataFrame({"post_id": list("abcdefg"), "fold": [0, 1, 2, 0, 1, 2, -1]}))
    assert [(h, sorted(t), sorted(u), sorted(o)) for h, t, u, o in plan] == [
        (0, ["c", "f"], ["b", "e"], ["a", "d"]), (1, ["a", "d"], ["c", "f"], ["b", "e"]),
        (2, ["b", "e"], ["a", "d"], ["c", "f"])]


@pytest.mark.parametrize("value", ["[1, 1]", "[-1]"])
def test_bad_seed_lists_are_one_line(project, cli, value):
    result = cli("spread", *sets(FAST + [f"spread.seeds={value}"]))
    assert result.exit_code == 2 and "spread.seeds" in result.stderr and "distinct" in result.stderr


def test_an_absolute_checkpoint_dir_is_never_touched(project, cli, tmp_path):
    """Seed runs checkpoint inside their scratch copy: a user's pool elsewhere keeps every byte."""
    pool = tmp_path / "pool"
    (pool / "train").mkdir(parents=True)
    (pool / "train" / "keep.txt").write_text("the user's checkpoints\n")
    result = cli("spread", *sets(FAST + ["spread.seeds=[3]", f"train.checkpoint.dir={pool}"]))
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(pool).as_posix() for p in pool.rglob("*")) == ["train", "train/keep.txt"]


def test_cv_refuses_sentence_level(project, cli):
    result = cli("spread", *sets(FAST + ["spread.cv=true", "train.level=sentence", "train.task=criteria"]))
    assert result.exit_code == 2 and "train.level is sentence (allowed: post)" in result.stderr
