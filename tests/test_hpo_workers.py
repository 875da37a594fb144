"""HPO across processes: a SIGKILLed worker and a restart, two workers on a journal file and on PostgreSQL, the
workers of a killed or stopped `hpo run`, and a second `hpo run` on the same SQLite study."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import optuna
import psutil
import pytest

from dsm5lab.concurrency import cores
from dsm5lab.config.hpo import StaleConfig
from dsm5lab.hpo.storage import finished_count, open_storage
from dsm5lab.hpo.study import PARENT_ENV
from dsm5lab.lock import LOCKS, process_alive
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
    assert "took over the lock of dsm5lab hpo run (study " in out  # the killed run could not release it
    ran = 3 - len(completed)  # the re-run of the killed trial and the rest: what this run did, not the study
    assert f"hpo: this run finished {ran} trial(s): {ran} in this process\n" in out
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
    worker = dsm5lab(root, "hpo", "worker", "--storage", url, "--study", name, "--device", "1")
    worker_out = _finish(worker)
    _finish(runner)
    study = optuna.load_study(study_name=name, storage=storage)
    _check_two_workers(study, n_trials)
    # `hpo worker --device 1` computes with CUDA_VISIBLE_DEVICES=1; `hpo run` (devices: cpu) with every GPU hidden
    given = {t.user_attrs["worker"]["pid"]: t.user_attrs["worker"]["device"] for t in study.trials}
    assert given == {runner.pid: "", worker.pid: "1"}, given
    # the worker counts the trials it ran, not the study's
    assert f"hpo worker: finished {_ran(study)[worker.pid]} trial(s) of {name} in this process" in worker_out


def _ran(study) -> Counter:
    """pid -> finished trials that process ran."""
    return Counter(t.user_attrs["worker"]["pid"] for t in study.trials if t.state.is_finished())


def _check_two_workers(study, n_trials: int) -> None:
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) and sorted(numbers) == list(range(len(numbers)))
    assert n_trials <= finished_count(study) <= n_trials + 1  # the last trials may start together
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    pids = {t.user_attrs["worker"]["pid"] for t in study.trials}
    assert len(pids) == 2, f"trials ran in {pids}; expected both workers to take some"


def test_two_workers_on_a_journal_file(tmp_path):
    """hpo.devices: [0, 1] with workers: auto: `hpo run` computes on device 0 and starts a worker process for
    device 1, each with its CUDA_VISIBLE_DEVICES (recorded per trial); with train.threads: auto each of the two
    takes half the cores."""
    name = f"j{uuid.uuid4().hex[:6]}"
    root = make_project(tmp_path / name, study_name=name, storage="journal:stages/hpo/journal.log", n_trials=4,
                        devices=[0, 1], workers="auto",
                        trial_overrides={"train.epochs": 3, "train.threads": "auto"})
    runner = dsm5lab(root, "hpo", "run")
    out = _finish(runner)
    storage = open_storage(f"journal:{root / 'stages/hpo/journal.log'}",
                           StaleConfig(heartbeat_interval_s=10, grace_period_s=60, max_retry=0))
    (study_name,) = optuna.study.get_all_study_names(storage=storage)
    study = optuna.load_study(study_name=study_name, storage=storage)
    _check_two_workers(study, 4)
    # each process reports what it ran: the worker its own trials (it joined a study that ends with more), and
    # `hpo run` its own plus its worker's
    ran = _ran(study)
    (worker,) = set(ran) - {runner.pid}
    assert f"hpo worker: finished {ran[worker]} trial(s) of {study_name} in this process" in out
    assert (f"hpo: this run finished {ran.total()} trial(s): {ran[runner.pid]} in this process, {ran[worker]} in its "
            "1 worker process(es)") in out
    share = [t.user_attrs["threads"] for t in study.trials]
    assert all(s["n"] == max(1, cores() // 2) and "2 local HPO workers" in s["rule"] for s in share), share
    seen = {(t.user_attrs["worker"]["pid"], t.user_attrs["worker"]["device"]) for t in study.trials}
    assert seen == {(runner.pid, "0"), (worker, "1")}, seen  # each process saw its own device, and only it
    assert "hpo: 2 local process(es), CUDA_VISIBLE_DEVICES: '0', '1'" in out


def postgres_url() -> str:
    url = os.environ.get("DSM5LAB_TEST_POSTGRES")
    if not url:
        if os.environ.get("DSM5LAB_REQUIRE_POSTGRES"):
            pytest.fail("DSM5LAB_REQUIRE_POSTGRES is set but DSM5LAB_TEST_POSTGRES is not")
        pytest.skip("no PostgreSQL: source .ci/postgres.sh to start one (CI does)")
    return url


def test_two_workers_on_postgresql(tmp_path):
    url = postgres_url()
    name = f"pg{uuid.uuid4().hex[:6]}"  # a fresh study in a shared database
    root = make_project(tmp_path / name, study_name=name, storage=url, n_trials=4, devices="cpu",
                        trial_overrides={"train.epochs": 3})
    _two_workers(root, url, 4)


def test_a_sigkilled_worker_on_postgresql_is_failed_by_the_heartbeat_and_its_trial_rerun(tmp_path):
    """`hpo worker` is SIGKILLed mid-trial while `hpo run` goes on: past hpo.stale.grace_period_s without a
    heartbeat, the runner fails that trial before its next one and re-runs its params first. The runner's
    pid sweep ran before the kill, so only the heartbeat can find it. Red when open_storage stops passing the
    heartbeat to RDBStorage."""
    url = postgres_url()
    name = f"pg{uuid.uuid4().hex[:6]}"
    stale = {"heartbeat_interval_s": 1, "grace_period_s": 3, "max_retry": 1}
    # the runner starts trials for timeout_s (n_trials is out of reach), so it checks for stale trials
    # well after the kill, however short its trials are
    root = make_project(tmp_path / name, study_name=name, storage=url, n_trials=100, timeout_s=15.0,
                        stale=stale, trial_overrides={"train.epochs": 6})
    runner = dsm5lab(root, "hpo", "run")
    storage = open_storage(url, StaleConfig(**{**stale, "max_retry": 0}))

    def study():
        try:
            names = [n for n in optuna.study.get_all_study_names(storage=storage) if n.startswith(name)]
        except Exception:  # noqa: BLE001 - storage not created yet
            return None
        return optuna.load_study(study_name=names[0], storage=storage) if names else None

    found = _wait(study, "the study to appear", procs=[runner])
    started = time.monotonic()
    worker = dsm5lab(root, "hpo", "worker", "--storage", url, "--study", found.study_name)

    def worker_training():
        running = found.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        return [t.number for t in running
                if t.user_attrs.get("worker", {}).get("pid") == worker.pid and "epochs_planned" in t.user_attrs]

    (killed,) = _wait(worker_training, "the worker's trial to train", procs=[runner, worker])
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    worker.stdout.close()
    killed_after = time.monotonic() - started
    out = _finish(runner)
    trials = {t.number: t for t in found.get_trials()}
    assert trials[killed].state.name == "FAIL", (f"killed {killed_after:.1f} s into the runner's 15", out)
    assert trials[killed].user_attrs["stop_reason"] is None  # the pid sweep would have said "worker died"
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE", out
    assert retries[0].params == trials[killed].params and retries[0].user_attrs["worker"]["pid"] == runner.pid
    assert not found.get_trials(states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING))


JOURNAL = "stages/hpo/storage/journal.log"


def _journal_study(root):
    """The project's study in its journal file, once `hpo run` has created it."""
    if not (root / JOURNAL).exists():
        return None
    storage = open_storage(f"journal:{root / JOURNAL}", StaleConfig(heartbeat_interval_s=10, grace_period_s=60,
                                                                     max_retry=0))
    names = optuna.study.get_all_study_names(storage=storage)
    return optuna.load_study(study_name=names[0], storage=storage) if names else None


