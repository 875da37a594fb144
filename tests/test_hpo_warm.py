"""Staged search: `hpo run --warm-start STUDY` enqueues an earlier study's best trials, which run first."""

from __future__ import annotations

import optuna
import pytest
import yaml

from dsm5lab.config.hpo import Dist
from dsm5lab.hpo.warm import WARM_ATTR, best_trials, contains, fitted
from hpo_helpers import make_project

optuna.logging.set_verbosity(optuna.logging.ERROR)
URL = "sqlite:///stages/hpo/storage/study.db"


def studies(root) -> dict:
    url = f"sqlite:///{root / 'stages/hpo/storage/study.db'}"
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=url)
            for s in optuna.get_all_study_summaries(url)}


def test_coarse_then_fine_runs_the_coarse_best_trials_first(tmp_path, monkeypatch, cli):
    root = make_project(tmp_path / "p", n_trials=3, study_name="coarse")
    monkeypatch.chdir(root)
    monkeypatch.setenv("CI", "true")
    assert cli("hpo", "run").exit_code == 0
    (coarse,) = studies(root).values()
    ranked = sorted(coarse.trials, key=lambda t: -t.value)
    # the fine stage: another name, a narrower lr range that excludes the worst of the coarse values, one more trial
    lrs = sorted(t.params["train.learning_rate"] for t in coarse.trials)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["hpo"]["study_name"], raw["hpo"]["n_trials"] = "fine", 3
    raw["hpo"]["warm_start"]["n_best"] = 2
    raw["hpo"]["spaces"]["default"]["train.learning_rate"]["low"] = (lrs[0] + lrs[1]) / 2
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    result = cli("hpo", "run", "--warm-start", coarse.study_name)
    assert result.exit_code == 0, result.output
    fine = next(s for n, s in studies(root).items() if n.startswith("fine-"))
    trials = sorted(fine.trials, key=lambda t: t.number)
    assert len(trials) == 3 and fine.user_attrs[WARM_ATTR] == {"study": coarse.study_name,
                                                                "trials": [t.number for t in ranked[:2]]}
    for new, old in zip(trials[:2], ranked[:2]):  # the coarse best first, best of all first
        assert new.user_attrs["warm_start"] == {"study": coarse.study_name, "trial": old.number, "values": old.values}
        assert new.params["model.pooling"] == old.params["model.pooling"]
        if old.params["train.learning_rate"] >= raw["hpo"]["spaces"]["default"]["train.learning_rate"]["low"]:
            assert new.params["train.learning_rate"] == old.params["train.learning_rate"]
        else:  # out of the new range: the sampler chose, inside it
            assert new.params["train.learning_rate"] != old.params["train.learning_rate"]
            assert "not carried over: train.learning_rate" in result.output
    assert "warm_start" not in trials[2].user_attrs  # then the sampler
    # resuming with a bigger budget does not enqueue them again
    assert cli("hpo", "run", "--warm-start", coarse.study_name, "--set", "hpo.n_trials=4").exit_code == 0
    fine = studies(root)[fine.study_name]
    assert len(fine.trials) == 4 and sum("warm_start" in t.user_attrs for t in fine.trials) == 2


def test_a_warm_start_is_part_of_the_study_definition(tmp_path):
    from conftest import default_params
    from dsm5lab.config import validate
    from dsm5lab.hpo.space import definition

    raw = default_params()
    plain = definition(validate(raw))
    raw["hpo"]["warm_start"]["study"] = "dsm5lab-0123abcd"
    warm = definition(validate(raw))
    assert plain != warm and "warm_start" not in plain  # the default study keeps its name


