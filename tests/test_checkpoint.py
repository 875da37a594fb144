"""Checkpoints: retention policy, atomic save/load with RNG, crash recovery, manager and registry, disk guard."""

from __future__ import annotations

import errno
import json
import math
import os
import random
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsm5lab.errors import UserError
from dsm5lab.pool.policy import plan_retention
from dsm5lab.pool.registry import FILES, REGISTRY, Registry
from dsm5lab.training import checkpoint as ckpt
from dsm5lab.training.checkpoint import (CheckpointManager, check_free_space, estimate_checkpoint_bytes,
                                         load_checkpoint, save_checkpoint)


def rec(step, score, run="a"):
    return {"path": f"step-{step:08d}", "step": step, "score": score, "run": run}


def steps(records):
    return [r["step"] for r in records]


# --- plan_retention ------------------------------------------------------------------------------


def test_retention_best_k_and_last_n():
    records = [rec(1, 0.5), rec(2, 0.9), rec(3, 0.7), rec(4, 0.1), rec(5, 0.2)]
    keep, delete = plan_retention(records, keep_best_k=2, keep_last_n=1)
    assert steps(keep) == [2, 3, 5]
    assert steps(delete) == [1, 4]


def test_retention_min_mode_and_ties_prefer_later_step():
    records = [rec(1, 0.3), rec(2, 0.3), rec(3, 0.8)]
    assert steps(plan_retention(records, 1, 0, mode="min")[0]) == [2]
    assert steps(plan_retention(records, 1, 0, mode="max")[0]) == [3]
    assert steps(plan_retention([rec(1, 0.8), rec(2, 0.8), rec(3, 0.1)], 1, 0)[0]) == [2]


def test_retention_none_nan_inf_never_best():
    records = [rec(1, None), rec(2, float("nan")), rec(3, float("inf")), rec(4, 0.2), rec(5, None)]
    keep, delete = plan_retention(records, keep_best_k=1, keep_last_n=0)
    assert steps(keep) == [4]
    assert steps(delete) == [1, 2, 3, 5]
    # only unscored records: nothing is "best", last N still applies
    keep, _ = plan_retention([rec(1, None), rec(2, float("nan"))], keep_best_k=3, keep_last_n=1)
    assert steps(keep) == [2]


def test_retention_last_n_above_the_run_length_keeps_the_whole_run():
    """Regression: a run shorter than keep_last_n lost all but its last checkpoint (negative slice start)."""
    keep, delete = plan_retention([rec(1, 0.5), rec(2, 0.7)], keep_best_k=1, keep_last_n=3)
    assert steps(keep) == [1, 2] and delete == []


def test_retention_keep_best_zero_still_keeps_the_best():
    records = [rec(1, 0.9), rec(2, 0.1), rec(3, 0.2)]
    keep, delete = plan_retention(records, keep_best_k=0, keep_last_n=1)
    assert steps(keep) == [1, 3]
    assert steps(delete) == [2]
    assert steps(plan_retention(records, 0, 0)[0]) == [1]


def test_retention_last_n_is_per_run():
    records = [rec(step, 0.9 if step == 6 else 0.1, "ab"[step % 2 == 0]) for step in range(1, 7)]
    keep, _ = plan_retention(records, keep_best_k=0, keep_last_n=2)
    assert steps(keep) == [3, 4, 5, 6]
    # records without a run share one group
    keep, _ = plan_retention([{"path": "x", "step": s, "score": None} for s in (1, 2, 3)], 0, 1)
    assert steps(keep) == [3]


def test_retention_rejects_bad_policy():
    with pytest.raises(ValueError):
        plan_retention([], 1, 1, mode="best")
    with pytest.raises(ValueError):
        plan_retention([], -1, 1)


