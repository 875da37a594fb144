"""One tracking context per run: dvclive (for `dvc exp show`/`dvc plots`), MLflow, and a JSONL event log.

MLflow trouble never stops training: after the first failure every MLflow record goes to
`run_dir/mlflow_buffer.jsonl`, which `replay()` sends later. A server found unreachable is skipped by
every later tracker of the process (`_UNREACHABLE`), so HPO trials do not each wait for it again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dsm5lab import dotted
from dsm5lab.atomic import read_jsonl
from dsm5lab.progress import quiet

log = logging.getLogger("dsm5lab.tracking")

DEFAULT_URI = "sqlite:///mlflow.db"
BUFFER = "mlflow_buffer.jsonl"
RUN_ID_FILE = "mlflow_run_id"
EVENTS = "events.jsonl"
PARENT_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class TrackingSettings:
    mlflow_uri: str | None  # None -> env MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd
    experiment: str
    run_name: str
    live_dir: Path | None  # None disables dvclive
    run_dir: Path  # events.jsonl, mlflow_run_id, mlflow_buffer.jsonl
    resume: bool = False
    tags: dict[str, str] = field(default_factory=dict)


def resolve_uri(uri: str | None) -> str:
    """The MLflow URI to use; relative sqlite paths become absolute (MLflow caches stores per URI string).

    A relative path is taken from the DVC project root: DVC sets DVC_ROOT for stage commands, and for
    queued experiments (`dvc queue start`), which run in a temp copy under .dvc/tmp/exps, it points at
    the parent project, so their runs land in the project's store instead of one deleted with the copy.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path, sep, query = uri[len(prefix):].partition("?")
        if path and path != ":memory:":
            base = Path(os.environ.get("DVC_ROOT") or ".")
            uri = f"{prefix}{(base / path).resolve()}{sep}{query}"
    return uri


def default_tags() -> dict[str, str]:
    """The cwd's git commit, and the DVC experiment name and baseline when `dvc exp run` set them."""
    env = {"dvc_exp_name": "DVC_EXP_NAME", "dvc_exp_baseline": "DVC_EXP_BASELINE_REV"}
    tags = {tag: os.environ[var] for tag, var in env.items() if os.environ.get(var)}
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return tags
    if out.returncode == 0 and out.stdout.strip():
        tags["git_commit"] = out.stdout.strip()
    return tags


# A server that accepts connections but never answers costs (retries + 1) x timeout per tracker; MLflow's
# defaults (120 s, 7 retries with backoff 2) make that minutes, our old 30 s x 3 about 95 s. We buffer
# anyway, so waiting buys nothing: 5 s x 2 tries. The timeout is per socket operation (a slow upload that
# keeps moving is fine); only the server's reply must come within it, so raise MLFLOW_HTTP_REQUEST_TIMEOUT
# for a server that answers slowly (one copying big artifacts to S3 before replying). Backoff is left to
# MLflow: urllib3 sleeps 0 s before a first retry, and a user who raises the retries keeps MLflow's backoff.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}

# Remote MLflow URIs this process could not reach (refused, timed out), with the error. A tracker opened
# later with one of them buffers at once: a hanging server costs one wait per process, not one per HPO trial.
# Only REST stores enter: a local one (sqlite) fails fast, and its errors (a locked database) pass.
_UNREACHABLE: dict[str, str] = {}


def _is_remote(uri: str) -> bool:
    """MLflow's REST stores, the ones MLFLOW_HTTP_REQUEST_* apply to."""
    return uri.partition(":")[0].lower() in ("http", "https", "databricks")


def _network_error(exc: BaseException | None) -> BaseException | None:
    """The error in exc's chain saying the server could not be connected to or did not answer, if any."""
    kinds: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)  # TimeoutError is socket.timeout
    requests = sys.modules.get("requests")  # imported by MLflow's REST client if that is what failed
    if requests is not None:
        kinds += (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kinds):
            # requests wraps urllib3's MaxRetryError, whose reason is the readable part (refused, timed out)
            reason = getattr(exc.args[0], "reason", None) if exc.args else None
            return reason if isinstance(reason, BaseException) else exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # MLflow re-raises requests' errors as MlflowException
    return None


def _client(uri: str):
    # Training jobs should not phone home, print run URLs into DVC logs, or draw bars under CI.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name, value in HTTP_DEFAULTS.items():  # the user's own values win
        os.environ.setdefault(name, value)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if quiet():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    for name in ("mlflow.store.db.utils", "alembic"):  # schema-migration chatter on every new sqlite file
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str, name: str) -> str | None:
    """Where a new experiment of a local sqlite store keeps artifacts: <project>/mlruns/<name>.

    MLflow's default is ./mlruns of the process that creates the experiment; for a queued DVC
    experiment that is a temp copy deleted afterwards, so the project root (DVC_ROOT) is used.
    Servers and other stores keep their own default (None).
    """
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(os.environ.get("DVC_ROOT") or ".").resolve() / "mlruns" / name).as_uri()


