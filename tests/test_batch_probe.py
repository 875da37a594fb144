"""Batch-size probing against a simulated OOM, the headroom rule, and gradient-accumulation planning."""

from __future__ import annotations

import pytest
import torch

from dsm5lab.errors import UserError
from dsm5lab.training.batch_probe import is_oom, plan_accumulation, probe_batch_size


class FakeGPU:
    """try_step that 'allocates' `per_sample` bytes per example and OOMs above `capacity`."""

    def __init__(self, capacity: int, per_sample: int = 1, total: int | None = None, error=None):
        self.capacity, self.per_sample = capacity, per_sample
        self.total = total if total is not None else capacity
        self.error = error or (lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
        self.tried: list[int] = []
        self.peak = 0

    def __call__(self, batch: int) -> None:
        self.tried.append(batch)
        self.peak = batch * self.per_sample
        if self.peak > self.capacity:
            raise self.error()

    def memory(self) -> tuple[int, int]:
        return self.peak, self.total


def test_is_oom():
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: Out of memory"))
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom(MemoryError())
    assert not is_oom(ValueError("out of memory"))


def test_probe_doubles_then_bisects_beyond_halving():
    gpu = FakeGPU(capacity=20)
    assert probe_batch_size(gpu, 64) == 20  # halving alone would stop at 16
    assert gpu.tried == [1, 2, 4, 8, 16, 32, 24, 20, 22, 21]


def test_probe_returns_upper_when_it_fits():
    gpu = FakeGPU(capacity=100)
    assert probe_batch_size(gpu, 48) == 48
    assert gpu.tried == [1, 2, 4, 8, 16, 32, 48]


@pytest.mark.parametrize("capacity", [1, 2, 3, 5, 63, 64, 100, 700])
def test_probe_finds_the_largest_fit_in_few_tries(capacity):
    gpu = FakeGPU(capacity=capacity)
    assert probe_batch_size(gpu, 1000) == min(capacity, 1000)
    assert len(gpu.tried) <= 2 * 10 + 1 and len(set(gpu.tried)) == len(gpu.tried)


def test_probe_cpu_style_runtime_oom():
    gpu = FakeGPU(capacity=5, error=lambda: RuntimeError("DefaultCPUAllocator: out of memory"))
    assert probe_batch_size(gpu, 12) == 5
    assert gpu.tried == [1, 2, 4, 8, 6, 5]


def test_probe_headroom_rule():
    # No OOM up to 10, but with 10% headroom the peak must stay <= 90 of 100 bytes.
    gpu = FakeGPU(capacity=100, per_sample=10, total=100)
    assert probe_batch_size(gpu, 16, memory=gpu.memory) == 9  # 160 OOM, 120 OOM, 100 > 90, 90 <= 90
    assert gpu.tried == [1, 2, 4, 8, 16, 12, 10, 9]
    gpu = FakeGPU(capacity=100, per_sample=10, total=100)
    assert probe_batch_size(gpu, 10, memory=gpu.memory, headroom=0.0) == 10
    gpu = FakeGPU(capacity=100, per_sample=10, total=100)
    assert probe_batch_size(gpu, 10, headroom=0.5) == 10  # no memory callable: only OOM counts


def test_probe_fails_with_user_error_when_min_batch_does_not_fit():
    gpu = FakeGPU(capacity=0)
    with pytest.raises(UserError, match=r"^batch probe: batch size 3 does not fit in GPU memory \(out of"):
        probe_batch_size(gpu, 12, min_batch=3)
    assert gpu.tried == [3]
    gpu = FakeGPU(capacity=100, per_sample=100, total=100)
    with pytest.raises(UserError, match=r"batch size 1 does not fit .*peak"):
        probe_batch_size(gpu, 4, memory=gpu.memory)
    assert gpu.tried == [1]


def test_probe_lets_other_errors_through():
    def broken(batch):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        probe_batch_size(broken, 8)


def test_probe_rejects_bad_arguments():
    for kwargs in ({"upper": 0}, {"upper": 4, "min_batch": 8}, {"upper": 4, "headroom": 1.0}):
        with pytest.raises(ValueError):
            probe_batch_size(lambda b: None, **kwargs)


@pytest.mark.parametrize(
    "requested, micro, expected",
    [(32, 16, (16, 2)), (32, 12, (11, 3)), (32, 32, (32, 1)), (32, 64, (32, 1)), (33, 16, (11, 3)),
     (7, 1, (1, 7)), (100, 30, (25, 4)), (1, 1, (1, 1))],
)
def test_plan_accumulation(requested, micro, expected):
    micro_batch, steps = plan_accumulation(requested, micro)
    assert (micro_batch, steps) == expected
    assert micro_batch <= micro and requested <= micro_batch * steps < requested + steps


def test_plan_accumulation_rejects_zero():
    with pytest.raises(ValueError):
        plan_accumulation(0, 4)


@pytest.fixture(scope="module")
def tiny_run(tiny_prepared, tmp_path_factory):
    """A built CPU run of the tiny model on 120 synthetic posts, 8 x 4 = 32 groups per optimizer step."""
    from dsm5lab.config import load_params
    from dsm5lab.training.run import RunPaths, build_run
    from test_train import TINY

    root = tiny_prepared
    params = load_params(root / "params.yaml", TINY + ["train.batch_size=8", "train.grad_accum_steps=4"])
    return build_run(params, RunPaths(prepared=root / "stages/prepare", checkpoints=tmp_path_factory.mktemp("ckpt")))


def test_probe_micro_batch_measures_a_whole_step_and_changes_nothing(tiny_run, monkeypatch):
    """OOM above 20 groups and a 10 MB/group meter against 200 MB with 10% headroom: 18 fit, so 16 x 2."""
    from dsm5lab.training import batch_probe

    run = tiny_run
    model, params = run.model, list(run.model.parameters())
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    made, steps, seen = [], [], []
    real_build = batch_probe.build_optimizer

    def build(*args, **kwargs):
        optimizer, scheduler = real_build(*args, **kwargs)
        real_step = optimizer.step
        optimizer.step = lambda: (steps.append(1), real_step())[1]
        made.append(optimizer)
        return optimizer, scheduler

    real_forward = model.forward

    def forward(batch):
        n = batch["n_groups"]
        seen.append((n, tuple(batch["input_ids"].shape)))
        optimizer = made[-1]
        # AdamW's moments and the gradients exist before the forward, as they do during accumulation
        assert all("exp_avg_sq" in optimizer.state[p] and p.grad is not None for p in params)
        if n > 20:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(batch)

    monkeypatch.setattr(batch_probe, "build_optimizer", build)
    monkeypatch.setattr(model, "forward", forward)
    meter = lambda: (seen[-1][0] * 10 * 2**20, 200 * 2**20)  # noqa: E731
    micro, accumulation = batch_probe.probe_micro_batch(model, run.train_groups, run.params, run.pad_id,
                                                        run.weights, torch.device("cpu"), memory=meter)
    assert (micro, accumulation) == (16, 2)
    assert [n for n, _ in seen] == [1, 2, 4, 8, 16, 32, 24, 20, 18, 19]
    windows = max(len(g.windows) for g in run.train_groups)
    tokens = max(len(w.input_ids) for g in run.train_groups for w in g.windows)
    assert windows > 1 and all(shape == (n * windows, tokens) for n, shape in seen)
    assert len(steps) == 1 + sum(n <= 20 for n, _ in seen)  # the moments' warm-up, then every try without OOM
    after = model.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert all(p.grad is None for p in params) and not run.optimizer.state
    assert torch.equal(torch.get_rng_state(), rng)


def test_widest_group_is_the_largest_shape(tiny_run):
    from dsm5lab.training.batch_probe import widest_group

    widest = widest_group(tiny_run.train_groups)
    lengths = {len(w.input_ids) for w in widest.windows}
    assert len(widest.windows) == max(len(g.windows) for g in tiny_run.train_groups)
    assert lengths == {max(len(w.input_ids) for g in tiny_run.train_groups for w in g.windows)}