scores = st.one_of(st.none(), st.just(float("nan")), st.just(float("-inf")),
                   st.floats(-10, 10, allow_nan=False), st.sampled_from([0.0, 0.5, 1.0]))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(scores, st.sampled_from(["a", "b", "c"])), max_size=25),
    st.integers(0, 5),
    st.integers(0, 5),
    st.sampled_from(["max", "min"]),
)
def test_retention_properties(items, keep_best_k, keep_last_n, mode):
    records = [rec(step, score, run) for step, (score, run) in enumerate(items)]
    keep, delete = plan_retention(records, keep_best_k, keep_last_n, mode)
    assert sorted(steps(keep) + steps(delete)) == steps(records)
    assert not set(steps(keep)) & set(steps(delete))
    assert steps(keep) == sorted(steps(keep)) and steps(delete) == sorted(steps(delete))
    runs = len({r["run"] for r in records})
    assert len(keep) <= keep_best_k + keep_last_n * runs + 1
    for run in {r["run"] for r in records}:  # the last N of each run (all of them when it has fewer)
        mine = steps(r for r in records if r["run"] == run)
        assert set(mine[max(len(mine) - keep_last_n, 0):] if keep_last_n else []) <= set(steps(keep))
    finite = [r for r in records if r["score"] is not None and math.isfinite(r["score"])]
    if finite:
        sign = 1 if mode == "max" else -1
        best = max(finite, key=lambda r: (sign * r["score"], r["step"]))
        assert best["step"] in steps(keep)


# --- save / load ---------------------------------------------------------------------------------


