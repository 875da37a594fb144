"""The paired check: per-post test decisions, the paired bootstrap, and the gate deciding on significance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from dsm5lab import gate, paired
from dsm5lab.errors import UserError
from dsm5lab.metrics import multilabel_f1, paired_bootstrap, with_none_class
from test_gate import commit, git
from test_gate import repo as gate_repo  # noqa: F401 (a fixture)

N_POSTS = 300
PAIRED_GATE = """\
paired: {resamples: 500, alpha: 0.05, seed: 0}
metrics:
  metrics/evaluate.json:
    test.macro_f1: {direction: higher, tolerance: 0.002}
    paper.micro_f1: {direction: higher, tolerance: 0.002}
    evidence.sentence_macro_f1: {direction: higher, tolerance: 0.002}
    evidence.ndcg_at_k: {direction: higher, tolerance: 0.002}
"""


def decisions(seed: int = 0, n: int = N_POSTS):
    """A plausible test split: sparse gold, decisions right 85% of the time, 1-4 evidence rows per post."""
    rng = np.random.default_rng(seed)
    gold = rng.random((n, 9)) < 0.2
    pred = np.where(rng.random((n, 9)) < 0.85, gold, ~gold)
    sentences = []
    for i in range(n):
        k = int(rng.integers(1, 5))
        g = np.zeros((k, 9), bool)
        g[0] = gold[i]
        p = np.where(rng.random((k, 9)) < 0.9, g, ~g)
        sentences.append((g, p))
    return [f"p{i:04d}" for i in range(n)], gold, pred, sentences


def flip(gold: np.ndarray, pred: np.ndarray, sentences, n_posts: int):
    """The same decisions made wrong on the first n_posts true positives (a drop of chosen size)."""
    pred = pred.copy()
    hits = np.argwhere(pred & gold)[:n_posts]
    pred[hits[:, 0], hits[:, 1]] = False
    return pred, [(g, p & ~g) if i < n_posts else (g, p) for i, (g, p) in enumerate(sentences)]


def write_run(root: Path, ids, gold, pred, sentences, ndcg: float = 0.9) -> None:
    """What the evaluate stage leaves: the decision files and the metrics they determine."""
    tables = paired.frames(ids, gold, pred, pred, sentences)
    paired.write(root / "reports/evaluate/predictions", tables)
    p = paired.parse({n: (root / "reports/evaluate/predictions" / n).read_text() for n in tables}, "x")
    metrics = {"test": {"macro_f1": round(paired.statistic(p, "test.macro_f1"), 6)},
               "paper": {"micro_f1": round(paired.statistic(p, "paper.micro_f1"), 6)},
               "evidence": {"sentence_macro_f1": round(paired.statistic(p, "evidence.sentence_macro_f1"), 6),
                            "ndcg_at_k": ndcg}}
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics/evaluate.json").write_text(json.dumps(metrics))


@pytest.fixture
def repo(gate_repo):
    """test_gate's repo with a paired gate.yaml and a committed baseline run."""
    repo = gate_repo
    (repo / "gate.yaml").write_text(PAIRED_GATE)
    ids, gold, pred, sentences = decisions()
    write_run(repo, ids, gold, pred, sentences)
    commit(repo, "paired baseline")
    return repo


def status(result) -> dict[str, str]:
    return {r.key: r.status for r in result.rows}


# --- the bootstrap ---------------------------------------------------------------------


def test_identical_models_have_zero_delta_and_no_drop():
    scores = np.random.default_rng(1).random(200)
    out = paired_bootstrap(lambda i: (scores[i].mean(), scores[i].mean()), 200, 300, seed=0)
    assert out["delta"] == 0.0 and out["low"] == 0.0 and out["high"] == 0.0
    assert out["p_not_lower"] == 1.0 and out["skipped"] == 0


def test_pairing_detects_a_drop_that_separate_intervals_miss():
    """A uniform 0.02 drop on noisy items: the paired delta is exactly -0.02 on every resample."""
    scores = np.random.default_rng(2).random(200)
    out = paired_bootstrap(lambda i: (scores[i].mean() - 0.02, scores[i].mean()), 200, 300, seed=0)
    assert out["high"] == pytest.approx(-0.02) and out["p_not_lower"] == pytest.approx(1 / 301)
    assert out["p_not_higher"] == 1.0


