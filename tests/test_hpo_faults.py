"""HPO guards against faults, each in a real process where it matters: a SIGKILLed worker's trial is failed
(by the SQL heartbeat, or by pid on a journal) and re-run at most hpo.stale.max_retry times; a trial whose
every report is NaN is pruned. The killed trials sleep instead of training, so a kill costs seconds."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest

from dsm5lab.config.hpo import StaleConfig
from dsm5lab.hpo.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A worker as `hpo run` / `hpo worker` opens the study (open_storage; the pid sweep where asked), whose trial
# tags itself like run_trial, says so, and sleeps until it is killed.
WORKER = textwrap.dedent("""
    import sys, time
    import optuna
    from dsm5lab.config.hpo import StaleConfig
    from dsm5lab.hpo.storage import WORKER_ATTR, open_storage, sweep_stale, worker_tag

    url, name, interval, grace, max_retry, sweep = sys.argv[1:]
    storage = open_storage(url, StaleConfig(heartbeat_interval_s=int(interval), grace_period_s=int(grace),
                                            max_retry=int(max_retry)))
    study = optuna.load_study(study_name=name, storage=storage)
    if sweep == "1":
        sweep_stale(study, int(max_retry), single_worker=False)

    def objective(trial):
        trial.set_user_attr(WORKER_ATTR, worker_tag())
        trial.suggest_float("x", 0.0, 1.0)
        print("running", trial.number, flush=True)
        time.sleep(600)

    study.optimize(objective, n_trials=1)
""")


def start_worker(url: str, name: str, stale: StaleConfig, sweep: bool) -> tuple[subprocess.Popen, int]:
    """A worker process on the study; returns it and the number of the trial it is running."""
    proc = subprocess.Popen([sys.executable, "-c", WORKER, url, name, str(stale.heartbeat_interval_s),
                             str(stale.grace_period_s), str(stale.max_retry), "1" if sweep else "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()  # blocks until the trial runs (or the process dies)
    assert line.startswith("running "), line + proc.stdout.read()
    return proc, int(line.split()[1])


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def attempts(study) -> dict[int, list[int]]:
    """Original trial number -> its re-runs' numbers (system attrs of RetryHeartbeatStaleTrialCallback)."""
    out: dict[int, list[int]] = {}
    for t in study.get_trials():
        if "failed_trial" in t.system_attrs:
            out.setdefault(t.system_attrs["failed_trial"], []).append(t.number)
    return out


def test_a_killed_trial_on_sqlite_is_failed_by_the_heartbeat_and_rerun_up_to_max_retry(tmp_path):
    """The next worker's optimize() fails the silent trial (Optuna's heartbeat check; no pid sweep here) and
    runs its re-enqueued copy first; killed too, the copy is failed and, max_retry=1 reached, not re-run.
    Red when open_storage stops passing the heartbeat (or the retry callback) to RDBStorage."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    stale = StaleConfig(heartbeat_interval_s=1, grace_period_s=2, max_retry=1)
    study = optuna.create_study(storage=open_storage(url, stale), study_name="s")
    numbers = []
    for attempt in range(3):
        proc, number = start_worker(url, "s", stale, sweep=False)
        numbers.append(number)
        kill(proc)
        if attempt < 2:
            time.sleep(stale.grace_period_s + 1.5)  # the last heartbeat is older than the grace period now
    killed, rerun, fresh = numbers
    trials = {t.number: t for t in study.get_trials()}
    assert trials[killed].state.name == "FAIL" and trials[rerun].state.name == "FAIL"
    assert attempts(study) == {killed: [rerun]}  # the copy ran first, with the same params
    assert trials[rerun].params == trials[killed].params
    assert trials[fresh].params != trials[killed].params


def test_a_trial_killed_again_and_again_is_rerun_max_retry_times(tmp_path):
    """Each re-run is killed too: after hpo.stale.max_retry re-runs the trial stays failed (here the pid sweep
    of a starting worker on a journal finds the kills; the heartbeat path shares the callback). Red without
    the cap."""
    url = f"journal:{tmp_path / 'study.log'}"
    stale = StaleConfig(heartbeat_interval_s=1, grace_period_s=2, max_retry=2)
    study = optuna.create_study(storage=open_storage(url, stale), study_name="s")
    killed = []
    for _ in range(stale.max_retry + 1):
        proc, number = start_worker(url, "s", stale, sweep=True)
        killed.append(number)
        kill(proc)
    # one more worker sweeps the last kill: it fails it and, the cap reached, runs a new trial (not a copy)
    proc, fresh = start_worker(url, "s", stale, sweep=True)
    kill(proc)
    trials = {t.number: t for t in study.get_trials()}
    assert attempts(study) == {killed[0]: killed[1:]} and len(killed[1:]) == stale.max_retry
    assert [trials[n].state.name for n in killed] == ["FAIL"] * len(killed)
    assert [trials[n].user_attrs["stop_reason"] for n in killed] == ["worker died"] * len(killed)
    assert {trials[n].params["x"] for n in killed} == {trials[killed[0]].params["x"]}
    assert "failed_trial" not in trials[fresh].system_attrs
    assert trials[fresh].params != trials[killed[0]].params
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING,))


@pytest.mark.parametrize("cv", [False, True], ids=["split", "cv"])
def test_a_study_whose_every_validation_is_nan_prunes_its_trials_and_ends(tmp_path, monkeypatch, cli, cv):
    """`hpo run` with every val metric NaN (pruner none): each trial is pruned at its first report (an epoch,
    or with hpo.cv a fold's aggregate) and counts, so the run ends after n_trials with its one-line error (no
    completed trial). Without the guard each trial fails uncounted and the study runs on until hpo.timeout_s."""
    from dsm5lab.training import loop
    from hpo_helpers import load_study, make_project, tiny_params

    real = loop.validation_metrics

    def nan_metrics(*args, **kwargs):
        return {k: float("nan") if k != "val/loss" else v for k, v in real(*args, **kwargs).items()}

    folds = {**tiny_params()["hpo"]["cv"], "enabled": cv, "folds": 2}
    root = make_project(tmp_path / "nan", n_trials=2, timeout_s=60.0, cv=folds)
    monkeypatch.chdir(root)
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(loop, "validation_metrics", nan_metrics)
    result = cli("hpo", "run")
    trials = load_study(root).trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"], result.output
    assert [t.user_attrs["stop_reason"] for t in trials] == ["nan reports"] * 2
    assert all(list(t.intermediate_values) == [0] for t in trials)
    assert all(math.isnan(t.intermediate_values[0]) for t in trials)
    assert "hpo: trial 1 PRUNED at report 0: value nan (last report)" in result.output
    assert result.exit_code == 2, result.output
    assert "has no completed trial yet (all trials pruned or failed)" in result.output
