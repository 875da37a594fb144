"""The retention stage: best-K across runs tracked in stages/retention, the rest of the pool deleted, safely.

Pools here are built with the real CheckpointManager around a tiny model, in the layout train and the
HPO trials write (`checkpoints/train`, `checkpoints/hpo/<study>/trial-NNNN`). The pipeline-level check
(real HPO + train, then `dvc status`) is in test_dvc_pipeline.py.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import default_params
from dsm5lab import layout
from dsm5lab.config import apply_overrides, validate
from dsm5lab.errors import UserError
from dsm5lab import retention as stage
from dsm5lab.pool.policy import decide_retention
from dsm5lab.pool.registry import FILES, REGISTRY, STATE_FILE, WEIGHT_FILES, Registry
from dsm5lab.training.checkpoint import CheckpointManager, clear_run, load_checkpoint

STUDY = "dsm5lab-0123abcd"
METRIC = "val/macro_f1"

# run -> validation scores of its checkpoints, in step order
POOL = {
    "train": [0.50, 0.70, 0.60],
    f"hpo/{STUDY}/trial-0000": [0.40, 0.80],
    f"hpo/{STUDY}/trial-0001": [0.65],
    f"hpo/{STUDY}/trial-0002": [None],  # diverged: no score
}


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def fill_pool(root: Path, runs: dict[str, list], metric: str = METRIC) -> None:
    """Checkpoints as train/trials leave them: per run a registry, step-* folders and an assets folder."""
    model = tiny_model()
    for run, scores in runs.items():
        run_dir = root / "checkpoints" / run
        manager = CheckpointManager(run_dir, keep_last_n=len(scores), keep_best_k=1, run=run_dir.name)
        for step, score in enumerate(scores, 1):
            manager.save(model, step=step * 10, epoch=step - 1, score=score, metric=metric, state={}, config={})
        (run_dir / "assets").mkdir(exist_ok=True)
        (run_dir / "assets" / "config.json").write_text("{}\n")


def project(root: Path, study: str | None = STUDY, runs: dict[str, list] | None = None, **policy) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    raw = default_params()
    raw["retention"] = {**raw["retention"], **policy}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (root / "metrics").mkdir(exist_ok=True)
    if study is not None:
        (root / "metrics/hpo.json").write_text(json.dumps({"study": study}))
    runs = POOL if runs is None else runs
    fill_pool(root, runs)
    scored = [(s, step * 10) for step, s in enumerate(runs.get("train", []), 1) if s is not None]
    if scored:  # what the train stage writes: its best step and score, matched against checkpoints/train
        score, step = max(scored, key=lambda x: (x[0], x[1]))
        write_train_metrics(root, step, score)
    return root


def write_train_metrics(root: Path, best_step: int, score: float) -> None:
    (root / "metrics/train.json").write_text(json.dumps({"val": {"macro_f1": round(score, 6)}, "best_step": best_step}))


def params_of(root: Path, *overrides: str):
    return validate(apply_overrides(yaml.safe_load((root / "params.yaml").read_text()), list(overrides)))


def on_disk(root: Path) -> set[tuple[str, str]]:
    pool = root / "checkpoints"
    return {(p.parent.relative_to(pool).as_posix(), p.name) for p in pool.rglob("step-*") if p.is_dir()}


def tracked(root: Path) -> list[tuple[str, int]]:
    index = json.loads((root / layout.RETAINED / stage.INDEX).read_text())
    return [(e["run"], e["step"]) for e in index]


def test_keeps_the_best_k_across_runs_tracks_them_and_reports_the_reduction(tmp_path):
    root = project(tmp_path, keep_best_k=3, keep_last_n=0)
    saved = sum(f.stat().st_size for f in (root / "checkpoints").rglob("step-*/*"))
    before = saved + sum(f.stat().st_size for f in (root / "checkpoints").rglob("assets/*"))
    manifest = stage.run(params_of(root), root)

    best3 = [(f"hpo/{STUDY}/trial-0000", 20), ("train", 20), (f"hpo/{STUDY}/trial-0001", 10)]
    assert tracked(root) == best3
    assert on_disk(root) == {(run, f"step-{step:08d}") for run, step in best3}
    for run, step in best3:  # loadable weights with the run's assets beside them, no optimizer state
        out = root / layout.RETAINED / run / f"step-{step:08d}"
        assert all((out / f).is_file() for f in WEIGHT_FILES) and not (out / STATE_FILE).exists()
        assert (out.parent / "assets" / "config.json").is_file()
        state = load_checkpoint(out, tiny_model(), restore_rng=False)
        assert state["step"] == step
        with pytest.raises(UserError, match="holds weights only"):  # not a resume point
            load_checkpoint(out, tiny_model())
        pooled = root / "checkpoints" / run / f"step-{step:08d}"  # the pool's copy: stripped, and the same bytes
        assert not (pooled / STATE_FILE).exists()
        assert (pooled / "model.safetensors").stat().st_ino == (out / "model.safetensors").stat().st_ino
    # registries list exactly what is left
    for run in POOL:
        left = [json.loads(line)["path"] for line in (root / "checkpoints" / run / REGISTRY).read_text().splitlines()]
        assert {(run, p) for p in left} == {x for x in on_disk(root) if x[0] == run}

    assert [e["score"] for e in manifest["kept"]] == [0.8, 0.7, 0.65]
    assert len(manifest["deleted"]) == 4 and {e["reasons"][0] for e in manifest["deleted"]} == {"policy"}
    metrics = json.loads((root / layout.RETENTION_METRICS).read_text())
    assert metrics["bytes"]["before"] == before
    files = [*(root / "checkpoints").rglob("step-*/*"), *(root / "checkpoints").rglob("assets/*"),
             *(f for f in (root / layout.RETAINED).rglob("*") if f.is_file())]
    after = sum({(f.stat().st_dev, f.stat().st_ino): f.stat().st_size for f in files}.values())
    assert metrics["bytes"]["after"] == after  # each file once: the tracked set shares the pool's
    assert metrics["bytes"]["written"] == saved  # nothing was pruned while these runs trained
    expected = round(100 * (before - after) / before, 2)
    assert metrics["reduction_pct"] == expected and 60 < expected  # 4 of 7 deleted, the 3 kept stripped
    assert metrics["freed_pct"] == round(100 * (saved - after) / saved, 2)
    assert metrics["checkpoints"] == {"before": 7, "kept": 3, "best_k": 3, "deleted": 4}
    assert metrics["best_score"] == 0.8
    assert json.loads((root / layout.RETENTION_MANIFEST).read_text()) == manifest


def test_a_second_run_deletes_nothing_and_tracks_the_same_set(tmp_path):
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    first = stage.run(params_of(root), root)
    files = sorted(p.relative_to(root).as_posix() for p in (root / layout.RETAINED).rglob("*"))
    second = stage.run(params_of(root), root)
    assert second["deleted"] == [] and second["reduction_pct"] == 0.0
    assert second["kept"] == first["kept"]
    assert sorted(p.relative_to(root).as_posix() for p in (root / layout.RETAINED).rglob("*")) == files


def test_keep_last_n_keeps_each_runs_latest_and_tracks_it_after_the_best(tmp_path):
    root = project(tmp_path, keep_best_k=1, keep_last_n=1)
    manifest = stage.run(params_of(root), root)
    # the best, then the last of every other run (trial-0000's last is its best), by rank, unscored last
    assert tracked(root) == [(f"hpo/{STUDY}/trial-0000", 20), (f"hpo/{STUDY}/trial-0001", 10),
                             ("train", 30), (f"hpo/{STUDY}/trial-0002", 10)]
    assert on_disk(root) == {("train", "step-00000030"), (f"hpo/{STUDY}/trial-0000", "step-00000020"),
                             (f"hpo/{STUDY}/trial-0001", "step-00000010"),
                             (f"hpo/{STUDY}/trial-0002", "step-00000010")}
    assert all((root / layout.RETAINED / run / f"step-{step:08d}" / "model.safetensors").is_file()
               for run, step in tracked(root))
    counts = json.loads((root / layout.RETENTION_METRICS).read_text())["checkpoints"]
    assert counts == {"before": 7, "kept": 4, "best_k": 1, "deleted": 3}  # ranked last-N ones are not best-K
    reasons = {(e["run"], e["step"]): e["reasons"] for e in manifest["kept"]}
    assert reasons[(f"hpo/{STUDY}/trial-0000", 20)] == ["best", "last_n"]
    assert reasons[("train", 30)] == ["last_n"]


def test_size_budget_drops_the_lowest_ranked_first_and_never_the_best(tmp_path):
    root = project(tmp_path, keep_best_k=3, keep_last_n=0)
    # the budget is on the tracked set, which holds weights only: room for two of them, the third best goes
    one = CheckpointManager(root / "checkpoints/train", keep_last_n=9, keep_best_k=1).records[0]["weights_bytes"]
    root.joinpath("params.yaml").write_text(root.joinpath("params.yaml").read_text().replace(
        "max_total_gb: null", f"max_total_gb: {2.5 * one / 1e9}"))
    manifest = stage.run(params_of(root), root)
    assert tracked(root) == [(f"hpo/{STUDY}/trial-0000", 20), ("train", 20)]
    budget = [(e["run"], e["step"]) for e in manifest["deleted"] if e["reasons"] == ["budget"]]
    assert budget == [(f"hpo/{STUDY}/trial-0001", 10)]
    # a budget below one checkpoint still keeps the best
    manifest = stage.run(params_of(root, "retention.max_total_gb=1e-9"), root)
    assert tracked(root) == [(f"hpo/{STUDY}/trial-0000", 20)]
    assert on_disk(root) == {(f"hpo/{STUDY}/trial-0000", "step-00000020")}


def test_cli_dry_run_prints_the_plan_and_writes_nothing(tmp_path, cli, monkeypatch):
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    leftover = root / "checkpoints/train/.step-00000040.tmp-99"  # a write in progress: not touched either
    leftover.mkdir()
    (root / "stages/.retention.tmp-ab12cd34").mkdir(parents=True)  # a killed run's: the next real run clears it
    monkeypatch.chdir(root)
    everything = sorted(p.relative_to(root) for p in root.rglob("*"))
    result = cli("retention", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would delete 5 checkpoint(s)" in result.output and "dry run: would free" in result.output
    assert "train" in result.output and "step-00000010" in result.output  # the would-delete list
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == everything


def test_dry_run_param_deletes_nothing_but_reports_and_tracks(tmp_path, cli, monkeypatch):
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    monkeypatch.chdir(root)
    everything = on_disk(root)
    result = cli("retention", "--set", "retention.dry_run=true")
    assert result.exit_code == 0, result.output
    assert on_disk(root) == everything
    manifest = json.loads((root / layout.RETENTION_MANIFEST).read_text())
    assert manifest["policy"]["dry_run"] is True and len(manifest["would_delete"]) == 5
    b = manifest["bytes"]  # the pool as it was; the tracked set written, sharing the pool's files
    assert manifest["would_free_bytes"] > 0 and b["after"]["pool"] == b["before"]["pool"]
    assert b["after"]["total"] - b["before"]["total"] == (root / layout.RETAINED / stage.INDEX).stat().st_size
    assert tracked(root) == [(f"hpo/{STUDY}/trial-0000", 20), ("train", 20)]
    result = cli("retention")  # the real run deletes exactly what the dry run listed
    deleted = json.loads((root / layout.RETENTION_MANIFEST).read_text())["deleted"]
    assert [(e["run"], e["step"]) for e in deleted] == [(e["run"], e["step"]) for e in manifest["would_delete"]]


def test_scope_current_leaves_other_studies_alone_and_all_ranks_them(tmp_path):
    root = project(tmp_path, keep_best_k=1, keep_last_n=0)
    fill_pool(root, {"hpo/dsm5lab-oldstudy/trial-0000": [0.99, 0.1], "scratch-run": [0.95]})
    writing = root / "checkpoints/scratch-run/.step-00000099.tmp-123"  # another process mid-save
    writing.mkdir()
    manifest = stage.run(params_of(root), root)
    assert writing.is_dir()  # out of scope: not even its temp folders are touched
    assert tracked(root) == [(f"hpo/{STUDY}/trial-0000", 20)]
    assert {e["run"] for e in manifest["out_of_scope"]} == {"hpo/dsm5lab-oldstudy/trial-0000", "scratch-run"}
    assert {("hpo/dsm5lab-oldstudy/trial-0000", "step-00000010"), ("hpo/dsm5lab-oldstudy/trial-0000", "step-00000020"),
            ("scratch-run", "step-00000010")} <= on_disk(root)
    stage.run(params_of(root, "retention.scope=all"), root)
    assert tracked(root) == [("hpo/dsm5lab-oldstudy/trial-0000", 10)]
    assert on_disk(root) == {("hpo/dsm5lab-oldstudy/trial-0000", "step-00000010")}


def test_without_an_hpo_study_only_the_train_run_is_in_scope(tmp_path):
    root = project(tmp_path, study=None, keep_best_k=5, keep_last_n=0)
    manifest = stage.run(params_of(root), root)
    assert manifest["study"] is None
    assert tracked(root) == [("train", 20), ("train", 30), ("train", 10)]
    assert len(manifest["out_of_scope"]) == 3


def test_checkpoints_scored_on_another_metric_are_neither_ranked_nor_deleted(tmp_path):
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    fill_pool(root, {f"hpo/{STUDY}/trial-0003": [0.99, 0.1]}, metric="val/sentence_macro_f1")
    manifest = stage.run(params_of(root), root)
    assert (f"hpo/{STUDY}/trial-0003", 10) not in tracked(root)
    assert {(f"hpo/{STUDY}/trial-0003", "step-00000010"), (f"hpo/{STUDY}/trial-0003", "step-00000020")} <= on_disk(root)
    assert [(e["run"], e["step"], e["metric"]) for e in manifest["other_metric"]] == [
        (f"hpo/{STUDY}/trial-0003", 10, "val/sentence_macro_f1"), (f"hpo/{STUDY}/trial-0003", 20, "val/sentence_macro_f1")]


def test_cross_validation_folds_are_not_ranked_against_the_val_split(tmp_path):
    """A fold's score is on its own fold: a lucky fold must not become the tracked best."""
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    fill_pool(root, {f"hpo/{STUDY}/trial-0004/fold-0": [0.97], f"hpo/{STUDY}/trial-0004/fold-1": [0.2]})
    manifest = stage.run(params_of(root), root)
    assert tracked(root) == [(f"hpo/{STUDY}/trial-0000", 20), ("train", 20)]
    folds = [e for e in manifest["deleted"] if "/fold-" in e["run"]]
    assert sorted(e["fold_score"] for e in folds) == [0.2, 0.97] and all(e["rank"] is None for e in folds)