def test_bootstrap_is_seeded_and_checks_its_arguments():
    scores = np.random.default_rng(3).random(50)
    def stat(i):
        return scores[i].mean(), scores[i].mean() - 0.01 * (scores[i] > 0.5).mean()
    assert paired_bootstrap(stat, 50, 100, seed=7) == paired_bootstrap(stat, 50, 100, seed=7)
    assert paired_bootstrap(stat, 50, 100, seed=7) != paired_bootstrap(stat, 50, 100, seed=8)
    with pytest.raises(ValueError):
        paired_bootstrap(stat, 50, 100, seed=0, alpha=0.5)
    undefined = paired_bootstrap(lambda i: (None, 1.0), 10, 20, seed=0)
    assert undefined["skipped"] == 20 and undefined["low"] is None


# --- the decision files ------------------------------------------------------------------


def test_decisions_round_trip_and_reproduce_the_metrics(tmp_path):
    ids, gold, pred, sentences = decisions()
    paired.write(tmp_path / "p", paired.frames(ids, gold, pred, pred, sentences))
    p = paired.read(tmp_path / "p")
    assert p.post_ids == tuple(ids)
    assert paired.statistic(p, "test.macro_f1") == multilabel_f1(gold, pred)["macro"]
    assert paired.statistic(p, "paper.micro_f1") == multilabel_f1(*with_none_class(gold, pred))["micro"]
    all_gold = np.concatenate([g for g, _ in sentences])
    all_pred = np.concatenate([s for _, s in sentences])
    # only rows with a positive are written, and yet the sentence F1 is the one over every sentence
    assert len(p.sentence_post) < len(all_gold)
    assert paired.statistic(p, "evidence.sentence_macro_f1") == multilabel_f1(all_gold, all_pred)["macro"]


def test_resampled_sentence_statistic_counts_a_post_as_often_as_it_is_drawn(tmp_path):
    ids, gold, pred, sentences = decisions(n=20)
    p = paired.parse({n: f.to_csv(index=False) for n, f in paired.frames(ids, gold, pred, pred, sentences).items()},
                     "x")
    idx = np.array([3, 3, 3, 7, 11, 11])
    want = multilabel_f1(np.concatenate([sentences[i][0] for i in idx]),
                         np.concatenate([sentences[i][1] for i in idx]))["macro"]
    assert paired.statistic(p, "evidence.sentence_macro_f1", idx) == pytest.approx(want)


def test_alignment_reorders_posts_and_their_sentences():
    ids, gold, pred, sentences = decisions(n=30)
    tables = paired.frames(ids, gold, pred, pred, sentences)
    p = paired.parse({n: f.to_csv(index=False) for n, f in tables.items()}, "x")
    order = tuple(reversed(ids))
    q = p.aligned_to(order)
    idx = np.array([0, 1, 1, 5])
    assert paired.statistic(q, "evidence.sentence_macro_f1", idx) == \
        paired.statistic(p, "evidence.sentence_macro_f1", len(ids) - 1 - idx)
    assert paired.statistic(q, "test.macro_f1", idx) == paired.statistic(p, "test.macro_f1", len(ids) - 1 - idx)


@pytest.mark.parametrize(("posts", "expected"), [
    ("post_id,at_tuned\np1,000000000\n", "missing column(s) gold"),
    ("post_id,gold\np1,0100\n", "expected 9 characters of 0/1"),
    ("post_id,gold\np1,010000002\n", "expected 9 characters of 0/1"),
    ("post_id,gold\np1,010000000\np1,000000000\n", "post_id must be unique"),
])
def test_malformed_decision_files_are_one_line(posts, expected):
    with pytest.raises(UserError, match=re.escape(expected)):
        paired.parse({paired.POSTS: posts}, "preds")


