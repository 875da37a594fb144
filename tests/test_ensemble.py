"""`dsm5lab evaluate --ensemble`: the retention stage's tracked best-K, averaged, against the best alone.

The tracked set is real: a tiny model trained for two epochs keeps both checkpoints, and the retention
stage copies them into stages/retention with their assets and index.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TRAINED, copy_project, run_in
from dsm5lab.config import load_params
from dsm5lab.errors import UserError
from test_train import sets

ENS = TRAINED + ["evaluate.bootstrap_resamples=50", "retention.keep_best_k=2"]
SET = Path("stages/retention")


@pytest.fixture(scope="module")
def tracked(tiny_trained, tmp_path_factory):
    """The session's trained tiny model (two checkpoints kept) plus retention, once; tests copy the folder."""
    root = tmp_path_factory.mktemp("tracked") / "p"
    shutil.copytree(tiny_trained, root)
    run_in(root, "retention", *sets(ENS))
    return root


@pytest.fixture
def project(tracked, tmp_path, monkeypatch):
    return copy_project(tracked, tmp_path, monkeypatch)


def params():
    return load_params(Path("params.yaml"), ENS)


def ranked() -> list[Path]:
    return [SET / e["path"] for e in json.loads((SET / "index.json").read_text()) if e["rank"] is not None]


def test_the_tracked_set_has_two_ranked_members(project):
    assert len(ranked()) == 2 and all((p / "model.safetensors").is_file() for p in ranked())


def test_one_member_reproduces_that_members_own_evaluation(project):
    from dsm5lab.evaluation import ensemble, stage

    best = ranked()[0]
    own = stage.run(params(), Path("."), model_dir=best, out_dir=Path("own"))
    result = ensemble.run(params(), Path("."), SET, Path("one"), top_k=1)
    assert result["ensemble"]["headline"] == result["single_best"]["headline"] == stage.headline(own)
    assert result["ensemble"]["report"]["criteria"] == own["criteria"]
    assert result["ensemble"]["report"]["evidence"] == own["evidence"]
    assert set(result["delta"].values()) == {0.0}
    assert [m["path"] for m in result["members"]] == [best.relative_to(SET).as_posix()]
    assert json.loads(Path("one/metrics.json").read_text()) == stage.headline(own)


def test_the_ensemble_averages_the_members_and_tunes_its_thresholds_on_val(project, cli, monkeypatch):
    from dsm5lab.evaluation import operating, stage

    settings = stage.Settings.of(params())
    members = [stage.predict_val_test(Path("."), p, settings) for p in ranked()]
    tuned = []
    real = operating.tune_thresholds  # criteria thresholds (objective f1); evidence sentences tune apart
    monkeypatch.setattr(operating, "tune_thresholds",
                        lambda y, p, grid=None: tuned.append((y, p)) or real(y, p, grid))
    outs = [Path("metrics/evaluate.json"), Path("reports/evaluate/summary.md"), Path("stages/evaluate/model/x")]
    for p in outs:  # stand-ins for the pipeline's evaluate outputs, which the ensemble must leave alone
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("pipeline\n")
    result = cli("evaluate", "--ensemble", str(SET), *sets(ENS))
    assert result.exit_code == 0, result.output
    assert "| key | single best | ensemble | delta |" in result.stdout
    out = json.loads(Path("reports/ensemble/ensemble_report.json").read_text())
    report = out["ensemble"]["report"]
    stage.validate_report(report)
    # tune_thresholds ran twice, both on val: the best member alone, then the averaged probabilities
    val_gold = members[0][2].gold
    assert len(tuned) == 2 and all(np.array_equal(y, val_gold) for y, _ in tuned)
    mean_val = np.mean([m[2].prob for m in members], axis=0)
    np.testing.assert_array_equal(tuned[1][1], mean_val)
    assert not np.array_equal(mean_val, members[0][2].prob)  # two different checkpoints
    thresholds = report["criteria"]["thresholds"]
    assert thresholds["tuned_on"] == "val" and thresholds["values"] == dict(zip(thresholds["values"], real(val_gold,
                                                                                                       mean_val)))
    assert any(v != 0.5 for v in thresholds["values"].values())
    # test metrics are the averaged test probabilities at those thresholds
    from dsm5lab.data.labels import SYMPTOMS
    from dsm5lab.metrics import classification_report

    mean_test = np.mean([m[3].prob for m in members], axis=0)
    expect = classification_report(members[0][3].gold, mean_test, list(thresholds["values"].values()), list(SYMPTOMS))
    assert report["criteria"]["test_at_tuned"] == json.loads(json.dumps(expect))
    assert out["delta"]["test.macro_f1"] == pytest.approx(
        out["ensemble"]["headline"]["test"]["macro_f1"] - out["single_best"]["headline"]["test"]["macro_f1"], abs=1e-6)
    assert report["model"]["path"] == str(SET) and len(report["model"]["members"]) == 2
    assert [m["rank"] for m in out["members"]] == [0, 1]
    assert any("highest span score" in n for n in report["notes"])
    assert json.loads(Path("reports/ensemble/metrics.json").read_text()) == out["ensemble"]["headline"]
    assert "| test.macro_f1 |" in Path("reports/ensemble/summary.md").read_text()
    assert all(p.read_text() == "pipeline\n" for p in outs)
    assert sorted(Path("reports/evaluate").rglob("*")) == [outs[1]]


