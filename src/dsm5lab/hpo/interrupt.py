"""Stops act inside a trial's objective or between trials, never in Optuna's bookkeeping.

Optuna's `study.optimize` fails a trial whose objective is interrupted (Ctrl-C, our SIGTERM, the parent-death
SIGHUP of a local worker). A stop that lands elsewhere leaves the trial RUNNING for good:
- in `study.ask()` after the storage created the trial: it has no heartbeat yet (Optuna starts that after `ask`)
  and no worker tag (our objective sets it), so neither Optuna's stale check nor `storage.sweep_stale` fails it;
- between the objective's return and the tell: a finished trial's value is lost, and Optuna 5.0's `_run_trial`
  then raises UnboundLocalError from its `finally` instead of the KeyboardInterrupt (a crash, not a stop).
Found in CI: a worker's trial had just returned when `hpo run` stopped it.

`TrialBoundaries` holds the stop signals for the whole of `optimize` (their handlers only record them) and lets
them through inside the objective and at a callback after each tell. Python runs signal handlers in the main
thread whatever thread the kernel picks, so swapping handlers is reliable where a signal mask (per thread) is
not. A second stop while one waits acts at once: a storage that hangs must not make Ctrl-C useless.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

# Ctrl-C; `kill`, Slurm, `docker stop` (cli._on_sigterm); a closed terminal or a dead `hpo run` (study._watch_parent)
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class TrialBoundaries:
    """`with TrialBoundaries() as gate:` around `study.optimize(gate.objective(f), callbacks=[..., gate.boundary])`."""

    def __init__(self) -> None:
        self.handlers: dict[int, object] = {}  # the real handlers while held
        self.waiting: tuple[int, object] | None = None

    def __enter__(self) -> TrialBoundaries:
        self._hold()
        return self

    def __exit__(self, kind, exc, tb) -> None:
        # a stop that waited acts here (raises); an error already on its way ends the run by itself
        self._release(act=kind is None)

    def objective(self, run: Callable) -> Callable:
        def inside(trial):
            self._release()  # a stop that came during `ask` fails this trial in optimize, like any interrupt
            try:
                return run(trial)
            finally:
                self._hold()

        return inside

    def boundary(self, study, trial) -> None:
        """An optimize callback (after the tell): a stop that waited acts here, the trial already told."""
        self._release()
        self._hold()

    def _hold(self) -> None:
        if self.handlers or threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; Python runs them there anyway
        for sig in STOPS:
            real = signal.getsignal(sig)
            if real in (signal.SIG_IGN, None):  # ignored, or set outside Python: leave it
                continue
            self.handlers[sig] = real
            signal.signal(sig, self._record)

    def _record(self, signum, frame) -> None:
        if self.waiting is None:
            self.waiting = (signum, frame)
            return
        self._release()  # the second stop: act now, in whatever Optuna is doing

    def _release(self, act: bool = True) -> None:
        handlers, self.handlers = self.handlers, {}
        for sig, real in handlers.items():
            signal.signal(sig, real)
        waiting, self.waiting = self.waiting, None
        if waiting is None or not act:
            return
        signum, frame = waiting
        real = handlers.get(signum)
        if callable(real):
            real(signum, frame)  # e.g. KeyboardInterrupt
        elif real == signal.SIG_DFL:
            os.kill(os.getpid(), signum)  # the default action: end the process as it would have