def test_sentences_of_unknown_posts_are_refused():
    texts = {paired.POSTS: "post_id,gold\np1,010000000\n",
             paired.SENTENCES: "post_id,sentence,gold,pred\nzz,0,010000000,010000000\n"}
    with pytest.raises(UserError, match="post.s. not in test_posts.csv: zz"):
        paired.parse(texts, "preds")


# --- the gate --------------------------------------------------------------------------


def test_a_drop_within_noise_is_not_significant_and_passes(repo):
    ids, gold, pred, sentences = decisions()
    write_run(repo, ids, gold, *flip(gold, pred, sentences, 2))
    result = gate.check(repo, Path("gate.yaml"))
    s = status(result)
    assert s["test.macro_f1"] == "n.s." and s["evidence.sentence_macro_f1"] == "n.s."
    assert result.passed and "paired check on 300 test posts" in result.paired_note
    # the metric without a statistic (ranking needs scores) is judged by its tolerance alone
    assert next(r for r in result.rows if r.key == "evidence.ndcg_at_k").paired is None


def test_a_real_drop_is_significant_and_fails(repo, cli):
    ids, gold, pred, sentences = decisions()
    write_run(repo, ids, gold, *flip(gold, pred, sentences, 60))
    result = gate.check(repo, Path("gate.yaml"))
    assert status(result)["test.macro_f1"] == "REGRESSED" and not result.passed
    assert gate.significant_drop(next(r for r in result.rows if r.key == "test.macro_f1").paired, "higher")
    shown = cli("gate")
    assert shown.exit_code == 1 and "paired bootstrap" in shown.stdout


def test_without_pairing_the_same_small_drop_fails(repo, cli):
    ids, gold, pred, sentences = decisions()
    write_run(repo, ids, gold, *flip(gold, pred, sentences, 2))
    assert status(gate.check(repo, Path("gate.yaml"), paired=False))["test.macro_f1"] == "REGRESSED"
    shown = cli("gate", "--no-paired")
    assert shown.exit_code == 1 and "paired check off: --no-paired" in shown.stdout


def test_a_rise_is_never_a_regression(repo):
    ids, gold, _, sentences = decisions()
    write_run(repo, ids, gold, gold.copy(), [(g, g.copy()) for g, _ in sentences])
    result = gate.check(repo, Path("gate.yaml"))
    assert result.passed and set(status(result).values()) == {"ok"}


def test_stale_decisions_turn_the_paired_check_off(repo):
    ids, gold, pred, sentences = decisions()
    write_run(repo, ids, gold, *flip(gold, pred, sentences, 2))
    data = json.loads((repo / "metrics/evaluate.json").read_text())
    data["test"]["macro_f1"] -= 0.01  # the metrics now come from another run than the decisions
    (repo / "metrics/evaluate.json").write_text(json.dumps(data))
    result = gate.check(repo, Path("gate.yaml"))
    assert "does not match metrics/evaluate.json (test.macro_f1" in result.paired_note
    assert status(result)["test.macro_f1"] == "REGRESSED"


def test_other_test_posts_or_no_baseline_decisions_leave_the_tolerances(repo):
    ids, gold, pred, sentences = decisions(n=N_POSTS - 10)
    write_run(repo, ids, gold, *flip(gold, pred, sentences, 2))
    result = gate.check(repo, Path("gate.yaml"))
    assert "scored other test posts (300 vs 290 here" in result.paired_note
    assert all(r.paired is None for r in result.rows)
    (repo / ".gitignore").write_text("reports/\n")
    git(repo, "rm", "-r", "-q", "--cached", "reports")
    commit(repo, "no decisions committed")
    result = gate.check(repo, Path("gate.yaml"))
    assert "not committed at revision 'HEAD'" in result.paired_note
    assert all(r.paired is None for r in result.rows)


def test_bad_paired_settings_are_one_line(repo, cli):
    (repo / "gate.yaml").write_text(PAIRED_GATE.replace("alpha: 0.05", "alpah: 0.05"))
    shown = cli("gate")
    assert shown.exit_code != 0
    assert "paired: unknown key 'alpah' (allowed: predictions, file, resamples, alpha, seed)" in shown.output
