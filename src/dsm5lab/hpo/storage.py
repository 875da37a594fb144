"""Optuna storages by URL, and failing (then retrying) trials whose worker died.

- `sqlite:///...` (default, one worker), any other SQLAlchemy URL (PostgreSQL for many machines):
  RDBStorage with heartbeats, so a trial silent past the grace period is failed by the next worker.
- `journal:<file>`: JournalStorage for several processes on one machine; it has no heartbeat, so
  each worker, when it starts, sweeps RUNNING trials whose worker process (same host, pid and start
  time) is gone.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from dsm5lab import layout
from dsm5lab.errors import UserError

DEFAULT_STORAGE = layout.HPO_DEFAULT_STORAGE
JOURNAL = "journal:"
WORKER_ATTR = "worker"


def resolve(url: str | None) -> str:
    return url or DEFAULT_STORAGE


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def redact(url: str) -> str:
    """The URL without its password, for logs and reports."""
    if url.startswith(JOURNAL):
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is reported by open_storage
        return url


def open_storage(url: str, stale) -> Any:
    """An Optuna storage for `url`; `stale` is the hpo.stale config (heartbeat, grace, retries)."""
    from optuna.storages import JournalStorage, RDBStorage

    quiet_optuna()

    retry = retry_callback(stale.max_retry)
    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len(JOURNAL):])
        if not path.name:
            raise UserError(f"hpo.storage: '{url}' names no file (expected journal:<path>, e.g. journal:stages/hpo/journal.log)")
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_journal(path)
        return JournalStorage(JournalFileBackend(str(path)))
    if is_sqlite(url):
        db = url.split("///", 1)[-1].split("?", 1)[0]
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
    try:
        return RDBStorage(url, heartbeat_interval=stale.heartbeat_interval_s, grace_period=stale.grace_period_s,
                          heartbeat_stale_trial_callback=retry, engine_kwargs=_engine_kwargs(url))
    except ImportError as exc:
        raise UserError(f"hpo.storage: the driver for {redact(url)} is not installed ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's connection/URL errors
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"hpo.storage: cannot open {redact(url)}: {first}") from None


def repair_journal(path: Path) -> Path | None:
    """Check a journal file before Optuna reads it; returns where a torn last record was moved, if one was.

    A worker killed mid-append (or a full disk) leaves a last record without its newline or not valid JSON.
    Optuna skips such a tail silently, and the next append glues a record onto it, after which every read
    fails with a JSONDecodeError. The torn bytes are moved to `<file>.torn-<time>` (one line says so) and the
    study goes on; a whole record appended after the torn bytes (on the same line) is kept. A bad record
    followed by good ones is no tear but damage: one line names the file and its byte offset, and nothing is
    changed. Runs under Optuna's own journal lock, so no live writer is cut off."""
    import json
    import time

    from optuna.storages.journal import JournalFileSymlinkLock
    from optuna.storages.journal._file import get_lock_file

    if not path.is_file() or path.stat().st_size == 0:
        return None
    with get_lock_file(JournalFileSymlinkLock(str(path))):
        data = path.read_bytes()
        offset, bad = 0, None  # bad: byte offset of the first record that does not parse
        lines = [ln + b"\n" for ln in data.split(b"\n")]
        lines[-1] = lines[-1][:-1]  # what follows the last newline: b"" in a whole file, else a torn tail
        for line in filter(None, lines):
            if bad is None:
                try:
                    ok = line.endswith(b"\n") and isinstance(json.loads(line), dict)
                except ValueError:  # JSONDecodeError and UnicodeDecodeError
                    ok = False
                if not ok:
                    bad = offset
            elif line.strip():
                raise UserError(f"hpo.storage: journal {path} is damaged at byte {bad} (a record that does not "
                                "parse, followed by more records); restore it from a backup or start a new "
                                "hpo.study_name")
            offset += len(line)
        if bad is None:
            return None
        tail, kept = data[bad:], b""
        glued = tail.rfind(b'{"op_code"', 1)  # a later append glued onto the torn bytes: keep that record
        if glued > 0 and tail.endswith(b"\n"):
            try:
                if isinstance(json.loads(tail[glued:]), dict):
                    tail, kept = tail[:glued], tail[glued:]
            except ValueError:
                pass
        aside = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        aside.write_bytes(tail)
        with path.open("r+b") as fh:
            fh.truncate(bad)
            fh.seek(bad)
            fh.write(kept)
            fh.flush()
            os.fsync(fh.fileno())
    print(f"warning: hpo: the last record of journal {path} was cut off ({len(tail)} bytes, a worker killed "
          f"while writing?); moved to {aside}" + ("; the record appended after it is kept" if kept else "")
          + ", the study goes on", file=sys.stderr)
    return aside


def quiet_optuna() -> None:
    """Our own one line per trial replaces Optuna's INFO logs; heartbeat and retry are stable enough for us."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _engine_kwargs(url: str) -> dict:
    if is_sqlite(url):  # a second connection waits for the lock instead of failing at once
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def worker_tag() -> dict:
    """Who runs a trial: host, pid and the process start time (so a reused pid is not mistaken for it), device."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time(),
            "device": os.environ.get("CUDA_VISIBLE_DEVICES")}  # hpo.devices: what this process was given


def _dead(tag: dict | None) -> bool:
    import psutil

    if not isinstance(tag, dict) or tag.get("host") != socket.gethostname():
        return False  # another machine's worker: the heartbeat (RDB) decides
    try:
        # psutil derives the start time from the boot time: allow for clock adjustments
        return abs(psutil.Process(int(tag["pid"])).create_time() - float(tag["started"])) > 2.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError):
        return True


def retry_callback(max_retry: int):
    """Re-enqueue a failed stale trial's params (a copy: the storage's cached trial stays as it is)."""
    import copy

    from optuna.storages import RetryHeartbeatStaleTrialCallback

    if not max_retry:
        return None
    inner = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def callback(study, trial) -> None:
        trial = copy.deepcopy(trial)
        trial.user_attrs.pop(WORKER_ATTR, None)  # the dead worker's tag must not mark the copy stale
        trial.user_attrs["stop_reason"] = None
        inner(study, trial)

    return callback


def sweep_stale(study, max_retry: int, single_worker: bool) -> list[int]:
    """Fail RUNNING trials whose worker is gone and re-enqueue their params (up to max_retry times).

    `single_worker` (SQLite): every RUNNING trial is stale, tagged or not, since no other worker may run.
    Returns the numbers of the trials failed.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    failed = []
    retry = retry_callback(max_retry)
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tag = trial.user_attrs.get(WORKER_ATTR)
        if not (single_worker or _dead(tag)):
            continue
        try:  # another worker may sweep (or the owner finish) the same trial at the same time
            storage.set_trial_user_attr(trial._trial_id, "stop_reason", "worker died")  # finished trials refuse it
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue
        failed.append(trial.number)
        if retry is not None:
            retry(study, storage.get_trial(trial._trial_id))
    return failed


def finished_count(study) -> int:
    """Trials that count towards n_trials: complete, pruned, and failed ones that were not re-enqueued."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    # RetryHeartbeatStaleTrialCallback lists every failed attempt in its copy's system attr retry_history
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    # a FAIL counts when we know why (died, diverged, invalid params); an interrupted or crashed
    # trial (Ctrl-C, a bug) does not use up the budget
    return sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and t.number not in retried and t.user_attrs.get("stop_reason")))
