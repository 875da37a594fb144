"""Out-of-memory during training: the micro-batch halves, the step is redone, and the run ends as it would have."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsm5lab.config import load_params
from test_train import TINY, sets

# 4 groups per micro-batch, 2 micro-batches per optimizer step
LAYOUT = TINY + ["train.batch_size=4", "train.grad_accum_steps=2"]


class Recorder:
    """A tracker that keeps only the events."""

    def __init__(self):
        self.events: list[tuple[str, dict]] = []

    def event(self, kind: str, **fields) -> None:
        self.events.append((kind, fields))

    def log_params(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, *args, **kwargs) -> None:
        pass

    def set_tags(self, *args, **kwargs) -> None:
        pass

    def oom(self) -> list[dict]:
        return [f for kind, f in self.events if kind == "out_of_memory"]


class Boom(torch.autograd.Function):
    """Identity whose backward runs out of memory."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (backward)")


def oom_at(monkeypatch, calls: set[int], where: str = "loss") -> None:
    """Make the loss of these forward passes (1-based, counted over the run) raise a CUDA OOM, in the loss or
    in its backward."""
    from dsm5lab.training import loop

    real, count = loop.multitask_loss, {"n": 0}

    def loss_fn(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        count["n"] += 1
        if count["n"] in calls:
            if where == "loss":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
            loss = Boom.apply(loss)
        return loss, parts

    monkeypatch.setattr(loop, "multitask_loss", loss_fn)


@pytest.fixture
def prepared(tiny_prepared):
    return tiny_prepared  # read-only: runs write their checkpoints under the test's tmp_path


def train(root: Path, tmp: Path, name: str, overrides=(), splits: int = 1):
    """fit() on a fresh run; `splits` > 1 starts it with micro-batches already cut in that many pieces."""
    from dsm5lab.training.loop import fit
    from dsm5lab.training.run import RunPaths, build_run

    params = load_params(root / "params.yaml", LAYOUT + list(overrides))
    run = build_run(params, RunPaths(prepared=root / "stages/prepare", checkpoints=tmp / name))
    run.state.micro_splits = splits
    tracker = Recorder()
    result = fit(run, tracker)
    weights = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    return result, run.state, weights, tracker


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_split_micro_batches_keeps_every_group_in_order():
    from dsm5lab.training.loop import split_micro_batches

    order = [list(range(11)), [11, 12], [13]]
    pieces = split_micro_batches(order, 1, 4)
    assert [(bi, idx, first, last) for bi, idx, first, last in pieces] == [
        (1, [11], True, False), (1, [12], False, True), (2, [13], True, True)]
    pieces = split_micro_batches(order, 0, 2)
    assert [len(idx) for _, idx, _, _ in pieces] == [6, 5, 1, 1, 1]
    assert [g for _, idx, _, _ in pieces for g in idx] == list(range(14))
    assert split_micro_batches(order, 0, 1) == [(i, b, True, True) for i, b in enumerate(order)]


def test_oom_mid_step_redoes_the_step_with_half_the_micro_batch(prepared, tmp_path, monkeypatch):
    """An OOM at the first micro-batch of step 3 and one in the backward of its second micro-batch (after
    the first's gradients are in) end in the same weights, with the step count of a run without OOM."""
    base, base_state, _, _ = train(prepared, tmp_path, "base")
    oom_at(monkeypatch, {5})  # passes 1-2 are step 1, 3-4 step 2, 5-6 step 3
    first, first_state, first_weights, first_tracker = train(prepared, tmp_path, "first")
    oom_at(monkeypatch, {6}, where="backward")
    second, second_state, second_weights, second_tracker = train(prepared, tmp_path, "second")
    assert first.steps == second.steps == base.steps > 3
    assert [h["step"] for h in first.history] == [h["step"] for h in base.history]
    assert first_state.train_groups == second_state.train_groups == base_state.train_groups
    assert first_state.train_tokens == second_state.train_tokens == base_state.train_tokens
    assert same(first_weights, second_weights)
    assert first.history == second.history
    for tracker, result in ((first_tracker, first), (second_tracker, second)):
        assert tracker.oom() == [{"step": 2, "epoch": 1, "micro_batch": 2, "accumulation": 4,
                                  "previous_micro_batch": 4, "previous_accumulation": 2,
                                  "failed_pass_groups": 4}]
        assert (result.throughput["micro_batch"], result.throughput["accumulation"]) == (2, 4)
    assert (base.throughput["micro_batch"], base.throughput["accumulation"]) == (4, 2)


def test_oom_at_the_first_step_equals_a_run_with_half_the_micro_batch(prepared, tmp_path, monkeypatch):
    halved, _, halved_weights, _ = train(prepared, tmp_path, "halved", splits=2)
    oom_at(monkeypatch, {1})
    recovered, _, recovered_weights, tracker = train(prepared, tmp_path, "recovered")
    assert len(tracker.oom()) == 1
    assert recovered.steps == halved.steps and recovered.history == halved.history
    assert same(recovered_weights, halved_weights)


def test_a_micro_batch_in_pieces_trains_what_the_whole_one_would(prepared, tmp_path):
    """Criteria loss (a mean over groups), no dropout, 5 groups cut into 3 + 2: the same run up to float
    rounding, because each piece weighs by its share of the groups. (Measured: 5e-7 max weight difference
    after 18 steps; averaging the pieces equally instead gives 2e-2.) The evidence and sentence losses are
    means over a batch's windows and sentences, so for joint training the split is close, not equal."""
    overrides = ["train.batch_size=5", "train.grad_accum_steps=1", "train.epochs=1", "train.task=criteria",
                 "model.hidden_dropout=0.0", "model.classifier_dropout=0.0"]
    _, _, whole, _ = train(prepared, tmp_path, "whole", overrides)
    _, _, pieces, _ = train(prepared, tmp_path, "pieces", overrides, splits=2)
    assert max((whole[k] - pieces[k]).abs().max().item() for k in whole) < 1e-5


def test_repeated_oom_halves_down_to_one_group(prepared, tmp_path, monkeypatch, caplog):
    """An OOM whenever a forward pass holds more than one group: 4 -> 2 -> 1, and the run completes."""
    from dsm5lab.training import loop

    real = loop.multitask_loss

    def loss_fn(out, batch, *args, **kwargs):
        if batch["n_groups"] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(out, batch, *args, **kwargs)

    base, _, _, _ = train(prepared, tmp_path, "base", ["train.epochs=1"])
    monkeypatch.setattr(loop, "multitask_loss", loss_fn)
    with caplog.at_level("WARNING", logger="dsm5lab.train"):
        result, state, _, tracker = train(prepared, tmp_path, "shrunk", ["train.epochs=1"])
    assert [(e["micro_batch"], e["accumulation"]) for e in tracker.oom()] == [(2, 4), (1, 8)]
    assert state.micro_splits == 4 and result.steps == base.steps
    assert "micro-batch 4 -> 2, accumulation 2 -> 4" in caplog.text


def test_oom_at_micro_batch_one_fails_clearly_without_a_half_written_checkpoint(prepared, tmp_path, monkeypatch,
                                                                                 cli):
    from conftest import copy_project

    copy_project(prepared, tmp_path, monkeypatch)
    oom_at(monkeypatch, {5})  # step 5: after four checkpoints (one per step)
    result = cli("train", *sets(TINY + ["train.batch_size=1", "train.eval_every_steps=1",
                                        "train.early_stopping.patience=9"]))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]  # after the epoch lines
    assert len(errors) == 1 and errors[0].startswith(
        "error: train: out of memory at step 4 (epoch 1) even with a micro-batch of 1 group; lower model.max_length (64)")
    assert "CUDA out of memory. Tried to allocate 1.00 GiB" in result.stderr and "Traceback" not in result.output
    folder = Path("checkpoints/train")
    saved = sorted(p.name for p in folder.glob("step-*"))
    assert saved and all((folder / name / "meta.json").is_file() for name in saved)
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
    assert not Path("stages/train/model").exists() and not Path("metrics/train.json").exists()


def test_micro_splits_survive_a_checkpoint_round_trip():
    from dsm5lab.training.run import TrainState

    state = TrainState(micro_batch=8, accumulation=2, micro_splits=4)
    again = TrainState.from_dict(state.to_dict())
    assert again == state and (again.forward_batch, again.forward_passes) == (2, 8)
    assert TrainState.from_dict({"micro_batch": 8, "accumulation": 2}).micro_splits == 1  # older checkpoints