class Tied(torch.nn.Module):
    """Shared weights (like tied embeddings) exercise safetensors' save_model."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(5, 4)
        self.out = torch.nn.Linear(4, 5, bias=False)
        self.out.weight = self.emb.weight
        self.norm = torch.nn.LayerNorm(4)

    def forward(self, x):
        return self.out(self.norm(self.emb(x)))


Trainer = namedtuple("Trainer", "model optimizer scheduler")


def make_trainer(seed=0):
    torch.manual_seed(seed)
    model = Tied()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    return Trainer(model, optimizer, scheduler)


def train_steps(t, n=3):
    for _ in range(n):
        loss = t.model(torch.randint(0, 5, (8,))).logsumexp(-1).mean()
        loss.backward()
        t.optimizer.step()
        t.scheduler.step()
        t.optimizer.zero_grad()


def draws():
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]


def test_save_load_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(1)
    t = make_trainer()
    train_steps(t)
    path = tmp_path / "ck"
    save_checkpoint(path, t.model, optimizer=t.optimizer, scheduler=t.scheduler,
                    state={"epoch": 1, "step": 3, "score": 0.5, "metric": "val/macro_f1", "best": 0.5},
                    config={"model": {"hidden": 4}})
    expected = draws()
    expected_model = {k: v.clone() for k, v in t.model.state_dict().items()}
    train_steps(t)  # move on: weights, optimizer, scheduler and RNG all change

    fresh = make_trainer(seed=99)
    state = load_checkpoint(path, fresh.model, optimizer=fresh.optimizer, scheduler=fresh.scheduler)
    assert state["step"] == 3 and state["best"] == 0.5
    assert draws() == expected
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(v, expected_model[k]), k
    assert fresh.model.out.weight is fresh.model.emb.weight
    assert fresh.scheduler.last_epoch == 3
    assert fresh.optimizer.state_dict()["state"][0]["step"].item() == 3

    raw = torch.load(path / "trainer_state.pt", weights_only=True)
    assert set(raw) >= {"optimizer", "scheduler", "scaler", "state", "rng"}
    meta = json.loads((path / "meta.json").read_text())
    assert (meta["step"], meta["score"], meta["metric"]) == (3, 0.5, "val/macro_f1") and meta["bytes"] > 0
    assert json.loads((path / "config.json").read_text()) == {"model": {"hidden": 4}}


def test_training_continues_identically_after_resume(tmp_path):
    a = make_trainer()
    train_steps(a, 2)
    save_checkpoint(tmp_path / "ck", a.model, optimizer=a.optimizer, scheduler=a.scheduler,
                    state={}, config={})
    train_steps(a, 2)
    b = make_trainer(seed=5)
    load_checkpoint(tmp_path / "ck", b.model, optimizer=b.optimizer, scheduler=b.scheduler)
    train_steps(b, 2)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_load_without_rng_restore_leaves_rng_alone(tmp_path):
    t = make_trainer()
    save_checkpoint(tmp_path / "ck", t.model, state={}, config={})
    fresh = make_trainer().model
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_checkpoint(tmp_path / "ck", fresh, restore_rng=False)
    assert torch.equal(torch.rand(3), expected)


def test_missing_or_incomplete_or_mismatched_checkpoint_is_a_user_error(tmp_path):
    t = make_trainer()
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope", t.model)
    save_checkpoint(tmp_path / "ck", t.model, state={}, config={})
    with pytest.raises(UserError, match="no optimizer state"):
        load_checkpoint(tmp_path / "ck", t.model, optimizer=t.optimizer)
    with pytest.raises(UserError, match=r"do not match the model: .*Missing key\(s\).*emb\.weight"):
        load_checkpoint(tmp_path / "ck", torch.nn.Linear(4, 5))
    (tmp_path / "ck" / "trainer_state.pt").unlink()
    # weights only (what retention tracks): the weights load, a resume is refused in one line
    assert load_checkpoint(tmp_path / "ck", t.model, restore_rng=False)["bytes"] > 0
    with pytest.raises(UserError, match=r"ck holds weights only \(trainer_state\.pt missing"):
        load_checkpoint(tmp_path / "ck", t.model)
    with pytest.raises(UserError, match=r"ck holds weights only"):
        load_checkpoint(tmp_path / "ck", t.model, optimizer=t.optimizer, restore_rng=False)
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"ck is incomplete: model\.safetensors is missing"):
        load_checkpoint(tmp_path / "ck", t.model, restore_rng=False)


def test_refuses_non_finite_weights_and_non_plain_state(tmp_path):
    t = make_trainer()
    with torch.no_grad():
        t.model.norm.bias[0] = float("nan")
    with pytest.raises(ValueError, match="norm.bias"):
        save_checkpoint(tmp_path / "ck", t.model, state={}, config={})
    assert not (tmp_path / "ck").exists() and not list(tmp_path.iterdir())
    with pytest.raises(TypeError, match="ndarray"):
        save_checkpoint(tmp_path / "ck2", make_trainer().model, state={"x": np.zeros(2)}, config={})
    with pytest.raises(TypeError, match=r"state\['best'\] is a float64"):
        save_checkpoint(tmp_path / "ck2", make_trainer().model, state={"best": np.float64(0.5)}, config={})


def _fail_torch_save(monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk died")

    monkeypatch.setattr(ckpt.torch, "save", boom)


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    t = make_trainer()
    save_checkpoint(tmp_path / "ck", t.model, state={"step": 1}, config={})
    train_steps(t)
    _fail_torch_save(monkeypatch)
    with pytest.raises(UserError, match=r"cannot write .*ck: disk died; no partial checkpoint is left"):
        save_checkpoint(tmp_path / "ck", t.model, state={"step": 2}, config={})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert load_checkpoint(tmp_path / "ck", make_trainer().model)["step"] == 1


def test_killed_write_leaves_temp_dir_that_the_manager_removes(tmp_path, monkeypatch):
    t = make_trainer()
    manager = CheckpointManager(tmp_path, keep_last_n=2, keep_best_k=1)
    first = manager.save(t.model, step=1, epoch=0, score=0.5, metric="m", state={}, config={})
    # A kill runs no cleanup: disable the temp dir's removal, then fail after model.safetensors is written.
    monkeypatch.setattr("dsm5lab.atomic.shutil.rmtree", lambda *a, **k: None)
    _fail_torch_save(monkeypatch)
    with pytest.raises(UserError, match="disk died"):
        manager.save(t.model, step=1, epoch=0, score=0.9, metric="m", state={}, config={})
    monkeypatch.undo()
    leftovers = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").exists()

    resumed = CheckpointManager(tmp_path, keep_last_n=2, keep_best_k=1)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert resumed.latest == first == resumed.best
    assert load_checkpoint(first, make_trainer().model)["score"] == 0.5


def test_manager_recovers_a_checkpoint_moved_aside(tmp_path):
    """Killed between the two renames of a replace: the old copy comes back."""
    t = make_trainer()
    manager = CheckpointManager(tmp_path, keep_last_n=1, keep_best_k=0)
    path = manager.save(t.model, step=7, epoch=0, score=0.1, metric="m", state={}, config={})
    path.rename(tmp_path / f".{path.name}.old-12345")
    (tmp_path / f".{path.name}.tmp-abc").mkdir()
    resumed = CheckpointManager(tmp_path, keep_last_n=1, keep_best_k=0)
    assert resumed.latest == path and path.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.jsonl", "registry.jsonl", path.name]


# --- CheckpointManager ---------------------------------------------------------------------------


def save_all(manager, model, scores, start=0):
    return [manager.save(model, step=start + i, epoch=0, score=s, metric="val/f1", state={}, config={})
            for i, s in enumerate(scores, 1)]


def test_manager_keeps_best_k_and_last_n_and_resumes(tmp_path):
    model = make_trainer().model
    manager = CheckpointManager(tmp_path, keep_last_n=2, keep_best_k=2, run="r1")
    paths = save_all(manager, model, [0.5, np.float64(0.9), 0.1, float("nan"), torch.tensor(0.2), 0.3])
    on_disk = sorted(p.name for p in tmp_path.glob("step-*"))
    # best 2: steps 2 (0.9) and 1 (0.5); last 2: steps 5 and 6
    assert on_disk == [p.name for p in (paths[0], paths[1], paths[4], paths[5])]
    assert manager.best == paths[1] and manager.latest == paths[5]
    assert [r["step"] for r in manager.records] == [1, 2, 5, 6]

    registry = [json.loads(line) for line in (tmp_path / "registry.jsonl").read_text().splitlines()]
    assert [r["step"] for r in registry] == [1, 2, 5, 6]
    assert {"run", "epoch", "step", "score", "metric", "path", "bytes", "time"} <= set(registry[0])
    assert registry[0]["path"] == "step-00000001" and registry[0]["bytes"] > 0

    resumed = CheckpointManager(tmp_path, keep_last_n=2, keep_best_k=2, run="r1")
    assert resumed.records == manager.records
    assert resumed.best == paths[1] and resumed.latest == paths[5]
    more = save_all(resumed, model, [0.4, float("inf")], start=6)
    assert sorted(tmp_path.glob("step-*")) == [paths[0], paths[1], *more]
    assert resumed.best == paths[1]


def test_manager_never_deletes_the_best_and_nan_is_never_best(tmp_path):
    model = make_trainer().model
    manager = CheckpointManager(tmp_path, keep_last_n=1, keep_best_k=0, mode="min")
    paths = save_all(manager, model, [float("nan"), 0.3, 0.1, 0.7, None, float("nan")])
    assert manager.best == paths[2]
    assert sorted(tmp_path.glob("step-*")) == [paths[2], paths[5]]
    assert [r["score"] for r in manager.records] == [0.1, None]


def test_manager_adopts_a_checkpoint_missing_from_the_registry(tmp_path):
    """Killed after the checkpoint rename but before the registry write: the checkpoint is not lost."""
    model = make_trainer().model
    manager = CheckpointManager(tmp_path, keep_last_n=5, keep_best_k=1, run="r")
    paths = save_all(manager, model, [0.2, 0.8])
    registry = tmp_path / "registry.jsonl"
    registry.write_text(registry.read_text().splitlines()[0] + "\n")
    resumed = CheckpointManager(tmp_path, keep_last_n=5, keep_best_k=1, run="r")
    assert resumed.best == paths[1] == resumed.latest
    assert resumed.records[1]["run"] == "r" and resumed.records[1]["score"] == 0.8


def test_disk_guard(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: usage(100e9, 97.5e9, 2.5e9))
    check_free_space(tmp_path / "not" / "yet", 2.0)
    with pytest.raises(UserError, match=r"only 2\.5 GB free at .*below train\.checkpoint\.min_free_gb=5$"):
        check_free_space(tmp_path / "not" / "yet", 5.0)
    manager = CheckpointManager(tmp_path / "ckpts", keep_last_n=1, keep_best_k=1, min_free_gb=5)
    with pytest.raises(UserError, match="min_free_gb"):
        save_all(manager, make_trainer().model, [0.1])
    assert not list((tmp_path / "ckpts").iterdir())


class FullDisk:
    """A file that takes `room` bytes, then fails every write the way a full disk does (ENOSPC)."""

    def __init__(self, file, room):
        self.fh, self.room = open(file, "wb"), room

    def write(self, data):
        view = memoryview(data).cast("B")
        if len(view) > self.room:
            self.fh.write(view[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(view)
        return self.fh.write(view)

    def flush(self):
        self.fh.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _fail_safetensors_midway(monkeypatch):
    """safetensors' Rust writer on a full disk: some bytes written, then its error as text."""
    import safetensors.torch
    from safetensors import SafetensorError

    def save_model(model, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_model", save_model)


@pytest.mark.parametrize("which", ["trainer_state.pt", "model.safetensors"])
def test_a_full_disk_mid_save_is_one_line_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch, which):
    """ENOSPC part-way through a file: torch reports it as 'enforce fail at inline_container.cc' and safetensors
    as text; either way one line naming the folder, the OS's reason and the size, and no partial checkpoint."""
    t = make_trainer()
    manager = CheckpointManager(tmp_path, keep_last_n=2, keep_best_k=1)
    first = manager.save(t.model, step=1, epoch=0, score=0.5, metric="m", optimizer=t.optimizer, state={},
                         config={})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    if which == "trainer_state.pt":  # the real torch.save, writing into a file that fills up after 600 bytes
        monkeypatch.setattr(ckpt, "open", lambda file, mode: FullDisk(file, 600), raising=False)
    else:
        _fail_safetensors_midway(monkeypatch)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: namedtuple("usage", "total used free")(1e9, 1e9, 0))
    with pytest.raises(UserError) as err:
        manager.save(t.model, step=2, epoch=0, score=0.9, metric="m", optimizer=t.optimizer, state={}, config={})
    size = estimate_checkpoint_bytes(t.model)
    assert str(err.value) == (
        f"checkpoint: cannot write {tmp_path / 'step-00000002'}: No space left on device (a checkpoint of this "
        f"model takes about {size / 1e3:.0f} kB, 0 kB free there); no partial checkpoint is left: free disk "
        "space or point train.checkpoint.dir at a larger disk")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.jsonl", "registry.jsonl", first.name]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert CheckpointManager(tmp_path, keep_last_n=2, keep_best_k=1).latest == first
    assert load_checkpoint(first, make_trainer().model)["step"] == 1


