"""Metrics against values worked out by hand, edge cases, and sklearn as an independent cross-check."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from dsm5lab.evaluation.evidence_metrics import ranking_metrics, sentence_prf, span_scores
from dsm5lab.metrics import (
    auroc,
    average_precision,
    bootstrap_ci,
    calibration_bins,
    chance_macro_f1,
    classification_report,
    multilabel_f1,
    pr_curve,
    roc_curve,
    tune_thresholds,
)

# Five posts, three criteria; criterion "c" has no positive in this split.
Y_TRUE = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 1, 0]])
Y_PROB = np.array([[0.9, 0.2, 0.6], [0.4, 0.7, 0.1], [0.3, 0.6, 0.2], [0.8, 0.1, 0.3], [0.1, 0.3, 0.2]])
NAMES = ["a", "b", "c"]


@pytest.fixture(autouse=True)
def warnings_are_errors():
    """Division-by-zero and similar RuntimeWarnings must not happen in any metric."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --- existing functions keep their behaviour ---------------------------------------------


def test_existing_multilabel_f1_and_chance_unchanged():
    out = multilabel_f1(Y_TRUE, Y_PROB >= 0.5)
    assert out["per_class"] == pytest.approx([0.5, 0.8, 0.0])
    assert (out["macro"], out["micro"], out["n_classes"]) == pytest.approx((0.65, 0.6, 2))
    # p = 2/5 and 3/5 -> mean of 2p/(1+p) over the two present classes
    assert chance_macro_f1(Y_TRUE) == pytest.approx((0.8 / 1.4 + 1.2 / 1.6) / 2)


# --- classification_report ---------------------------------------------------------------


