"""The `retention` stage: garbage-collect the checkpoint pool down to a tracked best-K set.

Train and every HPO trial leave checkpoints in the scratch pool (`train.checkpoint.dir`), each run
folder with a `registry.jsonl` written by `CheckpointManager`. This stage reads every registry, ranks
all checkpoints by the early-stopping metric across runs, and applies the policy that the online
retention inside a run also uses (`training.checkpoint.decide_retention`): best K overall, last N
per run, a size budget that never removes the best.

Order of work, so that a kill at any point loses nothing:
1. the kept best-K set is copied into a temp folder, checked file by file, and renamed into place
   as the stage's out (`stages/retention`, DVC-tracked);
2. only then are the other checkpoints deleted, run by run, registry first (`CheckpointManager.remove`);
3. the manifest and metrics are written last, atomically.
A re-run after a kill redoes the plan on what is left; a second run deletes nothing.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsm5lab import atomic
from dsm5lab.config import Params
from dsm5lab.errors import UserError
from dsm5lab.progress import progress
from dsm5lab.training.checkpoint import (FILES, HPO_POOL_DIR, REGISTRY, TRAIN_RUN, CheckpointManager,
                                         Decision, decide_retention)

OUT_DIR = Path("stages/retention")
INDEX = "best.json"  # inside OUT_DIR: the tracked checkpoints, best first
ASSETS = "assets"  # a run's tokenizer/config folder: a checkpoint loads with its run's assets beside it
METRICS_FILE = Path("metrics/retention.json")
MANIFEST = Path("reports/retention/manifest.json")
HPO_METRICS = Path("metrics/hpo.json")  # names the current study


@dataclass
class Run:
    """One run folder of the pool and the manager that owns its registry."""

    name: str  # path relative to the pool, e.g. "train" or "hpo/dsm5lab-9f60df8a/trial-0003"
    manager: CheckpointManager

    @property
    def records(self) -> list[dict]:
        """The run's checkpoints with `run` set to the pool-relative name (unique across runs)."""
        return [{**r, "run": self.name} for r in self.manager.records]


def run_dirs(pool: Path) -> list[str]:
    """Every folder under the pool with a registry or checkpoint folders, pool-relative and sorted."""
    if not pool.is_dir():
        return []
    dirs = {p.parent for p in pool.rglob(REGISTRY)} | {p.parent for p in pool.rglob("step-*") if p.is_dir()}
    return sorted(d.relative_to(pool).as_posix() for d in dirs)


def open_run(pool: Path, name: str) -> Run:
    """The run's manager: it reads the registry (adopting complete unregistered checkpoints) and clears
    temp folders that killed writes left; the keep values are unused, retention passes its own."""
    d = pool / name
    return Run(name, CheckpointManager(d, keep_last_n=0, keep_best_k=1, run=d.name))


def current_study(root: Path) -> str | None:
    """The study the hpo stage last ran (metrics/hpo.json), or None without one."""
    path = root / HPO_METRICS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("study")
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}); re-run `dvc repro hpo`") from None


