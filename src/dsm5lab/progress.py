"""Progress bars for long loops: shown on a terminal, silent under CI=true or when piped."""

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
