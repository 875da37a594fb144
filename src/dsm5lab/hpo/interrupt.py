"""Stops act inside a trial's objective or between trials, never in Optuna's bookkeeping.

Optuna's `study.optimize` fails a trial whose objective is interrupted (Ctrl-C, our SIGTERM, the parent-death
SIGHUP of a local worker). A stop that lands elsewhere leaves the trial RUNNING for good:
- in `study.ask()` after the storage created the trial: it has no heartbeat yet (Optuna starts that after `ask`)
  and no worker tag (our objective sets it), so neither Optuna's stale check nor `storage.sweep_stale` fails it;
- between the objective's return and the tell: a finished trial's value is lost, and Optuna 5.0's `_run_trial`
  then raises UnboundLocalError from its `finally` instead of the KeyboardInterrupt (a crash, not a stop).
Found in CI: a worker's trial had just returned when `hpo run` stopped it.

`TrialBoundaries` installs one recorder for the stop signals for the whole of `optimize` and opens it inside the
objective and in the callbacks (the trial already told); while it is closed (ask, tell), a stop runs its real
handler's side effects at once (cli._on_sigterm marks the exit code, study._watch_parent starts its orphan alarm
and ignores the kernel's further SIGHUPs) but its KeyboardInterrupt waits for the next opening. A stop whose
handler is the default action (say SIGHUP to `hpo run`) waits the same way and then unwinds like Ctrl-C, so the
trial is failed and the workers stopped. A second stop while one waits acts at once: a storage that hangs must
not make Ctrl-C useless. Python runs signal handlers in the main thread whatever thread the kernel picks, so
handlers are reliable where a signal mask (per thread) is not.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

# Ctrl-C; `kill`, Slurm, `docker stop` (cli._on_sigterm); a closed terminal or a dead `hpo run` (study._watch_parent)
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class TrialBoundaries:
    """`with TrialBoundaries() as gate:` around
    `study.optimize(gate.objective(f), callbacks=[gate.open, ..., gate.close])`."""

    def __init__(self) -> None:
        self.handlers: dict[int, object] = {}  # the real handlers, while ours is installed
        self.opened = True
        self.waiting: int | None = None  # the signal whose interrupt waits

    def __enter__(self) -> TrialBoundaries:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers (a notebook's or a server's worker thread)
        try:  # open while installing: a stop now acts as it would have
            for sig in STOPS:
                real = signal.getsignal(sig)
                if real in (signal.SIG_IGN, None):  # ignored, or set outside Python: leave it
                    continue
                self.handlers[sig] = real
                signal.signal(sig, self._on_stop)
        except BaseException:
            self._restore()
            raise
        self.opened = False
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.opened = True
        waiting, self.waiting = self.waiting, None
        self._restore()
        if waiting is not None and kind is None:  # an error already on its way ends the run by itself
            raise KeyboardInterrupt(signal.Signals(waiting).name)

    def objective(self, run: Callable) -> Callable:
        def inside(trial):
            self.open()  # a stop that came during `ask` fails this trial in optimize, like any interrupt
            try:
                return run(trial)
            finally:
                self.opened = False

        return inside

    def open(self, *callback_args) -> None:
        """Let stops through (also an optimize callback: the trial is told by then); one that waited acts here."""
        self.opened = True
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            raise KeyboardInterrupt(signal.Signals(waiting).name)

    def close(self, *callback_args) -> None:
        """Hold stops again (an optimize callback, the last: Optuna's next `ask` comes after it)."""
        self.opened = False

    def _on_stop(self, signum, frame) -> None:
        real = self.handlers.get(signum)
        if self.opened:
            return self._act(real, signum, frame)
        first = self.waiting is None
        self.waiting = self.waiting or signum
        if callable(real):
            try:
                real(signum, frame)  # its side effects now (it may also change its own disposition)
            except KeyboardInterrupt:
                pass
        if not first and signum != signal.SIGHUP:  # the user insists; a burst of parent-death SIGHUPs does not
            raise KeyboardInterrupt(signal.Signals(signum).name)

    @staticmethod
    def _act(real, signum, frame) -> None:
        if callable(real):
            real(signum, frame)
        else:  # the default action, while open: unwind like Ctrl-C (the trial failed, the workers stopped)
            raise KeyboardInterrupt(signal.Signals(signum).name)

    def _restore(self) -> None:
        handlers, self.handlers = self.handlers, {}
        stopped = None
        for sig, real in handlers.items():
            while True:  # a stop landing mid-restore raises here (its handler ran): restore, then raise it
                try:
                    if signal.getsignal(sig) == self._on_stop:  # a handler that changed its disposition keeps it
                        signal.signal(sig, real)
                    break
                except KeyboardInterrupt as exc:
                    stopped = stopped or exc
        if stopped is not None:
            raise stopped
