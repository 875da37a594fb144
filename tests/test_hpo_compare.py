"""`dsm5lab hpo compare-pruning`: the replay without pruning, and other pruner settings played over its curves."""

from __future__ import annotations

import json

import pytest

from conftest import default_params
from dsm5lab.config import validate
from dsm5lab.hpo.compare import play_inputs, what_if
from hpo_helpers import make_project, tiny_params


def test_what_if_counts_the_reports_each_pruner_runs_and_whether_it_keeps_the_best():
    params = validate(default_params())  # maximize val/macro_f1
    curves = [{0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.55, 1: 0.65, 2: 0.72}, {0: 0.1, 1: 0.1, 2: 0.1}, {0: 0.6, 1: 0.7, 2: 0.8}]
    finals = [0.7, 0.72, 0.1, 0.8]
    rows = {r["pruner"]: r for r in what_if(params, curves, finals, "s", {
        "none": {"type": "none"},
        "median startup 2 warmup 0": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        "median startup 2 warmup 1": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
    })}
    assert rows["none"] == {"pruner": "none", "settings": {"type": "none"}, "reports_run": 12, "reports_full": 12,
                            "saved_share": 0.0, "pruned": 0, "best_value": 0.8, "keeps_best": True}
    # the bad third trial stops at its first report, or at its second after a one-report warm-up
    assert rows["median startup 2 warmup 0"]["reports_run"] == 10 and rows["median startup 2 warmup 0"]["pruned"] == 1
    assert rows["median startup 2 warmup 1"]["reports_run"] == 11
    assert rows["median startup 2 warmup 1"]["saved_share"] == round(1 - 11 / 12, 4)
    assert all(r["keeps_best"] for r in rows.values())
    assert list(rows)[0] == "this study's pruner"  # first, as the check against what the study really pruned


