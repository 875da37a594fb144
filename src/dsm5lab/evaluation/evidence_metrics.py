"""Evidence metrics: sentence decisions, sentence ranking per (post, criterion), and char spans.

Every mean says what it averages over: sentence P/R/F1 pool all sentences; ranking
metrics average over queries (one per (post, criterion) pair) that have a relevant
sentence; span scores average over items that have a gold span. Skipped units are
counted, never silently dropped. Results are plain Python values, None where undefined.
"""

from __future__ import annotations

import unicodedata
from collections import Counter

import numpy as np

from dsm5lab.metrics import prf


def sentence_prf(gold, pred) -> dict:
    """Precision, recall, F1 pooled over sentences; recall/F1 None without gold positives."""
    gold, pred = np.asarray(gold).ravel(), np.asarray(pred).ravel()
    if gold.shape != pred.shape or not (np.isin(gold, (0, 1)).all() and np.isin(pred, (0, 1)).all()):
        raise ValueError("gold and pred must be 0/1 arrays of the same size")
    gold, pred = gold.astype(bool), pred.astype(bool)
    support = int(gold.sum())
    precision, recall, f1 = prf((gold & pred).sum(), (~gold & pred).sum(), (gold & ~pred).sum())
    return {
        "precision": float(precision),
        "recall": float(recall) if support else None,
        "f1": float(f1) if support else None,
        "support": support,
        "predicted": int(pred.sum()),
    }


def _pessimistic_order(score: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Relevance labels in ranked order; among equal scores non-relevant items come first.

    A model that gives every sentence the same score must not earn credit from the
    order sentences happen to appear in, so ties are resolved against it.
    """
    return relevant[np.lexsort((relevant, -score))]


def _query_metrics(ranked: np.ndarray, k: int) -> tuple[float, float, float]:
    """recall@k, nDCG@k (binary gains, log2 discount) and reciprocal rank of one ranked 0/1 list."""
    n_rel = int(ranked.sum())
    discounts = 1 / np.log2(np.arange(2, len(ranked) + 2))
    dcg = float((ranked[:k] * discounts[:k]).sum())
    ideal = float(discounts[: min(k, n_rel)].sum())
    first = int(np.argmax(ranked))  # ranked has at least one relevant item here
    return float(ranked[:k].sum()) / n_rel, dcg / ideal, 1 / (first + 1)


def ranking_metrics(scores: list[np.ndarray], relevant: list[np.ndarray], k: int) -> dict:
    """Mean recall@k, nDCG@k and MRR over queries with at least one relevant sentence.

    MRR uses the full ranking (not cut at k). Queries without a relevant sentence have no
    defined recall and are counted in `n_skipped`; means are None if no query is left.
    """
    if k < 1 or len(scores) != len(relevant):
        raise ValueError("need k >= 1 and one relevance list per score list")
    rows = []
    for score, rel in zip(scores, relevant):
        score, rel = np.asarray(score, dtype=float), np.asarray(rel)
        if score.shape != rel.shape or score.ndim != 1 or not np.isin(rel, (0, 1)).all():
            raise ValueError("each query needs 1-D scores and 0/1 relevance of equal length")
        if rel.sum() > 0:
            rows.append(_query_metrics(_pessimistic_order(score, rel.astype(int)), k))
    means = np.mean(rows, axis=0).tolist() if rows else [None, None, None]
    return {
        "recall@k": means[0],
        "ndcg@k": means[1],
        "mrr": means[2],
        "k": k,
        "n_queries": len(rows),
        "n_skipped": len(scores) - len(rows),
    }


def _is_trim(ch: str) -> bool:
    """Whitespace or any Unicode punctuation (curly quotes and dashes included)."""
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def _trim(text: str, span: tuple[int, int]) -> tuple[int, int]:
    """Move span ends inward past surrounding whitespace/punctuation."""
    start, end = span
    if not 0 <= start <= end <= len(text):
        raise ValueError(f"span {span} out of bounds for text of length {len(text)}")
    while start < end and _is_trim(text[start]):
        start += 1
    while end > start and _is_trim(text[end - 1]):
        end -= 1
    return start, end


def _token_f1(pred: str, gold: str) -> float:
    """SQuAD-style bag-of-tokens F1 on lowercased whitespace tokens."""
    p, g = pred.lower().split(), gold.lower().split()
    if not p or not g:
        return float(p == g)
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def span_scores(
    pred: list[tuple[int, int] | None], gold: list[list[tuple[int, int]]], text: list[str]
) -> dict:
    """Mean exact match and best token F1 of predicted char spans against gold spans, per item.

    Both spans are trimmed of surrounding whitespace/punctuation first; exact match compares
    offsets (the same words elsewhere in the post are a different span), token F1 compares the
    trimmed substrings, so an exact match always has token F1 1. Punctuation inside tokens stays.
    Items without gold spans are skipped and counted in `n_skipped`; a None prediction scores 0.
    """
    if not len(pred) == len(gold) == len(text):
        raise ValueError("pred, gold and text must have one entry per item")
    em, f1 = [], []
    for p, spans, t in zip(pred, gold, text):
        if not spans:
            continue
        golds = [_trim(t, tuple(s)) for s in spans]
        if p is None:
            em.append(0.0)
            f1.append(0.0)
            continue
        ps, pe = _trim(t, tuple(p))
        em.append(float((ps, pe) in golds))
        f1.append(max(_token_f1(t[ps:pe], t[gs:ge]) for gs, ge in golds))
    return {
        "exact_match": float(np.mean(em)) if em else None,
        "token_f1": float(np.mean(f1)) if f1 else None,
        "n": len(em),
        "n_skipped": len(pred) - len(em),
    }
