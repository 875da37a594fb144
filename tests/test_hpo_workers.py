"""HPO across processes: a SIGKILLed worker and a restart, two workers on a journal file and on PostgreSQL."""

from __future__ import annotations

import os
import signal
import time
import uuid

import optuna
import pytest

from dsm5lab.concurrency import cores
from dsm5lab.config.hpo import StaleConfig
from dsm5lab.hpo.storage import finished_count, open_storage
from hpo_helpers import dsm5lab, load_study, make_project

pytestmark = pytest.mark.slow


def _wait(predicate, what: str, timeout: float = 300.0, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"process exited early while waiting for {what}:\n{p.stdout.read()}"
        found = predicate()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _finish(proc, timeout: float = 600.0) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def schema_ready(db) -> bool:
    """Whether the run has created optuna's schema in db, read without creating anything."""
    import sqlite3

    if not db.exists():
        return False
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return bool(con.execute("SELECT count(*) FROM alembic_version").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return False


def test_sigkill_mid_trial_then_restart_resumes(tmp_path):
    # 6 epochs a trial: the kill lands inside a trial, not between two
    root = make_project(tmp_path / "kill", n_trials=3, trial_overrides={"train.epochs": 6})
    db = root / "stages/hpo/storage/study.db"
    first = dsm5lab(root, "hpo", "run")

    def one_done_one_training():
        if not schema_ready(db):  # optuna creates its tables on first open: never race the run at it
            return None
        try:
            trials = load_study(root).trials
        except (AssertionError, Exception):  # noqa: BLE001 - the study may not exist yet
            return None
        done = [t for t in trials if t.state.name == "COMPLETE"]
        running = [t for t in trials if t.state.name == "RUNNING" and "epochs_planned" in t.user_attrs]
        return (done, running) if done and running else None

    _wait(one_done_one_training, "a complete trial and one in training", procs=[first])
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    # what the dead worker left: read after the kill, as a trial may have ended just before it
    left = load_study(root).trials
    completed = {t.number: t.value for t in left if t.state.name == "COMPLETE"}
    (killed,) = [t.number for t in left if t.state.name == "RUNNING"]

    out = _finish(dsm5lab(root, "hpo", "run"))
    assert f"failed stale trial(s) [{killed}]" in out
    study = load_study(root)
    trials = {t.number: t for t in study.trials}
    assert {n: trials[n].value for n in completed} == completed  # completed trials kept as they were
    assert trials[killed].state.name == "FAIL" and trials[killed].user_attrs["stop_reason"] == "worker died"
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == trials[killed].params  # retried with the same params
    assert finished_count(study) == 3
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 3


def _two_workers(root, url: str, n_trials: int) -> None:
    """`hpo run` creates the study; `hpo worker --storage --study` joins it; both run trials to n_trials."""
    runner = dsm5lab(root, "hpo", "run")
    storage = open_storage(url, StaleConfig(heartbeat_interval_s=10, grace_period_s=60, max_retry=0))

    def study_name():
        try:
            names = [n for n in optuna.study.get_all_study_names(storage=storage) if n.startswith(root.name)]
        except Exception:  # noqa: BLE001 - storage not created yet
            return None
        return names[0] if names else None

    name = _wait(study_name, "the study to appear", procs=[runner])
    worker = dsm5lab(root, "hpo", "worker", "--storage", url, "--study", name)
    worker_out = _finish(worker)
    _finish(runner)
    assert "hpo worker: finished" in worker_out
    _check_two_workers(optuna.load_study(study_name=name, storage=storage), n_trials)


def _check_two_workers(study, n_trials: int) -> None:
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) and sorted(numbers) == list(range(len(numbers)))
    assert n_trials <= finished_count(study) <= n_trials + 1  # the last trials may start together
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    pids = {t.user_attrs["worker"]["pid"] for t in study.trials}
    assert len(pids) == 2, f"trials ran in {pids}; expected both workers to take some"


def test_two_workers_on_a_journal_file(tmp_path):
    """hpo.workers=2: `hpo run` starts a second worker process itself; with train.threads: auto each of the two
    takes half the cores."""
    name = f"j{uuid.uuid4().hex[:6]}"
    root = make_project(tmp_path / name, study_name=name, storage="journal:stages/hpo/journal.log", n_trials=4,
                        workers=2, trial_overrides={"train.epochs": 3, "train.threads": "auto"})
    _finish(dsm5lab(root, "hpo", "run"))
    storage = open_storage(f"journal:{root / 'stages/hpo/journal.log'}",
                           StaleConfig(heartbeat_interval_s=10, grace_period_s=60, max_retry=0))
    (study_name,) = optuna.study.get_all_study_names(storage=storage)
    study = optuna.load_study(study_name=study_name, storage=storage)
    _check_two_workers(study, 4)
    share = [t.user_attrs["threads"] for t in study.trials]
    assert all(s["n"] == max(1, cores() // 2) and "2 local HPO workers" in s["rule"] for s in share), share


def test_two_workers_on_postgresql(tmp_path):
    url = os.environ.get("DSM5LAB_TEST_POSTGRES")
    if not url:
        if os.environ.get("DSM5LAB_REQUIRE_POSTGRES"):
            pytest.fail("DSM5LAB_REQUIRE_POSTGRES is set but DSM5LAB_TEST_POSTGRES is not")
        pytest.skip("no PostgreSQL: source .ci/postgres.sh to start one (CI does)")
    name = f"pg{uuid.uuid4().hex[:6]}"  # a fresh study in a shared database
    root = make_project(tmp_path / name, study_name=name, storage=url, n_trials=4,
                        trial_overrides={"train.epochs": 3})
    _two_workers(root, url, 4)
