"""`dsm5lab compare A B`: is B better or worse than A on the same test posts, beyond resampling noise?

A and B are git revisions, DVC experiment names (`dvc exp show`), `workspace`, or a folder of decisions (what
`dsm5lab evaluate --model DIR --out OUT` writes under OUT/predictions); each is read from the per-post test
decisions evaluate commits (`reports/evaluate/predictions`, see paired.py). Both are scored on the same
bootstrap resamples of test posts (pairing removes the variance the two share: the same hard posts), so
a difference two separate confidence intervals would hide still shows. Reported, as B - A:

- every headline metric the decisions determine, with a two-sided percentile interval and p-value;
- F1 per criterion at the tuned thresholds, with Holm-adjusted p-values (nine tests, one family);
- McNemar's exact test on per-post exact match (all nine decisions right) at the tuned thresholds.

numpy and pandas only, like the gate.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsm5lab import paired
from dsm5lab.data.labels import SYMPTOMS
from dsm5lab.errors import UserError
from dsm5lab.metrics import multilabel_f1, paired_bootstrap

WORKSPACE = "workspace"
# refs/exps/<2 hex>/<38 hex>/<name> are DVC experiments; these namespaces under refs/exps are DVC's own
_DVC_INTERNAL = {"stash", "celery", "exec", "apply", "temp"}


@dataclass(frozen=True)
class Side:
    """One model to compare: what the user typed, and the commit or the folder it names (neither: the workspace)."""

    ref: str
    commit: str | None = None
    folder: Path | None = None


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def experiments(root: Path) -> dict[str, list[str]]:
    """DVC experiment name -> the commits of experiments with that name (one per baseline it ran on)."""
    out = _git(root, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps")
    found: dict[str, list[str]] = {}
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        ref, sha = line.rsplit(" ", 1)
        parts = ref.split("/")
        if len(parts) == 5 and parts[2] not in _DVC_INTERNAL:
            found.setdefault(parts[4], []).append(sha)
    return found


def resolve(root: Path, ref: str) -> Side:
    """`workspace`, a folder of decisions, a git revision or a DVC experiment name (in that order of precedence);
    one line naming what is allowed otherwise."""
    if ref == WORKSPACE:
        return Side(ref)
    if (root / ref / paired.POSTS).is_file():
        return Side(ref, folder=root / ref)
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if "not a git repository" in found.stderr:
        raise UserError(f"{root.resolve()} is not inside a git repository (revisions are read from git)")
    if found.returncode == 0:
        return Side(ref, found.stdout.strip())
    exps = experiments(root)
    if len(exps.get(ref, [])) == 1:
        return Side(ref, exps[ref][0])
    if ref in exps:
        raise UserError(f"experiment name '{ref}' is on {len(exps[ref])} baselines; give its commit instead "
                        f"({', '.join(c[:7] for c in exps[ref])})")
    names = ", ".join(sorted(exps)[:8]) or "none here"
    raise UserError(f"'{ref}' is neither a git revision, a DVC experiment name (experiments: {names}), "
                    f"'{WORKSPACE}' nor a folder holding {paired.POSTS}")


def load(root: Path, side: Side, directory: str) -> paired.Predictions:
    """The test decisions of one side; one line when it has none."""
    if side.folder is not None:
        return paired.read(side.folder)
    if side.commit is None:
        found = paired.read(root / directory)
        if found is None:
            raise UserError(f"no {directory}/{paired.POSTS} in the workspace (evaluate writes it: run `dvc repro`)")
        return found
    found = paired.at_revision(root, side.commit, directory, side.ref)
    if found is None:
        raise UserError(f"{directory}/{paired.POSTS} is not committed at '{side.ref}' (evaluate writes it; "
                        "commit the outputs of `dvc repro`, or run the experiment with `dvc exp run`)")
    return found


def two_sided(result: dict) -> float | None:
    """Two-sided bootstrap p-value from the one-sided ones paired_bootstrap returns."""
    if result["p_not_lower"] is None:
        return None
    return min(1.0, 2 * min(result["p_not_lower"], result["p_not_higher"]))


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (monotone step-down) over the defined ones."""
    defined = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    out: list[float | None] = [None] * len(p_values)
    running, m = 0.0, len(defined)
    for rank, (p, i) in enumerate(defined):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def mcnemar(a_right: np.ndarray, b_right: np.ndarray) -> dict:
    """McNemar's exact test: of the posts where exactly one model is right, is the split 50/50?"""
    only_a = int((a_right & ~b_right).sum())
    only_b = int((~a_right & b_right).sum())
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n if n else 1.0
    return {"only_a_right": only_a, "only_b_right": only_b, "both_right": int((a_right & b_right).sum()),
            "a_exact_match": float(a_right.mean()), "b_exact_match": float(b_right.mean()),
            "p_value": min(1.0, 2 * tail)}


