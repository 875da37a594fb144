"""Progress for long work: bars on a terminal (silent under CI=true or when piped), and `say` lines.

A bar is gone when its loop ends; what a log must keep (one line per epoch, per HPO trial) goes
through say(), which prints whatever stderr is, so `nohup`, a log file or `dvc queue logs` show it too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def quiet() -> bool:
    """True when progress output should be suppressed (CI, or stderr is not a terminal)."""
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    return ci or not sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Wrap `items` in a tqdm bar unless quiet()."""
    if quiet():
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)


def say(line: str) -> None:
    """One progress line on stderr, terminal or not (above a running bar on a terminal)."""
    if quiet():
        print(line, file=sys.stderr, flush=True)
        return
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)