def test_a_train_run_that_does_not_match_metrics_train_json_is_left_alone(tmp_path):
    """checkpoints/train from another branch or params: not ranked, not deleted, reported."""
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    write_train_metrics(root, 80, 0.91)  # the checked-out model came from a run whose best was step 80
    manifest = stage.run(params_of(root), root)
    assert all(run != "train" for run, _ in tracked(root))
    assert {("train", f"step-000000{n}") for n in (10, 20, 30)} <= on_disk(root)
    assert manifest["skipped"][0]["run"] == "train" and "step 80" in manifest["skipped"][0]["reason"]


def test_nothing_scored_is_an_error_and_deletes_nothing(tmp_path, cli, monkeypatch):
    root = project(tmp_path, runs={f"hpo/{STUDY}/trial-0000": [None, float("nan")],
                                   f"hpo/{STUDY}/trial-0001/fold-0": [0.5]}, keep_last_n=0)
    monkeypatch.chdir(root)
    everything = on_disk(root)
    result = cli("retention")
    assert result.exit_code == 2 and "none of the 3 checkpoints in scope has a finite val/macro_f1" in result.output
    assert on_disk(root) == everything and not (root / layout.RETENTION_METRICS).exists()


def test_a_failed_copy_deletes_nothing_and_leaves_the_previous_out(tmp_path, monkeypatch):
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    stage.run(params_of(root, "retention.dry_run=true"), root)
    previous = tracked(root)
    everything = on_disk(root)
    copies = []

    def flaky_copy(src, dst):
        copies.append(src)
        if len(copies) == 2:
            raise OSError(28, "No space left on device")
        shutil.copytree(src, dst)

    monkeypatch.setattr(stage, "_copy_checkpoint", flaky_copy)
    with pytest.raises(OSError):
        stage.run(params_of(root, "retention.keep_best_k=3"), root)
    assert on_disk(root) == everything  # the kept set was not complete: nothing deleted
    assert tracked(root) == previous  # the out is the previous one, whole
    assert not list((root / "stages").glob(".retention.tmp-*"))