def _trials_by_pid(root) -> dict[int, list]:
    """pid -> the trials that process started ({} before the study exists)."""
    by: dict[int, list] = {}
    study = _journal_study(root)
    for t in study.trials if study else []:
        if "worker" in t.user_attrs:
            by.setdefault(t.user_attrs["worker"]["pid"], []).append(t)
    return by


def _training(root, pid: int) -> bool:
    return any(t.state.name == "RUNNING" and "epochs_planned" in t.user_attrs for t in _trials_by_pid(root).get(pid, []))


def _workers_in_a_trial(root, runner: subprocess.Popen, n: int) -> list[int] | None:
    """The pids of the n `hpo worker` processes runner started, once each is inside a trial."""
    try:
        pids = [c.pid for c in psutil.Process(runner.pid).children() if "worker" in c.cmdline()]
    except psutil.Error:  # a child exiting while listed
        return None
    return pids if len(pids) == n and all(_training(root, p) for p in pids) else None


def test_a_killed_hpo_run_leaves_no_worker(tmp_path, monkeypatch):
    """SIGKILL gives `hpo run` no chance to stop its two workers: the kernel does (PR_SET_PDEATHSIG), mid-trial.
    A worker whose parent is gone without that signal (a stand-in parent here) stops at its next trial boundary
    and reports the one trial it ran."""
    root = make_project(tmp_path / "killed", storage=f"journal:{JOURNAL}", n_trials=50, workers=3,
                        trial_overrides={"train.epochs": 3})
    runner = dsm5lab(root, "hpo", "run")
    workers = _wait(lambda: _workers_in_a_trial(root, runner, 2), "both workers in a trial", procs=[runner])
    # the run's lock, none of its trials' (they train through fit, not the train stage, and take no train lock)
    assert [p.name.split("-")[0] for p in (root / LOCKS).iterdir()] == ["hpo"]
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    _wait(lambda: not any(process_alive(p, None) for p in workers), "the workers to stop", timeout=15)
    by = _trials_by_pid(root)
    for pid in workers:  # stopped inside their trial, not after it: failed, or left RUNNING for the next pid sweep
        last = max(by[pid], key=lambda t: t.number)  # (when the killed run held the journal's lock)
        assert last.state.name in ("FAIL", "RUNNING") and last.user_attrs["stop_reason"] is None, (pid, last)

    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    monkeypatch.setenv(PARENT_ENV, f"{parent.pid}:{psutil.Process(parent.pid).create_time()!r}")
    name = _journal_study(root).study_name
    worker = dsm5lab(root, "hpo", "worker", "--storage", f"journal:{root / JOURNAL}", "--study", name)
    _wait(lambda: _training(root, worker.pid), "the worker in a trial", procs=[worker])
    parent.kill()
    parent.wait()
    try:
        out = _finish(worker, timeout=180)  # a trial is seconds; without the check it would run all 50
    finally:
        worker.kill()
    assert "the `hpo run` that started this worker is gone; stopped after 1 trial(s)" in out
    assert f"hpo worker: finished 1 trial(s) of {name} in this process" in out
    assert [t.state.name for t in _trials_by_pid(root)[worker.pid]] == ["COMPLETE"]


