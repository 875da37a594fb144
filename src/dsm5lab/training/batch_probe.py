"""Find the largest micro-batch that fits in GPU memory; make up the rest with gradient accumulation."""

from __future__ import annotations

import gc
import math
from collections.abc import Callable

import torch

from dsm5lab.errors import UserError


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error from any backend (CUDA's own type, or a RuntimeError saying so)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def probe_batch_size(
    try_step: Callable[[int], None],
    requested: int,
    *,
    min_batch: int = 1,
    headroom: float = 0.1,
    memory: Callable[[], tuple[int, int]] | None = None,
) -> int:
    """Largest of requested, requested/2, ... (never below min_batch) for which `try_step(batch)` fits.

    A batch fits when try_step raises no OOM and, if `memory` is given (it returns (peak_bytes,
    total_bytes) measured during the try), peak <= (1 - headroom) * total. The last candidate tried
    before giving up is exactly min_batch. Errors other than OOM propagate unchanged.
    """
    if requested < 1 or min_batch < 1 or requested < min_batch:
        raise ValueError(f"need 1 <= min_batch <= requested, got {min_batch=}, {requested=}")
    if not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom must be in [0, 1), got {headroom}")
    batch = requested
    while True:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        reason = None
        try:
            try_step(batch)
        except Exception as exc:  # only OOM is handled; anything else is re-raised
            if not is_oom(exc):
                raise
            reason = "out of memory"
        # The exception (and the tensors its traceback pins) is gone here, so the cache can really be freed.
        if reason is None and memory is not None:
            peak, total = memory()
            if peak > (1.0 - headroom) * total:
                reason = f"peak {peak / 2**30:.2f} GiB > {1 - headroom:.0%} of {total / 2**30:.2f} GiB"
        if reason is None:
            return batch
        _release_memory()
        if batch == min_batch:
            raise UserError(
                f"batch probe: batch size {batch} does not fit in GPU memory ({reason}); "
                "lower the max sequence length or model size, or enable gradient checkpointing"
            )
        batch = max(batch // 2, min_batch)


def plan_accumulation(requested: int, micro: int) -> tuple[int, int]:
    """(micro_batch, accumulation_steps) reaching `requested` with the fewest steps, balanced across steps.

    steps = ceil(requested / micro); micro_batch = ceil(requested / steps) <= micro. The effective
    batch micro_batch * steps equals requested or exceeds it by less than `steps`:
    (32, 16) -> (16, 2); (32, 12) -> (11, 3) = 33; (32, 64) -> (32, 1).
    """
    if requested < 1 or micro < 1:
        raise ValueError(f"requested and micro must be >= 1, got {requested}, {micro}")
    steps = math.ceil(requested / micro)
    return math.ceil(requested / steps), steps


def cuda_memory() -> tuple[int, int]:
    """(peak bytes allocated since the last reset, total bytes) of the current CUDA device."""
    device = torch.cuda.current_device()
    return torch.cuda.max_memory_allocated(device), torch.cuda.get_device_properties(device).total_memory
