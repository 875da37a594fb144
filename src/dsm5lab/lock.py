"""One writer of each kind per project: `train`, `retention` and `hpo run` on a SQLite or journal study each
hold a lock file.

The lock is `.dsm5lab/locks/<name>.lock` under the project (git-ignored, outside every DVC out and dep), created
with O_EXCL and holding JSON {pid, host, command, started, create_time}. It is removed when the holder exits,
Ctrl-C and SIGTERM included (both unwind as KeyboardInterrupt, cli.main). A holder killed outright (SIGKILL, a
crash of the machine) leaves the file behind: on the same host, a file whose process is gone is stale and the
next writer takes it over with one warning line; a file from another host (a shared folder) cannot be checked
from here and is left to the user. The folders go with the last lock, so a finished run leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dsm5lab.errors import UserError

LOCKS = Path(".dsm5lab/locks")


def process_alive(pid: int, create_time: float | None) -> bool:
    """Whether this host's process `pid` still runs and is the one that started at create_time (pids are reused)."""
    import psutil

    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
            return False
        # psutil derives the start time from the boot time: allow for clock adjustments
        return create_time is None or abs(proc.create_time() - float(create_time)) <= 2.0
    except (psutil.NoSuchProcess, ValueError, TypeError):
        return False
    except psutil.AccessDenied:  # another user's process exists
        return True


def this_process() -> dict:
    """pid, host and start time of this process: what a lock file or a worker's parent check compares against."""
    import psutil

    return {"pid": os.getpid(), "host": socket.gethostname(), "create_time": psutil.Process().create_time()}


def lock_path(root: Path, name: str) -> Path:
    return Path(root) / LOCKS / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.lock"


def _read(path: Path) -> dict | None:
    """The holder's record; {} for a file that stays empty or garbled (a holder killed while writing it)."""
    for _ in range(10):  # a holder writes right after O_EXCL creates the file: give it a moment
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            found = json.loads(text)
            if isinstance(found, dict):
                return found
        except ValueError:
            pass
        time.sleep(0.05)
    return {}


def _stale(holder: dict) -> bool:
    if not holder:  # garbled: its holder died while writing it
        return True
    if holder.get("host") != socket.gethostname():  # another host's process cannot be checked from here
        return False
    return not process_alive(holder.get("pid", -1), holder.get("create_time"))


def _held(holder: dict, path: Path) -> UserError:
    where = holder.get("host", "?")
    text = (f"another {holder.get('command', 'dsm5lab command')} is running here (pid {holder.get('pid', '?')} on "
            f"{where}, started {holder.get('started', '?')}); wait for it or stop it")
    if where != socket.gethostname():
        text += f" (this host cannot see that process: if it is gone, delete {path})"
    return UserError(text)


def _take_over(path: Path, holder: dict) -> None:
    """Move a stale lock aside, unless someone replaced it in between (then put theirs back)."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another process took it over first
        return
    moved = _read(aside)
    if moved != holder:  # a live lock written after we read the stale one: restore it
        try:
            os.link(aside, path)
        except OSError:
            pass
    else:
        print(f"warning: {path}: took over the lock of {holder.get('command', 'a dsm5lab command')} (pid "
              f"{holder.get('pid', '?')}, started {holder.get('started', '?')}), which is no longer running",
              file=sys.stderr)
    aside.unlink(missing_ok=True)


def acquire(root: Path, name: str, command: str) -> Path:
    """Create the lock file `name` for `command`; a one-line UserError naming the holder when one is running."""
    path = lock_path(root, name)
    me = {**this_process(), "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(5):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileNotFoundError:  # another process's release removed the empty folder in between
            continue
        except FileExistsError:
            holder = _read(path)
            if holder is None:  # released in between
                continue
            if not _stale(holder):
                raise _held(holder, path) from None
            _take_over(path, holder)
            continue
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path
    raise UserError(f"{path}: could not take the lock (other processes keep taking it); try again")


def release(path: Path) -> None:
    """Remove the lock file if it is still this process's."""
    holder = _read(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
        for folder in (path.parent, path.parent.parent):  # .dsm5lab/locks, then .dsm5lab: only when empty
            try:
                folder.rmdir()
            except OSError:
                break


@contextmanager
def project_lock(root: Path, name: str, command: str) -> Iterator[Path]:
    """Hold `name` while the block runs, as `command` (the words the second writer's error names)."""
    path = acquire(root, name, command)
    try:
        yield path
    finally:
        release(path)
