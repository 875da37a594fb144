"""The evaluation views: test-split metrics for every task and view, thresholds tuned on validation only.

Every number names its split and what it averages over. The test split is read once,
after the thresholds are fixed from validation predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dsm5lab.data.labels import NO_SYMPTOMS, SYMPTOMS
from dsm5lab.data.schema import read_table
from dsm5lab.evaluation.evidence_metrics import ranking_metrics, sentence_prf, span_scores
from dsm5lab.metrics import bootstrap_ci, classification_report, multilabel_f1, tune_thresholds, with_none_class

PAPER_CLASSES = (*SYMPTOMS, NO_SYMPTOMS)


@dataclass
class SplitPredictions:
    """Model outputs on one split, arranged per post."""

    name: str
    posts: pd.DataFrame
    gold: np.ndarray  # (n_posts, 9) post labels
    prob: np.ndarray | None  # (n_posts, 9) post probabilities (criteria models)
    sentences: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per post: gold (n,9), prob (n,9), char spans (n,2)
    spans: np.ndarray | None  # (n_posts, 9, 3) best evidence span per criterion: char start, end, score
    beyond_cap: int = 0  # posts with more windows than window_budget (text training never read)
    # per post, per criterion: the aligned gold annotation spans (char start, end); None: the gold sentences' spans
    gold_spans: list[list[list[tuple[int, int]]]] | None = None


def predict_split(name, model, windower, posts, sentences, batch_size, device,
                  window_budget: int | None = None) -> SplitPredictions:
    """Run the model over a split's posts and gather per-post criteria and evidence outputs.

    window_budget: windows per post a batch may average (the training cap), see inference.batches_by_windows.
    """
    from dsm5lab.training.inference import post_matrix, predict

    groups = windower.encode(posts, sentences)
    pad = windower.tok.pad_token_id
    out = predict(model, groups, batch_size, pad, device, "fp32", spans=model.spec.has_evidence,
                  window_budget=window_budget)
    ids = posts["post_id"].tolist()
    row = {pid: i for i, pid in enumerate(ids)}
    prob = post_matrix(groups, out["probs"], ids) if model.spec.has_criteria else None
    by_post = {pid: g for pid, g in sentences.groupby("post_id", sort=False)}
    per_post = []
    for pid in ids:
        s = by_post.get(pid, sentences.iloc[:0])
        n = len(s)
        per_post.append([(s[list(SYMPTOMS)].to_numpy() == 1).astype(np.int8), np.zeros((n, len(SYMPTOMS))),
                         s[["start", "end"]].to_numpy()])
    spans = np.tile(np.array([-1.0, -1.0, 0.0]), (len(ids), len(SYMPTOMS), 1)) if model.spec.has_evidence else None
    for g, sp, sc in zip(groups, out["sentence_probs"], out.get("spans", [None] * len(groups))):
        if g.sentence_index >= 0:  # level=sentence groups carry no evidence outputs
            continue
        cols = slice(None) if g.criterion < 0 else slice(g.criterion, g.criterion + 1)
        if sp is not None:
            per_post[row[g.post_id]][1][:, cols] = sp
        if sc is not None:
            spans[row[g.post_id], cols] = sc
    beyond = {g.post_id for g in groups if window_budget is not None and len(g.windows) > window_budget}
    return SplitPredictions(name, posts, posts[list(SYMPTOMS)].to_numpy(), prob,
                            [tuple(x) for x in per_post], spans, len(beyond))


def paper_matrices(gold: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The ReDSM5 paper's ten classes: nine criteria plus NO_SYMPTOMS (no criterion predicted / present)."""
    return with_none_class(gold, prob >= threshold)


def criteria_section(val: SplitPredictions, test: SplitPredictions, cfg) -> dict:
    """Per-criterion and averaged test metrics at 0.5 and at thresholds tuned on validation, with CIs."""
    from dsm5lab.evaluation.operating import calibration_section, operating_points

    # validation only: test is never seen here
    thresholds, points = operating_points(val.gold, val.prob, cfg.threshold_objective, cfg.targets())
    at_half = classification_report(test.gold, test.prob, 0.5, list(SYMPTOMS))
    tuned = classification_report(test.gold, test.prob, thresholds, list(SYMPTOMS))
    th = np.asarray(thresholds)

    def stat(kind: str, cut):
        def fn(idx):
            f = multilabel_f1(test.gold[idx], test.prob[idx] >= cut)
            return f[kind] if f["n_classes"] else None

        return fn

    ci = {
        f"{name}": bootstrap_ci(stat(kind, cut), len(test.gold), cfg.bootstrap_resamples, cfg.seed, 1 - cfg.ci_level)
        for name, kind, cut in (("macro_f1@0.5", "macro", 0.5), ("micro_f1@0.5", "micro", 0.5),
                                ("macro_f1@tuned", "macro", th), ("micro_f1@tuned", "micro", th))
    }
    chosen = {"tuned_on": "val", "objective": cfg.threshold_objective, "values": dict(zip(SYMPTOMS, thresholds))}
    if points is not None:  # what each target bought on val, and whether it was reachable there
        chosen["operating_points"] = dict(zip(SYMPTOMS, points))
    return {
        "thresholds": chosen,
        "test_at_0.5": at_half,
        "test_at_tuned": tuned,
        "ci": ci,
        "calibration": calibration_section(val.gold, val.prob, test.gold, test.prob, SYMPTOMS, cfg.calibration_bins,
                                           cfg.temperature_scaling),
    }


