"""Poolings from encoder token states (B, T, H) to one vector per text (B, H)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

POOLINGS = ("cls", "mean", "attention", "last_2_layer_mix")


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of `hidden` (B, T, H) over the real tokens of `mask` (B, T)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class ClsPooling(nn.Module):
    """The state of the first token ([CLS] for BERT-like encoders)."""

    def forward(self, last_hidden: Tensor, mask: Tensor, all_hidden=None) -> Tensor:
        return last_hidden[:, 0]


class MeanPooling(nn.Module):
    """Mean over real tokens."""

    def forward(self, last_hidden: Tensor, mask: Tensor, all_hidden=None) -> Tensor:
        return masked_mean(last_hidden, mask)


class AttentionPooling(nn.Module):
    """A learned scoring vector; softmax over the real tokens weights their states."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1, bias=False)  # softmax is shift-invariant: a bias never learns

    def forward(self, last_hidden: Tensor, mask: Tensor, all_hidden=None) -> Tensor:
        scores = self.score(last_hidden).squeeze(-1)
        # finfo.min rather than -inf: a fully masked row then stays finite instead of NaN.
        scores = scores.masked_fill(~mask.bool(), torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1).unsqueeze(-1)
        return (weights * last_hidden).sum(1)


class LastTwoLayerMix(nn.Module):
    """Softmax-weighted mix of the last two hidden layers, then mean over real tokens."""

    def __init__(self):
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(2))  # starts as an even mix

    def forward(self, last_hidden: Tensor, mask: Tensor, all_hidden=None) -> Tensor:
        if all_hidden is None or len(all_hidden) < 2:
            raise ValueError(
                "pooling 'last_2_layer_mix' needs all_hidden with at least two layers: "
                "run the encoder with output_hidden_states=True and pass its hidden_states"
            )
        w = torch.softmax(self.layer_logits, dim=0).to(all_hidden[-1].dtype)
        mixed = w[0] * all_hidden[-2] + w[1] * all_hidden[-1]
        return masked_mean(mixed, mask)


def build_pooling(kind: str, hidden_size: int) -> nn.Module:
    """A pooling module of `kind`; forward(last_hidden, mask, all_hidden=None) -> (B, H)."""
    if kind == "cls":
        return ClsPooling()
    if kind == "mean":
        return MeanPooling()
    if kind == "attention":
        return AttentionPooling(hidden_size)
    if kind == "last_2_layer_mix":
        return LastTwoLayerMix()
    raise ValueError(f"unknown pooling {kind!r}; allowed: {', '.join(POOLINGS)}")