def test_classification_report_by_hand():
    rep = classification_report(Y_TRUE, Y_PROB, 0.5, NAMES)
    a, b, c = (rep["per_class"][n] for n in NAMES)
    # a: TP row0, FP row3, FN row1
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == (0.5, 0.5, 0.5, 2)
    assert a["auroc"] == pytest.approx(5 / 6)  # pos {.9,.4} vs neg {.3,.8,.1}: 3 + 2 of 6 pairs
    assert a["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # b: TP rows 1,2; FN row 4 (0.3 < 0.5)
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == pytest.approx((1.0, 2 / 3, 0.8, 3))
    assert b["auroc"] == 1.0 and b["pr_auc"] == 1.0
    # c: absent class -> recall/F1/AUROC/AP undefined; its one predicted positive has precision 0
    undefined = {"recall": None, "f1": None, "auroc": None, "pr_auc": None}
    assert c == {"precision": 0.0, "support": 0, "threshold": 0.5, **undefined}
    assert rep["macro_f1"] == pytest.approx((0.5 + 0.8) / 2)  # c excluded, not counted as 0
    assert rep["weighted_f1"] == pytest.approx((2 * 0.5 + 3 * 0.8) / 5)
    assert rep["micro_f1"] == pytest.approx(6 / 10)  # TP 3, FP 2 (incl. c), FN 2
    assert rep["subset_accuracy"] == pytest.approx(1 / 5)  # only row 2 fully right
    assert (rep["n_examples"], rep["n_classes"], rep["absent_classes"]) == (5, 2, ["c"])
    json.dumps(rep, allow_nan=False)


def test_classification_report_per_class_thresholds():
    rep = classification_report(Y_TRUE, Y_PROB, [0.5, 0.25, 0.7], NAMES)
    assert [rep["per_class"][n]["threshold"] for n in NAMES] == [0.5, 0.25, 0.7]
    assert rep["per_class"]["b"]["recall"] == 1.0  # 0.3 now passes
    assert rep["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))  # TP 4, FP 1 (a), FN 1 (a)
    with pytest.raises(ValueError):
        classification_report(Y_TRUE, Y_PROB, [0.5, 0.5], NAMES)


def test_all_negative_predictions_give_zero_precision_without_warnings():
    rep = classification_report(Y_TRUE, Y_PROB, 0.99, NAMES)
    assert [rep["per_class"][n]["precision"] for n in NAMES] == [0.0, 0.0, 0.0]
    assert rep["per_class"]["a"]["f1"] == 0.0 and rep["macro_f1"] == 0.0 and rep["micro_f1"] == 0.0
    assert rep["subset_accuracy"] == pytest.approx(1 / 5)  # the all-negative row


def test_classification_report_rejects_logits_and_bad_names():
    with pytest.raises(ValueError, match="probabilities"):
        classification_report(Y_TRUE, Y_PROB * 4 - 2, 0.5, NAMES)
    with pytest.raises(ValueError, match="names"):
        classification_report(Y_TRUE, Y_PROB, 0.5, NAMES[:2])


@pytest.mark.parametrize("seed", range(10))
def test_f1_averages_match_sklearn_on_present_classes(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((300, 6)) < [0.05, 0.1, 0.3, 0.5, 0.2, 0.0]).astype(int)  # last class absent
    p = np.clip(0.35 * y + rng.random(y.shape) * 0.7, 0, 1)
    rep = classification_report(y, p, 0.5, list("uvwxyz"))
    pred = (p >= 0.5).astype(int)
    present = np.flatnonzero(y.sum(0) > 0)
    assert rep["n_classes"] == len(present) == 5
    kw, exact = {"zero_division": 0}, {"rel": 0, "abs": 1e-12}
    assert rep["micro_f1"] == pytest.approx(skm.f1_score(y, pred, average="micro", **kw), **exact)
    assert rep["macro_f1"] == pytest.approx(skm.f1_score(y, pred, labels=present, average="macro", **kw), **exact)
    weighted = skm.f1_score(y, pred, labels=present, average="weighted", **kw)
    assert rep["weighted_f1"] == pytest.approx(weighted, **exact)
    assert rep["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred), **exact)
    per_class = skm.f1_score(y, pred, average=None, **kw)[present]
    assert [list(rep["per_class"].values())[j]["f1"] for j in present] == pytest.approx(per_class, **exact)


# --- ranking scores of one binary problem ------------------------------------------------


def test_auroc_by_hand_with_ties_and_degenerate_cases():
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(3 / 4)
    assert auroc([0, 1, 0, 1], [0.2, 0.5, 0.5, 0.9]) == pytest.approx(3.5 / 4)  # a tie counts half
    assert auroc([0, 1, 0, 1, 1], [0.3] * 5) == 0.5
    assert auroc([1, 1, 1], [0.1, 0.5, 0.9]) is None
    assert auroc([0, 0], [0.1, 0.5]) is None


def test_average_precision_by_hand():
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # tie at the top: the first step already holds one positive and one negative
    assert average_precision([0, 1, 1, 0], [0.9, 0.9, 0.6, 0.2]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision([0, 0, 0], [0.1, 0.5, 0.9]) is None


# Ours are kept, not sklearn's, because they return None (not NaN plus a warning) when a class has no positive
# or no negative, order curves for the DVC plots, and keep `dsm5lab gate` free of a scikit-learn import; they
# must agree with scikit-learn to 1e-12 wherever sklearn's value is defined.
EXACT = {"rel": 0, "abs": 1e-12}


def random_binary(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random size, prevalence and score rounding (1-3 decimals: from many ties to few), both classes present."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    y = (rng.random(n) < rng.uniform(0.02, 0.6)).astype(int)
    y[:2] = [0, 1]
    return y, np.round(0.3 * y + rng.random(n), int(rng.integers(1, 4)))


@pytest.mark.parametrize("seed", range(40))
def test_auroc_ap_and_curves_match_sklearn_to_1e_12(seed):
    y, score = random_binary(seed)
    assert auroc(y, score) == pytest.approx(skm.roc_auc_score(y, score), **EXACT)
    assert average_precision(y, score) == pytest.approx(skm.average_precision_score(y, score), **EXACT)
    fpr, tpr, thr = skm.roc_curve(y, score, drop_intermediate=False)
    ours = roc_curve(y, score)
    assert ours["fpr"] == pytest.approx(fpr, **EXACT) and ours["tpr"] == pytest.approx(tpr, **EXACT)
    assert ours["threshold"][1:] == pytest.approx(thr[1:], **EXACT)
    # sklearn's PR curve runs by increasing threshold and ends with the (recall 0, precision 1) point
    precision, recall, thr = skm.precision_recall_curve(y, score, drop_intermediate=False)
    ours = pr_curve(y, score)
    assert ours["precision"] == pytest.approx(precision[:-1][::-1], **EXACT)
    assert ours["recall"] == pytest.approx(recall[:-1][::-1], **EXACT)
    assert ours["threshold"] == pytest.approx(thr[::-1], **EXACT)


def test_roc_curve_by_hand():
    curve = roc_curve([0, 1, 0, 1], [0.2, 0.5, 0.5, 0.9])
    assert curve["fpr"] == [0.0, 0.0, 0.5, 1.0] and curve["tpr"] == [0.0, 0.5, 1.0, 1.0]
    assert curve["threshold"] == [None, 0.9, 0.5, 0.2]
    assert roc_curve([0, 0], [0.1, 0.2])["tpr"] == [None, None, None]  # undefined, not 0


def test_pr_curve_by_hand():
    curve = pr_curve([0, 1, 0, 1], [0.2, 0.5, 0.5, 0.9])
    assert curve["threshold"] == [0.9, 0.5, 0.2]
    assert curve["recall"] == [0.5, 1.0, 1.0]
    assert curve["precision"] == pytest.approx([1.0, 2 / 3, 0.5])


def test_calibration_bins_by_hand_omits_empty_bins():
    rows = calibration_bins([0, 1, 0, 1, 1], [0.05, 0.15, 0.12, 0.95, 1.0], n_bins=10)
    assert [r["bin"] for r in rows] == [0, 1, 9]  # 1.0 falls in the last bin, bins 2..8 are empty
    assert rows[1] == pytest.approx({"bin": 1, "mean_predicted": 0.135, "fraction_positive": 0.5, "count": 2})
    assert rows[2] == pytest.approx({"bin": 9, "mean_predicted": 0.975, "fraction_positive": 1.0, "count": 2})
    assert sum(r["count"] for r in calibration_bins(Y_TRUE, Y_PROB, n_bins=4)) == Y_TRUE.size  # (N, C) pooled


# --- thresholds --------------------------------------------------------------------------


def test_tune_thresholds_picks_f1_maximum_and_breaks_ties_towards_half():
    y = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    p = np.array([
        [0.9, 0.32, 0.9],
        [0.8, 0.10, 0.8],
        [0.37, 0.10, 0.1],
        [0.3, 0.10, 0.1],
        [0.2, 0.10, 0.1],
        [0.1, 0.10, 0.1],
    ])
    # class 0: only t=0.35 separates (0.37 kept, 0.30 dropped): F1 1 there, 6/7 at 0.30, 0.8 at 0.40
    # class 1: F1 1 for every t in (0.10, 0.32] -> 0.15..0.30 tie -> 0.30 is closest to 0.5
    # class 2: no positives -> 0.5
    assert tune_thresholds(y, p) == pytest.approx([0.35, 0.3, 0.5])
    # custom grid: F1 6/8 at 0.2 (two FP), 4/5 at 0.6 (one FN)
    assert tune_thresholds(y[:, :1], p[:, :1], grid=[0.2, 0.6]) == [0.6]


def test_tune_thresholds_sees_only_the_data_it_is_given():
    y_val, p_val = np.array([[1], [1], [0], [0]]), np.array([[0.9], [0.62], [0.58], [0.1]])
    y_test, p_test = np.array([[1], [1], [0]]), np.array([[0.9], [0.25], [0.2]])
    chosen = tune_thresholds(y_val, p_val)
    assert chosen == [0.6]
    # the test split would have moved the threshold, yet tuning on validation alone ignores it
    assert tune_thresholds(np.r_[y_val, y_test], np.r_[p_val, p_test]) != chosen
    assert tune_thresholds(y_val, p_val) == chosen
    assert classification_report(y_test, p_test, chosen, ["x"])["per_class"]["x"]["recall"] == 0.5


# --- bootstrap ---------------------------------------------------------------------------


def _mean_of(data: np.ndarray):
    return lambda idx: float(data[idx].mean())


def test_bootstrap_is_deterministic_for_a_seed():
    data = np.random.default_rng(0).normal(size=100)
    first = bootstrap_ci(_mean_of(data), 100, 200, seed=7)
    assert bootstrap_ci(_mean_of(data), 100, 200, seed=7) == first
    assert bootstrap_ci(_mean_of(data), 100, 200, seed=8) != first
    assert first["n_resamples"] == 200 and first["skipped"] == 0


def test_bootstrap_interval_covers_estimate_and_shrinks_with_more_items():
    rng = np.random.default_rng(1)
    small, large = rng.normal(size=50), rng.normal(size=2000)
    ci_small = bootstrap_ci(_mean_of(small), 50, 400, seed=0)
    ci_large = bootstrap_ci(_mean_of(large), 2000, 400, seed=0)
    assert ci_small["low"] < small.mean() < ci_small["high"]
    assert ci_large["low"] < large.mean() < ci_large["high"]
    # width of a mean's CI scales as 1/sqrt(n): ~6x narrower here
    assert ci_large["high"] - ci_large["low"] < (ci_small["high"] - ci_small["low"]) / 3


def test_bootstrap_skips_undefined_resamples():
    y = np.array([1, 0, 0, 0, 0, 0])
    ci = bootstrap_ci(lambda idx: auroc(y[idx], np.arange(6.0)[idx]), 6, 300, seed=0)
    assert 0 < ci["skipped"] < 300  # resamples without the one positive have no AUROC
    assert ci["low"] == 0.0 == ci["high"]  # the positive always has the lowest score: AUROC 0
    nothing = bootstrap_ci(lambda idx: math.nan, 6, 10, seed=0)
    assert (nothing["low"], nothing["mean"], nothing["skipped"]) == (None, None, 10)
    constant = bootstrap_ci(lambda idx: 0.25, 1, 5, seed=0)
    assert (constant["low"], constant["high"], constant["mean"]) == (0.25, 0.25, 0.25)


# --- evidence ----------------------------------------------------------------------------


def test_sentence_prf_by_hand_and_edge_cases():
    out = sentence_prf([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
    assert out == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3, "predicted": 3}
    )
    none = sentence_prf([1, 0, 1], [0, 0, 0])
    assert (none["precision"], none["recall"], none["f1"], none["predicted"]) == (0.0, 0.0, 0.0, 0)
    no_gold = sentence_prf([0, 0], [1, 0])
    assert (no_gold["precision"], no_gold["recall"], no_gold["f1"]) == (0.0, None, None)


def test_ranking_metrics_by_hand():
    scores = [np.array([0.1, 0.8, 0.5, 0.3]), np.array([0.2, 0.9]), np.array([0.4, 0.6])]
    relevant = [np.array([1, 0, 1, 0]), np.array([0, 1]), np.array([0, 0])]
    out = ranking_metrics(scores, relevant, k=2)
    # query 1 ranked relevance [0, 1, 0, 1]: recall@2 1/2, DCG 1/log2(3), IDCG 1 + 1/log2(3), RR 1/2
    ndcg1 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert out["recall@k"] == pytest.approx((0.5 + 1) / 2)
    assert out["ndcg@k"] == pytest.approx((ndcg1 + 1) / 2)
    assert out["mrr"] == pytest.approx((0.5 + 1) / 2)
    assert (out["k"], out["n_queries"], out["n_skipped"]) == (2, 2, 1)


@pytest.mark.parametrize("order", [[0, 1, 2], [0, 2, 1]])
def test_ranking_ties_are_broken_pessimistically(order):
    scores = np.array([0.9, 0.5, 0.5])[order]
    relevant = np.array([0, 1, 0])[order]
    out = ranking_metrics([scores], [relevant], k=3)
    # ranked [0.9 non-rel, 0.5 non-rel, 0.5 rel] whatever the input order: rank 3
    assert out["mrr"] == pytest.approx(1 / 3)
    assert out["ndcg@k"] == pytest.approx((1 / math.log2(4)) / 1.0)
    assert ranking_metrics([scores], [relevant], k=2)["recall@k"] == 0.0
    flat = ranking_metrics([np.full(3, 0.2)], [np.array([1, 0, 0])], k=1)
    # constant scores earn nothing at the top
    assert (flat["mrr"], flat["ndcg@k"]) == pytest.approx((1 / 3, 0.0))


def test_ranking_ndcg_matches_sklearn_without_ties():
    rng = np.random.default_rng(3)
    scores = [rng.random(n) for n in (3, 7, 12, 5)]
    relevant = [(rng.random(len(s)) < 0.4).astype(int) for s in scores]
    relevant = [r if r.any() else np.r_[1, r[1:]] for r in relevant]
    for k in (1, 3, 20):
        expected = np.mean([skm.ndcg_score([r], [s], k=k) for s, r in zip(scores, relevant)])
        assert ranking_metrics(scores, relevant, k)["ndcg@k"] == pytest.approx(expected)
    assert ranking_metrics([], [], 3)["mrr"] is None


def test_span_scores_by_hand():
    t1 = "“I feel like a burden.” Nothing helps."
    t2 = "I sleep maybe three hours a night."
    t3 = "So tired. So tired."
    g1 = (t1.index("I feel"), t1.index(" Nothing"))  # includes the curly closing quote
    p1 = (t1.index("I feel"), t1.index("."))  # without the full stop
    g2 = (0, len(t2))
    p2 = (t2.index("three"), t2.index(" a night"))
    out = span_scores(
        pred=[p1, p2, None, (0, 3), (10, 19)],
        gold=[[g1], [g2], [g2], [], [(0, 9)]],
        text=[t1, t2, t2, t2, t3],
    )
    # item 1 exact after trimming; item 2 tokens {three, hours} of 7: F1 = 2*(2/7)/(1 + 2/7) = 4/9;
    # item 3 None -> 0; item 4 no gold -> skipped; item 5 same words at another offset: EM 0, F1 1
    assert out["exact_match"] == pytest.approx(1 / 4)
    assert out["token_f1"] == pytest.approx((1 + 4 / 9 + 0 + 1) / 4)
    assert (out["n"], out["n_skipped"]) == (4, 1)


def test_span_scores_takes_best_gold_and_checks_bounds():
    text = "Can't focus. I can't decide what to do."
    gold = [[(0, 12), (13, len(text))]]
    assert span_scores([(13, len(text) - 1)], gold, [text])["exact_match"] == 1.0
    # "I can't decide": 1 of 3 tokens in gold 1 (F1 0.4), 3 of 6 in gold 2 (F1 2/3) -> the better one
    assert span_scores([(13, 27)], gold, [text])["token_f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="out of bounds"):
        span_scores([(0, 99)], gold, [text])
