"""`dsm5lab compare A B`: paired bootstrap and McNemar between two models' test decisions, read from git
revisions, DVC experiments, the workspace or a folder. The pipeline test compares a trained model with
itself untrained, and two queued DVC experiments by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from dsm5lab import comparison
from test_gate import commit, git
from test_gate import repo as gate_repo  # noqa: F401 (a fixture)
from test_paired import decisions, write_run

FAST = ["--set", "evaluate.bootstrap_resamples=400"]


@pytest.fixture
def repo(gate_repo):
    """A git repo whose HEAD~1 holds good decisions and HEAD the same posts scored by a much worse model."""
    shutil.copy(ROOT / "params.yaml", gate_repo / "params.yaml")
    ids, gold, pred, sentences = decisions(seed=0)
    write_run(gate_repo, ids, gold, pred, sentences)
    commit(gate_repo, "good model")
    rng = np.random.default_rng(9)
    worse = np.where(rng.random(pred.shape) < 0.7, pred, ~pred)  # 30% of the decisions flipped
    write_run(gate_repo, ids, gold, worse, [(g, p & ~g) for g, p in sentences])
    commit(gate_repo, "worse model")
    return gate_repo


def test_a_model_against_itself_differs_in_nothing(repo, cli):
    result = cli("compare", "HEAD", "HEAD", "--json", "out.json", *FAST)
    assert result.exit_code == 0, result.output
    out = json.loads(Path("out.json").read_text())
    assert out["n_posts"] == 300 and out["resamples"] == 400
    for row in [*out["metrics"].values(), *out["criteria"].values()]:
        assert row["delta"] == 0 and row["p_value"] == 1.0 and not row["significant"]
    assert out["mcnemar"]["only_a_right"] == out["mcnemar"]["only_b_right"] == 0 and out["mcnemar"]["p_value"] == 1
    assert "McNemar" in result.stdout and "test.macro_f1" in result.stdout


def test_a_much_worse_model_is_found_significantly_worse(repo, cli):
    result = cli("compare", "HEAD~1", "workspace", "--json", "out.json", *FAST)
    assert result.exit_code == 0, result.output
    out = json.loads(Path("out.json").read_text())
    for key in ("test.macro_f1", "paper.micro_f1", "evidence.sentence_macro_f1"):
        row = out["metrics"][key]
        assert row["delta"] < 0 and row["high"] < 0 and row["significant"], (key, row)
    assert all(r["significant"] and r["p_holm"] >= r["p_value"] for r in out["criteria"].values())
    m = out["mcnemar"]
    assert m["only_a_right"] > m["only_b_right"] and m["p_value"] < 1e-6
    # swapped, the same difference with the other sign
    cli("compare", "workspace", "HEAD~1", "--json", "swapped.json", *FAST)
    swapped = json.loads(Path("swapped.json").read_text())
    assert swapped["metrics"]["test.macro_f1"]["delta"] == pytest.approx(-out["metrics"]["test.macro_f1"]["delta"])


def test_a_dvc_experiment_is_found_by_name(repo, cli):
    head = git(repo, "rev-parse", "HEAD").strip()
    base = git(repo, "rev-parse", "HEAD~1").strip()
    git(repo, "update-ref", f"refs/exps/{base[:2]}/{base[2:]}/sunny-kite", head)
    git(repo, "update-ref", "refs/exps/exec/EXEC_HEAD", base)  # DVC's own refs are not experiments
    git(repo, "update-ref", "refs/exps/temp/ab/cd", base)
    out = comparison.run(repo, "HEAD~1", "sunny-kite", "reports/evaluate/predictions", 50, 0, 0.05)
    assert out["b"]["commit"] == head and out["metrics"]["test.macro_f1"]["delta"] < 0
    assert comparison.experiments(repo) == {"sunny-kite": [head]}


@pytest.mark.parametrize("args,fragment", [
    (["HEAD", "nope"], "'nope' is neither a git revision, a DVC experiment name (experiments: none here), "
                       "'workspace' nor a folder holding test_posts.csv"),
    (["HEAD~2", "HEAD"], "reports/evaluate/predictions/test_posts.csv is not committed at 'HEAD~2'"),
    (["HEAD", "HEAD", "--set", "evaluate.bootstrap_resamples=0"], "evaluate.bootstrap_resamples must be >= 1"),
])
def test_bad_references_are_one_line(repo, cli, args, fragment):
    result = cli("compare", *args)
    assert result.exit_code == 2 and fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_other_test_posts_cannot_be_paired(repo, cli):
    ids, gold, pred, sentences = decisions(seed=0, n=200)
    write_run(repo, ids, gold, pred, sentences)
    result = cli("compare", "HEAD", "workspace")
    assert result.exit_code == 2 and "scored different test posts (300 vs 200" in result.stderr


def test_holm_and_mcnemar_by_hand():
    assert comparison.holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    right = np.array([True] * 10 + [False] * 5)
    m = comparison.mcnemar(right, np.ones(15, dtype=bool))  # B right on 5 more posts, never worse
    assert (m["only_a_right"], m["only_b_right"]) == (0, 5) and m["p_value"] == pytest.approx(2 / 2**5)
    assert comparison.mcnemar(right, right)["p_value"] == 1.0


def test_other_gold_labels_cannot_be_paired(repo, cli):
    ids, gold, pred, sentences = decisions(seed=0)
    gold = gold.copy()
    gold[0] = ~gold[0]
    write_run(repo, ids, gold, pred, sentences)
    result = cli("compare", "HEAD", "workspace")
    assert result.exit_code == 2 and "different gold labels" in result.stderr


def test_too_few_resamples_for_holm_say_so(repo, cli):
    assert comparison.min_holm_resamples(9, 0.05) == 360
    said = cli("compare", "HEAD~1", "HEAD", "--set", "evaluate.bootstrap_resamples=100").stdout
    assert "no criterion can reach Holm-adjusted p < 0.05; use at least 360" in said
    assert "Holm" not in cli("compare", "HEAD~1", "HEAD", *FAST).stdout.split("McNemar")[1]