# ReDSM5's published paper-view results (micro, macro F1; their 80/20 split), for real data only
PUBLISHED = {"tfidf_linearsvc": [0.39, 0.28], "bert_base_uncased": [0.51, 0.36], "llama_3_2_1b": [0.544, 0.489]}
PUBLISHED_NAMES = {"tfidf_linearsvc": "TF-IDF+LinearSVC", "bert_base_uncased": "bert-base-uncased",
                   "llama_3_2_1b": "Llama-3.2-1B"}


def is_real(origin: str) -> bool:
    """Whether the prepared data is ReDSM5 (a CSV bundle or the Hub dataset), not the synthetic stand-in."""
    return origin.startswith(("csv:", "hf:"))


def paper_section(test: SplitPredictions, level: str, cfg, origin: str) -> dict:
    """Post-level multi-label over nine symptoms + NO_SYMPTOMS at threshold 0.5, as the ReDSM5 baselines
    (which the section carries only when `origin`, the prepared data's, is real ReDSM5)."""
    gold10, pred10 = paper_matrices(test.gold, test.prob)
    rep = classification_report(gold10, pred10.astype(float), 0.5, list(PAPER_CLASSES))

    def stat(kind: str):
        def fn(idx):
            r = multilabel_f1(gold10[idx], pred10[idx])
            return r[kind] if r["n_classes"] else None

        return fn

    alpha = 1 - cfg.ci_level
    return {
        "split": "test",
        "threshold": 0.5,
        "classes": list(PAPER_CLASSES),
        "micro_f1": rep["micro_f1"],
        "macro_f1": rep["macro_f1"],
        "weighted_f1": rep["weighted_f1"],
        "exact_match": rep["subset_accuracy"],
        "per_class_f1": {k: v["f1"] for k, v in rep["per_class"].items()},
        "ci": {
            "micro_f1": bootstrap_ci(stat("micro"), len(gold10), cfg.bootstrap_resamples, cfg.seed, alpha),
            "macro_f1": bootstrap_ci(stat("macro"), len(gold10), cfg.bootstrap_resamples, cfg.seed, alpha),
        },
        "post_predictions": "max over sentences" if level == "sentence" else "max over windows",
        **({"baselines": PUBLISHED} if is_real(origin) else {}),
    }


def tuned_sentences(val: SplitPredictions, gold: np.ndarray, prob: np.ndarray) -> dict:
    """Sentence selection on test at per-criterion thresholds that maximise F1 on val's sentences."""
    val_gold = np.concatenate([s[0] for s in val.sentences])
    thresholds = tune_thresholds(val_gold, np.concatenate([s[1] for s in val.sentences]))
    pred = prob >= np.asarray(thresholds)
    per = {name: sentence_prf(gold[:, c], pred[:, c]) for c, name in enumerate(SYMPTOMS)}
    present = [v["f1"] for v in per.values() if v["f1"] is not None]
    return {"tuned_on": "val", "thresholds": dict(zip(SYMPTOMS, thresholds)), "per_criterion": per,
            "macro_f1": float(np.mean(present)) if present else None, "micro_f1": multilabel_f1(gold, pred)["micro"]}