def _criterion_f1(p: paired.Predictions, c: int, idx: np.ndarray) -> float | None:
    gold, pred = p.posts["gold"][idx, c : c + 1], p.posts["at_tuned"][idx, c : c + 1]
    f = multilabel_f1(gold, pred)
    return f["macro"] if f["n_classes"] else None


def _row(result: dict, alpha: float) -> dict:
    p = two_sided(result)
    return {"a": result["baseline"], "b": result["new"], "delta": result["delta"], "low": result["low"],
            "high": result["high"], "p_value": p, "significant": p is not None and p < alpha,
            "skipped_resamples": result["skipped"]}


def compare(a: paired.Predictions, b: paired.Predictions, resamples: int, seed: int, alpha: float) -> dict:
    """B - A on every statistic both decision sets support; both must have scored the same test posts."""
    if set(a.post_ids) != set(b.post_ids):
        raise UserError(f"the two scored different test posts ({len(a.post_ids)} vs {len(b.post_ids)}; "
                        "the prepared data differs), so they cannot be paired")
    a = a.aligned_to(b.post_ids)
    if not (a.posts["gold"] == b.posts["gold"]).all():
        raise UserError("the two scored the same test posts with different gold labels (the annotations or the "
                        "labelling rule changed), so their decisions cannot be paired")
    n = len(b.post_ids)
    half = alpha / 2  # paired_bootstrap bounds a (1 - 2 x its alpha) interval
    out: dict = {"n_posts": n, "resamples": resamples, "seed": seed, "alpha": alpha, "metrics": {}, "criteria": {}}
    for key in paired.STATISTICS:
        if paired.supports(a, key) and paired.supports(b, key):
            out["metrics"][key] = _row(paired.compare(b, a, key, resamples, seed, half), alpha)
    if "at_tuned" in a.posts and "at_tuned" in b.posts:
        for c, name in enumerate(SYMPTOMS):
            result = paired_bootstrap(lambda idx, c=c: (_criterion_f1(b, c, idx), _criterion_f1(a, c, idx)),
                                      n, resamples, seed, half)
            out["criteria"][name] = _row(result, alpha)
        adjusted = holm([r["p_value"] for r in out["criteria"].values()])
        for row, p in zip(out["criteria"].values(), adjusted):
            row["p_holm"] = p
            row["significant"] = p is not None and p < alpha
        gold = a.posts["gold"]
        out["mcnemar"] = mcnemar((a.posts["at_tuned"] == gold).all(1), (b.posts["at_tuned"] == gold).all(1))
        floor = min_holm_resamples(len(SYMPTOMS), alpha)
        if resamples < floor:  # the smallest bootstrap p is 2 / (resamples + 1); Holm multiplies it by 9
            out["notes"] = [f"with {resamples} resamples no criterion can reach Holm-adjusted p < {alpha:g}; "
                            f"use at least {floor} (evaluate.bootstrap_resamples)"]
    return out


def min_holm_resamples(tests: int, alpha: float) -> int:
    """Resamples below which the smallest two-sided bootstrap p, x `tests` (Holm's first step), cannot be < alpha."""
    return math.ceil(2 * tests / alpha)


def run(root: Path, ref_a: str, ref_b: str, directory: str, resamples: int, seed: int, alpha: float) -> dict:
    """Resolve both sides, read their decisions and compare them (B - A)."""
    if resamples < 1 or not 0 < alpha < 1:
        raise UserError(f"evaluate.bootstrap_resamples must be >= 1 to compare and the interval level in (0, 1) "
                        f"(got {resamples}, {1 - alpha:g})")
    a, b = resolve(root, ref_a), resolve(root, ref_b)
    out = compare(load(root, a, directory), load(root, b, directory), resamples, seed, alpha)
    def named(s: Side) -> dict:
        return {"ref": s.ref, "commit": s.commit, "folder": None if s.folder is None else str(s.folder)}

    return {"a": named(a), "b": named(b),
            "predictions": directory, **out}


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def rows(result: dict) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(headline rows, per-criterion rows) for the terminal tables."""
    def line(name: str, r: dict, p_key: str) -> tuple[str, ...]:
        return (name, _fmt(r["a"]), _fmt(r["b"]), _fmt(r["delta"], "+.4f"), f"[{_fmt(r['low'], '+.4f')}, "
                f"{_fmt(r['high'], '+.4f')}]", _fmt(r[p_key], ".3f"), "yes" if r["significant"] else "no")

    return ([line(k, r, "p_value") for k, r in result["metrics"].items()],
            [line(k, r, "p_holm") for k, r in result["criteria"].items()])


HEADER = ("metric", "A", "B", "B - A", "interval", "p", "significant")
