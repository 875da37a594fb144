"""One writer per project (dsm5lab.lock), with real processes: a second `train` or `retention` stops with one
line naming the first; a lock whose process is gone is taken over; a stopped `train` releases its lock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from conftest import ROOT, TINY, sets
from dsm5lab.errors import UserError
from dsm5lab.lock import _take_over, acquire, lock_path, process_alive, project_lock, release, this_process

# holds lock NAME for COMMAND in the cwd until killed, saying so first
HOLDER = textwrap.dedent("""
    import sys, time
    from dsm5lab.lock import acquire
    acquire(".", sys.argv[1], sys.argv[2])
    print("held", flush=True)
    time.sleep(600)
""")


def _env() -> dict:
    env = {**os.environ, "CI": "true", "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _holder(root, name: str, command: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, name, command], cwd=root, env=_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _dsm5lab(root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsm5lab.cli", *args], cwd=root, env=_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("command", ["train", "retention"])
def test_a_second_writer_gets_one_line_naming_the_first(tmp_path, command):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    holder = _holder(tmp_path, command, f"dsm5lab {command}")
    try:
        second = _dsm5lab(tmp_path, command, *sets(["hpo.enabled=false"]))
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2, second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith(f"error: another dsm5lab {command} is running here (pid {holder.pid} on "
                           f"{socket.gethostname()}, started ")
    assert line.endswith("); wait for it or stop it")
    assert not (tmp_path / "stages").exists()  # refused before writing anything


@pytest.mark.parametrize("leftover", ["killed holder", "empty file"])
def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path, leftover):
    if leftover == "killed holder":
        holder = _holder(tmp_path, "train", "dsm5lab train")
        holder.kill()  # SIGKILL: no cleanup, the file stays
        # not reaped until the end: a zombie (its parent has not waited for it yet) is gone too
        while psutil.Process(holder.pid).status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.05)
        dead = holder.pid
    else:  # a holder killed between creating the file and writing it
        lock_path(tmp_path, "train").parent.mkdir(parents=True)
        lock_path(tmp_path, "train").write_text("")
        dead = "?"
    assert lock_path(tmp_path, "train").exists()
    script = ("from dsm5lab.lock import project_lock\n"
              "with project_lock('.', 'train', 'dsm5lab train') as path:\n"
              "    print(open(path).read())\n")
    taker = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert taker.returncode == 0, taker.stderr
    (warning,) = taker.stderr.strip().splitlines()
    assert warning.startswith("warning: .dsm5lab/locks/train.lock: took over the lock of ")
    assert f"(pid {dead}, started " in warning and warning.endswith("which is no longer running")
    assert json.loads(taker.stdout)["pid"] != dead
    if leftover == "killed holder":
        holder.wait()
    assert not (tmp_path / ".dsm5lab").exists()  # released at the end, nothing left aside


def test_another_hosts_lock_is_not_judged_from_here(tmp_path):
    path = lock_path(tmp_path, "retention")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere.invalid", "create_time": 0.0,
                                "command": "dsm5lab retention", "started": "2030-01-01 00:00:00"}))
    with pytest.raises(UserError) as err:
        acquire(tmp_path, "retention", "dsm5lab retention")
    assert str(err.value) == ("another dsm5lab retention is running here (pid 1 on elsewhere.invalid, started "
                              "2030-01-01 00:00:00); wait for it or stop it (this host cannot see that process: if "
                              f"it is gone, delete {path})")
    release(path)  # not ours: left alone
    assert path.exists()


def test_locks_are_per_name_and_released(tmp_path):
    with project_lock(tmp_path, "hpo-study/a b", "dsm5lab hpo run (study a b)") as hpo:
        with project_lock(tmp_path, "train", "dsm5lab train"):  # another name: no conflict
            pass
        assert hpo.name == "hpo-study_a_b.lock" and hpo.exists()
        with pytest.raises(UserError, match=f"pid {os.getpid()} "):  # not re-entrant, even in the same process
            acquire(tmp_path, "hpo-study/a b", "dsm5lab hpo run")
    assert not hpo.exists() and not (tmp_path / ".dsm5lab").exists()  # a finished run leaves nothing


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_train_releases_its_lock(tiny_prepared, tmp_path, sig):
    root = tmp_path / "p"
    shutil.copytree(tiny_prepared, root)
    path = lock_path(root, "train")
    proc = subprocess.Popen([sys.executable, "-m", "dsm5lab.cli", "train", *sets(TINY + ["train.epochs=50"])],
                            cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (path.exists() and path.read_text()):  # the holder writes its record right after creating the file
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    assert json.loads(path.read_text())["pid"] == proc.pid
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    # however it ended: mostly 128 + sig, but Python drops a KeyboardInterrupt raised inside a gc callback, and
    # then the run goes on to its end
    assert proc.returncode in (128 + sig, -sig, 0), out
    assert not path.exists(), out


def test_a_lock_taken_between_reading_and_taking_over_is_put_back(tmp_path, capsys):
    """Two processes find the same stale lock; the first takes it over and writes its own before the second
    moves the file aside: the second puts the live one back and takes nothing."""
    path = lock_path(tmp_path, "train")
    path.parent.mkdir(parents=True)
    live = {**this_process(), "command": "dsm5lab train", "started": "now"}
    path.write_text(json.dumps(live))
    _take_over(path, {"pid": 99999999, "host": socket.gethostname(), "command": "dsm5lab train"})
    assert json.loads(path.read_text()) == live
    assert [p.name for p in path.parent.iterdir()] == ["train.lock"] and not capsys.readouterr().err


def test_a_reused_pid_is_not_its_old_process():
    me = this_process()
    assert process_alive(me["pid"], me["create_time"])
    assert not process_alive(me["pid"], me["create_time"] - 60)  # same pid, another start: the holder is gone