def test_killed_while_deleting_then_rerun_finishes_the_same_plan(tmp_path, monkeypatch):
    """A kill between runs' deletions: the out is already complete; a re-run deletes the rest, nothing more."""
    reference = project(tmp_path / "ref", keep_best_k=2, keep_last_n=0)
    stage.run(params_of(reference), reference)

    root = project(tmp_path / "p", keep_best_k=2, keep_last_n=0)
    real_remove = Registry.remove
    calls = []

    def killed_after_first(self, records):
        if calls:
            raise KeyboardInterrupt  # SIGINT mid-way: the second run's deletion never starts
        calls.append(self.root)
        real_remove(self, records)

    monkeypatch.setattr(Registry, "remove", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        stage.run(params_of(root), root)
    assert tracked(root) == tracked(reference)  # the tracked set was complete before any deletion
    assert on_disk(root) > on_disk(reference)
    monkeypatch.setattr(Registry, "remove", real_remove)
    stage.run(params_of(root), root)
    assert on_disk(root) == on_disk(reference) and tracked(root) == tracked(reference)


def test_killed_after_the_registry_rewrite_but_before_the_folder_went(tmp_path):
    """The registry no longer lists a checkpoint that is still whole on disk: the next run adopts and deletes it."""
    reference = project(tmp_path / "ref", keep_best_k=2, keep_last_n=0)
    stage.run(params_of(reference), reference)
    root = project(tmp_path / "p", keep_best_k=2, keep_last_n=0)
    registry = root / "checkpoints/train" / REGISTRY
    registry.write_text("".join(line + "\n" for line in registry.read_text().splitlines()
                                if '"step-00000010"' not in line))
    manifest = stage.run(params_of(root), root)
    assert ("train", 10) in {(e["run"], e["step"]) for e in manifest["deleted"]}
    assert on_disk(root) == on_disk(reference) and tracked(root) == tracked(reference)


def test_a_deletion_interrupted_inside_a_folder_is_cleaned_up_next_time(tmp_path):
    """A checkpoint renamed to its .tmp-gc name but not yet removed: the next run clears it and counts nothing."""
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    victim = root / "checkpoints/train/step-00000010"
    victim.rename(victim.with_name(".step-00000010.tmp-gc-1"))
    manifest = stage.run(params_of(root), root)
    assert not list((root / "checkpoints/train").glob(".*tmp-gc*"))
    assert ("train", 10) not in {(e["run"], e["step"]) for e in manifest["deleted"] + manifest["kept"]}


# `dsm5lab retention` in a process that SIGKILLs itself at one point of the work: no finally block or
# atexit runs, as with kill -9 or the OOM killer (SIGTERM and Ctrl-C unwind, and atomic cleans up then)
KILLED = """
import os, signal, sys
from pathlib import Path
from dsm5lab import atomic, retention
from dsm5lab.cli import main
from dsm5lab.pool.registry import Registry

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after(real, check=lambda *a: True):
    def wrapper(*args):
        real(*args)
        if check(*args):
            die()
    return wrapper

point = sys.argv[1]
if point == "copy":  # the first kept checkpoint is in the temp folder, the second is not
    retention._copy_checkpoint = after(retention._copy_checkpoint)
elif point == "swap":  # the previous out moved aside, the new one not yet in its place
    os.replace = after(os.replace, lambda src, dst: Path(dst).name.startswith(".retention.old-"))
elif point == "delete":  # one run's checkpoints deleted, the other runs' not yet
    Registry.remove = after(Registry.remove)
elif point == "strip":  # all deleted, one run's kept checkpoints stripped to weights only
    Registry.strip = after(Registry.strip)
elif point == "metrics":  # the metrics written, the process not yet exited
    atomic.write_json = after(atomic.write_json, lambda path, data: Path(path).name == "retention.json")
sys.argv = ["dsm5lab", "retention"]
main()
"""


def kill_retention(root: Path, point: str) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED, point], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def leftovers(root: Path) -> list[str]:
    """Hidden names of the retention stage beside its out and its reports."""
    return sorted(p.relative_to(root).as_posix() for d in ("stages", "metrics", "reports/retention")
                  for p in (root / d).glob(".*") if ".retention" in p.name or ".manifest" in p.name)


