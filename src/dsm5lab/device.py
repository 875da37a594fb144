"""The device a process computes on, the autocast context for a precision, and moving batches there."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from dsm5lab.errors import UserError


def pick_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device, precision: str):
    """The autocast context for a precision, or a null context for fp32."""
    if precision == "fp32":
        return nullcontext()
    if device.type != "cuda" and precision == "fp16":
        raise UserError("train.precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
