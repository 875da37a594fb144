"""Criteria losses against values worked out by hand with math, not with torch."""

from __future__ import annotations

import math

import pytest
import torch

from dsm5lab.training.losses import CRITERIA_LOSSES, criteria_loss, focal_loss, pos_weight_from_counts

LOGITS = torch.tensor([[0.0, 2.0]])
TARGETS = torch.tensor([[1.0, 0.0]])


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def bce(x: float, t: float, w: float = 1.0) -> float:
    return -(w * t * math.log(sig(x)) + (1 - t) * math.log(1 - sig(x)))


def test_bce_by_hand():
    expected = (math.log(2) + math.log(1 + math.e**2)) / 2  # -log sig(0), -log(1 - sig(2))
    assert criteria_loss("bce", LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.410038, rel=1e-6)


def test_weighted_bce_weights_only_positives():
    pos_weight = torch.tensor([3.0, 7.0])  # 7 sits on a negative element, so it must not count
    expected = (3 * math.log(2) + math.log(1 + math.e**2)) / 2
    got = criteria_loss("weighted_bce", LOGITS, TARGETS, pos_weight=pos_weight)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_focal_by_hand():
    # Positive at p=0.5: (1-0.5)^2 * ln2 * alpha; negative at p=sig(2): p^2 * ce * (1-alpha).
    pos = 0.25 * (0.5**2) * math.log(2)
    neg = 0.75 * sig(2.0) ** 2 * math.log(1 + math.e**2)
    got = criteria_loss("focal", LOGITS, TARGETS, focal_gamma=2.0, focal_alpha=0.25)
    assert got.item() == pytest.approx((pos + neg) / 2, rel=1e-6)


def test_focal_alpha_weights_positives():
    one = torch.tensor([[1.0]])
    pos = focal_loss(torch.tensor([[0.0]]), one, gamma=0.0, alpha=0.9)
    neg = focal_loss(torch.tensor([[0.0]]), 1 - one, gamma=0.0, alpha=0.9)
    assert pos.item() == pytest.approx(0.9 * math.log(2), rel=1e-6)
    assert neg.item() == pytest.approx(0.1 * math.log(2), rel=1e-6)


def test_focal_without_gamma_and_alpha_is_bce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 9, generator=g) * 3
    targets = (torch.rand(5, 9, generator=g) > 0.6).float()
    focal = criteria_loss("focal", logits, targets, focal_gamma=0.0, focal_alpha=-1.0)
    assert focal.item() == pytest.approx(criteria_loss("bce", logits, targets).item(), rel=1e-6)


def test_hybrid_mixes_bce_and_focal():
    bce_part = criteria_loss("bce", LOGITS, TARGETS).item()
    focal_part = criteria_loss("focal", LOGITS, TARGETS).item()
    got = criteria_loss("hybrid", LOGITS, TARGETS, hybrid_weight=0.3).item()
    assert got == pytest.approx(0.3 * bce_part + 0.7 * focal_part, rel=1e-6)
    assert got != pytest.approx(bce_part) and got != pytest.approx(focal_part)


def test_label_smoothing_by_hand():
    # eps=0.2: 1 -> 0.9 and 0 -> 0.1
    expected = (bce(0.0, 0.9) + bce(2.0, 0.1)) / 2
    got = criteria_loss("bce", LOGITS, TARGETS, label_smoothing=0.2)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    weighted = criteria_loss("weighted_bce", LOGITS, TARGETS, pos_weight=torch.tensor([2.0, 2.0]),
                             label_smoothing=0.2)
    assert weighted.item() == pytest.approx((bce(0.0, 0.9, 2.0) + bce(2.0, 0.1, 2.0)) / 2, rel=1e-6)


def test_pos_weight_clipping_and_zero_positives():
    weights = pos_weight_from_counts([10, 0, 90, 1, 100], total=100, max_weight=50.0)
    assert weights.tolist() == pytest.approx([9.0, 50.0, 1.0, 50.0, 1.0])
    assert pos_weight_from_counts([0], total=10, max_weight=7.0).tolist() == [7.0]
    with pytest.raises(ValueError, match="total=10"):
        pos_weight_from_counts([11], total=10)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="pos_weight"):
        criteria_loss("weighted_bce", LOGITS, TARGETS)
    with pytest.raises(ValueError, match="bce, weighted_bce, focal, hybrid"):
        criteria_loss("softmax", LOGITS, TARGETS)


@pytest.mark.parametrize("kind", CRITERIA_LOSSES)
def test_low_precision_logits_give_float32_loss(kind):
    logits = torch.randn(4, 9).bfloat16().requires_grad_()
    loss = criteria_loss(kind, logits, torch.ones(4, 9), pos_weight=torch.full((9,), 3.0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad.abs().sum() > 0
