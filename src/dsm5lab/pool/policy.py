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


@dataclass(frozen=True)
class PoolDecision:
    """What the study's pool pass does with one checkpoint record of an HPO study.

    action: "leave" (a running or unknown trial's: never touched from outside the trial),
    "keep" (a finished trial's best that can still enter the study's best K: kept, weights only),
    "delete". reason: running | candidate | not_run_best | outside_best_k | fold | budget | unscored.
    rank: the run's place among the runs' bests (0 = the study's best), None when not ranked.
    """

    record: dict
    action: str
    reason: str
    rank: int | None


@dataclass(frozen=True)
class PoolPlan:
    decisions: list[PoolDecision]
    bytes_before: int  # the records' bytes now
    bytes_after: int  # after the plan: deleted gone, kept stripped to weights only
    over_budget: int  # bytes above max_bytes that the plan may not free (the best, running trials); 0 if none


def _kept_bytes(record: dict) -> int:
    return int(record.get("weights_bytes") or record.get("bytes") or 0)


def plan_study_pool(records: list[dict], finished: set[str], keep_best_k: int, mode: str = "max", *,
                    metric: str | None = None, max_bytes: int | None = None) -> PoolPlan:
    """The bounded pool of a running HPO study: what each finished trial keeps, checked after every trial.

    records: every checkpoint of the study, `run` = the trial folder (`trial-0003`, or `trial-0003/fold-1`
    for a cross-validation fold). finished: the trial folders whose trial ended (complete, pruned, failed);
    the others are left exactly as they are, since their own process is writing them.

    A finished trial keeps at most its best checkpoint, stripped to weights, and only while that best
    ranks among the best `keep_best_k` of all trials' bests (a running trial's best so far counts: it can
    only improve). Fold checkpoints, scored on their own folds, are never ranked, so finished ones go.
    max_bytes caps the whole study's pool: kept bests go lowest ranked first, never the study's best and
    never a running trial's checkpoint; what is left above the cap is reported as over_budget.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if keep_best_k < 1:
        raise ValueError("keep_best_k must be >= 1")
    sign = 1.0 if mode == "max" else -1.0

    def top(r: str) -> str:
        return r.split("/", 1)[0]

    def key(rec: dict):
        return sign * float(rec["score"]), rec["step"], str(rec["run"])

    comparable = [r for r in records if metric is None or r.get("metric") in (None, metric)]
    is_comparable = {id(r) for r in comparable}
    run_best: dict[str, dict] = {}
    for rec in comparable:
        if "/" in str(rec["run"]) or not is_finite_score(rec.get("score")):
            continue
        cur = run_best.get(rec["run"])
        if cur is None or key(rec) > key(cur):
            run_best[rec["run"]] = rec
    order = sorted(run_best, key=lambda r: key(run_best[r]), reverse=True)
    rank = {r: n for n, r in enumerate(order)}
    decisions: list[PoolDecision] = []
    for rec in records:
        run = str(rec["run"])
        if top(run) not in finished:
            decisions.append(PoolDecision(rec, "leave", "running", rank.get(run)))
        elif id(rec) not in is_comparable:
            decisions.append(PoolDecision(rec, "leave", "other_metric", None))
        elif "/" in run:
            decisions.append(PoolDecision(rec, "delete", "fold", None))
        elif run_best.get(run) is not rec:
            decisions.append(PoolDecision(rec, "delete", "unscored" if run not in run_best else "not_run_best", None))
        elif rank[run] >= keep_best_k:
            decisions.append(PoolDecision(rec, "delete", "outside_best_k", rank[run]))
        else:
            decisions.append(PoolDecision(rec, "keep", "candidate", rank[run]))

    def size(d: PoolDecision) -> int:
        return 0 if d.action == "delete" else _kept_bytes(d.record) if d.action == "keep" else int(d.record.get("bytes") or 0)

    after = sum(size(d) for d in decisions)
    if max_bytes is not None:
        for i in sorted((i for i, d in enumerate(decisions) if d.action == "keep" and d.rank != 0),
                        key=lambda i: -decisions[i].rank):
            if after <= max_bytes:
                break
            after -= size(decisions[i])
            decisions[i] = PoolDecision(decisions[i].record, "delete", "budget", decisions[i].rank)
    return PoolPlan(decisions, sum(int(r.get("bytes") or 0) for r in records), after,
                    max(0, after - max_bytes) if max_bytes is not None else 0)