def test_a_stopped_hpo_run_stops_its_worker_first(tmp_path):
    """SIGTERM: `hpo run` stops its worker's process group and waits for it before it exits (not after, as the
    kernel's parent-death signal would), then releases the study's lock."""
    root = make_project(tmp_path / "stopped", storage=f"journal:{JOURNAL}", n_trials=50, workers=2,
                        trial_overrides={"train.epochs": 3})
    runner = dsm5lab(root, "hpo", "run")
    (worker,) = _wait(lambda: _workers_in_a_trial(root, runner, 1), "the worker in a trial", procs=[runner])
    assert os.getpgid(worker) == worker != os.getpgid(runner.pid)  # a terminal's Ctrl-C reaches `hpo run` alone
    runner.send_signal(signal.SIGTERM)
    runner.wait(timeout=120)
    alive = process_alive(worker, None)
    out = runner.stdout.read()  # the worker shares the pipe: this waits for it
    assert runner.returncode == 128 + signal.SIGTERM, out
    assert not alive, out
    # stopped by `hpo run`, not by the kernel once `hpo run` was gone (which would also end it, a moment later)
    assert "started this worker is gone" not in out
    assert not (root / LOCKS).exists()  # released
    # every trial told: the worker's last one failed mid-training, or (a 3-epoch trial ends quickly) had just
    # finished and was told COMPLETE before the stop acted (hpo.interrupt; CI once caught it left RUNNING here)
    last = max(_trials_by_pid(root)[worker], key=lambda t: t.number)
    assert (last.state.name, last.user_attrs["stop_reason"]) in {("FAIL", None), ("COMPLETE", None)}, out
    assert "RUNNING" not in {t.state.name for t in _journal_study(root).trials}, out
    # no MLflow run is left RUNNING forever: the stopped trials' runs (and the study's) ended KILLED
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"], \
        [(r.info.run_name, r.info.status) for r in runs]
    assert "KILLED" in {r.info.status for r in runs}


