"""The retention policy: which checkpoints to keep (best K, last N per run, a size budget), and why."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def mode_for(metric: str) -> str:
    """'min' for a metric where lower is better (the validation loss), else 'max'."""
    return "min" if metric == "val/loss" else "max"


def is_finite_score(score: Any) -> bool:
    """True for a real, finite number (numpy and 0-d tensor scores included)."""
    if score is None or isinstance(score, bool):
        return False
    try:
        return math.isfinite(float(score))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Decision:
    """What the retention policy does with one checkpoint record, and why.

    rank: 0 for the best ranked record, 1 for the next, ...; None when the record is not ranked
    (no finite score, or scored on another metric). reasons, when kept: "best" (rank 0, never
    dropped), "best_k", "last_n"; when dropped: "policy" (outside best-K and last-N) or "budget"
    (kept by the policy but over the size budget).
    """

    record: dict
    keep: bool
    rank: int | None
    reasons: tuple[str, ...]


def decide_retention(records: list[dict], keep_best_k: int, keep_last_n: int, mode: str = "max", *,
                     max_bytes: int | None = None, metric: str | None = None) -> list[Decision]:
    """One decision per record (same order): keep the best K by score, the last N per run, within a budget.

    Records are dicts with `run`, `step`, `score` and (for the budget) `bytes`. Ranking ties go to the
    later step, then the run name, so the plan is the same for any input order. With `metric`, only
    records scored on that metric are ranked. `max_bytes` drops kept records, unranked ones first, then
    the lowest ranked, until the kept bytes fit; the single best record is never dropped.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if keep_best_k < 0 or keep_last_n < 0:
        raise ValueError("keep_best_k and keep_last_n must be >= 0")
    if max_bytes is not None and max_bytes < 0:
        raise ValueError("max_bytes must be >= 0 (or None for no budget)")
    sign = 1.0 if mode == "max" else -1.0
    ranked = [i for i, r in enumerate(records)
              if is_finite_score(r.get("score")) and (metric is None or r.get("metric") == metric)]
    ranked.sort(key=lambda i: (sign * float(records[i]["score"]), records[i]["step"],
                               str(records[i].get("run"))), reverse=True)
    rank = {i: n for n, i in enumerate(ranked)}
    reasons: dict[int, list[str]] = {i: [] for i in range(len(records))}
    for i in ranked[: max(keep_best_k, 1)]:
        reasons[i].append("best" if rank[i] == 0 else "best_k")
    by_run: dict[Any, list[int]] = {}
    for i, r in enumerate(records):
        by_run.setdefault(r.get("run"), []).append(i)
    for idx in by_run.values():
        idx.sort(key=lambda i: records[i]["step"])
        for i in idx[max(len(idx) - keep_last_n, 0) :] if keep_last_n else []:
            reasons[i].append("last_n")
    keep = {i for i, why in reasons.items() if why}
    over_budget: set[int] = set()
    if max_bytes is not None:
        total = sum(int(records[i].get("bytes") or 0) for i in keep)
        # cheapest to lose first: unranked (oldest first), then the lowest ranked
        order = sorted((i for i in keep if rank.get(i) != 0),
                       key=lambda i: (i in rank, -rank.get(i, 0), records[i]["step"]))
        for i in order:
            if total <= max_bytes:
                break
            total -= int(records[i].get("bytes") or 0)
            over_budget.add(i)
    return [
        Decision(r, i in keep and i not in over_budget, rank.get(i),
                 ("budget",) if i in over_budget else tuple(reasons[i]) if i in keep else ("policy",))
        for i, r in enumerate(records)
    ]


def plan_retention(records: list[dict], keep_best_k: int, keep_last_n: int, mode: str = "max", *,
                   max_bytes: int | None = None, metric: str | None = None) -> tuple[list[dict], list[dict]]:
    """Split records into (keep, delete) by `decide_retention`; both lists ordered by step.

    Input order breaks step ties. A None or non-finite score never counts as best.
    """
    decisions = decide_retention(records, keep_best_k, keep_last_n, mode, max_bytes=max_bytes, metric=metric)
    order = sorted(range(len(records)), key=lambda i: records[i]["step"])
    return ([records[i] for i in order if decisions[i].keep],
            [records[i] for i in order if not decisions[i].keep])