@pytest.mark.parametrize("points", [["copy"], ["swap"], ["delete"], ["delete", "delete"], ["strip"]])
def test_killed_with_sigkill_the_rerun_cleans_up_and_reports_the_whole_effect(tmp_path, cli, monkeypatch, points):
    """After kill -9 mid-copy, mid-swap, mid-delete (twice in a row too) or mid-strip, the next run removes
    the temp folders left behind and its metrics count from the pool as the interrupted run found it."""
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    stage.run(params_of(root, "retention.dry_run=true"), root)  # a previous out, for the swap to move aside
    found = stage.run(params_of(root), root, write=False)  # the plan: reads only, as the first run will find it
    for point in points:
        kill_retention(root, point)
    left = leftovers(root)
    assert "stages/.retention.journal.json" in left
    if points == ["copy"]:
        assert [p for p in left if ".tmp-" in p] and not [p for p in left if ".old-" in p]
    if points == ["swap"]:  # the previous out is only in its .old- folder now
        assert [p for p in left if ".tmp-" in p] and [p for p in left if ".old-" in p]
        assert not (root / layout.RETAINED).exists()
    if points[0] == "delete":
        assert len(left) == 1 and len(on_disk(root)) > 2  # the out was in place; deleting went part of the way

    monkeypatch.chdir(root)
    result = cli("retention")
    assert result.exit_code == 0, result.output
    assert leftovers(root) == []
    temps = [p for p in left if ".tmp-" in p or ".old-" in p]
    assert (f"removed {len(temps)} leftover" in result.output) == bool(temps), result.output
    assert "finishing an interrupted run: counting from the pool as it found it (7 checkpoints" in result.output
    best2 = [(f"hpo/{STUDY}/trial-0000", 20), ("train", 20)]
    assert tracked(root) == best2 and on_disk(root) == {(run, f"step-{step:08d}") for run, step in best2}

    metrics = json.loads((root / layout.RETENTION_METRICS).read_text())
    before = found["bytes"]["before"]["total"]
    files = [*(root / "checkpoints").rglob("step-*/*"), *(root / "checkpoints").rglob("assets/*"),
             *(f for f in (root / layout.RETAINED).rglob("*") if f.is_file())]
    after = sum({(f.stat().st_dev, f.stat().st_ino): f.stat().st_size for f in files}.values())
    assert metrics["bytes"]["before"] == before and metrics["bytes"]["after"] == after
    assert metrics["reduction_pct"] == round(100 * (before - after) / before, 2) > 60
    assert metrics["checkpoints"] == {"before": 7, "kept": 2, "best_k": 2, "deleted": 5}
    manifest = json.loads((root / layout.RETENTION_MANIFEST).read_text())
    assert manifest["bytes"]["before"] == found["bytes"]["before"]
    assert manifest["interrupted_run"]["checkpoints_before"] == 7
    assert manifest["interrupted_run"]["deleted"] + len(manifest["deleted"]) == 5

    result = cli("retention")  # complete now: a second run starts from the pool as it is and deletes nothing
    assert "interrupted" not in result.output
    assert json.loads((root / layout.RETENTION_METRICS).read_text())["checkpoints"] == {
        "before": 2, "kept": 2, "best_k": 2, "deleted": 0}