def test_a_full_disk_at_the_registry_is_one_line_and_the_checkpoint_is_adopted_later(tmp_path, monkeypatch):
    import dsm5lab.pool.registry as registry

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    t = make_trainer()
    manager = CheckpointManager(tmp_path, keep_last_n=2, keep_best_k=1)
    monkeypatch.setattr(registry, "write_text", full)
    with pytest.raises(UserError, match=r"^checkpoint: cannot write .*registry\.jsonl: No space left on device "
                                        r"\([\d.]+ \w?B free there\); no partial checkpoint is left") as err:
        manager.save(t.model, step=1, epoch=0, score=0.5, metric="m", state={}, config={})
    assert len(str(err.value).splitlines()) == 1
    monkeypatch.undo()
    assert [r["step"] for r in CheckpointManager(tmp_path, keep_last_n=2, keep_best_k=1).records] == [1]


def test_the_first_checkpoint_must_fit_before_any_epoch(tmp_path, monkeypatch):
    """check_room (called by build_run before the first epoch): weights + AdamW moments + min_free_gb."""
    model = torch.nn.Linear(4, 3)  # 15 fp32 parameters: 60 bytes of weights, 120 of AdamW moments
    size = estimate_checkpoint_bytes(model)
    assert size == 180 and estimate_checkpoint_bytes(model, with_optimizer=False) == 60
    usage = namedtuple("usage", "total used free")
    manager = CheckpointManager(tmp_path / "ckpts", keep_last_n=1, keep_best_k=1, min_free_gb=0)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: usage(1e9, 1e9, size))
    manager.check_room(size)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: usage(1e9, 1e9, size - 1))
    with pytest.raises(UserError, match=r"GB free at .*ckpts, but one checkpoint of this model takes about "
                                        r"0\.00 GB \(\+ train\.checkpoint\.min_free_gb=0\); free disk space"):
        manager.check_room(size)


