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
    """A crash in the callbacks while a stop waits: the crash is what the user sees."""
    from optuna.study import _optimize

    monkeypatch.setattr(hpo_study, "run_trial", lambda trial, ctx: 0.5)
    real_tell = _optimize._tell_with_warning

    def stopped(*args, **kwargs):
        _stop()
        return real_tell(*args, **kwargs)

    def broken(study, ctx, echo=None):
        if study.trials:
            raise RuntimeError("the pool pass crashed")
        return {}

    monkeypatch.setattr(_optimize, "_tell_with_warning", stopped)
    monkeypatch.setattr(hpo_study, "bound_pool", broken)
    study = optuna.create_study(direction="maximize")
    with pytest.raises(RuntimeError, match="the pool pass crashed"):
        hpo_study.optimize(study, ctx)
    assert _states(study) == ["COMPLETE"]


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