def test_compare_pruning_replays_the_study_and_its_own_pruner_replays_exactly(tmp_path, monkeypatch, cli):
    """The replay trains each finished trial to the end; the study's own pruner, played over those curves, must
    prune exactly what the real study pruned (training is deterministic): the what-if rows stand on that."""
    pruner = {**tiny_params()["hpo"]["pruner"], "type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}
    root = make_project(tmp_path / "p", n_trials=5, pruner=pruner, trial_overrides={"train.epochs": 3})
    monkeypatch.chdir(root)
    monkeypatch.setenv("CI", "true")
    assert cli("hpo", "run").exit_code == 0
    result = cli("hpo", "compare-pruning")
    assert result.exit_code == 0, result.output
    r = json.loads((root / "reports/bench/hpo_pruning.json").read_text())
    assert r["trials"] == 5 and r["pruned"] and r["without_pruning"]["trial_epochs"] > r["with_pruning"]["trial_epochs"]
    own = r["what_if"][0]
    assert own["pruner"] == "this study's pruner" and own["settings"] == r["pruner"]
    assert own["reports_run"] == r["with_pruning"]["trial_epochs"] and own["pruned"] == len(r["pruned"])
    assert own["reports_full"] == r["without_pruning"]["trial_epochs"]
    assert r["saved_epochs_share"] == round(1 - own["reports_run"] / own["reports_full"], 4)
    assert r["equal_best"] == (r["best_with_pruning"]["value"] == r["best_without_pruning"]["value"])
    assert "this study's pruner" in result.output and "hyperband rf 3" in result.output


def committed_measurements() -> list:
    from conftest import ROOT

    return [ROOT / "reports/bench/hpo_pruning.json", *sorted((ROOT / "reports/bench/hpo_pruning_tuning").glob("*.json"))]


@pytest.mark.parametrize("path", committed_measurements(), ids=lambda p: p.name)
def test_a_committed_pruning_measurement_replays_from_its_own_curves(path):
    """Each committed measurement carries every trial's full curve: the study's own pruner played over them must
    give what the study measured, and every what-if row must be what the code gives today (not a stale table)."""
    r = json.loads(path.read_text())
    inputs = play_inputs(r, validate(default_params()))
    rows = what_if(**inputs, candidates={row["pruner"]: row["settings"] for row in r["what_if"][1:]})
    assert rows == r["what_if"]
    curves = inputs["curves"]
    own = rows[0]
    assert r["trials"] == len(curves) >= 20 and own["reports_full"] == r["without_pruning"]["trial_epochs"]
    if path.parent.name != "hpo_pruning_tuning":
        assert (own["reports_run"], own["pruned"]) == (r["with_pruning"]["trial_epochs"], len(r["pruned"]))
    # the tuning studies ran while a trial could still be pruned at its fit's final validation (where patience
    # ended it), which saved nothing but turned finished trials into pruned ones: their own play, under today's
    # rule, keeps those trials, so the median moves and later prunings differ from what they measured


def test_the_readme_table_is_the_committed_measurement():
    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    r = json.loads((ROOT / "reports/bench/hpo_pruning.json").read_text())
    w, wo = r["with_pruning"], r["without_pruning"]
    assert f"| {r['study']} | {r['trials']} | {len(r['pruned'])} | {w['trial_epochs']:g} / {wo['trial_epochs']:g} |" \
           in readme
    assert f"{r['saved_epochs_share']:.1%}" in readme


def test_the_readme_tuning_table_is_the_committed_tuning_measurements():
    from conftest import ROOT

    lines = (ROOT / "README.md").read_text().splitlines()
    for path in committed_measurements()[1:]:
        for row in json.loads(path.read_text())["what_if"][1:]:
            (line,) = [x for x in lines if x.startswith(f"| {row['pruner']} |")]
            assert f"{row['saved_share']:.1%} {'kept' if row['keeps_best'] else 'lost'}" in line, (path.name, line)


def test_what_if_never_prunes_at_a_curve_s_last_report_and_keeps_trial_numbers():
    """A trial whose fit ended early (patience, or 2 searched epochs) is not pruned at its last report, as
    trial.Reporter never prunes a fit's final validation; the play numbers trials as the study did (a failed
    trial leaves a gap), since Hyperband's brackets hash the number."""
    import optuna

    params = validate(default_params())
    curves = [{0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.55, 1: 0.65, 2: 0.72}, {0: 0.1, 1: 0.1}]
    setting = {"median": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1}}
    short = what_if(params, curves, [0.7, 0.72, 0.1], "s", setting)
    assert short[1]["pruned"] == 0 and short[1]["reports_run"] == 8
    longer = what_if(params, curves[:2] + [{0: 0.1, 1: 0.1, 2: 0.1}], [0.7, 0.72, 0.1], "s", setting)
    assert longer[1]["pruned"] == 1 and longer[1]["reports_run"] == 8  # pruned at report 1, its third unrun
    seen, real_ask = [], optuna.Study.ask

    def recording_ask(self, *args, **kwargs):
        trial = real_ask(self, *args, **kwargs)
        seen.append(trial.number)
        return trial

    optuna.Study.ask = recording_ask
    try:
        what_if(params, curves, [0.7, 0.72, 0.1], "s", setting, numbers=[0, 1, 4])
    finally:
        optuna.Study.ask = real_ask
    assert seen == [0, 1, 2, 3, 4] * 2  # each play (own, median): 2 and 3 asked and failed, then trial 4


def test_replay_plays_today_s_settings_over_a_written_measurement(workdir, cli):
    """`compare-pruning --replay FILE` rewrites the what-if rows from the file's curves alone (no training)."""
    from conftest import ROOT

    committed = ROOT / "reports/bench/hpo_pruning_tuning/c-hyperband-rf2-b2.json"
    r = json.loads(committed.read_text())
    stale = {**r, "what_if": []}
    (workdir / "m.json").write_text(json.dumps(stale))
    result = cli("hpo", "compare-pruning", "--replay", "m.json")
    assert result.exit_code == 0, result.output
    assert json.loads((workdir / "m.json").read_text())["what_if"] == r["what_if"]
    (workdir / "bad.json").write_text('{"study": "s"}')
    bad = cli("hpo", "compare-pruning", "--replay", "bad.json")
    assert bad.exit_code != 0 and bad.output.strip().splitlines() == [
        "error: --replay: bad.json: not a measurement written by `hpo compare-pruning` ('pruner')"]
    assert json.loads((workdir / "bad.json").read_text()) == {"study": "s"}  # left as it was
