"""Operating points (recall at a precision, precision at a recall) and calibration (ECE, Brier, temperature)."""

from __future__ import annotations

import numpy as np
import pytest

from dsm5lab.evaluation.operating import (brier, calibration_section, ece, fit_temperature, operating_points, scale,
                                          threshold_for_target)


def noisy(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    return y, np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1).round(3)


def brute_force(y, p, objective, target):
    """Every distinct score as threshold: the best (precision, recall) that meets the target, or None."""
    best = None
    for t in np.unique(p):
        pred = p >= t
        precision, recall = (y & pred).sum() / pred.sum(), (y & pred).sum() / y.sum()
        key = (recall, precision) if objective == "recall_at_precision" else (precision, recall)
        meets = (precision if objective == "recall_at_precision" else recall) >= target
        if meets and (best is None or key > best):
            best = key
    return best


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("objective,target", [("recall_at_precision", 0.7), ("recall_at_precision", 0.9),
                                              ("precision_at_recall", 0.8), ("precision_at_recall", 0.95)])
def test_the_target_is_met_on_val_with_the_best_other_rate(seed, objective, target):
    y, p = noisy(seed)
    got = threshold_for_target(y, p, objective, target)
    best = brute_force(y.astype(bool), p, objective, target)
    assert got["reached"] == (best is not None)
    if best is not None:
        rates = (got["val_recall"], got["val_precision"]) if objective == "recall_at_precision" else \
            (got["val_precision"], got["val_recall"])
        assert rates == pytest.approx(best)
        met = got["val_precision"] if objective == "recall_at_precision" else got["val_recall"]
        assert met >= target
        pred = p >= got["threshold"]  # the threshold gives what it claims
        assert (y[pred] == 1).mean() == pytest.approx(got["val_precision"])


def test_an_unreachable_precision_says_so_and_no_positive_keeps_one_half():
    y = np.array([1, 0, 1, 0, 0, 0])
    p = np.array([0.9, 0.9, 0.5, 0.4, 0.3, 0.2])  # the top score is tied between a positive and a negative
    got = threshold_for_target(y, p, "recall_at_precision", 0.99)
    # precision is 1/2 at 0.9 and 2/3 at 0.5: the most precise threshold there is, and it says it fell short
    assert not got["reached"] and (got["threshold"], got["val_precision"]) == (0.5, pytest.approx(2 / 3))
    none = threshold_for_target(np.zeros(4, int), p[:4], "precision_at_recall", 0.9)
    assert none == {"threshold": 0.5, "target": 0.9, "reached": False, "val_precision": None, "val_recall": None}


def test_operating_points_per_criterion_targets_and_f1_default():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < 0.3).astype(int)
    p = np.clip(0.4 * y + rng.random((200, 3)) * 0.6, 0, 1)
    thresholds, details = operating_points(y, p, "precision_at_recall", [0.5, 0.9, 1.0])
    assert [d["target"] for d in details] == [0.5, 0.9, 1.0]
    assert [d["val_recall"] >= d["target"] for d in details] == [True] * 3
    assert thresholds[2] == pytest.approx(p[y[:, 2] == 1, 2].min())  # all positives caught: the lowest one
    f1_thresholds, none = operating_points(y, p, "f1", [0.5] * 3)
    assert none is None and all(t in np.round(np.arange(0.05, 0.951, 0.05), 2) for t in f1_thresholds)


def test_ece_and_brier_by_hand():
    y = np.array([1, 0, 1, 1])
    p = np.array([0.15, 0.15, 0.85, 0.95])
    # bins: [0.1, 0.2): 2 items, 1/2 positive vs 0.15 -> 0.35; [0.8, 0.9): 1.0 vs 0.85; [0.9, 1]: 1.0 vs 0.95
    assert ece(y, p, 10) == pytest.approx(0.5 * 0.35 + 0.25 * 0.15 + 0.25 * 0.05)
    assert brier(y, p) == pytest.approx((0.85**2 + 0.15**2 + 0.15**2 + 0.05**2) / 4)


def test_temperature_scaling_undoes_overconfidence():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-z))).astype(int)
    overconfident = 1 / (1 + np.exp(-3 * z))  # logits three times too large
    t = fit_temperature(y[:10000], overconfident[:10000])
    assert t == pytest.approx(3.0, rel=0.08)
    after = scale(overconfident[10000:], t)
    assert ece(y[10000:], after, 10) < 0.3 * ece(y[10000:], overconfident[10000:], 10)
    assert fit_temperature(np.ones(5, int), np.full(5, 0.7)) == 1.0  # one class: left alone
    # monotone: no decision at any threshold changes order
    assert (np.diff(after[np.argsort(overconfident[10000:])]) >= 0).all()


def test_calibration_section_reports_before_and_after():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 1.5, (4000, 2))
    y = (rng.random((4000, 2)) < 1 / (1 + np.exp(-z))).astype(int)
    p = 1 / (1 + np.exp(-2.5 * z))
    out = calibration_section(y[:2000], p[:2000], y[2000:], p[2000:], ["A", "B"], 10, temperature=True)
    assert set(out["per_criterion"]) == {"A", "B"} and out["split"] == "test"
    assert out["temperature_scaled"]["ece"] < out["ece"]
    assert "temperature_scaled" not in calibration_section(y, p, y, p, ["A", "B"], 10, temperature=False)