def evidence_section(test: SplitPredictions, cfg, val: SplitPredictions | None = None) -> dict:
    """Sentence selection P/R/F1 and ranking per criterion, and span EM / token F1, on the test split; with
    `val`, sentence selection also at thresholds tuned on val (`sentence.tuned`)."""
    gold = np.concatenate([s[0] for s in test.sentences])
    prob = np.concatenate([s[1] for s in test.sentences])
    per_criterion = {}
    for c, name in enumerate(SYMPTOMS):
        per_criterion[name] = sentence_prf(gold[:, c], prob[:, c] >= 0.5)
    present = [v["f1"] for v in per_criterion.values() if v["f1"] is not None]
    scores, relevant, pred_spans, gold_spans, texts = [], [], [], [], []
    unaligned = 0  # positive (post, criterion) pairs whose evidence could not be placed in the post
    for i, (g, p, char) in enumerate(test.sentences):
        text = test.posts["text"].iloc[i]
        for c in range(len(SYMPTOMS)):
            if not g[:, c].any():
                unaligned += int(test.gold[i, c] == 1)
                continue
            scores.append(p[:, c])
            relevant.append(g[:, c])
            # the annotators' spans themselves: held-out sentences are natural, not cut to fit them
            gold_spans.append(test.gold_spans[i][c] if test.gold_spans is not None
                              else [tuple(map(int, char[k])) for k in np.flatnonzero(g[:, c])])
            s, e, _ = test.spans[i, c]
            pred_spans.append((int(s), int(e)) if s >= 0 else None)
            texts.append(text)

    def macro_stat(idx):
        g = np.concatenate([test.sentences[i][0] for i in idx])
        p = np.concatenate([test.sentences[i][1] for i in idx])
        f = multilabel_f1(g, p >= 0.5)
        return f["macro"] if f["n_classes"] else None

    return {
        "split": "test",
        "sentence": {
            "threshold": 0.5,
            "per_criterion": per_criterion,
            "macro_f1": float(np.mean(present)) if present else None,
            "micro_f1": multilabel_f1(gold, prob >= 0.5)["micro"],
            "ci": {"macro_f1": bootstrap_ci(macro_stat, len(test.sentences), cfg.bootstrap_resamples, cfg.seed,
                                            1 - cfg.ci_level)},
            **({"tuned": tuned_sentences(val, gold, prob)} if val is not None else {}),
        },
        "ranking": {**ranking_metrics(scores, relevant, cfg.ranking_k), "positive_pairs_without_evidence": unaligned},
        "span": {**span_scores(pred_spans, gold_spans, texts), "positive_pairs_without_evidence": unaligned},
    }


def error_rows(test: SplitPredictions, thresholds: list[float] | None, limit: int) -> pd.DataFrame:
    """False positives and negatives on test at the tuned thresholds, most confident first (none without criteria)."""
    rows = []
    th = np.asarray(thresholds if thresholds is not None else [0.5] * len(SYMPTOMS))
    pred = test.prob >= th if test.prob is not None else test.gold.astype(bool)
    for i, c in zip(*np.nonzero(pred != test.gold.astype(bool))):
        g, p, char = test.sentences[i]
        text = test.posts["text"].iloc[i]
        top = ""
        if len(p) and p[:, c].max() > 0:
            s, e = char[int(np.argmax(p[:, c]))]
            top = text[s:e]
        rows.append({
            "post_id": test.posts["post_id"].iloc[i],
            "criterion": SYMPTOMS[c],
            "error": "false_positive" if pred[i, c] else "false_negative",
            "gold": int(test.gold[i, c]),
            "predicted": int(pred[i, c]),
            "score": round(float(test.prob[i, c]), 6),
            "threshold": float(th[c]),
            "confidence": round(abs(float(test.prob[i, c]) - float(th[c])), 6),
            "top_sentence": top,
            "text": text if len(text) <= 400 else text[:400] + "…",
        })
    cols = ["post_id", "criterion", "error", "gold", "predicted", "score", "threshold", "confidence",
            "top_sentence", "text"]
    frame = pd.DataFrame(rows, columns=cols)
    return frame.sort_values(["confidence", "post_id", "criterion"], ascending=[False, True, True]).head(limit)


def annotation_spans(prepared: Path, posts: pd.DataFrame) -> list[list[list[tuple[int, int]]]]:
    """Per post of `posts`, per criterion: its aligned positive annotation spans (char offsets), sorted, unique."""
    ann = read_table(prepared, "annotations")
    ann = ann[(ann["status"] == 1) & (ann["start"] >= 0) & ann["symptom"].isin(SYMPTOMS)]
    found: dict[tuple[str, str], set[tuple[int, int]]] = {}
    for pid, symptom, s, e in zip(ann["post_id"], ann["symptom"], ann["start"], ann["end"]):
        found.setdefault((pid, symptom), set()).add((int(s), int(e)))
    return [[sorted(found.get((pid, c), ())) for c in SYMPTOMS] for pid in posts["post_id"]]


def load_splits_for_eval(prepared: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    posts = read_table(prepared, "posts")
    sentences = read_table(prepared, "sentences")
    val = posts[posts["split"] == "val"].reset_index(drop=True)
    test = posts[posts["split"] == "test"].reset_index(drop=True)
    return val, test, sentences
