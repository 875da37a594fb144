"""A SIGTERM or Ctrl-C that lets the current training step finish.

`kill`, Slurm and `docker stop` send SIGTERM, and a grace period later SIGKILL. Raised at once, the interrupt
can land inside `optimizer.step()`, between two parameter updates, which leaves nothing worth saving, or in a
gc callback, where Python drops it (the run goes on). Inside `deferred()` (the train stage's fit) the handlers
(cli._on_sigterm, cli._on_sigint) only record the request; the training loop calls `check()` where a step
begins, writes a resume point there when the run has gone on long enough (`RESUME_AFTER_S`), and then stops
the way Ctrl-C always did. A request still waiting as the section ends is raised there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

# a run younger than this loses little by restarting from its last validation; an older one gets a checkpoint
RESUME_AFTER_S = float(os.environ.get("DSM5LAB_RESUME_POINT_AFTER_S", "60"))

_depth = 0
_requested: str | None = None


@contextmanager
def deferred() -> Iterator[None]:
    """While inside, a stop request waits for the next `check()` instead of interrupting at once; one still
    waiting as the section ends (it came after the last check) is raised there."""
    global _depth
    _depth += 1
    try:
        yield
    except BaseException:
        _leave()
        raise
    pending = _leave()
    if pending is not None:
        raise KeyboardInterrupt(pending)


def _leave() -> str | None:
    """Leave a deferred section; at the outermost, forget the pending request and return it (to act on it)."""
    global _depth, _requested
    _depth -= 1
    if _depth:
        return None
    pending, _requested = _requested, None
    return pending


def request(reason: str) -> bool:
    """Record a stop (e.g. "SIGTERM"); True if a deferred section will act on it, False if the caller must."""
    global _requested
    if _depth == 0:
        return False
    _requested = reason
    return True


def requested() -> str | None:
    """The pending stop's reason, or None."""
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt (the usual unwinding: trackers end KILLED, nothing is published) if a stop waits;
    raised, it no longer waits (an enclosing section does not raise it again)."""
    global _requested
    if _requested is not None:
        reason, _requested = _requested, None
        raise KeyboardInterrupt(reason)