def _split(post_ids, prob, sent_prob, spans) -> "SplitPredictions":  # noqa: F821
    from dsm5lab.data.labels import SYMPTOMS
    from dsm5lab.evaluation.views import SplitPredictions

    posts = pd.DataFrame({"post_id": post_ids, **{s: 0 for s in SYMPTOMS}})
    sentences = [(np.zeros((2, 9), dtype=np.int8), np.full((2, 9), p), np.array([[0, 3], [4, 9]]))
                 for p in sent_prob]
    return SplitPredictions("val", posts, posts[list(SYMPTOMS)].to_numpy(), np.full((len(post_ids), 9), prob),
                            sentences, spans)


def test_average_means_probabilities_and_takes_the_highest_scoring_span():
    from dsm5lab.evaluation.ensemble import average

    low = np.tile([0.0, 3.0, 0.2], (2, 9, 1))
    high = np.tile([4.0, 9.0, 0.9], (2, 9, 1))
    a = _split(["x", "y"], 0.2, [0.1, 0.3], np.stack([low[0], high[1]]))
    b = _split(["x", "y"], 0.6, [0.5, 0.7], np.stack([high[0], low[1]]))
    m = average([a, b])
    np.testing.assert_allclose(m.prob, 0.4)
    np.testing.assert_allclose([s[1][0, 0] for s in m.sentences], [0.3, 0.5])
    np.testing.assert_array_equal(m.spans, high)  # x from b, y from a


def test_average_refuses_members_that_do_not_line_up():
    from dsm5lab.evaluation.ensemble import average

    spans = np.zeros((2, 9, 3))
    with pytest.raises(UserError, match="do not line up"):
        average([_split(["x", "y"], 0.2, [0.1, 0.3], spans), _split(["y", "x"], 0.2, [0.1, 0.3], spans)])
    with pytest.raises(UserError, match="different heads"):
        average([_split(["x", "y"], 0.2, [0.1, 0.3], spans), _split(["x", "y"], 0.2, [0.1, 0.3], None)])


def _index(entries) -> None:
    (SET / "index.json").write_text(json.dumps(entries))


def _with_criteria_only_run() -> None:
    """A second run in the tracked set whose model has no evidence head (its config says so)."""
    shutil.copytree(SET / "train", SET / "other")
    config = json.loads((SET / "other/assets/config.json").read_text())
    config["spec"]["task"] = "criteria"
    (SET / "other/assets/config.json").write_text(json.dumps(config))
    entries = json.loads((SET / "index.json").read_text())
    _index([entries[0], {**entries[1], "run": "other", "path": "other/" + entries[1]["path"].split("/", 1)[1]}])


@pytest.mark.parametrize("setup,args,fragment", [
    (lambda: (SET / "index.json").unlink(), [], "index.json: no such file"),
    (lambda: (SET / "index.json").write_text("[{"), [], "index.json: not valid JSON"),
    (lambda: _index({"rank": 0}), [], "expected a JSON list of entries"),
    (lambda: _index([]), [], "no ranked checkpoints"),
    (lambda: _index([{**e, "rank": None} for e in json.loads((SET / "index.json").read_text())]), [],
     "no ranked checkpoints"),
    (lambda: shutil.rmtree(ranked()[1]), [], "tracked member (rank 1) missing"),
    (_with_criteria_only_run, [], "ensemble members must have the same heads"),
    (lambda: None, ["--model", "stages/retention/train"], "give --model or --ensemble, not both"),
    (lambda: None, ["--out", "reports/evaluate"], "which the ensemble must not touch"),
    (lambda: None, ["--out", "stages/train/model"], "inside stages, which the ensemble must not touch"),
    (lambda: None, ["--out", "reports/hpo/x"], "which the ensemble must not touch"),
    (lambda: None, ["--top-k", "0"], "--top-k"),
])
def test_bad_input_is_one_line_and_writes_nothing(project, cli, setup, args, fragment):
    setup()
    result = cli("evaluate", "--ensemble", str(SET), *args, *sets(ENS))
    assert result.exit_code == 2 and fragment in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not Path("reports/ensemble").exists() and not Path("reports/evaluate").exists()


def test_top_k_needs_ensemble(project, cli):
    result = cli("evaluate", "--top-k", "2", *sets(ENS))
    assert result.exit_code == 2 and "--top-k needs --ensemble" in result.stderr
    assert not Path("reports/evaluate").exists()


def test_top_k_takes_the_best_first(project):
    from dsm5lab.evaluation.ensemble import members

    _index(list(reversed(json.loads((SET / "index.json").read_text()))))  # order on disk does not matter: rank does
    assert [e["rank"] for e in members(SET, 1)] == [0] and [e["rank"] for e in members(SET)] == [0, 1]
