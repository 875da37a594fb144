"""Clinical operating points and probability calibration, all chosen or fitted on validation only.

- Operating points (`evaluate.threshold_objective`): `f1` maximises F1 per criterion (metrics.tune_thresholds);
  `recall_at_precision` takes the threshold with the most recall whose validation precision reaches the
  criterion's target (screening: "find as many as possible while 9 in 10 alerts are right");
  `precision_at_recall` the most precise threshold whose validation recall reaches the target (triage: "miss
  at most 1 in 20 suicidal posts"). Where no threshold reaches the target on validation, the closest one is
  taken and `reached: false` says so. Candidates are the distinct validation scores (predict positive when
  prob >= threshold), so a target is met exactly where validation allows it.
- Calibration: expected calibration error (ECE, equal-width bins, weighted by bin size) and the Brier score per
  criterion. Optional temperature scaling fits one temperature per criterion on validation (negative
  log-likelihood) and reports test ECE/Brier after it; it is monotone, so it changes no decision.

numpy only.
"""

from __future__ import annotations

import numpy as np

from dsm5lab.metrics import _binary_inputs, _cumulative_counts, tune_thresholds

OBJECTIVES = ("f1", "recall_at_precision", "precision_at_recall")
EPS = 1e-6


def threshold_for_target(y, prob, objective: str, target: float) -> dict:
    """One criterion's threshold for `objective` at `target`, with its validation precision and recall."""
    y, prob = _binary_inputs(y, prob)
    n_pos = int(y.sum())
    if n_pos == 0:  # no positive on validation: nothing to aim at
        return {"threshold": 0.5, "target": target, "reached": False, "val_precision": None, "val_recall": None}
    tp, fp, thr = _cumulative_counts(y, prob)  # highest threshold first
    precision, recall = tp / (tp + fp), tp / n_pos
    if objective == "recall_at_precision":
        ok = precision >= target - 1e-12
        # most recall among the feasible; the first index reaching it has the fewest false positives
        i = int(np.flatnonzero(ok)[np.argmax(recall[ok])]) if ok.any() else int(np.argmax(precision))
    elif objective == "precision_at_recall":
        ok = recall >= target - 1e-12  # the lowest threshold always reaches recall 1
        i = int(np.flatnonzero(ok)[np.argmax(precision[ok])])
    else:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES[1:])} here (got {objective!r})")
    return {"threshold": float(thr[i]), "target": target, "reached": bool(ok.any()),
            "val_precision": float(precision[i]), "val_recall": float(recall[i])}


def operating_points(y_val, p_val, objective: str, targets: list[float]) -> tuple[list[float], list[dict] | None]:
    """(threshold per criterion, details per criterion or None for `f1`), from validation data only."""
    if objective == "f1":
        return tune_thresholds(y_val, p_val), None
    y_val, p_val = np.asarray(y_val), np.asarray(p_val, dtype=float)
    details = [threshold_for_target(y_val[:, c], p_val[:, c], objective, t) for c, t in enumerate(targets)]
    return [d["threshold"] for d in details], details


def ece(y, prob, n_bins: int) -> float:
    """Expected calibration error of one binary problem: sum over bins of share x |fraction positive - mean prob|."""
    y, prob = _binary_inputs(y, prob)
    if len(y) == 0:
        raise ValueError("ece of an empty split")
    idx = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(idx):
        mask = idx == b
        total += mask.mean() * abs(y[mask].mean() - prob[mask].mean())
    return float(total)


def brier(y, prob) -> float:
    """Mean squared difference between probability and outcome."""
    y, prob = _binary_inputs(y, prob)
    return float(np.mean((prob - y) ** 2))


def _logit(prob: np.ndarray) -> np.ndarray:
    p = np.clip(prob, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _nll(y: np.ndarray, z: np.ndarray, temperature: float) -> float:
    s = z / temperature  # -log sigmoid(s) for positives, -log(1 - sigmoid(s)) for negatives, stably
    return float(np.mean(np.logaddexp(0, -s) * y + np.logaddexp(0, s) * (1 - y)))


def fit_temperature(y, prob, low: float = 0.05, high: float = 20.0, iters: int = 80) -> float:
    """The temperature T minimising validation NLL of sigmoid(logit(prob) / T): golden-section search in log T."""
    y, prob = _binary_inputs(y, prob)
    if y.all() or not y.any():
        return 1.0  # one class only: any sharpening "helps" without bound; leave the scores alone
    z, yf = _logit(prob), y.astype(float)
    a, b = np.log(low), np.log(high)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(iters):
        if _nll(yf, z, np.exp(c)) < _nll(yf, z, np.exp(d)):
            b, d = d, c
            c = b - g * (b - a)
        else:
            a, c = c, d
            d = a + g * (b - a)
    return float(np.exp((a + b) / 2))


def scale(prob, temperature: float) -> np.ndarray:
    """Probabilities after temperature scaling."""
    return 1 / (1 + np.exp(-_logit(np.asarray(prob, dtype=float)) / temperature))


def calibration_section(val_gold, val_prob, test_gold, test_prob, names, n_bins: int, temperature: bool) -> dict:
    """Test ECE and Brier per criterion and their mean over criteria; with `temperature`, also after scaling
    with temperatures fitted on validation."""
    per, after = {}, {}
    for c, name in enumerate(names):
        y, p = test_gold[:, c], test_prob[:, c]
        per[name] = {"ece": ece(y, p, n_bins), "brier": brier(y, p)}
        if temperature:
            t = fit_temperature(val_gold[:, c], val_prob[:, c])
            q = scale(p, t)
            after[name] = {"temperature": t, "ece": ece(y, q, n_bins), "brier": brier(y, q)}
    out = {"split": "test", "bins": n_bins, "per_criterion": per,
           "ece": float(np.mean([v["ece"] for v in per.values()])),
           "brier": float(np.mean([v["brier"] for v in per.values()]))}
    if temperature:
        out["temperature_scaled"] = {"fitted_on": "val", "per_criterion": after,
                                     "ece": float(np.mean([v["ece"] for v in after.values()])),
                                     "brier": float(np.mean([v["brier"] for v in after.values()]))}
    return out