def test_a_second_hpo_run_on_a_sqlite_study_is_refused(tmp_path):
    """It would fail the first one's live trial as stale (the first then crashed on telling it); now it stops
    with one line naming the first, which finishes its study untouched."""
    root = make_project(tmp_path / "twice", n_trials=2, trial_overrides={"train.epochs": 3})
    db = root / "stages/hpo/storage/study.db"
    first = dsm5lab(root, "hpo", "run")
    _wait(lambda: schema_ready(db) and any(t.state.name == "RUNNING" for t in load_study(root).trials),
          "a trial of the first run", procs=[first])
    second = dsm5lab(root, "hpo", "run")
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 2, out
    (line,) = out.strip().splitlines()
    assert re.fullmatch(rf"error: another dsm5lab hpo run \(study \S+\) is running here \(pid "
                        rf"{first.pid} on [^,]+, started [0-9: -]+\); wait for it or stop it", line), line
    _finish(first)
    assert [t.state.name for t in load_study(root).trials] == ["COMPLETE", "COMPLETE"]


def test_a_worker_whose_hpo_run_is_already_gone_runs_nothing(tmp_path, monkeypatch):
    """The parent died before the worker could ask for the parent-death signal: it stops before any trial."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(gone.pid).create_time()
    gone.wait()
    monkeypatch.setenv(PARENT_ENV, f"{gone.pid}:{started!r}")
    out = _finish(dsm5lab(tmp_path, "hpo", "worker", "--storage", "journal:j.log", "--study", "s"), timeout=120)
    assert "the `hpo run` that started this worker is gone; stopping before any trial" in out
    assert "hpo worker: finished 0 trial(s) of s in this process" in out
    assert not (tmp_path / "j.log").exists()


def test_stop_ends_each_worker_group_and_kills_what_ignores_sigterm(tmp_path):
    """_stop signals the worker's whole process group (its DataLoader processes too) and SIGKILLs a group
    still there after the grace period."""
    from dsm5lab.hpo.study import _stop

    stubborn = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                "print(child.pid, flush=True); time.sleep(600)")
    polite = "import sys, time; print(0, flush=True); time.sleep(600)"
    procs = [subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True)
             for code in (stubborn, polite)]
    grandchild = int(procs[0].stdout.readline())
    assert procs[1].stdout.readline().strip() == "0"
    stopper = threading.Thread(target=_stop, args=(procs,), kwargs={"grace": 2.0}, daemon=True)
    stopper.start()
    stopper.join(timeout=15)
    try:
        assert not stopper.is_alive(), "_stop still waits for the worker that ignores SIGTERM"
        assert [p.returncode for p in procs] == [-signal.SIGKILL, -signal.SIGTERM]
        _wait(lambda: not process_alive(grandchild, None), "the worker's own child to end", timeout=10)
    finally:
        for pid in [grandchild] + [p.pid for p in procs if p.poll() is None]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# a worker's parent-death handling alone: it watches its parent (the process that started it), then sleeps; its
# cleanup after the interrupt hangs, as one waiting for a journal lock its dead parent held would
ORPHAN = """
import time
from dsm5lab.hpo.study import _watch_parent
orphaned = _watch_parent()
print("watching", flush=True)
try:
    time.sleep(600)
except KeyboardInterrupt:
    print("interrupted, parent gone:", orphaned(), flush=True)
    time.sleep(600)
"""
PARENT = """
import os, subprocess, sys, time
import psutil
from dsm5lab.hpo.study import PARENT_ENV
me = f"{os.getpid()}:{psutil.Process().create_time()!r}"
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env={**os.environ, PARENT_ENV: me})
print(child.pid, flush=True)
time.sleep(600)
"""


def test_a_worker_whose_parent_is_killed_is_gone_within_the_grace_even_if_its_cleanup_hangs():
    from dsm5lab.hpo.study import ORPHAN_GRACE_S

    parent = subprocess.Popen([sys.executable, "-c", PARENT, ORPHAN], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline().strip() == "watching"
        parent.kill()
        parent.wait()
        _wait(lambda: not process_alive(child, None), "the orphan to end", timeout=ORPHAN_GRACE_S + 10)
        assert parent.stdout.read().strip() == "interrupted, parent gone: True"  # by the kernel, mid-sleep
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)

