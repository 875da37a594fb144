"""The clients the README sends people to, started for real on loopback: MLflow's UI on a store our tracker
wrote, optuna-dashboard on a study storage. Each is checked through its REST API and in headless Chromium
(screenshots under reports/ui/, git-ignored, for a person to look at)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest

import browser
from conftest import ROOT
from dsm5lab.tracking import Tracker, TrackingSettings

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
SHOTS = ROOT / "reports" / "ui"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(cmd: list[str], ready_url: str, log: Path, timeout_s: float = 120):
    """Start `cmd`, wait until `ready_url` answers 200, yield; always stopped (its whole process group)."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[0]} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{ready_url} did not answer in {timeout_s:.0f} s:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield
    finally:
        import os
        import signal

        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)
            except ProcessLookupError:
                pass


def get_json(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_mlflow_ui_shows_the_runs_our_tracker_logged_with_their_dvc_experiment_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lamb")  # what `dvc exp run` sets
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    for var in ("MLFLOW_TRACKING_URI", "DVC_EXP_BASELINE_REV", "DVC_ROOT", "DVCLIVE_RESUME"):
        monkeypatch.delenv(var, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    s = TrackingSettings(mlflow_uri=uri, experiment="dsm5lab", run_name="train", run_dir=tmp_path / "run",
                         live_dir=tmp_path / "live")
    with Tracker(s) as t:
        t.log_params({"train": {"learning_rate": 0.002}})
        for step in range(3):
            t.log_metrics({"val/macro_f1": 0.2 * step}, step=step)
        run_id = t.mlflow_run_id
    assert run_id
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    with server(cmd, f"{base}/health", tmp_path / "mlflow.log"):
        exp = get_json(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=dsm5lab")["experiment"]
        # opened as a model-training experiment, not MLflow 3's GenAI default (traces and judges)
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in exp["tags"]
        runs = get_json(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
        assert [r["info"]["run_id"] for r in runs] == [run_id]
        tags = {x["key"]: x["value"] for x in runs[0]["data"]["tags"]}
        assert tags["dvc_exp_name"] == "brisk-lamb" and runs[0]["info"]["run_name"] == "train"
        metrics = {m["key"]: m["value"] for m in runs[0]["data"]["metrics"]}
        assert metrics["val/macro_f1"] == pytest.approx(0.4)
        page = f"{base}/#/experiments/{exp['experiment_id']}/runs"
        dom = browser.dump_dom_url(page, tmp_path / "profile")
        assert ">train<" in dom, "the runs table does not list the run"
        assert "Training runs" in dom
        browser.screenshot_url(page, SHOTS / "mlflow-runs.png", tmp_path / "profile2", size="1400,900")


def test_optuna_dashboard_lists_the_study_and_its_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="dsm5lab-0123abcd", storage=url, direction="maximize")
    dist = {"train.learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}
    for i, value in enumerate((0.41, 0.47, 0.44)):
        study.add_trial(optuna.trial.create_trial(value=value, params={"train.learning_rate": 1e-4 * (i + 1)},
                                                  distributions=dist))
    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    assert dashboard, "optuna-dashboard is not installed in this environment (requirements.lock pins it)"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with server([dashboard, url, "--host", "127.0.0.1", "--port", str(port)], f"{base}/api/studies",
                tmp_path / "dashboard.log"):
        studies = get_json(f"{base}/api/studies")["study_summaries"]
        listed = {s["study_name"]: s for s in studies}
        assert "dsm5lab-0123abcd" in listed
        sid = listed["dsm5lab-0123abcd"]["study_id"]
        detail = get_json(f"{base}/api/studies/{sid}?after=0")
        assert [t["values"][0] for t in detail["trials"]] == pytest.approx([0.41, 0.47, 0.44])
        page = f"{base}/dashboard/studies/{sid}"
        dom = browser.dump_dom_url(page, tmp_path / "profile")
        assert "dsm5lab-0123abcd" in dom
        browser.screenshot_url(page, SHOTS / "optuna-dashboard.png", tmp_path / "profile2", size="1400,900")
