"""AdamW with no-decay groups, a head learning-rate multiplier and layer-wise lr decay; warmup + schedules."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from dsm5lab.errors import UserError

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
# numbered encoder layers: BERT/RoBERTa/DeBERTa/ELECTRA `encoder.layer.N`, ModernBERT `layers.N`,
# DistilBERT `transformer.layer.N`
LAYER = re.compile(r"(?:^|\.)(?:encoder\.layer|transformer\.layer|layers)\.(\d+)\.")


def layer_depths(names: list[str]) -> dict[str, int]:
    """Encoder parameter name -> steps below the top: top layer (and pooler, final norm) 0, embeddings lowest.

    Empty when no name has a numbered layer.
    """
    index = {n: int(m.group(1)) for n in names if (m := LAYER.search(n))}
    if not index:
        return {}
    top = max(index.values())
    return {n: top - index[n] if n in index else (top + 1 if "embed" in n else 0) for n in names}


def param_groups(model, lr: float, weight_decay: float, head_lr_multiplier: float,
                 layer_lr_decay: float = 1.0) -> list[dict]:
    """encoder/head x decay/no-decay groups (biases and norm weights are not decayed).

    With layer_lr_decay < 1 the encoder groups are split by depth: k steps below the top layer trains
    at lr * layer_lr_decay**k. The first group always trains at `lr` (the logged learning rate).
    """
    heads = {id(p) for _, p in model.head_parameters()}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depths = {}
    if layer_lr_decay < 1.0:
        depths = layer_depths([n for n, p in named if id(p) not in heads])
        if not depths:
            raise UserError(f"train.layer_lr_decay: {layer_lr_decay:g} needs an encoder with numbered layers "
                            f"(encoder.layer.N, layers.N or transformer.layer.N); "
                            f"{type(getattr(model, 'encoder', model)).__name__} has none, so set it to 1.0")
    groups: dict[tuple[bool, int, bool], list] = {}
    for name, param in named:
        is_head = id(param) in heads
        decay = param.ndim > 1 and not any(name.endswith(k) for k in NO_DECAY)
        groups.setdefault((is_head, depths.get(name, 0), decay), []).append(param)
    return [
        {
            "params": params,
            "lr": lr * (head_lr_multiplier if is_head else layer_lr_decay ** depth),
            "weight_decay": weight_decay if decay else 0.0,
            "name": f"{'head' if is_head else 'encoder'}{f'/depth_{depth}' if depths and not is_head else ''}"
                    f"/{'decay' if decay else 'no_decay'}",
        }
        for (is_head, depth, decay), params in sorted(groups.items())
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


def build_optimizer(model: nn.Module, cfg, total_steps: int, adamw: dict | None = None):
    """AdamW and a LambdaLR scheduler from the train section of params; `adamw`: extra keyword arguments
    (`fused` / `foreach`, which `dsm5lab bench` compares against torch's default)."""
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.learning_rate, cfg.weight_decay, cfg.head_lr_multiplier, cfg.layer_lr_decay),
        lr=cfg.learning_rate, **(adamw or {}),
    )
    warmup = int(round(cfg.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.scheduler, total_steps, warmup))
    return optimizer, scheduler