# --- Registry --------------------------------------------------------------------------------------


def fake_checkpoint(root, step, **meta):
    """A complete checkpoint folder as far as the registry can tell: every file present, meta.json read."""
    d = root / f"step-{step:08d}"
    d.mkdir(parents=True)
    for name in FILES:
        (d / name).write_text("x")
    (d / "meta.json").write_text(json.dumps({"step": step, **meta}))
    return d


def test_registry_read_only_creates_and_clears_nothing(tmp_path):
    assert Registry(tmp_path / "absent", read_only=True).records == []
    assert not (tmp_path / "absent").exists()
    d = fake_checkpoint(tmp_path, 3, run="r", score=0.4, metric="m")  # unregistered: adopted in memory only
    leftovers = [tmp_path / ".step-00000004.tmp-1", tmp_path / f".{REGISTRY}.tmp-1"]
    leftovers[0].mkdir()
    leftovers[1].write_text("")
    reg = Registry(tmp_path, read_only=True)
    assert [(r["run"], r["step"], r["score"]) for r in reg.records] == [("r", 3, 0.4)]
    assert reg.latest("r") == d
    with pytest.raises(RuntimeError, match="read-only"):
        reg.remove(reg.records)
    assert d.is_dir() and all(p.exists() for p in leftovers) and not (tmp_path / REGISTRY).exists()
    Registry(tmp_path)  # a writer clears what killed writes left
    assert not any(p.exists() for p in leftovers)