def in_scope(name: str, scope: str, study: str | None) -> bool:
    if scope == "all":
        return True
    return name == TRAIN_RUN or (study is not None and name.startswith(f"{HPO_POOL_DIR}/{study}/"))


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy one checkpoint folder and check every file arrived whole (size for size)."""
    shutil.copytree(src, dst)
    for name in FILES:
        a, b = src / name, dst / name
        if not b.is_file() or a.stat().st_size != b.stat().st_size:
            raise UserError(f"retention: copying {src} to {dst} left {name} incomplete; nothing was deleted")


def write_tracked(out: Path, pool: Path, tracked: list[Decision], metric: str) -> list[dict]:
    """Replace `out` with copies of the tracked checkpoints (and their runs' assets), all or nothing."""
    index = []
    with atomic.staged_dir(out) as tmp:
        for d in progress(tracked, desc="retention: copy best-K"):
            r = d.record
            src, dst = pool / r["run"] / r["path"], tmp / r["run"] / r["path"]
            _copy_checkpoint(src, dst)
            assets = pool / r["run"] / ASSETS
            if assets.is_dir() and not (dst.parent / ASSETS).exists():
                shutil.copytree(assets, dst.parent / ASSETS)
            index.append({"rank": d.rank, "run": r["run"], "step": r["step"], "epoch": r.get("epoch"),
                          "score": r["score"], "metric": metric, "path": f"{r['run']}/{r['path']}"})
        atomic.write_json(tmp / INDEX, index)
    return index


def _entry(d: Decision) -> dict[str, Any]:
    r = d.record
    return {"rank": d.rank, "run": r["run"], "step": r["step"], "epoch": r.get("epoch"), "score": r.get("score"),
            "metric": r.get("metric"), "bytes": int(r.get("bytes") or 0), "reasons": list(d.reasons)}


def run(params: Params, root: Path = Path("."), dry_run: bool | None = None) -> dict:
    """Plan, copy the best-K set into the stage's out, delete the rest of the pool; write the reports."""
    root = Path(root)
    rp = params.retention
    dry = rp.dry_run if dry_run is None else dry_run
    metric = params.train.early_stopping.metric
    mode = "min" if metric == "val/loss" else "max"
    pool = root / params.train.checkpoint.dir
    study = current_study(root) if rp.scope == "current" else None
    names = run_dirs(pool)
    # out-of-scope runs are only listed: a worker of another study may be writing there right now
    scoped = [open_run(pool, n) for n in names if in_scope(n, rp.scope, study)]
    others = [n for n in names if not in_scope(n, rp.scope, study)]
    records = [rec for r in scoped for rec in r.records]
    if not records:
        looked = "every run" if rp.scope == "all" else f"the '{TRAIN_RUN}' run" + (
            f" and study {study}" if study else "")
        raise UserError(f"retention: no checkpoints in {pool} for {looked}; the pool is scratch space that "
                        "`dvc checkout` does not restore, so re-create it with `dvc repro -f train` "
                        "(or set retention.scope: all)")
    max_bytes = None if rp.max_total_gb is None else int(rp.max_total_gb * 1e9)
    decisions = decide_retention(records, rp.keep_best_k, rp.keep_last_n, mode, max_bytes=max_bytes, metric=metric)
    tracked = sorted((d for d in decisions if d.keep and d.rank is not None and d.rank < rp.keep_best_k),
                     key=lambda d: d.rank)
    dropped = [d for d in decisions if not d.keep]

    index = write_tracked(root / OUT_DIR, pool, tracked, metric)
    before = sum(int(r.get("bytes") or 0) for r in records)
    if not dry:
        by_run: dict[str, list[dict]] = {}
        for d in dropped:
            by_run.setdefault(d.record["run"], []).append(d.record)
        for r in progress([r for r in scoped if r.name in by_run], desc="retention: delete"):
            r.manager.remove(by_run[r.name])
    after = before - (0 if dry else sum(int(d.record.get("bytes") or 0) for d in dropped))
    kept = sorted((d for d in decisions if d.keep), key=lambda d: (d.rank is None, d.rank or 0, d.record["run"]))
    best = tracked[0].record if tracked else None
    reduction = round(100.0 * (before - after) / before, 2) if before else 0.0
    manifest = {
        "policy": {**rp.model_dump(), "dry_run": dry, "metric": metric, "mode": mode},
        "pool": params.train.checkpoint.dir,
        "study": study,
        "tracked": index,
        "kept": [_entry(d) for d in kept],
        "would_delete" if dry else "deleted": [_entry(d) for d in dropped],
        "out_of_scope": [{"run": n, "checkpoints": len(steps), "bytes": sum(_size(d) for d in steps)}
                         for n in others for steps in [[d for d in (pool / n).glob("step-*") if d.is_dir()]]],
        "bytes": {"before": before, "after": after, "tracked": _size(root / OUT_DIR)},
        "reduction_pct": reduction,
    }
    if dry:
        manifest["would_free_bytes"] = sum(int(d.record.get("bytes") or 0) for d in dropped)
    metrics = {
        "checkpoints": {"before": len(records), "kept": len(kept), "tracked": len(tracked),
                        "deleted": 0 if dry else len(dropped)},
        "bytes": manifest["bytes"],
        "reduction_pct": reduction,
        "best_score": None if best is None else round(float(best["score"]), 6),
        "dry_run": dry,
    }
    atomic.write_json(root / MANIFEST, manifest)
    atomic.write_json(root / METRICS_FILE, metrics)
    return manifest
