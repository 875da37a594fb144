"""How many training processes share this machine's cores, and the threads `train.threads: auto` gives each.

Two sources of concurrency are known here:
- `hpo.workers: N` (local workers): the `hpo` stage sets SHARE_ENV to N for itself and the workers it spawns;
- `dvc queue start -j N`: a queued experiment runs in a temp copy `<repo>/.dvc/tmp/exps/<tmp>/`, and the
  queue's N celery workers are processes `dvc exp queue-worker dvc-exp-<hash>-<i>@localhost`, where <hash> is
  the first 6 hex digits of sha256("<repo>/.dvc/tmp/exps/celery") (dvc/repo/experiments/queue/celery.py).
Both multiply: two HPO workers inside each of two queued experiments are four processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

SHARE_ENV = "DSM5LAB_CONCURRENT"
EXPS_PARTS = (".dvc", "tmp", "exps")


def cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def queue_root(cwd: Path) -> Path | None:
    """The repository whose DVC queue runs `cwd`, when cwd is inside one of its temp copies, else None."""
    parts = Path(cwd).absolute().parts
    n = len(EXPS_PARTS)
    for i in range(len(parts) - n, 0, -1):
        if parts[i:i + n] == EXPS_PARTS and len(parts) > i + n and parts[i + n] != "celery":
            return Path(*parts[:i])
    return None


def _node_prefixes(root: Path) -> set[str]:
    """Worker node-name prefixes for root: DVC hashes its tmp path as it spelled it, so try both spellings."""
    spellings = {str(Path(root).absolute()), os.path.realpath(root)}
    return {f"dvc-exp-{hashlib.sha256(os.path.join(s, *EXPS_PARTS, 'celery').encode()).hexdigest()[:6]}-"
            for s in spellings}


def queue_workers(root: Path, cmdlines: Iterable[list[str]] | None = None) -> int:
    """Live `dvc exp queue-worker` processes of root's queue (the N of `dvc queue start -j N`)."""
    prefixes = _node_prefixes(root)
    nodes = set()
    for cmd in _cmdlines() if cmdlines is None else cmdlines:
        for i, arg in enumerate(cmd[:-1]):
            if arg == "queue-worker" and any(cmd[i + 1].startswith(p) for p in prefixes):
                nodes.add(cmd[i + 1])
    return len(nodes)


def _cmdlines() -> Iterator[list[str]]:
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline")
        if cmd:
            yield cmd


def concurrent(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> tuple[int, str]:
    """(processes sharing the cores, how that was found)."""
    environ = os.environ if environ is None else environ
    share, why = 1, []
    raw = environ.get(SHARE_ENV, "")
    if raw:
        try:
            local = int(raw)
        except ValueError:
            local = 0
        if local >= 1:
            share *= local
            why.append(f"{local} local HPO workers")
    root = queue_root(Path.cwd() if cwd is None else cwd)
    if root is not None:
        workers = queue_workers(root)
        if workers >= 1:
            share *= workers
            why.append(f"{workers} dvc queue workers")
    return share, " x ".join(why) or "alone"


def resolve_threads(setting: int | str, environ: Mapping[str, str] | None = None,
                    cwd: Path | None = None) -> tuple[int | None, str]:
    """(torch CPU threads to set, or None for torch's default; the rule that chose them) for train.threads."""
    if setting == "auto":
        n, share = cores(), concurrent(environ, cwd)
        return max(1, n // share[0]), f"auto: {n} cores / {share[0]} process(es) ({share[1]})"
    if not setting:
        return None, "0: torch's default (all cores)"
    return int(setting), "pinned by train.threads"


@contextlib.contextmanager
def sharing(workers: int) -> Iterator[None]:
    """SHARE_ENV multiplied by `workers` while the block runs (it reaches the processes started inside it)."""
    before = os.environ.get(SHARE_ENV)
    try:
        outer = max(1, int(before or 1))
    except ValueError:
        outer = 1
    os.environ[SHARE_ENV] = str(outer * max(1, workers))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SHARE_ENV, None)
        else:
            os.environ[SHARE_ENV] = before
