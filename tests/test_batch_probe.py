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


def test_probe_halves_until_it_fits():
    gpu = FakeGPU(capacity=20)
    assert probe_batch_size(gpu, 64) == 16
    assert gpu.tried == [64, 32, 16]


def test_probe_returns_requested_when_it_fits():
    gpu = FakeGPU(capacity=100)
    assert probe_batch_size(gpu, 48) == 48
    assert gpu.tried == [48]


def test_probe_cpu_style_runtime_oom():
    gpu = FakeGPU(capacity=5, error=lambda: RuntimeError("DefaultCPUAllocator: out of memory"))
    assert probe_batch_size(gpu, 12) == 3
    assert gpu.tried == [12, 6, 3]


def test_probe_headroom_rule():
    # No OOM below 100, but with 10% headroom the peak must stay <= 90 of 100 bytes.
    gpu = FakeGPU(capacity=100, per_sample=10, total=100)
    assert probe_batch_size(gpu, 16, memory=gpu.memory) == 8  # 160 OOM, 80 <= 90
    gpu = FakeGPU(capacity=100, per_sample=10, total=100)
    assert probe_batch_size(gpu, 10, memory=gpu.memory, headroom=0.1) == 5  # 100 fits but 100 > 90
    gpu = FakeGPU(capacity=100, per_sample=10, total=100)
    assert probe_batch_size(gpu, 10, memory=gpu.memory, headroom=0.0) == 10
    gpu = FakeGPU(capacity=100, per_sample=10, total=100)
    assert probe_batch_size(gpu, 10, headroom=0.5) == 10  # no memory callable: only OOM counts


def test_probe_tries_min_batch_exactly_and_fails_with_user_error():
    gpu = FakeGPU(capacity=0)
    with pytest.raises(UserError, match=r"^batch probe: batch size 3 does not fit in GPU memory \(out of"):
        probe_batch_size(gpu, 12, min_batch=3)
    assert gpu.tried == [12, 6, 3]
    gpu = FakeGPU(capacity=100, per_sample=100, total=100)
    with pytest.raises(UserError, match=r"batch size 1 does not fit .*peak"):
        probe_batch_size(gpu, 4, memory=gpu.memory)
    assert gpu.tried == [4, 2, 1]


def test_probe_lets_other_errors_through():
    def broken(batch):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        probe_batch_size(broken, 8)


def test_probe_rejects_bad_arguments():
    for kwargs in ({"requested": 0}, {"requested": 4, "min_batch": 8}, {"requested": 4, "headroom": 1.0}):
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
