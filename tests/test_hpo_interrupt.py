"""A stop outside the objective leaves no trial RUNNING (dsm5lab.hpo.interrupt), through hpo.study.optimize.
Every stop here is a real signal sent to this process.

Found in CI: SIGTERM reached a worker whose trial had just returned, before Optuna's tell; the trial stayed
RUNNING in the journal for good (no heartbeat there, and its worker tag named a live process until it ended).
"""

from __future__ import annotations

import os
import signal

import optuna
import pytest

from conftest import default_params
from dsm5lab.config import validate
from dsm5lab.hpo import study as hpo_study
from dsm5lab.hpo.interrupt import STOPS
from dsm5lab.hpo.trial import StudyContext


@pytest.fixture
def ctx(tmp_path):
    raw = default_params()
    raw["hpo"]["n_trials"] = 3
    return StudyContext(validate(raw), tmp_path, "s", None)


@pytest.fixture(autouse=True)
def handlers():
    """The test's own handlers back afterwards (cli._on_sigterm resets SIGTERM to the default)."""
    saved = {s: signal.getsignal(s) for s in STOPS}
    yield saved
    for s, h in saved.items():
        signal.signal(s, h)


def _states(study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def _stop(sig=signal.SIGINT) -> None:
    os.kill(os.getpid(), sig)
    for _ in range(10_000):  # bytecode boundaries: a handler let through would run (and raise) in here
        pass


def test_a_sigterm_between_the_objective_and_its_tell_keeps_the_value_and_still_stops(ctx, monkeypatch):
    """The trial had finished: it is told COMPLETE with what it returned; the stop then acts (cli's handler,
    so the CLI exits 143), and no further trial starts."""
    from optuna.study import _optimize

    from dsm5lab import cli

    monkeypatch.setattr(cli, "_terminated", False)
    signal.signal(signal.SIGTERM, cli._on_sigterm)
    monkeypatch.setattr(hpo_study, "run_trial", lambda trial, ctx: 0.25 + trial.number)
    real_tell, calls = _optimize._tell_with_warning, []

    def stopped_in_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            _stop(signal.SIGTERM)
        return real_tell(*args, **kwargs)

    monkeypatch.setattr(_optimize, "_tell_with_warning", stopped_in_the_second)
    study = optuna.create_study(direction="maximize")
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        hpo_study.optimize(study, ctx)
    assert _states(study) == ["COMPLETE", "COMPLETE"] and study.trials[1].value == 1.25
    assert cli._terminated


def test_a_stop_inside_ask_fails_the_trial_it_created(ctx, monkeypatch):
    """Ctrl-C in `ask`, after the storage created the trial: the stop waits, then fails that trial
    before its objective starts. Let through inside `ask`, it left an unknown trial RUNNING."""
    monkeypatch.setattr(hpo_study, "run_trial", lambda trial, ctx: pytest.fail("the objective must not start"))
    study = optuna.create_study(direction="maximize")
    study.tell(study.ask(), 0.5)  # trial 0, finished before

    class StoppedWhileSampling(optuna.samplers.RandomSampler):
        def before_trial(self, study, trial):  # in `ask` (optuna.trial.Trial.__init__)
            _stop()
            return super().before_trial(study, trial)

    study.sampler = StoppedWhileSampling()
    with pytest.raises(KeyboardInterrupt):
        hpo_study.optimize(study, ctx)
    assert _states(study) == ["COMPLETE", "FAIL"]


def test_a_second_stop_while_one_waits_acts_at_once(ctx, monkeypatch):
    """A storage that hangs in `ask` must not make Ctrl-C useless: the second one interrupts right there."""
    monkeypatch.setattr(hpo_study, "run_trial", lambda trial, ctx: pytest.fail("the objective must not start"))
    reached = []

    class Hanging(optuna.samplers.RandomSampler):
        def before_trial(self, study, trial):
            _stop()
            reached.append("first")
            _stop()
            reached.append("second")
            return super().before_trial(study, trial)

    study = optuna.create_study(direction="maximize", sampler=Hanging())
    with pytest.raises(KeyboardInterrupt):
        hpo_study.optimize(study, ctx)
    assert reached == ["first"]


def test_an_interrupted_objective_is_failed_as_before(ctx, monkeypatch):
    def interrupted(trial, ctx):
        _stop()
        pytest.fail("the stop must act inside the objective")

    monkeypatch.setattr(hpo_study, "run_trial", interrupted)
    study = optuna.create_study(direction="maximize")
    with pytest.raises(KeyboardInterrupt):
        hpo_study.optimize(study, ctx)
    assert _states(study) == ["FAIL"]


@pytest.mark.parametrize("stopped", [False, True])
def test_the_handlers_are_the_callers_again_after_optimize(ctx, monkeypatch, handlers, stopped):
    def objective(trial, ctx):
        if stopped:
            raise KeyboardInterrupt
        return 0.5

    monkeypatch.setattr(hpo_study, "run_trial", objective)
    try:
        hpo_study.optimize(optuna.create_study(direction="maximize"), ctx)
    except KeyboardInterrupt:
        assert stopped
    assert {s: signal.getsignal(s) for s in STOPS} == handlers


def test_an_error_on_its_way_is_not_replaced_by_the_stop_that_waited(ctx, monkeypatch):
    """The storage failing in `ask` while a stop waits: the failure is what the user sees."""
    monkeypatch.setattr(hpo_study, "run_trial", lambda trial, ctx: 0.5)

    class Broken(optuna.samplers.RandomSampler):
        def before_trial(self, study, trial):
            _stop()
            raise RuntimeError("the storage is gone")

    with pytest.raises(RuntimeError, match="the storage is gone"):
        hpo_study.optimize(optuna.create_study(direction="maximize", sampler=Broken()), ctx)


def test_optimize_off_the_main_thread_leaves_the_handlers_alone(ctx, monkeypatch, handlers):
    """Only the main thread may set signal handlers (a notebook's or a server's worker thread)."""
    import threading

    monkeypatch.setattr(hpo_study, "run_trial", lambda trial, ctx: 0.5)
    study, errors = optuna.create_study(direction="maximize"), []

    def run():
        try:
            hpo_study.optimize(study, ctx)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert not errors and _states(study) == ["COMPLETE"] * 3
    assert {s: signal.getsignal(s) for s in STOPS} == handlers


def test_a_parent_death_sighup_in_ask_runs_its_handler_at_once_and_fails_the_trial(ctx, monkeypatch):
    """study._watch_parent's handler ignores the kernel's further SIGHUPs (one per thread of the dying parent)
    and starts the orphan alarm: that happens at once; its interrupt waits for the objective's start."""
    monkeypatch.setattr(hpo_study, "run_trial", lambda trial, ctx: pytest.fail("the objective must not start"))
    calls = []

    def on_parent_death(signum, frame):  # what study._watch_parent installs, less the alarm
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        calls.append("handler")
        raise KeyboardInterrupt("the hpo run that started this worker died")

    signal.signal(signal.SIGHUP, on_parent_death)

    class Orphaned(optuna.samplers.RandomSampler):
        def before_trial(self, study, trial):
            for _ in range(3):
                _stop(signal.SIGHUP)
            calls.append("ask goes on")

    study = optuna.create_study(direction="maximize", sampler=Orphaned())
    with pytest.raises(KeyboardInterrupt):
        hpo_study.optimize(study, ctx)
    assert calls == ["handler", "ask goes on"] and _states(study) == ["FAIL"]
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN  # the handler's own choice is kept


def test_sigint_then_sigterm_in_ask_stops_at_once_as_sigterm(ctx, monkeypatch):
    from dsm5lab import cli

    monkeypatch.setattr(cli, "_terminated", False)
    signal.signal(signal.SIGTERM, cli._on_sigterm)
    monkeypatch.setattr(hpo_study, "run_trial", lambda trial, ctx: pytest.fail("the objective must not start"))
    reached = []

    class Stopped(optuna.samplers.RandomSampler):
        def before_trial(self, study, trial):
            _stop(signal.SIGINT)
            reached.append("first")
            _stop(signal.SIGTERM)
            reached.append("second")

    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        hpo_study.optimize(optuna.create_study(direction="maximize", sampler=Stopped()), ctx)
    assert reached == ["first"] and cli._terminated  # so the CLI exits 143


def test_a_stop_during_the_pool_pass_acts_at_once(ctx, monkeypatch):
    """The trial is told before the callbacks: nothing there needs the stop to wait."""
    monkeypatch.setattr(hpo_study, "run_trial", lambda trial, ctx: 0.5)
    reached = []

    def pool_pass(study, ctx, echo=None):
        if study.trials:
            _stop()
            reached.append("pool pass finished")
        return {}

    monkeypatch.setattr(hpo_study, "bound_pool", pool_pass)
    study = optuna.create_study(direction="maximize")
    with pytest.raises(KeyboardInterrupt):
        hpo_study.optimize(study, ctx)
    assert reached == [] and _states(study) == ["COMPLETE"]


DEFAULT_ACTION = """
import os, signal, sys
from pathlib import Path
import optuna
sys.path.insert(0, {tests!r})
from conftest import default_params
from dsm5lab.config import validate
from dsm5lab.hpo import study as hpo_study
from dsm5lab.hpo.trial import StudyContext

signal.signal(signal.SIGHUP, signal.SIG_DFL)
ctx = StudyContext(validate(default_params()), Path({root!r}), "s", None)

def hung_up(trial, ctx):  # inside the objective, where stops go through
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(10_000):
        pass
    return 0.5

hpo_study.run_trial = hung_up
study = optuna.create_study(direction="maximize")
try:
    hpo_study.optimize(study, ctx)
except KeyboardInterrupt as exc:
    print("unwound", exc, [t.state.name for t in study.trials])
hpo_study.run_trial = lambda trial, ctx: 0.5

class Hangup(optuna.samplers.RandomSampler):
    def before_trial(self, study, trial):
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGHUP)

study = optuna.create_study(direction="maximize", sampler=Hangup())
try:
    hpo_study.optimize(study, ctx)
except KeyboardInterrupt as exc:
    print("unwound", exc, [t.state.name for t in study.trials])
"""


def test_a_default_action_stop_unwinds_and_fails_the_trial(tmp_path):
    """SIGHUP with no handler (a closed terminal, to `hpo run`) would end the process with the trial RUNNING:
    it waits, then unwinds like Ctrl-C (the trial failed, workers stopped by `hpo run`); repeats do not escalate."""
    import subprocess
    import sys
    from pathlib import Path

    code = DEFAULT_ACTION.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.splitlines() == ["unwound SIGHUP ['FAIL']"] * 2  # in the objective, then in ask