# MLflow 3's UI opens an experiment without this tag as a GenAI one (traces, judges); this one is model training
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=_artifact_location(client.tracking_uri, name),
                                        tags=EXPERIMENT_TAGS)
    except MlflowException:  # another worker created it between the lookup and here
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _apply(client, run_id: str, record: dict) -> None:
    """Send one record (live or from a buffer) to an existing run."""
    from mlflow.entities import Metric, Param, RunTag

    kind = record["type"]
    if kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in record["params"].items()])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in record["tags"].items()])
    elif kind == "metrics":
        ts, step = record["timestamp"], record["step"] or 0  # summary values carry step None
        client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in record["metrics"].items()])
    elif kind == "artifact":
        log_fn = client.log_artifacts if Path(record["path"]).is_dir() else client.log_artifact
        log_fn(run_id, record["path"], record["artifact_path"])
    elif kind == "end":
        client.set_terminated(run_id, record["status"])
    else:
        raise ValueError(f"unknown MLflow buffer record type {kind!r}")


class _MlflowState:
    """Shared by a tracker and its children: one client, one failure switch, one warning."""

    def __init__(self, uri: str):
        self.uri, self.broken, self.client = uri, False, None

    @property
    def failed(self) -> bool:
        return self.broken or self.uri in _UNREACHABLE


