"""Multi-label classification metrics with explicit averaging rules.

Every averaged number says what it averages over: `macro` is the unweighted mean
over the classes that have at least one positive in y_true (a class absent from the
split has no defined recall and is left out, and `n_classes` says how many
counted); `weighted` is the support-weighted mean over the same classes; `micro`
pools every (example, class) decision. Results are plain Python values for JSON,
with None (never NaN) where a value is undefined.

numpy only, on purpose, rather than scikit-learn's functions: a class without positives (or negatives) gives
None instead of NaN and a warning, the curves come ordered for the DVC plots, and `dsm5lab gate` stays free
of a scikit-learn import. tests/test_metrics.py holds F1 (per class, micro, macro, weighted), AUROC, AP and
the ROC/PR curves to scikit-learn's values within 1e-12 on random inputs with many ties.
"""

from __future__ import annotations

from collections.abc import Callable

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


# --- Scores of one binary problem ------------------------------------------------------
# Convention below: a decision at threshold t predicts positive when score >= t.


def _binary_inputs(y, score) -> tuple[np.ndarray, np.ndarray]:
    """Validate one binary problem: 1-D 0/1 labels and finite scores of the same length."""
    y, score = np.asarray(y), np.asarray(score, dtype=float)
    if y.ndim != 1 or y.shape != score.shape:
        raise ValueError(f"expected 1-D y and score of equal length, got {y.shape} and {score.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must hold only 0/1")
    if not np.isfinite(score).all():
        raise ValueError("scores must be finite")
    return y.astype(bool), score


def _ratios(num: np.ndarray, den: float) -> list:
    """num / den as floats, or Nones when den is 0 (the rate is undefined, not zero)."""
    return [float(v) / den for v in num] if den > 0 else [None] * len(num)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x with tied values sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[True, xs[1:] != xs[:-1]]
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(x)])
    ranks = np.empty(len(x))
    ranks[order] = (first + (counts + 1) / 2)[np.cumsum(starts) - 1]
    return ranks


