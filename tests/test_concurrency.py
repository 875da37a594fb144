"""train.threads: auto: each of N processes sharing the cores gets cores / N threads (at least 1)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsm5lab import concurrency as cc
from dsm5lab.concurrency import SHARE_ENV, concurrent, cores, queue_root, queue_workers, resolve_threads, sharing


def node(root: Path, i: int) -> str:
    """The celery node name DVC gives worker i of root's queue (dvc/repo/experiments/queue/celery.py)."""
    wdir = os.path.join(str(root), ".dvc", "tmp", "exps", "celery")
    return f"dvc-exp-{hashlib.sha256(wdir.encode()).hexdigest()[:6]}-{i}@localhost"


def test_queue_root_is_the_repository_of_a_temp_copy(tmp_path):
    assert queue_root(tmp_path / "repo/.dvc/tmp/exps/tmpab12cd") == tmp_path / "repo"
    assert queue_root(tmp_path / "repo/.dvc/tmp/exps/tmpab12cd/sub/dir") == tmp_path / "repo"
    assert queue_root(tmp_path / "repo") is None
    assert queue_root(tmp_path / "repo/.dvc/tmp/exps") is None
    assert queue_root(tmp_path / "repo/.dvc/tmp/exps/celery") is None  # the workers' own folder


def test_queue_workers_counts_this_repositorys_workers_only(tmp_path):
    repo, other = tmp_path / "repo", tmp_path / "other"
    cmds = [["dvc", "exp", "queue-worker", node(repo, 1), "--clean"], ["dvc", "exp", "queue-worker", node(repo, 2)],
            ["/usr/bin/python3", "/x/dvc", "exp", "queue-worker", node(repo, 2)],  # the same node seen twice
            ["dvc", "exp", "queue-worker", node(other, 1)], ["python", "train.py"]]
    assert queue_workers(repo, cmds) == 2
    assert queue_workers(other, cmds) == 1
    assert queue_workers(tmp_path / "third", cmds) == 0


def test_auto_divides_the_cores_and_keeps_at_least_one(tmp_path, monkeypatch):
    monkeypatch.setattr(cc, "cores", lambda: 8)
    exp = tmp_path / "repo/.dvc/tmp/exps/tmpab12cd"
    monkeypatch.setattr(cc, "_cmdlines", lambda: iter([["dvc", "exp", "queue-worker", node(tmp_path / "repo", i)]
                                                        for i in (1, 2)]))
    assert resolve_threads("auto", {}, tmp_path)[0] == 8  # alone
    assert resolve_threads("auto", {SHARE_ENV: "4"}, tmp_path)[0] == 2
    n, rule = resolve_threads("auto", {}, exp)
    assert n == 4 and "2 dvc queue workers" in rule, rule
    n, rule = resolve_threads("auto", {SHARE_ENV: "2"}, exp)  # two HPO workers in each of two queued experiments
    assert n == 2 and "2 local HPO workers x 2 dvc queue workers" in rule, rule
    assert resolve_threads("auto", {SHARE_ENV: "16"}, exp)[0] == 1
    assert resolve_threads("auto", {SHARE_ENV: "junk"}, tmp_path)[0] == 8  # unreadable: ignored
    # a pinned count is kept whatever runs beside it, 0 leaves torch's default
    assert resolve_threads(3, {SHARE_ENV: "4"}, exp) == (3, "pinned by train.threads")
    assert resolve_threads(0, {SHARE_ENV: "4"}, exp)[0] is None


def test_sharing_multiplies_and_restores(monkeypatch):
    monkeypatch.delenv(SHARE_ENV, raising=False)
    with sharing(2):
        assert os.environ[SHARE_ENV] == "2"
        with sharing(3):
            assert os.environ[SHARE_ENV] == "6"
        assert os.environ[SHARE_ENV] == "2"
    assert SHARE_ENV not in os.environ
    with pytest.raises(RuntimeError), sharing(2):
        raise RuntimeError
    assert SHARE_ENV not in os.environ


def test_live_queue_worker_processes_are_found(tmp_path):
    """The real process table: two processes whose command lines are those of a 2-worker queue of repo."""
    repo = tmp_path / "repo"
    exp = repo / ".dvc/tmp/exps/tmpab12cd"
    exp.mkdir(parents=True)
    sleeper = "import time; time.sleep(60)"
    procs = [subprocess.Popen([sys.executable, "-c", sleeper, "exp", "queue-worker", node(repo, i)]) for i in (1, 2)]
    try:
        deadline = time.monotonic() + 10
        while concurrent({}, exp)[0] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert concurrent({}, exp) == (2, "2 dvc queue workers")
        assert concurrent({}, tmp_path) == (1, "alone")  # not in a temp copy: the queue is not ours
        assert resolve_threads("auto", {}, exp)[0] == max(1, cores() // 2)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert concurrent({}, exp) == (1, "alone")


def test_threads_param_accepts_auto_and_rejects_the_rest(tmp_path):
    from conftest import default_params

    from dsm5lab.config import apply_overrides, validate
    from dsm5lab.errors import UserError

    assert validate(apply_overrides(default_params(), ["train.threads=auto"])).train.threads == "auto"
    assert validate(apply_overrides(default_params(), ["train.threads=0"])).train.threads == 0
    for bad in ("-1", "513", "many", "1.5", "true"):
        with pytest.raises(UserError, match=r"train\.threads: must be an integer 0-512 .* or 'auto'"):
            validate(apply_overrides(default_params(), [f"train.threads={bad}"]))
