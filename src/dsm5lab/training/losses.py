"""Multi-label criteria losses on logits (B, C) against 0/1 targets (B, C).

Every loss is a mean over all B * C elements and is computed in float32, so fp16/bf16
logits from autocast are safe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

CRITERIA_LOSSES = ("bce", "weighted_bce", "focal", "hybrid")


def pos_weight_from_counts(positives: Sequence[int], total: int, max_weight: float = 50.0) -> Tensor:
    """BCE pos_weight per label: negatives/positives, clipped to [1, max_weight]; max_weight if none."""
    pos = torch.as_tensor(list(positives), dtype=torch.float32)
    if (pos < 0).any() or (pos > total).any():
        raise ValueError(f"positive counts must lie in [0, total={total}], got {list(positives)}")
    ratio = (total - pos) / pos.clamp(min=1.0)
    # A label with no positives cannot be weighted by a ratio; treat it as the rarest possible.
    ratio = torch.where(pos > 0, ratio, torch.full_like(ratio, max_weight))
    return ratio.clamp(1.0, max_weight)


def focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0, alpha: float = 0.25) -> Tensor:
    """Sigmoid focal loss (Lin et al., 2017), mean over elements; alpha < 0 disables the alpha term."""
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.mean()


def criteria_loss(
    kind: str,
    logits: Tensor,
    targets: Tensor,
    *,
    pos_weight: Tensor | None = None,
    focal_gamma: float = 2.0,
    focal_alpha: float = 0.25,
    hybrid_weight: float = 0.5,
    label_smoothing: float = 0.0,
) -> Tensor:
    """The criteria loss of `kind`; pos_weight is used (and required) by weighted_bce only."""
    if kind not in CRITERIA_LOSSES:
        raise ValueError(f"unknown criteria loss {kind!r}; allowed: {', '.join(CRITERIA_LOSSES)}")
    logits = logits.float()
    targets = targets.to(logits)
    if label_smoothing:
        targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    if kind == "weighted_bce":
        if pos_weight is None:
            raise ValueError("criteria loss 'weighted_bce' needs pos_weight (see pos_weight_from_counts)")
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight.to(logits))
    focal = focal_loss(logits, targets, focal_gamma, focal_alpha)
    if kind == "focal":
        return focal
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    return hybrid_weight * bce + (1 - hybrid_weight) * focal