def _cumulative_counts(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP at each distinct score used as threshold, highest threshold first (ties collapsed)."""
    order = np.argsort(-score, kind="mergesort")
    s, yy = score[order], y[order]
    last = np.r_[s[1:] != s[:-1], True]  # last position of each run of equal scores
    return np.cumsum(yy)[last], np.cumsum(~yy)[last], s[last]


def auroc(y, score) -> float | None:
    """Area under the ROC curve via Mann-Whitney U with average ranks for ties; None if one class."""
    y, score = _binary_inputs(y, score)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = _average_ranks(score)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(y, score) -> dict:
    """ROC points from (0, 0), one per distinct score; threshold None at the start (nothing predicted)."""
    y, score = _binary_inputs(y, score)
    tp, fp, thr = _cumulative_counts(y, score)
    return {
        "fpr": _ratios(np.r_[0, fp], float((~y).sum())),
        "tpr": _ratios(np.r_[0, tp], float(y.sum())),
        "threshold": [None] + thr.tolist(),
    }


def pr_curve(y, score) -> dict:
    """Precision/recall at each distinct score, highest threshold first; no artificial (0, 1) anchor."""
    y, score = _binary_inputs(y, score)
    tp, fp, thr = _cumulative_counts(y, score)
    return {
        "recall": _ratios(tp, float(y.sum())),
        "precision": (tp / (tp + fp)).tolist(),  # every threshold predicts at least one item
        "threshold": thr.tolist(),
    }


def average_precision(y, score) -> float | None:
    """Step-wise AP, sum_n (R_n - R_{n-1}) P_n as in sklearn (no interpolation); None without positives."""
    y, score = _binary_inputs(y, score)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    tp, fp, _ = _cumulative_counts(y, score)
    recall_gain = np.diff(np.r_[0, tp]) / n_pos
    return float((recall_gain * tp / (tp + fp)).sum())


def calibration_bins(y, prob, n_bins: int = 10) -> list[dict]:
    """Reliability table over equal-width bins [i/n, (i+1)/n) of [0, 1] (1.0 in the last); empty bins omitted.

    Multi-label inputs (N, C) are pooled over every (example, class) decision.
    """
    y = np.asarray(y).ravel()
    prob = np.asarray(prob, dtype=float).ravel()
    if y.shape != prob.shape or ((prob < 0) | (prob > 1)).any():
        raise ValueError("y and prob must have the same size and prob must lie in [0, 1]")
    idx = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    rows = []
    for i in np.unique(idx):
        mask = idx == i
        rows.append({
            "bin": int(i),
            "mean_predicted": float(prob[mask].mean()),
            "fraction_positive": float(y[mask].mean()),
            "count": int(mask.sum()),
        })
    return rows


# --- Multi-label reports and thresholds -------------------------------------------------


def _check_multilabel(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    """Validate (N, C) 0/1 labels and (N, C) probabilities in [0, 1]."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, dtype=float)
    if y_true.ndim != 2 or y_true.shape != y_prob.shape:
        raise ValueError(f"expected y_true, y_prob of equal (N, C) shape, got {y_true.shape}, {y_prob.shape}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold only 0/1")
    # Logits passed by mistake would otherwise be thresholded silently.
    if not np.isfinite(y_prob).all() or ((y_prob < 0) | (y_prob > 1)).any():
        raise ValueError("y_prob must be probabilities in [0, 1]")
    return y_true.astype(bool), y_prob


def classification_report(y_true, y_prob, thresholds, names: list[str]) -> dict:
    """Per-class and averaged metrics at fixed thresholds (predict positive when prob >= threshold).

    `macro_f1`/`weighted_f1` average over classes with positives in y_true (`n_classes` of them;
    the others are listed in `absent_classes`); `micro_f1` pools every decision of all classes, so
    false positives on an absent class still count. Recall and F1 are None for an absent class,
    precision is 0 when a class has no predicted positives.
    """
    y_true, y_prob = _check_multilabel(y_true, y_prob)
    n, c = y_true.shape
    if len(names) != c:
        raise ValueError(f"{len(names)} names for {c} classes")
    thr = np.broadcast_to(np.asarray(thresholds, dtype=float), (c,))
    y_pred = y_prob >= thr
    tp, fp, fn = ((y_true & y_pred).sum(0), (~y_true & y_pred).sum(0), (y_true & ~y_pred).sum(0))
    precision, recall, f1 = prf(tp, fp, fn)
    support = y_true.sum(0)
    present = support > 0
    per_class = {}
    for j, name in enumerate(names):
        per_class[name] = {
            "precision": float(precision[j]),
            "recall": float(recall[j]) if present[j] else None,
            "f1": float(f1[j]) if present[j] else None,
            "support": int(support[j]),
            "auroc": auroc(y_true[:, j], y_prob[:, j]),
            "pr_auc": average_precision(y_true[:, j], y_prob[:, j]),
            "threshold": float(thr[j]),
        }
    _, _, micro = prf(tp.sum(), fp.sum(), fn.sum())
    return {
        "per_class": per_class,
        "micro_f1": float(micro) if present.any() else None,
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "weighted_f1": float(np.average(f1[present], weights=support[present])) if present.any() else None,
        "subset_accuracy": float((y_pred == y_true).all(1).mean()) if n else None,
        "n_examples": int(n),
        "n_classes": int(present.sum()),
        "absent_classes": [name for name, p in zip(names, present) if not p],
    }


DEFAULT_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def tune_thresholds(y_val, p_val, grid=None) -> list[float]:
    """Per class, the grid threshold maximising F1 on the data given; ties -> closest to 0.5 (then the lower).

    Pass validation data only: thresholds chosen on the test split inflate every test number.
    A class without positives, or whose F1 is 0 at every grid point, gets 0.5.
    """
    y_val, p_val = _check_multilabel(y_val, p_val)
    grid = np.sort(np.asarray(DEFAULT_GRID if grid is None else grid, dtype=float))
    pred = p_val[None, :, :] >= grid[:, None, None]  # (G, N, C)
    tp = (pred & y_val).sum(1)
    # 2TP / (2TP + FP + FN): integer ratios, so equal F1 values compare exactly equal.
    denom = 2 * tp + (pred & ~y_val).sum(1) + (~pred & y_val).sum(1)
    f1 = np.divide(2 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)
    chosen = []
    for j in range(y_val.shape[1]):
        best = f1[:, j].max()
        if best <= 0:
            chosen.append(0.5)
            continue
        candidates = grid[f1[:, j] == best]
        # argmin returns the first, i.e. the lower, of two candidates equally far from 0.5
        chosen.append(float(candidates[np.argmin(np.abs(candidates - 0.5))]))
    return chosen


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | None],
    n_items: int,
    n_resamples: int,
    seed: int,
    alpha: float = 0.05,
) -> dict:
    """Percentile bootstrap interval of statistic(idx) over resampled item (post) indices.

    Resamples whose statistic is None or NaN (e.g. a class vanished from the resample) are
    skipped and counted in `skipped`; low/high/mean are None if every resample was skipped.
    """
    if n_items < 1 or n_resamples < 1 or not 0 < alpha < 1:
        raise ValueError("need n_items >= 1, n_resamples >= 1 and 0 < alpha < 1")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        value = statistic(rng.integers(0, n_items, size=n_items))
        if value is not None and not np.isnan(value):
            values.append(float(value))
    skipped = n_resamples - len(values)
    out = {"low": None, "high": None, "mean": None, "n_resamples": n_resamples, "skipped": skipped}
    if values:
        low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        out.update(low=float(low), high=float(high), mean=float(np.mean(values)))
    return out