class Tracker:
    """Context manager fanning params, metrics, summaries and artifacts out to dvclive and MLflow."""

    def __init__(self, settings: TrackingSettings, parent: Tracker | None = None):
        self.settings = settings
        self.parent = parent
        self._ml = parent._ml if parent is not None else _MlflowState(resolve_uri(settings.mlflow_uri))
        tags = {**(parent._tags if parent is not None else default_tags()), **settings.tags}
        self._tags = {str(k): str(v) for k, v in tags.items()}  # MLflow rejects non-str tags
        self._run_id: str | None = None
        self._live = None
        self._trimmed = False

    @property
    def mlflow_run_id(self) -> str | None:
        return self._run_id

    @property
    def buffer_path(self) -> Path:
        return Path(self.settings.run_dir) / BUFFER

    def __enter__(self) -> Tracker:
        s = self.settings
        Path(s.run_dir).mkdir(parents=True, exist_ok=True)
        if not s.resume and self.buffer_path.exists():
            # A new run must not append to an older run's unreplayed records.
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            self.buffer_path.rename(self.buffer_path.with_name(f"mlflow_buffer.{stamp}.jsonl"))
        if s.live_dir is not None:
            from dvclive import Live

            live = Live(dir=str(s.live_dir), resume=s.resume, save_dvc_exp=False, dvcyaml=None, report=None)
            if "step" in live.summary:  # resume moved it to last+1: keep the last step until one is logged
                live.step = live.summary["step"]
            self._live = live
        self._start_mlflow()
        self.event("run_start", run_name=s.run_name, mlflow_run_id=self._run_id, resume=s.resume)
        return self

    def _start_mlflow(self) -> None:
        s, id_file = self.settings, Path(self.settings.run_dir) / RUN_ID_FILE
        stored = id_file.read_text(encoding="utf-8").strip() if s.resume and id_file.exists() else None
        if self._ml.failed:
            if self.parent is None and self._ml.uri in _UNREACHABLE:
                log.info("MLflow at %s was unreachable earlier in this process (%s); buffering to %s",
                         self._ml.uri, _UNREACHABLE[self._ml.uri], self.buffer_path)
            self._run_id = stored  # buffered records name it, so replay() can continue that run
            self._buffer({"type": "tags", "tags": self._tags})
            return
        try:
            client = self._ml.client = self._ml.client or _client(self._ml.uri)
            if stored and _run_exists(client, stored):  # else this store never saw it: start a new run
                client.update_run(stored, status="RUNNING")
                self._run_id = stored
                return
            tags = dict(self._tags)
            if self.parent is not None and self.parent._run_id:
                tags[PARENT_TAG] = self.parent._run_id
            run = client.create_run(_experiment_id(client, s.experiment), run_name=s.run_name, tags=tags)
            self._run_id = run.info.run_id
        except Exception as exc:  # noqa: BLE001 - any MLflow failure switches to the buffer
            self._fail(exc)
            self._run_id = stored
            self._buffer({"type": "tags", "tags": self._tags})
            return
        id_file.write_text(self._run_id + "\n", encoding="utf-8")

    def _fail(self, exc: BaseException) -> None:
        uri, network = self._ml.uri, _network_error(exc)
        if _is_remote(uri) and network is not None:
            if uri not in _UNREACHABLE:  # the only line for this URI in this process
                _UNREACHABLE[uri] = _one_line(network)
                log.warning("MLflow at %s is unreachable (%s); this process tries it no more and buffers "
                            "MLflow records to each run's %s (this one: %s) for `dsm5lab tracking replay`",
                            uri, _UNREACHABLE[uri], BUFFER, self.buffer_path)
        elif not self._ml.failed:
            log.warning("MLflow at %s failed (%s); buffering MLflow records to %s for replay()",
                        uri, _one_line(exc), self.buffer_path)
        self._ml.broken = True

    def __exit__(self, exc_type, exc, tb) -> bool:
        killed = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        status = "FINISHED" if exc_type is None else "KILLED" if killed else "FAILED"
        try:
            self.event("run_end", status=status, error=repr(exc) if exc is not None else None)
            self._send({"type": "end", "status": status})
        finally:
            live, self._live = self._live, None
            if live is not None:
                live.end()  # writes metrics.json even when training failed
        return False

    def log_params(self, params: dict) -> None:
        """Nested dicts flattened with '.'; MLflow gets strings, dvclive YAML-safe values."""
        flat = dotted.flatten(params)
        if self._live is not None:
            self._live.log_params(json.loads(json.dumps(flat, default=str)))  # YAML-safe: Paths etc. as str
        self._send({"type": "params", "params": {k: str(v) for k, v in flat.items()}})

    def set_tags(self, tags: dict) -> None:
        """MLflow tags on this run (values as strings; a tag set again is overwritten). They join the run's
        tags, which every buffered record carries, so a replay sets them too."""
        self._tags.update({str(k): str(v) for k, v in tags.items()})
        self._send({"type": "tags", "tags": dict(self._tags)})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Metrics for one step; names are namespaced ('train/loss'). The step comes from the caller."""
        values = {k: float(v) for k, v in metrics.items()}
        if self._live is not None:
            # end() resets live.step from summary["step"], which is stale after a resume: keep both in step.
            self._live.step = self._live.summary["step"] = int(step)
            if self.settings.resume and not self._trimmed:
                self._trim_history(int(step))
            for name, value in values.items():
                self._live.log_metric(name, value)
        self._send({"type": "metrics", "metrics": values, "step": int(step), "timestamp": _now_ms()})

    def _trim_history(self, step: int) -> None:
        # Resuming from a checkpoint older than the last logged step: every row from `step` on is redone.
        self._trimmed = True
        for path in (Path(self._live.plots_dir) / "metrics").rglob("*.tsv"):
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            if not lines:
                continue
            col = lines[0].rstrip("\r\n").split("\t").index("step")
            kept = [r for r in lines[1:] if r.strip() and int(r.split("\t")[col]) < step]
            if len(kept) != len(lines) - 1:
                path.write_text(lines[0] + "".join(kept), encoding="utf-8")

    def log_summary(self, metrics: dict[str, float]) -> None:
        """Final numbers: dvclive's metrics.json (nested by '/') and MLflow metrics without a step."""
        values = {k: float(v) for k, v in metrics.items()}
        if self._live is not None:
            for name, value in values.items():
                dotted.put(self._live.summary, name, value if math.isfinite(value) else str(value), create=True,
                           sep="/")
            self._live.make_summary()
        self._send({"type": "metrics", "metrics": values, "step": None, "timestamp": _now_ms()})

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file or a directory to the MLflow run (dvclive is not involved)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact to log does not exist: {path}")
        self._send({"type": "artifact", "path": str(path.resolve()), "artifact_path": artifact_path})

    def event(self, kind: str, **fields: Any) -> None:
        """Append {"time", "kind", **fields} as one JSON line to run_dir/events.jsonl."""
        line = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "kind": kind, **fields}
        path = Path(self.settings.run_dir) / EVENTS
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, default=str, ensure_ascii=False) + "\n")

    def child(self, run_name: str) -> Tracker:
        """A nested MLflow run (tagged with this run's id), without dvclive, in run_dir/<run_name>."""
        folder = Path(self.settings.run_dir) / re.sub(r"[^\w.-]+", "_", run_name)
        return Tracker(replace(self.settings, run_name=run_name, live_dir=None, run_dir=folder), parent=self)

    def _send(self, record: dict) -> None:
        if not self._ml.failed and self._run_id is not None:
            try:
                _apply(self._ml.client, self._run_id, record)
                return
            except Exception as exc:  # noqa: BLE001 - never let MLflow stop training
                if record["type"] == "artifact" and _slow_answer(exc):
                    # a big upload the server took but answered late (an S3 copy behind it): this record waits
                    # for replay; the server is not dead, so later records and trackers keep using it
                    log.warning("MLflow at %s did not confirm the upload of %s within MLFLOW_HTTP_REQUEST_TIMEOUT "
                                "(raise it for big artifacts); buffered to %s for replay", self._ml.uri,
                                record["path"], self.buffer_path)
                else:
                    self._fail(exc)
        self._buffer(record)

    def _buffer(self, record: dict) -> None:
        s, parent = self.settings, self.parent
        # Every line says which run it belongs to, so replay() can rebuild the run from any of them.
        line = {**record, "run_name": s.run_name, "experiment": s.experiment, "tags": self._tags,
                "run_id": self._run_id, "parent": parent.settings.run_name if parent else None,
                "parent_run_id": parent._run_id if parent else None, "uri": self._ml.uri}
        self.buffer_path.parent.mkdir(parents=True, exist_ok=True)
        with self.buffer_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")