@pytest.mark.parametrize("line, needle", [
    ('{"path": "step-00000001", "step": 1', "line 2 is not valid JSON"),
    ('{"path": "step-00000001", "step": "1"}', "line 2 is not a checkpoint record"),
])
def test_registry_malformed_line_is_one_user_error_line(tmp_path, line, needle):
    fake_checkpoint(tmp_path, 1)
    (tmp_path / REGISTRY).write_text('{"path": "step-00000001", "step": 1}\n' + line + "\n")
    with pytest.raises(UserError) as err:
        Registry(tmp_path, read_only=True)
    assert needle in str(err.value) and len(str(err.value).splitlines()) == 1


def test_epochs_are_one_based_where_people_read_them_and_zero_based_for_resuming(tmp_path):
    """metrics/train.json and the progress lines number epochs from 1: meta.json, the registry (and so the
    retention manifest) agree, while the state a resume reads keeps the 0-based index of the epoch in progress."""
    t = make_trainer()
    manager = CheckpointManager(tmp_path, keep_last_n=2, keep_best_k=0, run="r")
    path = manager.save(t.model, step=30, epoch=2, score=0.5, metric="m",
                        state={"epoch": 2, "batch_in_epoch": 10, "step": 30}, config={})
    assert json.loads((path / "meta.json").read_text())["epoch"] == 3
    assert [json.loads(line)["epoch"] for line in (tmp_path / "registry.jsonl").read_text().splitlines()] == [3]
    assert load_checkpoint(path, make_trainer().model)["epoch"] == 2
    # a checkpoint the registry lost is adopted from its meta.json: still 1-based
    (tmp_path / "registry.jsonl").unlink()
    assert [r["epoch"] for r in CheckpointManager(tmp_path, keep_last_n=2, keep_best_k=0, run="r").records] == [3]
