"""The bounded pool of a running HPO study: after every trial, finished trials keep at most one checkpoint.

`hpo run` and every `hpo worker` call `enforce` when one of their trials ends. It applies
`policy.plan_study_pool` to the study's folder of the pool (`<train.checkpoint.dir>/hpo/<study>/`):
a finished trial's best is stripped to weights (nothing resumes a finished trial) and kept only
while it can still enter the study's best K; the rest of its checkpoints go at once, and
`retention.max_pool_gb` caps the whole folder. Running trials' folders are only read.
Passes of workers on one machine are serialised by a lock file; no torch is imported here.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path

from dsm5lab.pool.policy import plan_study_pool
from dsm5lab.pool.registry import REGISTRY, Registry

LOCK = ".pool.lock"


def trial_dirs(study_dir: Path) -> list[str]:
    """Run folders of the study (trial-NNNN and trial-NNNN/fold-k) that hold a registry, relative and sorted."""
    if not study_dir.is_dir():
        return []
    # two fixed levels, not a walk: running trials rename and delete their step folders under a walk's feet
    found = [*study_dir.glob(f"trial-*/{REGISTRY}"), *study_dir.glob(f"trial-*/fold-*/{REGISTRY}")]
    return sorted(p.parent.relative_to(study_dir).as_posix() for p in found)


@contextmanager
def _locked(study_dir: Path):
    study_dir.mkdir(parents=True, exist_ok=True)
    with open(study_dir / LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def enforce(study_dir: Path, finished: set[str], keep_best_k: int, mode: str, *, metric: str | None = None,
            max_bytes: int | None = None) -> dict:
    """Apply the study's pool policy on disk; what it did, in bytes and checkpoints.

    finished: trial folder names (`trial-0003`) whose trial is complete, pruned or failed.
    """
    study_dir = Path(study_dir)
    with _locked(study_dir):
        regs = {name: Registry(study_dir / name, run=name, read_only=name.split("/", 1)[0] not in finished)
                for name in trial_dirs(study_dir)}
        records = [{**r, "run": name} for name, reg in regs.items() for r in reg.records]
        plan = plan_study_pool(records, finished, keep_best_k, mode, metric=metric, max_bytes=max_bytes)
        drop: dict[str, list[dict]] = {}
        keep: dict[str, list[dict]] = {}
        for d in plan.decisions:
            if d.action in ("delete", "keep"):
                (drop if d.action == "delete" else keep).setdefault(d.record["run"], []).append(d.record)
        for name, recs in drop.items():
            regs[name].remove(recs)
        stripped = sum(regs[name].strip(recs) for name, recs in keep.items())
        after = sum(int(r.get("bytes") or 0) for reg in regs.values() for r in reg.records)
    return {"before": plan.bytes_before, "after": after, "deleted": sum(map(len, drop.values())),
            "stripped_bytes": stripped, "kept": sum(map(len, keep.values())), "over_budget": max(0, after - max_bytes)
            if max_bytes is not None else 0}