def _slow_answer(exc: BaseException) -> bool:
    """A read timeout: the server accepted the connection and the request but answered too late."""
    network = _network_error(exc)
    return network is not None and "ReadTimeout" in type(network).__name__


def _one_line(exc: BaseException) -> str:
    detail = (str(exc).splitlines() or [""])[0][:300]  # one line, whatever the server sent
    return f"{type(exc).__name__}: {detail}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def replay(buffer_path: Path, uri: str | None = None) -> int:
    """Send a buffer's records to MLflow in order and rename it *.replayed; returns how many were sent.

    A directory replays every buffer below it, parents before children. `uri` None means the
    URI the records were meant for.
    """
    buffer_path = Path(buffer_path)
    if buffer_path.is_dir():
        found = sorted(buffer_path.rglob("mlflow_buffer*.jsonl"), key=lambda p: (len(p.parts), p.name))
        return sum(replay(p, uri) for p in found)
    if not buffer_path.exists():
        return 0
    records = [record for _, record in read_jsonl(buffer_path, "tracking replay")]
    if records:
        client = _client(resolve_uri(uri or records[0].get("uri")))
        run_id = _replay_run(client, records)
        status = "FINISHED"
        for record in records:
            if record["type"] == "end":
                status = record["status"]  # applied last: a resumed run may log after an earlier end
            else:
                _apply(client, run_id, record)
        client.set_terminated(run_id, status)
    target = buffer_path.with_name(buffer_path.name + ".replayed")
    if target.exists():  # an earlier replay of this run_dir: keep both
        target = target.with_name(f"{buffer_path.name}.{_now_ms()}.replayed")
    buffer_path.rename(target)
    return len(records)


def _replay_run(client, records: list[dict]) -> str:
    """The run the records belong to: the original one if this store has it, else a new one like it."""
    head = records[0]
    for run_id in dict.fromkeys(r["run_id"] for r in records if r.get("run_id")):
        if _run_exists(client, run_id):
            client.update_run(run_id, status="RUNNING")
            return run_id
    exp_id = _experiment_id(client, head["experiment"])
    tags = dict(head["tags"])
    parent_id = head.get("parent_run_id")
    if head.get("parent") and not (parent_id and _run_exists(client, parent_id)):
        name = head["parent"].replace("'", "\\'")
        found = client.search_runs([exp_id], filter_string=f"attributes.run_name = '{name}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        parent_id = found[0].info.run_id if found else None
    if parent_id:
        tags[PARENT_TAG] = parent_id
    return client.create_run(exp_id, run_name=head["run_name"], tags=tags).info.run_id


def _run_exists(client, run_id: str) -> bool:
    """False when the store does not know the run; other errors (store down) propagate."""
    try:
        client.get_run(run_id)
    except Exception as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
        return False
    return True


MODEL_TAG = "dsm5lab.model_sha256"  # the train run's tag naming the exported weights; evaluate finds the run by it


def find_run(uri: str | None, experiment: str, tag: str, value: str) -> tuple[str, dict[str, str]] | None:
    """(run id, tags) of the newest run of `experiment` whose `tag` is `value`, or None: none there, or MLflow
    unreachable (one warning line; the caller starts a run of its own, buffered like any other)."""
    uri = resolve_uri(uri)
    if uri in _UNREACHABLE:
        return None
    try:
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        found = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
    except Exception as exc:  # noqa: BLE001 - a lookup never stops the caller
        if _is_remote(uri) and _network_error(exc) is not None:
            _UNREACHABLE[uri] = _one_line(exc)
        log.warning("MLflow at %s: could not look up the run tagged %s=%s (%s)", uri, tag, value, _one_line(exc))
        return None
    return (found[0].info.run_id, dict(found[0].data.tags)) if found else None
