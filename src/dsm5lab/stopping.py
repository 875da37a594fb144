"""A SIGTERM that lets the current training step finish.

`kill`, Slurm and `docker stop` send SIGTERM, and a grace period later SIGKILL. Raised at once (as Ctrl-C is),
the interrupt can land inside `optimizer.step()`, between two parameter updates, which leaves nothing worth
saving. Inside `deferred()` (the train stage's fit) the handler only records the request; the training loop
calls `check()` where a step begins, writes a resume point there when the run has gone on long enough
(`RESUME_AFTER_S`), and then stops the way Ctrl-C does.
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
    """While inside, a stop request waits for the next `check()` instead of interrupting at once."""
    global _depth, _requested
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _requested = None


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
    """Raise KeyboardInterrupt (the usual unwinding: trackers end KILLED, nothing is published) if a stop waits."""
    if _requested is not None:
        raise KeyboardInterrupt(_requested)
