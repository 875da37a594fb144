"""Tracker on a real sqlite MLflow store and dvclive folder; an unreachable MLflow buffers and replays."""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from dsm5lab import tracking
from dsm5lab.tracking import BUFFER, Tracker, TrackingSettings, default_tags, replay, resolve_uri

UNREACHABLE = "http://127.0.0.1:9"  # discard port: connection refused at once

# MLflow's own sqlalchemy usage, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    # One store for the module: creating a sqlite store runs MLflow's migrations (~1 s each).
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts in ./mlruns of the cwd
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    for var in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_ROOT", "DVCLIVE_RESUME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setattr(tracking, "_UNREACHABLE", {})  # each test starts as a fresh process would


@pytest.fixture
def silent_server():
    """A loopback MLflow 'server' that takes connections (the kernel completes them) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as server:
        yield server, f"http://127.0.0.1:{server.getsockname()[1]}"


def connections(server: socket.socket) -> int:
    """How many connections the silent server got since last asked (closes them)."""
    server.setblocking(False)
    n = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def settings(tmp_path: Path, uri: str, experiment: str, **kw) -> TrackingSettings:
    kw.setdefault("live_dir", tmp_path / "live")
    return TrackingSettings(mlflow_uri=uri, experiment=experiment, run_name="run", run_dir=tmp_path / "run",
                            **kw)


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def steps_and_values(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    history = client(uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def tsv_steps(live_dir: Path, name: str) -> list[int]:
    with (live_dir / "plots" / "metrics" / f"{name}.tsv").open() as fh:
        return [int(row["step"]) for row in csv.DictReader(fh, delimiter="\t")]


def tracking_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "dsm5lab.tracking" and r.levelno == logging.WARNING]


def test_import_stays_light():
    code = "import sys, dsm5lab.tracking; print(sorted({'mlflow', 'dvclive', 'dvc'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_everything_reaches_mlflow_and_dvclive(tmp_path, mlflow_uri):
    subprocess.run(["git", "init", "-q"], check=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    s = settings(tmp_path, mlflow_uri, "roundtrip", tags={"stage": "train"})
    report = tmp_path / "report.json"
    report.write_text("{}")
    with Tracker(s) as t:
        t.log_params({"model": {"lr": 0.001, "layers": [1, 2]}, "seed": 7, "out": tmp_path})
        t.set_tags({"dsm5lab.threads": 1})
        t.set_tags({"dsm5lab.threads": 2})  # set again: overwritten (a param would be refused)
        for step in range(3):
            t.log_metrics({"train/loss": 1.0 / (step + 1), "val/macro_f1": 0.1 * step}, step=step)
        t.log_summary({"test/macro_f1": 0.42})
        t.log_artifacts(report, "reports")
        run_id = t.mlflow_run_id

    import mlflow

    assert mlflow.active_run() is None
    run = client(mlflow_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params == {"model.lr": "0.001", "model.layers": "[1, 2]", "seed": "7",
                               "out": str(tmp_path)}
    loss = steps_and_values(mlflow_uri, run_id, "train/loss")
    assert loss == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert steps_and_values(mlflow_uri, run_id, "test/macro_f1") == [(0, 0.42)]
    assert run.data.tags["git_commit"] == head and run.data.tags["stage"] == "train"
    assert run.data.tags["dsm5lab.threads"] == "2"
    assert [f.path for f in client(mlflow_uri).list_artifacts(run_id, "reports")] == ["reports/report.json"]
    assert (tmp_path / "run" / "mlflow_run_id").read_text().strip() == run_id

    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert summary["test"] == {"macro_f1": 0.42} and summary["val"]["macro_f1"] == pytest.approx(0.2)
    assert summary["step"] == 2
    assert tsv_steps(tmp_path / "live", "train/loss") == [0, 1, 2]
    assert "model.lr: 0.001" in (tmp_path / "live" / "params.yaml").read_text()
    assert not (tmp_path / "live" / "dvc.yaml").exists() and not (tmp_path / "dvc.yaml").exists()


def test_unreachable_mlflow_buffers_and_replays_once(tmp_path, mlflow_uri, caplog):
    s = settings(tmp_path, UNREACHABLE, "replayed", tags={"stage": "hpo"})
    with caplog.at_level(logging.WARNING, logger="dsm5lab.tracking"), Tracker(s) as t:
        t.log_params({"optim": {"lr": 0.01}})
        t.set_tags({"dsm5lab.threads": 1})
        with t.child("trial 0") as trial:
            trial.log_metrics({"val/loss": 0.9}, step=0)
        for step in range(3):
            t.log_metrics({"train/loss": 1.0 - step / 10}, step=step)
        t.log_summary({"test/micro_f1": 0.5})
    assert t.mlflow_run_id is None
    [warning] = tracking_warnings(caplog)
    assert UNREACHABLE in warning.getMessage()
    assert tsv_steps(tmp_path / "live", "train/loss") == [0, 1, 2]  # dvclive kept going

    lines = [json.loads(x) for x in (s.run_dir / BUFFER).read_text().splitlines()]
    assert [x["type"] for x in lines] == ["tags", "params", "tags", "metrics", "metrics", "metrics", "metrics", "end"]
    assert all(x["run_name"] == "run" and x["experiment"] == "replayed" for x in lines)
    assert [x["step"] for x in lines[3:7]] == [0, 1, 2, None] and all(x["timestamp"] for x in lines[3:7])
    child_lines = [json.loads(x) for x in (s.run_dir / "trial_0" / BUFFER).read_text().splitlines()]
    assert [x["type"] for x in child_lines] == ["tags", "metrics", "end"]
    assert all(x["parent"] == "run" for x in child_lines)

    assert replay(s.run_dir, uri=mlflow_uri) == len(lines) + len(child_lines)
    mc = client(mlflow_uri)
    exp = mc.get_experiment_by_name("replayed")
    runs = {r.info.run_name: r for r in mc.search_runs([exp.experiment_id])}
    parent, trial = runs["run"], runs["trial 0"]
    assert parent.data.params == {"optim.lr": "0.01"} and parent.data.tags["stage"] == "hpo"
    assert parent.data.tags["dsm5lab.threads"] == "1"
    assert parent.info.status == "FINISHED"
    assert steps_and_values(mlflow_uri, parent.info.run_id, "train/loss") == [(0, 1.0), (1, 0.9), (2, 0.8)]
    assert parent.data.metrics["test/micro_f1"] == 0.5
    assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert trial.data.metrics == {"val/loss": 0.9}

    assert replay(s.run_dir, uri=mlflow_uri) == 0
    assert (s.run_dir / (BUFFER + ".replayed")).exists() and not (s.run_dir / BUFFER).exists()
    assert len(mc.search_runs([exp.experiment_id])) == 2


def test_failure_mid_run_buffers_the_rest_and_replay_continues_it(tmp_path, mlflow_uri, caplog, monkeypatch):
    s = settings(tmp_path, mlflow_uri, "mid-run", live_dir=None)

    calls = []

    def down(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("server went away")

    with caplog.at_level(logging.WARNING, logger="dsm5lab.tracking"), Tracker(s) as t:
        t.log_metrics({"train/loss": 1.0}, step=0)
        monkeypatch.setattr(t._ml.client, "log_batch", down)
        monkeypatch.setattr(t._ml.client, "set_terminated", down)
        t.log_metrics({"train/loss": 0.5}, step=1)
        t.log_metrics({"train/loss": 0.25}, step=2)
    monkeypatch.undo()
    assert len(tracking_warnings(caplog)) == 1 and len(calls) == 1  # no retry per record once it failed
    assert not tracking._UNREACHABLE  # a local store is never skipped by later trackers
    run_id = t.mlflow_run_id
    assert steps_and_values(mlflow_uri, run_id, "train/loss") == [(0, 1.0)]
    assert client(mlflow_uri).get_run(run_id).info.status == "RUNNING"

    assert replay(s.run_dir / BUFFER, uri=mlflow_uri) == 3
    assert steps_and_values(mlflow_uri, run_id, "train/loss") == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert client(mlflow_uri).get_run(run_id).info.status == "FINISHED"
    exp = client(mlflow_uri).get_experiment_by_name("mid-run")
    assert len(client(mlflow_uri).search_runs([exp.experiment_id])) == 1


def test_a_silent_server_costs_one_wait_per_process_and_its_records_replay(
        tmp_path, mlflow_uri, silent_server, monkeypatch, caplog):
    """A server that accepts and never answers: the first tracker gives up after 2 tries x 5 s (the defaults),
    later ones in the process buffer without connecting; every buffer replays into a working store."""
    server, uri = silent_server
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")  # the defaults, as a user gets them
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    import mlflow.tracking  # noqa: F401 - its import time is not the wait measured here

    seconds, got = [], []
    with caplog.at_level(logging.WARNING, logger="dsm5lab.tracking"):
        for trial in range(3):
            s = TrackingSettings(mlflow_uri=uri, experiment="silent", run_name=f"trial-{trial}",
                                 live_dir=None, run_dir=tmp_path / f"trial-{trial}")
            started = time.monotonic()
            with Tracker(s) as t:
                t.log_params({"trial": trial})
                t.log_metrics({"val/loss": 1.0 / (trial + 1)}, step=0)
            seconds.append(time.monotonic() - started)
            got.append(connections(server))
    assert 9.5 < seconds[0] < 20, seconds  # MLflow's own defaults wait minutes, ours used to wait ~95 s
    assert seconds[1] < 1 and seconds[2] < 1, seconds
    assert got == [2, 0, 0]  # one try and one retry, then no connection at all
    [warning] = tracking_warnings(caplog)
    assert uri in warning.getMessage() and "unreachable" in warning.getMessage()

    for trial in range(3):
        lines = [json.loads(x) for x in (tmp_path / f"trial-{trial}" / BUFFER).read_text().splitlines()]
        assert [x["type"] for x in lines] == ["tags", "params", "metrics", "end"]
    assert replay(tmp_path, uri=mlflow_uri) == 12
    mc = client(mlflow_uri)
    runs = mc.search_runs([mc.get_experiment_by_name("silent").experiment_id])
    assert sorted((r.info.run_name, r.data.params["trial"], r.data.metrics["val/loss"], r.info.status)
                  for r in runs) == [("trial-0", "0", 1.0, "FINISHED"), ("trial-1", "1", 0.5, "FINISHED"),
                                     ("trial-2", "2", pytest.approx(1 / 3), "FINISHED")]


@pytest.mark.parametrize("user", [None, {"MLFLOW_HTTP_REQUEST_TIMEOUT": "77",
                                          "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4"}])
def test_http_timeouts_are_short_unless_the_user_set_them(monkeypatch, user):
    for var in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(var)
    for var, value in (user or {}).items():
        monkeypatch.setenv(var, value)
    tracking._client(UNREACHABLE)  # no request: the client connects on its first call
    want = user or {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
    assert {var: os.environ[var] for var in want} == want


@pytest.mark.parametrize(("error", "status"), [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_escaping_exception_sets_status_and_closes_dvclive(tmp_path, mlflow_uri, error, status):
    s = settings(tmp_path, mlflow_uri, f"status-{status}")
    with pytest.raises(error), Tracker(s) as t:
        t.log_metrics({"train/loss": 2.0}, step=5)
        raise error("boom")
    assert client(mlflow_uri).get_run(t.mlflow_run_id).info.status == status
    assert json.loads((tmp_path / "live" / "metrics.json").read_text()) == {"train": {"loss": 2.0}, "step": 5}
    import mlflow

    assert mlflow.active_run() is None


def test_child_runs_are_nested_under_the_parent(tmp_path, mlflow_uri):
    s = settings(tmp_path, mlflow_uri, "nested", tags={"stage": "hpo"})
    child_ids = []
    with Tracker(s) as study:
        for trial in range(2):
            with study.child(f"trial-{trial}") as t:
                assert t.settings.live_dir is None and t.settings.run_dir == s.run_dir / f"trial-{trial}"
                t.log_metrics({"val/macro_f1": 0.1 * trial}, step=0)
                child_ids.append(t.mlflow_run_id)
    mc = client(mlflow_uri)
    for child_id in child_ids:
        run = mc.get_run(child_id)
        assert run.data.tags["mlflow.parentRunId"] == study.mlflow_run_id
        assert run.data.tags["stage"] == "hpo" and run.info.status == "FINISHED"
    # Children write no dvclive output of their own.
    assert sorted(p.name for p in (tmp_path / "live").iterdir()) == ["metrics.json"]


def test_events_are_json_lines_with_time_and_kind(tmp_path, mlflow_uri):
    s = settings(tmp_path, UNREACHABLE, "events", live_dir=None)
    with Tracker(s) as t:
        t.event("epoch_end", epoch=1, checkpoint=tmp_path / "ckpt.pt")
        t.event("early_stop", patience=3)
    lines = [json.loads(x) for x in (s.run_dir / "events.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in lines] == ["run_start", "epoch_end", "early_stop", "run_end"]
    assert all(datetime.fromisoformat(x["time"]).tzinfo is not None for x in lines)
    assert lines[1]["checkpoint"] == str(tmp_path / "ckpt.pt") and lines[-1]["status"] == "FINISHED"


def test_a_queued_experiment_logs_into_the_project_store_and_artifact_root(tmp_path, monkeypatch):
    """`dvc queue` runs stages in a temp copy (cwd) with DVC_ROOT = the project: store and artifacts go there."""
    project, temp_copy = tmp_path / "project", tmp_path / "project/.dvc/tmp/exps/tmpabc"
    temp_copy.mkdir(parents=True)
    monkeypatch.chdir(temp_copy)
    monkeypatch.setenv("DVC_ROOT", str(project))
    report = temp_copy / "report.json"
    report.write_text("{}")
    s = TrackingSettings(mlflow_uri=None, experiment="queued", run_name="train", live_dir=None,
                         run_dir=temp_copy / "run")
    with Tracker(s) as t:
        t.log_artifacts(report, "reports")
        run_id = t.mlflow_run_id
    uri = f"sqlite:///{project.resolve()}/mlflow.db"
    assert (project / "mlflow.db").is_file() and not (temp_copy / "mlflow.db").exists()
    exp = client(uri).get_experiment_by_name("queued")
    assert exp.artifact_location == (project.resolve() / "mlruns" / "queued").as_uri()
    assert (project / "mlruns/queued" / run_id / "artifacts/reports/report.json").is_file()
    assert not (temp_copy / "mlruns").exists()


def test_resume_keeps_dvclive_steps_and_the_mlflow_run(tmp_path, mlflow_uri):
    s = settings(tmp_path, mlflow_uri, "resume")
    with Tracker(s) as t:
        for step in range(3):
            t.log_metrics({"train/loss": float(step), "val/f1": 0.1}, step=step)
        first_id = t.mlflow_run_id
    resumed = TrackingSettings(**{**s.__dict__, "resume": True})
    with Tracker(resumed) as t:
        for step in (3, 4):
            t.log_metrics({"train/loss": float(step), "val/f1": 0.1}, step=step)
        assert t.mlflow_run_id == first_id
    assert tsv_steps(tmp_path / "live", "train/loss") == [0, 1, 2, 3, 4]
    assert json.loads((tmp_path / "live" / "metrics.json").read_text()) == {
        "train": {"loss": 4.0}, "val": {"f1": 0.1}, "step": 4}
    assert [step for step, _ in steps_and_values(mlflow_uri, first_id, "train/loss")] == [0, 1, 2, 3, 4]
    assert client(mlflow_uri).get_run(first_id).info.status == "FINISHED"

    # Resuming from an older checkpoint redoes steps 3-4: dvclive must not hold them twice.
    with Tracker(resumed) as t:
        t.log_metrics({"train/loss": 30.0}, step=3)
    assert tsv_steps(tmp_path / "live", "train/loss") == [0, 1, 2, 3]
    assert tsv_steps(tmp_path / "live", "val/f1") == [0, 1, 2]
    assert json.loads((tmp_path / "live" / "metrics.json").read_text())["step"] == 3


def test_a_corrupt_buffer_is_one_error_line_and_is_not_replayed(tmp_path, cli):
    buffer = tmp_path / BUFFER
    buffer.write_text('{"type": "start"}\n\n{"type": "metric", "key": "a"\n')  # cut off mid-write
    result = cli("tracking", "replay", "--buffer", buffer)
    assert result.exit_code == 2
    assert result.output.strip() == f"error: tracking replay: {buffer} line 3 is not valid JSON (Expecting ',' delimiter)"
    assert buffer.exists() and not list(tmp_path.glob("*.replayed"))


def test_a_fresh_run_does_not_append_to_an_old_buffer(tmp_path):
    s = settings(tmp_path, UNREACHABLE, "fresh", live_dir=None)
    for _ in range(2):
        with Tracker(s) as t:
            t.log_metrics({"train/loss": 1.0}, step=0)
    buffers = sorted(p.name for p in s.run_dir.glob("mlflow_buffer*.jsonl"))
    assert len(buffers) == 2 and BUFFER in buffers
    assert all(len(p.read_text().splitlines()) == 3 for p in s.run_dir.glob("mlflow_buffer*.jsonl"))


def test_default_tags_and_uri(tmp_path, monkeypatch):
    assert "git_commit" not in default_tags()  # tmp_path is no git repository
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lark")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    assert default_tags() == {"dvc_exp_name": "brisk-lark", "dvc_exp_baseline": "abc123"}
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert resolve_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    # a queued experiment runs in a temp copy; DVC_ROOT names the project whose store it should use
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project"))
    assert resolve_uri(None) == f"sqlite:///{tmp_path.resolve()}/project/mlflow.db"
    assert resolve_uri("sqlite:///runs/m.db?timeout=30") == f"sqlite:///{tmp_path.resolve()}/project/runs/m.db?timeout=30"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert resolve_uri(None) == "http://mlflow.example:5000"
    assert resolve_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"



def test_a_slow_artifact_upload_is_buffered_without_writing_the_server_off(tmp_path, monkeypatch):
    """A read timeout on an upload (the server took it, answered late): that record waits for replay, and the
    server stays in use for the next records and trackers."""
    import requests

    real_apply = tracking._apply

    def slow_uploads(client, run_id, record):
        if record["type"] == "artifact":
            raise requests.exceptions.ReadTimeout("Read timed out. (read timeout=5)")
        return real_apply(client, run_id, record)

    monkeypatch.setattr(tracking, "_apply", slow_uploads)
    monkeypatch.setattr(tracking, "_is_remote", lambda uri: True)  # as an http store would be
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "big.bin").write_bytes(b"0" * 1024)
    with Tracker(settings(tmp_path, uri, "slow", live_dir=None)) as tracker:
        tracker.log_artifacts(tmp_path / "big.bin", "model")
        tracker.log_metrics({"train/loss": 0.5}, step=1)
    assert uri not in tracking._UNREACHABLE and not tracker._ml.failed
    buffered = [json.loads(x) for x in tracker.buffer_path.read_text().splitlines()]
    assert [r["type"] for r in buffered] == ["artifact"]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=uri).get_run(tracker.mlflow_run_id)
    assert run.data.metrics["train/loss"] == 0.5 and run.info.status == "FINISHED"
