"""AdamW with no-decay groups and a head learning-rate multiplier; warmup + linear/cosine/constant schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def param_groups(model, lr: float, weight_decay: float, head_lr_multiplier: float) -> list[dict]:
    """Four groups: encoder/head x decay/no-decay (biases and norm weights are not decayed)."""
    heads = {id(p) for _, p in model.head_parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = id(param) in heads
        decay = param.ndim > 1 and not any(name.endswith(k) for k in NO_DECAY)
        groups.setdefault((is_head, decay), []).append(param)
    return [
        {
            "params": params,
            "lr": lr * (head_lr_multiplier if is_head else 1.0),
            "weight_decay": weight_decay if decay else 0.0,
            "name": f"{'head' if is_head else 'encoder'}/{'decay' if decay else 'no_decay'}",
        }
        for (is_head, decay), params in sorted(groups.items())
    ]


# train.scheduler: the lr multiplier after warmup as a function of progress through the decay (0 -> 1)
SCHEDULERS = {
    "linear": lambda progress: max(0.0, 1.0 - progress),
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "constant": lambda progress: 1.0,
}


def lr_lambda(kind: str, total_steps: int, warmup_steps: int):
    """Multiplier of the base lr at a step: linear warmup, then the `kind` decay of SCHEDULERS."""
    decay = SCHEDULERS[kind]

    def fn(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return decay(min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return fn


def build_optimizer(model: nn.Module, cfg, total_steps: int):
    """AdamW and a LambdaLR scheduler from the train section of params."""
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.learning_rate, cfg.weight_decay, cfg.head_lr_multiplier), lr=cfg.learning_rate
    )
    warmup = int(round(cfg.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.scheduler, total_steps, warmup))
    return optimizer, scheduler