def with_none_class(gold: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Append the 'no class' column (no label present / none predicted), as ReDSM5's NO_SYMPTOMS: (N, C+1) each."""
    gold, pred = np.asarray(gold).astype(bool), np.asarray(pred).astype(bool)
    return (np.column_stack([gold, ~gold.any(1)]).astype(int), np.column_stack([pred, ~pred.any(1)]).astype(int))


def paired_bootstrap(
    statistic: Callable[[np.ndarray], tuple[float | None, float | None]],
    n_items: int,
    n_resamples: int,
    seed: int,
    alpha: float = 0.05,
) -> dict:
    """Bootstrap of delta = new - baseline, both scored on the same resampled items (posts).

    statistic(idx) returns (new, baseline) on the items idx. Pairing removes the variance the two
    share (the same hard posts), so a real drop shows up where two separate intervals would overlap.
    `low`/`high` bound a two-sided (1 - 2 alpha) interval, i.e. each is a one-sided (1 - alpha) bound;
    `p_not_lower` / `p_not_higher` are the shares of resamples where new did not fall below / rise
    above the baseline (one-sided bootstrap p-values of a drop / a rise). Resamples where either
    statistic is undefined are skipped and counted.
    """
    if n_items < 1 or n_resamples < 1 or not 0 < alpha < 0.5:
        raise ValueError("need n_items >= 1, n_resamples >= 1 and 0 < alpha < 0.5")
    new, base = statistic(np.arange(n_items))
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_resamples):
        a, b = statistic(rng.integers(0, n_items, size=n_items))
        if a is not None and b is not None and not (np.isnan(a) or np.isnan(b)):
            deltas.append(float(a) - float(b))
    out = {"new": new, "baseline": base, "delta": None if new is None or base is None else float(new) - float(base),
           "low": None, "high": None, "p_not_lower": None, "p_not_higher": None,
           "n_resamples": n_resamples, "skipped": n_resamples - len(deltas), "alpha": alpha}
    if deltas:
        d = np.asarray(deltas)
        low, high = np.percentile(d, [100 * alpha, 100 * (1 - alpha)])
        # (1 + count) / (1 + n): never exactly 0, as a finite bootstrap cannot prove that
        out.update(low=float(low), high=float(high),
                   p_not_lower=float((1 + (d >= 0).sum()) / (1 + len(d))),
                   p_not_higher=float((1 + (d <= 0).sum()) / (1 + len(d))))
    return out