def test_the_journal_of_an_interrupted_run_is_dropped_once_the_pool_has_grown(tmp_path, cli, monkeypatch):
    """A new trial after the kill: its checkpoints were never in the interrupted run's "before"."""
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    kill_retention(root, "delete")
    fill_pool(root, {f"hpo/{STUDY}/trial-0003": [0.1]})
    found = stage.run(params_of(root), root, write=False)
    count = len(on_disk(root))
    monkeypatch.chdir(root)
    result = cli("retention")
    assert result.exit_code == 0 and "does not match the pool now" in result.output, result.output
    metrics = json.loads((root / layout.RETENTION_METRICS).read_text())
    assert metrics["bytes"]["before"] == found["bytes"]["before"]["total"]
    assert metrics["checkpoints"]["before"] == count < 7 + 1 and metrics["checkpoints"]["deleted"] == count - 2
    assert leftovers(root) == []


def test_the_journal_of_an_interrupted_run_is_dropped_once_train_saved_again(tmp_path, cli, monkeypatch):
    """A re-train after the kill saves step-N folders again under the names the journal lists (same model,
    same scores, so same sizes): they are not the checkpoints the interrupted run found."""
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    kill_retention(root, "delete")  # a trial's checkpoint deleted; train's not yet
    clear_run(root / "checkpoints/train")  # what `dsm5lab train` does before it saves again
    fill_pool(root, {"train": POOL["train"]})
    found = stage.run(params_of(root), root, write=False)
    count = len(on_disk(root))
    monkeypatch.chdir(root)
    result = cli("retention")
    assert result.exit_code == 0 and "does not match the pool now" in result.output, result.output
    assert "finishing an interrupted run" not in result.output
    metrics = json.loads((root / layout.RETENTION_METRICS).read_text())
    assert metrics["bytes"]["before"] == found["bytes"]["before"]["total"]
    assert count == 6 and metrics["checkpoints"] == {"before": 6, "kept": 2, "best_k": 2, "deleted": 4}
    assert "interrupted_run" not in json.loads((root / layout.RETENTION_MANIFEST).read_text())


