"""Ctrl-C and SIGTERM in the train stage's fit wait for the step boundary (dsm5lab.stopping, cli's handlers).
Every stop here is a real signal sent to this process."""

from __future__ import annotations

import os
import signal

import pytest

from dsm5lab import cli, stopping


@pytest.fixture
def handlers(monkeypatch):
    """cli's handlers installed as `dsm5lab` installs them; the test's own back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(cli, "_terminated", False)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cli._install_stop_handlers()
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _send(sig: int) -> None:
    os.kill(os.getpid(), sig)
    for _ in range(10_000):  # bytecode boundaries: a handler that raises does so in here
        pass


def test_ctrl_c_in_a_fit_waits_for_the_next_check_and_a_second_one_stops_at_once(handlers, capfd):
    reached = []
    with pytest.raises(KeyboardInterrupt, match="SIGINT"), stopping.deferred():
        _send(signal.SIGINT)  # recorded only: nothing raised where Python could drop it (a gc callback)
        assert stopping.requested() == "SIGINT"
        reached.append("first")
        _send(signal.SIGINT)  # the user insists
        reached.append("second")
    assert reached == ["first"] and stopping.requested() is None
    assert capfd.readouterr().err == "train: Ctrl-C: stopping where the next step begins (Ctrl-C again to stop now)\n"


def test_the_loop_s_check_raises_the_waiting_stop(handlers):
    with pytest.raises(KeyboardInterrupt, match="SIGINT"), stopping.deferred():
        _send(signal.SIGINT)
        stopping.check()
    assert stopping.requested() is None


def test_a_stop_that_came_after_the_last_check_is_raised_as_the_section_ends(handlers):
    """Between the fit's last check and the end of the section (say, during its last validation)."""
    reached = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with stopping.deferred():
            _send(signal.SIGTERM)
            reached.append("after")
    assert reached == ["after"] and cli._terminated and stopping.requested() is None


def test_outside_a_fit_ctrl_c_stops_at_once(handlers):
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        _send(signal.SIGINT)


def test_a_sigint_ignored_from_the_start_stays_ignored(monkeypatch):
    """`nohup` and a non-interactive shell's background jobs start with SIGINT ignored; Python keeps that."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cli._install_stop_handlers()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is cli._on_sigterm
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


FAKE_CLI = """
from dsm5lab import cli


def app():  # a command the SIGTERM reaches inside a string exec; click turns the interrupt into exit 1
    try:
        exec("import os, signal\\nos.kill(os.getpid(), signal.SIGTERM)\\nfor _ in range(100000):\\n    pass", {})
    except KeyboardInterrupt:
        raise SystemExit(1)


cli.app = app
cli.main()
"""


def test_sigterm_exits_143_under_python_m_even_when_it_landed_in_a_string_exec(tmp_path):
    """CPython sets its unhandled-KeyboardInterrupt flag when a string exec ends with one, caught or not, and a
    `python -m` process (an `hpo worker`) then died by SIGINT whatever cli.main exited with (seen in CI: -2)."""
    import subprocess
    import sys

    (tmp_path / "fake_cli.py").write_text(FAKE_CLI)
    env = {**os.environ, "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "fake_cli"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.startswith("error: stopped by SIGTERM")