@pytest.mark.parametrize("args, fragment", [
    (("--warm-start", "nope-12345678"), "error: hpo.warm_start.study: no study 'nope-12345678' in sqlite:///"),
    (("--warm-start", "bad name!"), "error: params.yaml: hpo.warm_start.study: String should match pattern"),
])
def test_a_missing_earlier_study_is_one_line(tmp_path, monkeypatch, cli, args, fragment):
    root = make_project(tmp_path / "p", n_trials=1)
    monkeypatch.chdir(root)
    monkeypatch.setenv("CI", "true")
    result = cli("hpo", "run", *args)
    assert result.exit_code != 0 and result.output.strip().startswith(fragment), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (root / "stages/hpo/storage/study.db").exists() or studies(root) == {}  # no empty study left


def test_the_earlier_best_trials_by_direction_and_what_a_new_space_can_take():
    study = optuna.create_study(direction="minimize")
    for v, lr in ((0.3, 1e-3), (0.1, 2e-3), (float("nan"), 3e-3), (0.2, 4e-3)):
        study.enqueue_trial({"lr": lr})
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        study.tell(trial, v)
    assert [t.params["lr"] for t in best_trials(study, 2)] == [2e-3, 4e-3]  # NaN never counts as best
    space = {"lr": Dist(type="float", low=1.5e-3, high=1e-2, log=True),
             "bs": Dist(type="categorical", choices=[8, 16]),
             "drop": Dist(type="float", low=0.0, high=0.3, step=0.1)}
    assert fitted({"lr": 2e-3, "bs": 16, "old": 1}, space, {}) == ({"lr": 2e-3, "bs": 16}, ["old"])
    assert fitted({"lr": 1e-3, "bs": 32}, space, {}) == ({}, ["bs", "lr"])
    assert contains(space["drop"], 0.2) and not contains(space["drop"], 0.25)
    assert not contains(space["bs"], True) and not contains(space["lr"], "x")


def test_a_conditional_value_is_carried_only_where_its_condition_is_settled_and_holds():
    """Coarse `full` (loss hybrid, gamma 2.0) to a space without hybrid: the loss is re-sampled, so the gamma that
    depended on it must not be fixed onto whatever loss the sampler picks."""
    space = {"loss": Dist(type="categorical", choices=["bce", "focal"]),
             "gamma": Dist(type="float", low=0.5, high=4.0, when={"loss": ["focal", "hybrid"]})}
    assert fitted({"loss": "hybrid", "gamma": 2.0}, space, {}) == ({}, ["gamma", "loss"])
    assert fitted({"loss": "focal", "gamma": 2.0}, space, {}) == ({"loss": "focal", "gamma": 2.0}, [])
    assert fitted({"loss": "bce", "gamma": 2.0}, space, {}) == ({"loss": "bce"}, ["gamma"])  # inactive there
    fixed = {"gamma": space["gamma"]}  # the loss is fixed by params.yaml (the base), not searched
    assert fitted({"loss": "focal", "gamma": 2.0}, fixed, {"loss": "bce"}) == ({}, ["gamma", "loss"])
    assert fitted({"loss": "focal", "gamma": 2.0}, fixed, {"loss": "focal"}) == ({"gamma": 2.0}, ["loss"])


def test_a_study_stored_before_the_new_hpo_keys_still_loads(tmp_path):
    """A PostgreSQL study created by an older commit stores params without hpo.devices, warm_start and the
    Hyperband keys: `hpo worker` and `hpo export` must still join and read it."""
    from conftest import default_params
    from dsm5lab.config import validate
    from dsm5lab.errors import UserError
    from dsm5lab.hpo.study import ADDED_KEYS, stored_params

    raw = default_params()
    for section, key in (("hpo", "devices"), ("hpo", "warm_start")):
        del raw[section][key]
    del raw["hpo"]["pruner"]["max_resource"], raw["hpo"]["pruner"]["bootstrap_count"]
    with pytest.raises(UserError, match="missing key 'hpo.devices'"):
        validate(raw)
    params = validate(stored_params(raw))
    assert params.hpo.devices == ADDED_KEYS["hpo.devices"] and params.hpo.warm_start.study is None
    assert validate(stored_params(default_params())) == validate(default_params())  # present keys stay as they are