def test_killed_after_the_metrics_the_next_run_reports_no_deletions_again(tmp_path, cli, monkeypatch):
    """The journal goes before the metrics are written: a kill once they are leaves none to count from."""
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    kill_retention(root, "metrics")
    assert json.loads((root / layout.RETENTION_METRICS).read_text())["checkpoints"]["deleted"] == 5
    assert not (root / stage.JOURNAL).exists()
    monkeypatch.chdir(root)
    result = cli("retention")
    assert result.exit_code == 0 and "interrupted" not in result.output, result.output
    assert json.loads((root / layout.RETENTION_METRICS).read_text())["checkpoints"] == {
        "before": 2, "kept": 2, "best_k": 2, "deleted": 0}


def test_only_the_stages_own_leftovers_are_removed(tmp_path, cli, monkeypatch):
    """Names that merely look alike (another out's temp folder, a folder of the user's) stay."""
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    ours = ["stages/.retention.tmp-ab_9cd12", "stages/.retention.old-4242", "metrics/.retention.json.k2j4h5g6",
            "reports/retention/.manifest.json.x1y2z3w4", "stages/..retention.journal.json.q1w2e3r4"]
    theirs = ["stages/.train.tmp-ab_9cd12", "stages/.retention.tmp-keep", "stages/.retention.bak",
              "stages/.retention.old-4242x", "stages/retention-notes", "metrics/.retention.json.bak",
              "metrics/.train.json.k2j4h5g6", "checkpoints/.retention.tmp-ab_9cd12"]
    for name in ours + theirs:
        path = root / name
        if ".json." in name:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{")
        else:
            path.mkdir(parents=True)
    monkeypatch.chdir(root)
    result = cli("retention")
    assert result.exit_code == 0, result.output
    assert f"removed {len(ours)} leftovers of an interrupted run" in result.output
    assert not any((root / n).exists() for n in ours) and all((root / n).exists() for n in theirs)


def test_an_empty_pool_is_one_error_line_and_writes_nothing(tmp_path, cli, monkeypatch):
    root = project(tmp_path, runs={})
    monkeypatch.chdir(root)
    result = cli("retention")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: retention: no checkpoints in checkpoints")
    assert "dvc repro -f train" in lines[0]
    assert not (root / layout.RETENTION_METRICS).exists() and not (root / layout.RETAINED).exists()


@pytest.mark.parametrize("line, needle", [
    ('{"run": "train", "step": 10', "checkpoints/train/registry.jsonl line 2 is not valid JSON"),
    ('["step-00000010"]', "checkpoints/train/registry.jsonl line 2 is not a checkpoint record"),
])
def test_a_corrupt_registry_is_one_error_line_and_deletes_nothing(tmp_path, cli, monkeypatch, line, needle):
    root = project(tmp_path, keep_best_k=1, keep_last_n=0)
    registry = root / "checkpoints/train" / REGISTRY
    registry.write_text(registry.read_text().splitlines()[0] + "\n" + line + "\n")
    monkeypatch.chdir(root)
    everything = on_disk(root)
    result = cli("retention")
    assert result.exit_code == 2 and needle in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert on_disk(root) == everything and not (root / layout.RETENTION_METRICS).exists()


@pytest.mark.parametrize("override, needle", [
    ("retention.keep_best_k=0", "retention.keep_best_k: Input should be greater than or equal to 1"),
    ("retention.keep_last_n=-1", "retention.keep_last_n"),
    ("retention.max_total_gb=0", "retention.max_total_gb"),
    ("retention.scope=everything", "retention.scope: Input should be 'current' or 'all'"),
    ("retention.keep_bset_k=2", "did you mean 'keep_best_k'?"),
])
def test_bad_policy_params_are_one_line_each(tmp_path, cli, monkeypatch, override, needle):
    root = project(tmp_path)
    monkeypatch.chdir(root)
    result = cli("retention", "--set", override)
    assert result.exit_code == 2 and needle in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert on_disk(root) and not (root / layout.RETENTION_METRICS).exists()


# --- no torch: the stage only reads and moves files, so `dsm5lab retention` starts fast ---------------


def torch_imports(*args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `python -X importtime ARGS`; the process and the torch modules it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    names = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
             if line.startswith("import time:")]
    return proc, [n for n in names if n == "torch" or n.startswith("torch.")]


@pytest.mark.parametrize("module", ["dsm5lab.pool.policy", "dsm5lab.pool.registry",
                                    "dsm5lab.retention"])
def test_retention_modules_do_not_import_torch(module):
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_cli_retention_help_does_not_import_torch():
    proc, torch_mods = torch_imports("-m", "dsm5lab", "retention", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--dry-run" in proc.stdout and torch_mods == []


def test_cli_retention_dry_run_does_not_import_torch(tmp_path):
    """The command itself (params, the stage, every registry read), not only its help."""
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    proc, torch_mods = torch_imports("-m", "dsm5lab", "retention", "--dry-run", cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "would delete 5 checkpoint(s)" in proc.stdout and torch_mods == []


# --- property tests ------------------------------------------------------------------------------

scores = st.one_of(st.none(), st.just(float("nan")), st.floats(-1, 1, allow_nan=False), st.sampled_from([0.0, 0.5]))


def top(records, mode, metric=None):
    sign = 1 if mode == "max" else -1
    ranked = [r for r in records if r["score"] is not None and math.isfinite(r["score"])
              and (metric is None or r["metric"] == metric)]
    return max(ranked, key=lambda r: (sign * r["score"], r["step"], r["run"])) if ranked else None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(scores, st.sampled_from(["train", "t0", "t1"]), st.integers(1, 5),
                       st.sampled_from([METRIC, "val/loss"])), max_size=20),
    st.integers(0, 4), st.integers(0, 3), st.sampled_from(["max", "min"]),
    st.one_of(st.none(), st.integers(0, 30)), st.sampled_from([None, METRIC]),
)
def test_policy_never_drops_the_top_checkpoint_and_respects_the_budget(items, k, n, mode, budget, metric):
    records = [{"run": run, "step": step, "score": score, "bytes": size, "metric": m, "path": f"step-{step}"}
               for step, (score, run, size, m) in enumerate(items)]
    decisions = decide_retention(records, k, n, mode, max_bytes=budget, metric=metric)
    assert [d.record for d in decisions] == records
    best = top(records, mode, metric)
    if best is not None:
        mine = next(d for d in decisions if d.record is best)
        assert mine.keep and mine.rank == 0 and "best" in mine.reasons
    kept = [d for d in decisions if d.keep]
    if budget is not None and sum(d.record["bytes"] for d in kept) > budget:
        assert [d.rank for d in kept] == [0]  # only the best may exceed the budget
    if budget is None:  # without a budget: every one of the top max(k, 1) ranks is kept
        assert {d.rank for d in kept if d.rank is not None} >= {
            d.rank for d in decisions if d.rank is not None and d.rank < max(k, 1)}
    assert all((d.keep and d.reasons and "policy" not in d.reasons and "budget" not in d.reasons)
               or (not d.keep and d.reasons in (("policy",), ("budget",))) for d in decisions)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(st.sampled_from(["train", f"hpo/{STUDY}/trial-0000", f"hpo/{STUDY}/trial-0001"]),
                    st.lists(st.one_of(st.none(), st.floats(0, 1)), min_size=1, max_size=3), min_size=1),
    st.integers(1, 4), st.integers(0, 2), st.one_of(st.none(), st.floats(1e-9, 1e-2)),
    st.booleans(),
)
def test_the_stage_never_deletes_the_top_checkpoint(tmp_path_factory, runs, k, n, budget_gb, dry):
    root = project(tmp_path_factory.mktemp("prop"), runs=runs)
    params = params_of(root, f"retention.keep_best_k={k}", f"retention.keep_last_n={n}",
                       f"retention.max_total_gb={'null' if budget_gb is None else budget_gb}",
                       f"retention.dry_run={str(dry).lower()}")
    scored = [(s, step * 10, run) for run, ss in runs.items() for step, s in enumerate(ss, 1) if s is not None]
    before = on_disk(root)
    if not scored:  # nothing to rank: refused, and nothing deleted
        with pytest.raises(UserError):
            stage.run(params, root)
        assert on_disk(root) == before
        return
    manifest = stage.run(params, root)
    if dry:
        assert on_disk(root) == before
    _, step, run = max(scored)
    assert (run, f"step-{step:08d}") in on_disk(root)
    assert tracked(root)[0] == (run, step)
    assert len(tracked(root)) <= k + n * len(runs)
    assert {(e["run"], f"step-{e['step']:08d}") for e in manifest["kept"]} <= on_disk(root)


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("cache_type, mode", [(None, "copy"), ("reflink,copy", "copy"),
                                              ('"hardlink,copy"', "hardlink"), ("symlink", "symlink")])
