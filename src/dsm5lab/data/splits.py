"""Post-disjoint, multi-label stratified splits and k folds.

Iterative stratification (Sechidis, Tsoumakas & Vlahavas, 2011): the rarest
label's posts are placed first, each into the part that still wants most of that
label. A repair pass then moves posts so that every label with at least as many
positive posts as there are parts reaches every part, wherever the labels'
co-occurrence allows it; `prepare` fails clearly when it does not.
"""

from __future__ import annotations

import numpy as np


def iterative_stratify(labels: np.ndarray, ratios: list[float], rng: np.random.Generator) -> np.ndarray:
    """Assign each row of the (n, L) 0/1 matrix `labels` to a part; return part indices (n,)."""
    n, n_labels = labels.shape
    ratios_arr = np.asarray(ratios, dtype=float)
    want_total = ratios_arr * n
    want_label = ratios_arr[:, None] * labels.sum(axis=0)[None, :].astype(float)
    part = np.full(n, -1, dtype=np.int64)
    order = rng.permutation(n)  # tie-break order among posts of one label
    remaining = labels.astype(bool).copy()

    def place(i: int, label: int | None) -> None:
        # Once no part wants a whole post of this label any more, fill by size instead:
        # otherwise every singleton label lands in the largest part.
        first, second = want_label[:, label] if label is not None else want_total, want_total
        if first.max() < 1.0:
            first, second = second, first
        best = np.flatnonzero(first == first.max())
        if len(best) > 1:
            best = best[second[best] == second[best].max()]
        p = int(best[0] if len(best) == 1 else rng.choice(best))
        part[i] = p
        want_total[p] -= 1
        want_label[p] -= labels[i]
        remaining[i] = False

    while remaining.any():
        counts = remaining.sum(axis=0)
        label = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        for i in order:
            if remaining[i, label]:
                place(int(i), label)
    for i in order:
        if part[i] < 0:
            place(int(i), None)
    return part


def _spare(positives: np.ndarray, members: np.ndarray, post: int) -> bool:
    """True if the part `members` keeps every label of `post` when `post` leaves it."""
    return bool(np.all(positives[members].sum(axis=0)[positives[post]] >= 2))


def repair_coverage(labels: np.ndarray, part: np.ndarray, n_parts: int, max_passes: int = 5) -> np.ndarray:
    """Move posts so each label with >= n_parts positives has a positive in every part.

    A positive post moves from the part richest in the label to the part lacking it, and
    a post the poor part can spare moves back; posts whose other labels their part can
    spare are preferred, and passes repeat until nothing is missing.
    """
    part = part.copy()
    positives = labels.astype(bool)
    wanted = [j for j in range(labels.shape[1]) if positives[:, j].sum() >= n_parts]
    for _ in range(max_passes):
        changed = False
        for label in wanted:
            for poor in range(n_parts):
                if positives[part == poor, label].any():
                    continue
                counts = np.array([positives[part == p, label].sum() for p in range(n_parts)])
                rich = int(np.argmax(counts))
                rich_members = part == rich
                donors = np.flatnonzero(rich_members & positives[:, label])
                spare = [d for d in donors if _spare(positives, rich_members, d)]
                donor = spare[0] if spare else donors[np.argmin(positives[donors].sum(axis=1))]
                part[donor] = poor
                poor_members = part == poor
                for cand in np.flatnonzero(poor_members & ~positives[:, label]):
                    if _spare(positives, poor_members, cand):
                        part[cand] = rich
                        break
                changed = True
        if not changed:
            break
    return part


def check_disjoint(post_ids: list[str], split: list[str], fold: list[int]) -> None:
    """Leakage check: each post is in exactly one split; folds cover train+val only."""
    if len(set(post_ids)) != len(post_ids):
        raise RuntimeError("leakage check: a post_id occurs more than once in the split table")
    groups: dict[str, set[str]] = {}
    for pid, s in zip(post_ids, split):
        groups.setdefault(s, set()).add(pid)
    names = sorted(groups)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = groups[a] & groups[b]
            if shared:
                raise RuntimeError(f"leakage check: splits {a} and {b} share post {sorted(shared)[0]!r}")
    for pid, s, f in zip(post_ids, split, fold):
        if (s == "test") != (f < 0):
            raise RuntimeError(f"leakage check: post {pid!r} in split {s} has fold {f}")


def make_splits(
    labels: np.ndarray, ratios: dict[str, float], n_folds: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split names (n,) and fold ids (n,; -1 for test) for posts in a fixed order."""
    names = list(ratios)
    rng = np.random.default_rng(seed)
    part = iterative_stratify(labels, [ratios[k] for k in names], rng)
    part = repair_coverage(labels, part, len(names))
    split = np.array(names, dtype=object)[part]
    fold = np.full(len(part), -1, dtype=np.int64)
    pool = np.flatnonzero(split != "test")
    fold_rng = np.random.default_rng([seed, 1])
    sub = labels[pool]
    fpart = iterative_stratify(sub, [1.0 / n_folds] * n_folds, fold_rng)
    fold[pool] = repair_coverage(sub, fpart, n_folds)
    return split, fold
