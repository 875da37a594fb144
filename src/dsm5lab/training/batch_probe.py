"""Find the largest micro-batch whose whole training step fits in GPU memory; accumulate the rest."""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable
from dataclasses import replace

import torch

from dsm5lab.device import autocast_for, to_device
from dsm5lab.errors import UserError
from dsm5lab.training.encoding import collate
from dsm5lab.training.multitask_loss import multitask_loss
from dsm5lab.training.optim import build_optimizer

log = logging.getLogger("dsm5lab.train")


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error from any backend (CUDA's own type, or a RuntimeError saying so)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_memory() -> None:
    """Collect garbage and hand the CUDA allocator's cached blocks back (call it outside `except`)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def probe_batch_size(
    try_step: Callable[[int], None],
    upper: int,
    *,
    min_batch: int = 1,
    headroom: float = 0.1,
    memory: Callable[[], tuple[int, int]] | None = None,
) -> int:
    """Largest batch in [min_batch, upper] for which `try_step(batch)` fits, assuming smaller batches fit too.

    Doubles from min_batch until a batch does not fit or `upper` fits, then bisects between the last
    fit and the first failure. A batch fits when try_step raises no OOM and, if `memory` is given (it
    returns (peak_bytes, total_bytes) of the try just run), peak <= (1 - headroom) * total. Errors
    other than OOM propagate unchanged; a UserError when min_batch itself does not fit.
    """
    if upper < 1 or min_batch < 1 or upper < min_batch:
        raise ValueError(f"need 1 <= min_batch <= upper, got {min_batch=}, {upper=}")
    if not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom must be in [0, 1), got {headroom}")

    def why_not(batch: int) -> str | None:
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
        if reason is not None:
            release_memory()
        return reason

    fit, batch = None, min_batch
    while (reason := why_not(batch)) is None:
        fit = batch
        if batch == upper:
            return upper
        batch = min(2 * batch, upper)
    if fit is None:
        raise UserError(
            f"batch probe: batch size {batch} does not fit in GPU memory ({reason}); "
            "lower the max sequence length or model size, or enable gradient checkpointing"
        )
    fail = batch
    while fail - fit > 1:
        mid = (fit + fail) // 2
        if why_not(mid) is None:
            fit = mid
        else:
            fail = mid
    return fit


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


def widest_group(groups):
    """A group of the training set's largest shape: its most windows, each as long as its longest one."""
    n_windows = max(len(g.windows) for g in groups)
    owner = max(groups, key=lambda g: max(len(w.input_ids) for w in g.windows))
    window = max(owner.windows, key=lambda w: len(w.input_ids))  # its sentence ids index owner's sentences
    return replace(owner, windows=[window] * n_windows, n_tokens=n_windows * len(window.input_ids))


def probe_micro_batch(model, groups, params, pad_id: int, weights: dict, device: torch.device, *,
                      memory: Callable[[], tuple[int, int]] | None = None) -> tuple[int, int]:
    """(micro_batch, accumulation) for train.batch_size x train.grad_accum_steps groups per optimizer step.

    Each try is a whole training step on n copies of `widest_group`: forward and backward with
    AdamW's moments and the gradients already resident (as for a later micro-batch of an
    accumulation window), then the optimizer step. The optimizer is a throwaway one of the run's
    settings; the model's weights and the RNG are put back afterwards, so training does not change.
    """
    t, spec = params.train, model.spec
    kind = spec.evidence_head if spec.has_evidence else None
    per_step = t.batch_size * t.grad_accum_steps
    widest = widest_group(groups)
    weights_before = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    optimizer, _ = build_optimizer(model, t, total_steps=1)
    for group in optimizer.param_groups:  # a step on zero gradients creates the moments (exp_avg, exp_avg_sq)
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()

    def try_step(n: int) -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        batch = to_device(collate([widest] * n, pad_id, kind, spec.max_span_tokens), device)
        with autocast_for(device, t.precision):
            loss, _ = multitask_loss(model(batch), batch, model, params, weights)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # keep them allocated, as they are during accumulation

    try:
        fits = probe_batch_size(try_step, per_step, headroom=t.batch_probe.headroom, memory=memory)
    finally:
        optimizer.state.clear()
        del optimizer
        model.zero_grad(set_to_none=True)
        model.load_state_dict(weights_before)
        torch.set_rng_state(rng_before[0])
        if rng_before[1] is not None:
            torch.cuda.set_rng_state(rng_before[1], device)
        release_memory()
    micro, steps = plan_accumulation(per_step, fits)  # balanced micro-batches reaching the step's groups
    log.info("batch probe: %d groups of %d windows x %d tokens fit a training step; micro-batch %d x %d "
             "accumulation steps", fits, len(widest.windows), len(widest.windows[0].input_ids), micro, steps)
    return micro, steps
