"""HPO: the search-space schema, conditional sampling, pruning, the stage's outputs, resume and promote."""

from __future__ import annotations

import copy
import json
import math
import shutil

import optuna
import pytest
import yaml

from conftest import ROOT, default_params
from dsm5lab.config import validate
from dsm5lab.errors import UserError
from dsm5lab.hpo.trial import Reporter
from dsm5lab.hpo.space import definition, fingerprint, resolved_values, suggest
from dsm5lab.hpo.study import make_pruner
from hpo_helpers import load_study, make_project, tiny_params

optuna.logging.set_verbosity(optuna.logging.WARNING)


def params_with(**hpo):
    raw = default_params()
    raw["hpo"] = {**raw["hpo"], **hpo}
    return validate(raw)


# --- schema --------------------------------------------------------------------------------------

@pytest.mark.parametrize("space, fragment", [
    ({"data.seed": {"type": "int", "low": 1, "high": 3}}, "cannot be searched"),
    ({"train.learning_rat": {"type": "float", "low": 0.1, "high": 0.2}}, "'train.learning_rat' is not a key"),
    ({"train.early_stopping": {"type": "categorical", "choices": [1]}}, "is a section"),
    ({"model.pooling": {"type": "categorical", "choices": ["cls", "max"]}}, "value 'max' is not valid for model.pooling"),
    ({"train.learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "'log' needs low > 0"),
    ({"train.epochs": {"type": "int", "low": 1.5, "high": 3}}, "whole-number"),
    ({"train.loss": {"type": "categorical", "choices": ["bce"], "low": 1}}, "choices' only"),
    ({"train.focal_gamma": {"type": "float", "low": 1, "high": 2, "when": {"train.nope": ["x"]}}}, "not a key"),
])
def test_bad_search_space_is_one_clear_error(space, fragment):
    with pytest.raises(UserError) as err:
        params_with(spaces={"default": space}, space="default")
    assert fragment in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_sqlite_with_several_workers_is_refused_naming_the_alternatives():
    with pytest.raises(UserError) as err:
        params_with(workers=2)
    text = str(err.value)
    assert "SQLite" in text and "journal:" in text and "postgresql://" in text


def test_several_objectives_need_pruner_none():
    objectives = [{"metric": "val/macro_f1", "direction": "maximize"},
                  {"metric": "model/n_parameters", "direction": "minimize"}]
    with pytest.raises(UserError, match="pruner.type: none"):
        params_with(objectives=objectives)
    assert params_with(objectives=objectives, pruner={**default_params()["hpo"]["pruner"], "type": "none"})


def test_the_shipped_full_space_is_broad_and_valid():
    params = params_with(space="full")
    assert len(params.hpo.search_space) >= 10


# --- sampling ------------------------------------------------------------------------------------

def test_conditional_params_are_sampled_only_when_their_condition_holds():
    params = params_with(space="full")
    base = params.model_dump(include={"model", "train"})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"focal": 0, "other": 0}
    for _ in range(60):
        trial = study.ask()
        chosen = suggest(trial, params.hpo.search_space, base)
        focal = chosen["train.loss"] in ("focal", "hybrid")
        seen["focal" if focal else "other"] += 1
        assert ("train.focal_gamma" in chosen) == focal, chosen
        assert ("train.focal_alpha" in chosen) == focal, chosen
        assert ("train.hybrid_weight" in chosen) == (chosen["train.loss"] == "hybrid"), chosen
        assert ("model.hidden_dim" in chosen) == (chosen["model.criteria_head"] != "linear"), chosen
        assert set(trial.params) == set(chosen)  # nothing inactive reaches the study either
        study.tell(trial, 0.0)
    assert seen["focal"] and seen["other"]


def test_a_batch_above_max_micro_batch_becomes_accumulation():
    params = params_with(max_micro_batch=16)
    assert resolved_values(params, {"train.batch_size": 64}) == {"train.batch_size": 16, "train.grad_accum_steps": 4}
    # always both keys, so a grad_accum_steps promoted into params.yaml never leaks into a trial
    assert resolved_values(params, {"train.batch_size": 8}) == {"train.batch_size": 8, "train.grad_accum_steps": 1}


def test_a_condition_on_a_later_key_is_refused():
    space = {"train.focal_gamma": {"type": "float", "low": 1, "high": 2, "when": {"train.loss": ["focal"]}},
             "train.loss": {"type": "categorical", "choices": ["focal", "bce"]}}
    with pytest.raises(UserError, match="'train.loss' is searched after 'train.focal_gamma'; list it first"):
        params_with(spaces={"default": space}, space="default")


def test_pruning_with_mid_epoch_validation_is_refused(workdir, cli):
    from test_train import sets

    result = cli("hpo", "run", *sets(["train.eval_every_steps=5"]))
    assert result.exit_code == 2 and "set train.eval_every_steps: 0" in result.output


def test_fingerprint_ignores_searched_values_but_not_the_rest():
    raw = default_params()
    base = fingerprint(validate(raw), "data")
    promoted = copy.deepcopy(raw)
    promoted["train"]["learning_rate"] = 0.0042  # searched: promote must not start a new study
    assert fingerprint(validate(promoted), "data") == base
    changed = copy.deepcopy(raw)
    changed["train"]["weight_decay"] = 0.5
    assert fingerprint(validate(changed), "data") != base
    assert fingerprint(validate(raw), "other data") != base


def with_keys(raw: dict, **values) -> dict:
    from dsm5lab import dotted

    out = copy.deepcopy(raw)
    for key, value in values.items():
        dotted.put(out, key.replace("__", "."), value)
    return out


def test_study_definition_leaves_out_what_trials_cannot_see():
    """train.epochs (replaced by hpo.trial_overrides), operational keys and a patience that cannot stop a
    3-epoch trial early leave the study as it is; anything a trial trains with starts a new one."""
    raw = default_params()
    assert raw["hpo"]["trial_overrides"] == {"train.epochs": 3} and raw["train"]["early_stopping"]["patience"] == 2
    base = definition(validate(raw))
    same = {"train__epochs": 20, "train__threads": 1, "train__early_stopping__patience": 5,
            "train__early_stopping__min_delta": 0.05, "train__checkpoint__dir": "elsewhere"}
    for key, value in same.items():
        assert definition(validate(with_keys(raw, **{key: value}))) == base, key
    changed = {"train__early_stopping__patience": 1, "train__weight_decay": 0.5, "model__max_length": 96,
               "seed": 7, "hpo__trial_overrides": {"train.epochs": 4}}
    for key, value in changed.items():
        assert definition(validate(with_keys(raw, **{key: value}))) != base, key
    # without the override, the trial trains for train.epochs: then it is part of the study
    free = with_keys(raw, hpo__trial_overrides={})
    assert definition(validate(with_keys(free, train__epochs=5))) != definition(validate(free))


def test_study_stage_rewrites_the_same_bytes_when_only_an_unseen_key_changed(workdir, cli):
    from test_train import sets

    assert cli("hpo", "define").exit_code == 0
    path = workdir / "stages/study/definition.json"
    first = path.read_bytes()
    assert json.loads(first)["trial_overrides"] == {"train.epochs": 3}
    assert cli("hpo", "define", *sets(["train.epochs=11"])).exit_code == 0 and path.read_bytes() == first
    assert cli("hpo", "define", *sets(["train.weight_decay=0.2"])).exit_code == 0 and path.read_bytes() != first


# --- pruning -------------------------------------------------------------------------------------

def test_median_pruner_prunes_a_clearly_worse_trial():
    params = params_with(pruner={**default_params()["hpo"]["pruner"], "type": "median", "n_startup_trials": 2,
                                 "n_warmup_steps": 1})
    study = optuna.create_study(direction="maximize", pruner=make_pruner(params))
    for good in ([0.50, 0.60, 0.70], [0.55, 0.65, 0.72]):
        trial = study.ask()
        reporter = Reporter(trial, "val/macro_f1", report=True, deadline=None)
        for v in good:
            reporter(0, {"val/macro_f1": v}, False)
        study.tell(trial, good[-1])
    bad = study.ask()
    reporter = Reporter(bad, "val/macro_f1", report=True, deadline=None)
    reporter(0, {"val/macro_f1": 0.05, "train/epoch": 1.0}, False)  # warm-up report: not prunable yet
    with pytest.raises(optuna.TrialPruned):
        reporter(0, {"val/macro_f1": 0.06, "train/epoch": 2.0}, False)
    assert bad.user_attrs["stop_reason"] == "pruned" and reporter.epochs == 2.0
    ok = study.ask()  # a trial as good as the others runs on
    reporter = Reporter(ok, "val/macro_f1", report=True, deadline=None)
    for v in (0.52, 0.63, 0.71):
        reporter(0, {"val/macro_f1": v}, False)


@pytest.mark.parametrize("kind, patience, expected", [
    ("hyperband", None, "HyperbandPruner"), ("none", None, "NopPruner"), ("median", 2, "PatientPruner"),
    ("none", 3, "PatientPruner"),
])
def test_pruner_kinds(kind, patience, expected):
    params = params_with(pruner={**default_params()["hpo"]["pruner"], "type": kind, "patience": patience})
    assert type(make_pruner(params)).__name__ == expected


def test_a_trial_is_never_pruned_at_its_fits_final_validation():
    """Nothing is left to save there (the loop says `final`: its last epoch, or patience stopping it); pruning
    would only throw away a finished trial's value."""
    params = params_with(pruner={**default_params()["hpo"]["pruner"], "type": "median", "n_startup_trials": 1,
                                 "n_warmup_steps": 0})
    study = optuna.create_study(direction="maximize", pruner=make_pruner(params))
    good = study.ask()
    for step, v in enumerate((0.5, 0.6, 0.7)):
        good.report(v, step)
    study.tell(good, 0.7)
    late = study.ask()  # fine at first, below the median at its fit's final validation (last epoch or patience)
    reporter = Reporter(late, "val/macro_f1", report=True, deadline=None)
    for v, final in ((0.55, False), (0.65, False), (0.1, True)):
        reporter(0, {"val/macro_f1": v}, final)
    early = Reporter(study.ask(), "val/macro_f1", report=True, deadline=None)
    with pytest.raises(optuna.TrialPruned):  # the same value where the fit goes on is pruned
        early(0, {"val/macro_f1": 0.1}, False)


def test_hyperband_takes_max_resource_and_bootstrap_count():
    base = {**default_params()["hpo"]["pruner"], "type": "hyperband", "min_resource": 1}
    pruner = make_pruner(params_with(pruner={**base, "max_resource": 9, "bootstrap_count": 2}))
    assert (pruner._max_resource, pruner._bootstrap_count) == (9, 2)
    # null: a full trial's reports, i.e. its epochs (hpo.trial_overrides: train.epochs 3 here)
    assert make_pruner(params_with(pruner={**base, "max_resource": None}))._max_resource == 3
    with pytest.raises(UserError, match="max_resource 1 is below min_resource 2"):
        params_with(pruner={**base, "min_resource": 2, "max_resource": 1})


@pytest.mark.parametrize("kind", ["none", "median"])
def test_a_trial_whose_every_report_is_nan_is_pruned_by_any_pruner(kind):
    """Neither pruner ranks NaN here (none never prunes, median not before its startup trials), and a NaN
    value would fail the trial uncounted: the reporter prunes it. One number among NaNs is the pruner's call."""
    params = params_with(pruner={**default_params()["hpo"]["pruner"], "type": kind})
    study = optuna.create_study(direction="maximize", pruner=make_pruner(params))
    nan = float("nan")
    trial = study.ask()
    reporter = Reporter(trial, "val/macro_f1", report=True, deadline=None)
    with pytest.raises(optuna.TrialPruned, match=r"every report NaN \(report 0\)"):
        reporter(0, {"val/macro_f1": nan, "train/epoch": 1.0}, False)
    assert trial.user_attrs["stop_reason"] == "nan reports" and reporter.epochs == 1.0
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert study.trials[0].state.name == "PRUNED" and math.isnan(study.trials[0].intermediate_values[0])
    mixed = Reporter(study.ask(), "val/macro_f1", report=True, deadline=None)
    for v in (0.3, nan, nan):
        mixed(0, {"val/macro_f1": v}, False)
    silent = Reporter(study.ask(), "val/macro_f1", report=False, deadline=None)  # a cost objective: no reports
    silent(0, {"val/macro_f1": nan}, False)


def test_per_trial_timeout_stops_at_the_next_report():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    reporter = Reporter(trial, "val/macro_f1", report=True, deadline=0.0)
    with pytest.raises(optuna.TrialPruned):
        reporter(0, {"val/macro_f1": 0.5}, False)
    assert trial.user_attrs["stop_reason"] == "trial_timeout"
    # at the trial's last validation it is finished, deadline or not; a fold with folds after it still stops
    Reporter(study.ask(), "val/macro_f1", report=True, deadline=0.0)(0, {"val/macro_f1": 0.5}, True)
    with pytest.raises(optuna.TrialPruned):
        Reporter(study.ask(), "val/macro_f1", report=False, deadline=0.0, last_fit=False)(0, {"val/macro_f1": 0.5}, True)


# --- the stage -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hpo_project(tmp_path_factory):
    from conftest import run_in

    root = make_project(tmp_path_factory.mktemp("hpo"))
    HPO_OUTPUT.append(run_in(root, "hpo", "run").output)
    return root


HPO_OUTPUT: list[str] = []  # what the fixture's `hpo run` printed


def test_stage_writes_every_output(hpo_project):
    root = hpo_project
    # a line per trial, and a line per validation of each trial (2 epochs), on no terminal under CI
    lines = HPO_OUTPUT[0].splitlines()
    assert [n for n in range(3) if any(x.startswith(f"hpo: trial {n} COMPLETE: value ") for x in lines)] == [0, 1, 2]
    assert sum(x.startswith("hpo: trial 1: epoch ") for x in lines) == 2, HPO_OUTPUT[0]
    metrics = json.loads((root / "metrics/hpo.json").read_text())
    assert metrics["trials"]["complete"] == 3
    summary = json.loads((root / "reports/hpo/summary.json").read_text())
    assert summary["trials"]["finished"] == 3 and summary["objectives"] == {"val/macro_f1": "maximize"}
    assert {k: summary[k] for k in metrics if k != "trials"} == {k: v for k, v in metrics.items() if k != "trials"}
    assert not {"wall_time_s", "seconds_saved_by_pruning_est"} & set(summary)
    assert metrics["best_value"] is not None and 0 <= metrics["best_value"] <= 1
    best = yaml.safe_load((root / "stages/hpo/best_params.yaml").read_text())
    assert set(best) == {"model", "train"} and set(best["train"]) == {"learning_rate"}
    assert best["model"]["pooling"] in ("attention", "mean")
    import csv

    rows = list(csv.DictReader((root / "reports/hpo/trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert {"state", "value", "params.train.learning_rate", "duration_s", "prune_step", "epochs_run"} <= set(rows[0])
    assert (root / "reports/hpo/importance.csv").read_text().startswith("param,importance\n")
    assert (root / "reports/hpo/history.csv").read_text().count("\n") == 4
    summary = (root / "reports/hpo/summary.md").read_text()
    assert "optuna-dashboard sqlite:///stages/hpo/storage/study.db" in summary
    # wall-clock numbers go to the cached summary, not the git-tracked metrics (a re-run leaves git clean)
    assert not {"wall_time_s", "seconds_saved_by_pruning_est"} & set(metrics) and "Wall time of this run" in summary
    study = load_study(root)
    assert study.user_attrs["dsm5lab:fingerprint"] in study.study_name or study.study_name.startswith("dsm5lab-")
    # the MLflow parent run of the study with one nested run per trial
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dsm5lab").experiment_id])
    parent = [r for r in runs if r.info.run_name.startswith("hpo/")]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(children) == 3


def test_rerun_resumes_and_continues_the_count(hpo_project, tmp_path, monkeypatch, cli):
    from conftest import copy_project

    root = copy_project(hpo_project, tmp_path, monkeypatch)
    before = {t.number: t.value for t in load_study(root).trials}
    result = cli("hpo", "run")
    assert result.exit_code == 0, result.output
    assert "already has 3 finished trials" in result.output
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["hpo"]["n_trials"] = 4
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert cli("hpo", "run").exit_code == 0
    trials = load_study(root).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert {t.number: t.value for t in trials if t.number < 3} == before


def test_promote_writes_best_values_keeping_comments(hpo_project, tmp_path, monkeypatch, cli):
    from conftest import copy_project

    root = copy_project(hpo_project, tmp_path, monkeypatch)
    (root / "params.yaml").write_text("# my header comment\n" + (root / "params.yaml").read_text()
                                      .replace("learning_rate:", "learning_rate:", 1))
    text = (root / "params.yaml").read_text()
    text = text.replace("  pooling: attention", "  pooling: cls  # keep this comment", 1)
    (root / "params.yaml").write_text(text)
    best = yaml.safe_load((root / "stages/hpo/best_params.yaml").read_text())
    result = cli("hpo", "promote")
    assert result.exit_code == 0, result.output
    assert "+  pooling: " in result.output and "promote: changed" in result.output
    after = (root / "params.yaml").read_text()
    assert after.startswith("# my header comment\n") and "# keep this comment" in after
    promoted = yaml.safe_load(after)
    assert promoted["train"]["learning_rate"] == best["train"]["learning_rate"]
    assert promoted["model"]["pooling"] == best["model"]["pooling"]
    again = cli("hpo", "promote")
    assert "changed 0 value(s)" in again.output


def test_promote_errors(workdir, cli):
    result = cli("hpo", "promote")
    assert result.exit_code == 2 and "best_params.yaml: not found" in result.output
    (workdir / "best.yaml").write_text("train:\n  learning_rte: 0.1\n")
    result = cli("hpo", "promote", "--best", "best.yaml")
    assert result.exit_code == 2 and "'train.learning_rte' is not a key" in result.output


def test_export_and_worker_errors(hpo_project, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(hpo_project)
    url = f"sqlite:///{hpo_project / 'stages/hpo/storage/study.db'}"
    name = load_study(hpo_project).study_name
    out = tmp_path / "t.csv"
    assert cli("hpo", "export", "--storage", url, "--study", name, "--out", str(out)).exit_code == 0
    assert out.read_text().count("\n") == 4
    result = cli("hpo", "export", "--storage", url, "--study", "nope", "--out", str(out))
    assert result.exit_code == 2 and f"studies there: {name}" in result.output
    result = cli("hpo", "worker", "--storage", url, "--study", name)
    assert result.exit_code == 2 and "SQLite storage serves one worker only" in result.output


def test_hpo_without_prepared_data_fails_cleanly(workdir, cli):
    result = cli("hpo", "run")
    assert result.exit_code == 2 and "run `dsm5lab prepare`" in result.output
    assert not (workdir / "metrics/hpo.json").exists()


def test_cross_validation_reports_per_fold_and_stores_fold_metrics(tmp_path):
    from conftest import run_in

    cv = {**tiny_params()["hpo"]["cv"], "enabled": True, "folds": 2}
    root = make_project(tmp_path / "cv", cv=cv, n_trials=2, trial_overrides={"train.epochs": 1})
    run_in(root, "hpo", "run")
    for t in load_study(root).trials:
        folds = t.user_attrs["fold_metrics"]
        assert [f["fold"] for f in folds] == ["fold-0", "fold-1"]
        assert t.value == pytest.approx(sum(f["values"][0] for f in folds) / 2)
        assert sorted(t.intermediate_values) == [0, 1]


@pytest.mark.parametrize("kind, expected", [("tpe", "TPESampler"), ("random", "RandomSampler"),
                                            ("cmaes", "CmaEsSampler"), ("nsga2", "NSGAIISampler")])
def test_sampler_kinds(kind, expected):
    from dsm5lab.hpo.study import make_sampler

    params = params_with(sampler={"type": kind, "n_startup_trials": 1})
    assert type(make_sampler(params, 0)).__name__ == expected


def test_two_objectives_give_a_pareto_front(tmp_path):
    from conftest import run_in

    objectives = [{"metric": "val/macro_f1", "direction": "maximize"},
                  {"metric": "model/n_parameters", "direction": "minimize"}]
    space = {"model.criteria_head": {"type": "categorical", "choices": ["linear", "mlp"]},
             "train.learning_rate": {"type": "float", "low": 0.001, "high": 0.006, "log": True}}
    root = make_project(tmp_path / "mo", objectives=objectives, n_trials=3, sampler={"type": "nsga2", "n_startup_trials": 0},
                        spaces={"default": space}, trial_overrides={"train.epochs": 1})
    run_in(root, "hpo", "run")
    metrics = json.loads((root / "metrics/hpo.json").read_text())
    study = load_study(root)
    assert len(study.directions) == 2 and all(len(t.values) == 2 for t in study.trials)
    assert metrics["pareto_front"] == sorted(t.number for t in study.best_trials)
    assert "## Pareto front" in (root / "reports/hpo/summary.md").read_text()
    header = (root / "reports/hpo/trials.csv").read_text().splitlines()[0]
    assert "value_0" in header and "value_1" in header


def test_a_backbone_missing_offline_stops_the_study_before_it_starts(tmp_path, monkeypatch):
    """The shipped pretrained space names Hub models: without them here, hpo run refuses up front."""
    from dsm5lab.hpo import study

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache
    params = params_with(space="pretrained")
    with pytest.raises(UserError, match=r"hpo.spaces.pretrained: model.backbone choice\(s\) not available offline "
                                        r"here: bert-base \(hf download google-bert/bert-base-uncased\)"):
        study.run(params, tmp_path)
    assert not (tmp_path / "stages").exists()  # no storage, no study created
    local = params_with(space="default")
    study._check_backbones(local)  # tiny is built in
    raw = default_params()
    raw["model"]["backbone"] = str(tmp_path)
    raw["hpo"]["space"] = "default"
    study._check_backbones(validate(raw))  # a directory is fine
    raw["model"]["backbone"] = "someone/not-cached"
    with pytest.raises(UserError, match="someone/not-cached \\(not a directory nor in the Hugging Face cache\\)"):
        study._check_backbones(validate(raw))


def test_local_workers_sleep_when_they_wait_unless_the_user_chose(monkeypatch, tmp_path):
    """OpenMP threads of processes that share the cores wait passively (bench --under-load: 0.25x -> 0.66x)."""
    import subprocess

    from dsm5lab.hpo import study

    seen = []
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: seen.append((cmd, kw)))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    study._spawn_worker("journal:x.log", "s", tmp_path, None)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    study._spawn_worker("journal:x.log", "s", tmp_path, "1")
    assert [kw["env"]["OMP_WAIT_POLICY"] for _, kw in seen] == ["PASSIVE", "ACTIVE"]
    assert seen[0][0][-4:] == ["--storage", "journal:x.log", "--study", "s"] and seen[0][1]["cwd"] == tmp_path
    # hpo.devices: a worker's device is in its environment from its first instruction; None leaves it as it is
    assert "CUDA_VISIBLE_DEVICES" not in seen[0][1]["env"] and seen[1][1]["env"]["CUDA_VISIBLE_DEVICES"] == "1"


def test_train_trains_the_study_best_trial_when_hpo_is_enabled(hpo_project, tmp_path, monkeypatch, cli):
    from conftest import copy_project

    root = copy_project(hpo_project, tmp_path, monkeypatch)
    best = yaml.safe_load((root / "stages/hpo/best_params.yaml").read_text())
    study = load_study(root).study_name
    # train.epochs is the final model's (trials train hpo.trial_overrides'), so the study still applies
    result = cli("train", "--set", "train.epochs=1", "--set", "train.learning_rate=0.0001")
    assert result.exit_code == 0, result.output
    assert f"of study {study} (hpo.enabled" in result.output
    assert f"train.learning_rate 0.0001 -> {best['train']['learning_rate']!r}" in result.output
    spec = json.loads((root / "stages/train/model/config.json").read_text())
    assert f'"pooling": "{best["model"]["pooling"]}"' in json.dumps(spec)
    off = cli("train", "--set", "train.epochs=1", "--set", "hpo.enabled=false")
    assert off.exit_code == 0 and "of study" not in off.output


def test_train_refuses_the_best_trial_of_another_study(hpo_project, tmp_path, monkeypatch, cli):
    from conftest import copy_project

    root = copy_project(hpo_project, tmp_path, monkeypatch)
    shutil.rmtree(root / "stages/train", ignore_errors=True)
    # weight decay is a value every trial trains with: another study, whose best is not in stages/hpo yet
    result = cli("train", "--set", "train.weight_decay=0.3")
    assert result.exit_code == 2
    assert f"holds the best trial of study {load_study(root).study_name}, but" in result.output
    assert "run `dvc repro hpo` first, or set hpo.enabled=false" in result.output
    assert not (root / "stages/train").exists()
    (root / "stages/hpo/best_params.yaml").unlink()
    result = cli("train")
    assert result.exit_code == 2 and "best_params.yaml: not found; hpo.enabled is true" in result.output


def test_disabled_hpo_stage_writes_every_declared_output_empty(tmp_path, monkeypatch, cli):
    root = make_project(tmp_path / "off", enabled=False)
    monkeypatch.chdir(root)
    result = cli("hpo", "run")
    assert result.exit_code == 0 and "hpo: disabled" in result.output, result.output
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["hpo"]
    for entry in stage["outs"] + stage["metrics"]:
        path = next(iter(entry)) if isinstance(entry, dict) else entry
        assert (root / path).exists(), path
    assert json.loads((root / "metrics/hpo.json").read_text()) == {"enabled": False}
    assert not (root / "stages/hpo/storage/study.db").exists()  # no study was created
    promote = cli("hpo", "promote")
    assert promote.exit_code == 2 and "holds no values to promote" in promote.output


def test_each_trial_leaves_one_line_with_state_value_params_and_seconds():
    import datetime

    from dsm5lab.hpo.study import trial_line

    dist = {"train.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
            "model.pooling": optuna.distributions.CategoricalDistribution(["mean", "cls"])}
    params = {"train.learning_rate": 0.00234567, "model.pooling": "mean"}
    done = optuna.trial.create_trial(value=0.51234, params=params, distributions=dist)
    done.number, done.datetime_start = 4, datetime.datetime(2026, 1, 1, 0, 0, 0)
    done.datetime_complete = done.datetime_start + datetime.timedelta(seconds=41.25)
    assert trial_line(done, optuna.trial.TrialState.PRUNED) == \
        "hpo: trial 4 COMPLETE: value 0.5123 | train.learning_rate=0.002346, model.pooling=mean | 41.2 s"
    pruned = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params=params, distributions=dist,
                                       intermediate_values={0: 0.3, 1: 0.25})
    line = trial_line(pruned, optuna.trial.TrialState.PRUNED)
    assert "PRUNED at report 1: value 0.2500 (last report)" in line


def test_create_only_makes_the_study_for_remote_workers_and_runs_nothing(tmp_path, monkeypatch, cli):
    """`STUDY=$(dsm5lab hpo run --create-only ...)` as the README's Slurm recipe does it."""
    root = make_project(tmp_path / "p", n_trials=2)
    monkeypatch.chdir(root)
    monkeypatch.setenv("CI", "true")
    result = cli("hpo", "run", "--create-only")
    assert result.exit_code == 0, result.output
    study = load_study(root)
    assert result.stdout.strip() == study.study_name and study.trials == []
    assert study.user_attrs["dsm5lab:params"]["hpo"]["n_trials"] == 2  # what the workers will run from
    assert not (root / "reports/hpo").exists() and not (root / "metrics/hpo.json").exists()
    off = cli("hpo", "run", "--create-only", "--set", "hpo.enabled=false")
    assert off.exit_code != 0 and off.output.strip() == \
        "error: hpo.enabled: false: there is no study to create (--create-only)"
    assert not (root / "reports/hpo").exists()  # nor the disabled stage's empty outputs