def test_bytes_count_what_dvc_does_with_the_tracked_set(tmp_path, cache_type, mode):
    """DVC's commit: with a copy cache the workspace set is checked out again as fresh copies (it no longer
    shares the pool's inodes) and the cache holds another copy; hardlink shares one inode everywhere; symlink
    copies into the cache and leaves symlinks. Objects of the previous tracked set (dvc.lock) count in before
    and after alike, until `dvc gc`. `dvc config` writes quoted values: they are read unquoted."""
    root = project(tmp_path, keep_best_k=2, keep_last_n=0)
    (root / ".dvc").mkdir()
    (root / ".dvc/config").write_text("[core]\n    autostage = false\n" +
                                      (f"[cache]\n    type = {cache_type}\n" if cache_type else ""))
    # a previous tracked set, as dvc.lock and the cache remember it: one object of 5000 bytes
    obj = root / ".dvc/cache/files/md5" / "ab" / ("c" * 30)
    obj.parent.mkdir(parents=True)
    obj.write_bytes(b"x" * 5000)
    listing = root / ".dvc/cache/files/md5/de" / (("f" * 30) + ".dir")
    listing.parent.mkdir(parents=True)
    listing.write_text(json.dumps([{"md5": "ab" + "c" * 30, "relpath": "x/model.safetensors"}]))
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"retention": {"outs": [
        {"path": "stages/retention", "md5": "de" + "f" * 30 + ".dir"}]}}}))
    previous = 5000 + listing.stat().st_size
    # one model.safetensors of the new set is already in the cache (a separate copy)
    src = root / "checkpoints/train/step-00000020/model.safetensors"
    md5 = _md5(src)
    (root / ".dvc/cache/files/md5" / md5[:2]).mkdir(parents=True, exist_ok=True)
    shutil.copy(src, root / ".dvc/cache/files/md5" / md5[:2] / md5[2:])

    m = stage.run(params_of(root), root)
    b = m["bytes"]
    assert b["cache"]["type"] == mode and b["cache"]["previous_objects"] == 2
    assert b["before"]["dvc_cache"] == previous  # the new set is not there yet
    tracked = [f for f in (root / layout.RETAINED).rglob("*") if f.is_file()]
    unique = {}
    for f in tracked:
        unique.setdefault(_md5(f), f.stat().st_size)
    present = src.stat().st_size
    pending = 0 if mode == "hardlink" else sum(unique.values()) - present
    assert b["after"]["dvc_cache_pending"] == pending
    assert b["after"]["dvc_cache"] == previous + present + pending
    pool = {}
    for f in [*(root / "checkpoints").rglob("step-*/*"), *(root / "checkpoints").rglob("assets/*")]:
        pool[(f.stat().st_dev, f.stat().st_ino)] = f.stat().st_size
    shared = {(f.stat().st_dev, f.stat().st_ino): f.stat().st_size for f in tracked}
    if mode == "hardlink":  # the tracked files are the pool's (hard links), and DVC keeps them so
        expected = sum((pool | shared).values())
    else:  # DVC's checkout re-creates them: copies (counted in full) or symlinks (nothing)
        expected = sum(pool.values()) + (sum(f.stat().st_size for f in tracked) if mode == "copy" else 0)
    assert b["after"]["total"] == expected + previous + present + pending
    metrics = json.loads((root / layout.RETENTION_METRICS).read_text())
    assert metrics["bytes"]["after"] == b["after"]["total"] and metrics["bytes"]["before"] == b["before"]["total"]
