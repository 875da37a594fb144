"""Multi-label classification metrics with explicit averaging rules.

Every averaged number says what it averages over: `macro` is the unweighted mean
over the classes that have at least one positive in y_true (a class absent from the
split has no defined recall and is left out, and `n_classes` says how many
counted); `micro` pools every (example, class) decision.
"""

from __future__ import annotations

import numpy as np


def prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 per entry; 0 where undefined (no predictions / no positives)."""
    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, f1


def multilabel_f1(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """F1 per class, macro over classes with positives, and micro; inputs (N, C) of 0/1."""
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    tp = (y_true & y_pred).sum(0)
    fp = (~y_true & y_pred).sum(0)
    fn = (y_true & ~y_pred).sum(0)
    _, _, f1 = prf(tp, fp, fn)
    present = y_true.sum(0) > 0
    _, _, micro = prf(tp.sum(), fp.sum(), fn.sum())
    return {
        "per_class": f1.tolist(),
        "macro": float(f1[present].mean()) if present.any() else 0.0,
        "micro": float(micro),
        "n_classes": int(present.sum()),
    }


def chance_macro_f1(y_true: np.ndarray) -> float:
    """Macro F1 of the best label-blind predictor (always positive): mean of 2p/(1+p) over present classes."""
    p = np.asarray(y_true, dtype=float).mean(0)
    present = p > 0
    return float((2 * p[present] / (1 + p[present])).mean()) if present.any() else 0.0
