"""The `retention` stage: garbage-collect the checkpoint pool down to a tracked best-K (+ last-N) set.

Train and every HPO trial leave checkpoints in the scratch pool (`train.checkpoint.dir`), each run
folder with a `registry.jsonl` (`pool.registry`). This stage reads every registry, ranks
all checkpoints by the early-stopping metric across runs, and applies the policy that the online
retention inside a run also uses (`pool.policy.decide_retention`): best K overall, last N
per run, a size budget that never removes the best. It imports no torch: it only reads and moves files.

Order of work, so that a kill at any point loses nothing:
1. the kept best-K set is copied into a temp folder as weights only (model.safetensors, config.json,
   meta.json and the run's assets: what evaluate and predict load; no optimizer state), checked file
   by file, and renamed into place as the stage's out (`stages/retention`, DVC-tracked). Files are
   hard links to the pool's where the file system allows, so the two places share their bytes;
2. only then are the other checkpoints deleted, run by run, registry first (`Registry.remove`), and
   the pool's copies of the kept ones stripped of their training state, except those kept as a
   run's last N (resume points);
3. the manifest and metrics are written last, atomically, the journal (below) dropped between the two.
A re-run after a kill redoes the plan on what is left, first removing the temp folders a kill -9 left
(`clear_leftovers`), and reports the whole effect: the pool as the interrupted run found it is kept in a
journal until a run completes (`carry_over`), each checkpoint with what tells it from a rewrite under the
same name (`identity`). A second run deletes nothing.

Bytes are counted on disk in every place a checkpoint lives: the pool's in-scope runs, the tracked
set and the DVC cache objects of the tracked set (`accounting`), each file once however many hard
links it has. The runs' ledgers say what was written in all, so `freed_pct` covers in-run pruning
and the HPO study's bounded pool too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from dsm5lab import atomic, layout
from dsm5lab.config import Params
from dsm5lab.errors import UserError
from dsm5lab.progress import progress, say
from dsm5lab.pool.policy import Decision, decide_retention, mode_for
from dsm5lab.pool.registry import REGISTRY, WEIGHT_FILES, Registry, written_bytes

INDEX = "index.json"  # inside layout.RETAINED: the tracked checkpoints, best first, then last-N-only ones
ASSETS = "assets"  # a run's tokenizer/config folder: a checkpoint loads with its run's assets beside it
# the pool as a run found it, kept until a run completes (carry_over); beside the out, in no DVC out
JOURNAL = layout.RETAINED.with_name(f".{layout.RETAINED.name}.journal.json")


@dataclass
class Run:
    """One run folder of the pool and its registry."""

    name: str  # path relative to the pool, e.g. "train" or "hpo/dsm5lab-9f60df8a/trial-0003"
    registry: Registry

    @cached_property
    def records(self) -> list[dict]:
        """The run's checkpoints with `run` set to the pool-relative name (unique across runs)."""
        return [{**r, "run": self.name} for r in self.registry.records]


def run_dirs(pool: Path) -> list[str]:
    """Every folder under the pool with a registry or checkpoint folders, pool-relative and sorted."""
    if not pool.is_dir():
        return []
    dirs = {p.parent for p in pool.rglob(REGISTRY)} | {p.parent for p in pool.rglob("step-*") if p.is_dir()}
    return sorted(d.relative_to(pool).as_posix() for d in dirs)


def open_run(pool: Path, name: str, read_only: bool = False) -> Run:
    """The run's registry, read (adopting complete unregistered checkpoints); unless read_only, temp
    folders that killed writes left are cleared."""
    d = pool / name
    return Run(name, Registry(d, run=d.name, read_only=read_only))


def is_fold(name: str) -> bool:
    """A cross-validation fold of an HPO trial (hpo/<study>/trial-NNNN/fold-k): scored on its own fold."""
    return name.startswith(f"{layout.HPO_POOL_DIR}/") and Path(name).name.startswith("fold-")


def stale_train(root: Path, run: Run, metric: str) -> str | None:
    """Why the pool's train run is not the one behind metrics/train.json (None when it is).

    The train run always keeps its best checkpoint; if that step with that score is missing, the
    folder holds another run (a different branch or params) or an earlier retention deleted it.
    """
    path = root / layout.TRAIN_METRICS
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        step, want = summary["best_step"], summary["val"][metric.split("/", 1)[1]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{path} is missing or has no best step and {metric}, so the run cannot be matched"
    for rec in run.records:
        if rec["step"] == step and rec.get("score") is not None and abs(rec["score"] - float(want)) <= 1e-6:
            return None
    return (f"it lacks the best checkpoint of {layout.TRAIN_METRICS} (step {step}, {metric} {want}): "
            "it is from another train run, or an earlier retention deleted it")


def current_study(root: Path) -> str | None:
    """The study the hpo stage last ran (metrics/hpo.json), or None without one."""
    path = root / layout.HPO_METRICS
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}); re-run `dvc repro hpo`") from None
    if not isinstance(data, dict) or not isinstance(data.get("study", ""), str):
        raise UserError(f"{path}: expected an object with the study name under 'study'; re-run `dvc repro hpo`")
    return data.get("study")


def in_scope(name: str, scope: str, study: str | None) -> bool:
    if scope == "all":
        return True
    return name == layout.TRAIN_RUN or (
        study is not None and name.startswith(f"{layout.HPO_POOL_DIR}/{study}/"))


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no new bytes: checkpoint files are only ever replaced, never edited), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copytree(src: Path, dst: Path) -> None:
    try:
        shutil.copytree(src, dst, copy_function=_link_or_copy)
    except OSError as exc:
        raise UserError(f"retention: copying {src} failed ({exc.strerror or exc}); nothing was deleted") from None


def _copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy one checkpoint's weights-only files and check every file arrived whole (size for size)."""
    dst.mkdir(parents=True)
    for name in WEIGHT_FILES:
        a, b = src / name, dst / name
        try:
            _link_or_copy(a, b)
        except OSError as exc:
            raise UserError(f"retention: copying {a} failed ({exc.strerror or exc}); nothing was deleted") from None
        if not b.is_file() or a.stat().st_size != b.stat().st_size:
            raise UserError(f"retention: copying {src} to {dst} left {name} incomplete; nothing was deleted")


def write_tracked(out: Path, pool: Path, tracked: list[Decision], index: list[dict]) -> None:
    """Replace `out` with copies of the tracked checkpoints (and their runs' assets) and the index, all or nothing."""
    with atomic.staged_dir(out) as tmp:
        for d in progress(tracked, desc="retention: copy kept set"):
            r = d.record
            src, dst = pool / r["run"] / r["path"], tmp / r["run"] / r["path"]
            _copy_checkpoint(src, dst)
            assets = pool / r["run"] / ASSETS
            if assets.is_dir() and not (dst.parent / ASSETS).exists():
                _copytree(assets, dst.parent / ASSETS)
        atomic.write_json(tmp / INDEX, index)


def clear_leftovers(root: Path) -> list[Path]:
    """Remove what a killed run of this stage left beside its outputs; the paths removed.

    A kill -9 (or the OOM killer) skips atomic's own cleanup, and nothing else would ever remove these.
    Only this stage's names, in atomic's exact shapes: `staged_dir`'s `.retention.tmp-XXXXXXXX` and
    `replace_dir`'s `.retention.old-<pid>` beside stages/retention, and `write_text`'s `.<name>.XXXXXXXX`
    beside metrics/retention.json, the manifest and the journal.
    """
    out = root / layout.RETAINED
    own = re.compile(rf"\.{re.escape(out.name)}\.(tmp-[a-z0-9_]{{8}}|old-\d+)")
    found = [p for p in out.parent.glob(f".{out.name}.*")
             if own.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    for f in (layout.RETENTION_METRICS, layout.RETENTION_MANIFEST, JOURNAL):
        temp = re.compile(rf"\.{re.escape(f.name)}\.[a-z0-9_]{{8}}")  # tempfile's 8 random characters
        found += [p for p in (root / f.parent).glob(f".{f.name}.*")
                  if temp.fullmatch(p.name) and p.is_file() and not p.is_symlink()]
    for p in found:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    return found


def identity(folder: Path, record: dict) -> list:
    """What tells checkpoint `folder` from another saved later under the same name: its weights' bytes and
    meta.json's digest (meta.json holds the save's wall time). The strip a retention run does keeps both."""
    try:
        meta = _md5(folder / "meta.json")
    except OSError:
        meta = None
    return [int(record.get("weights_bytes") or 0), meta]


def carry_over(root: Path, key: dict, checkpoints: dict[str, list], before: dict[str, int],
               count: int) -> dict | None:
    """The journal of an interrupted run of this plan, if one applies; else write this run's and return None.

    A run killed after it deleted some checkpoints would leave the next one measuring only the rest, so
    the pool as the first run found it is written down before anything is copied or deleted. A later run
    takes it over while the pool has only shrunk since: same pool, scope, study, metric and runs, and each
    checkpoint there now listed in the journal with the same `identity`. A new trial, or a re-train that
    saved its step-N folders again under names the journal lists, makes it a different pool.
    """
    path = root / JOURNAL
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        seen = old["checkpoints"]
        same = isinstance(seen, dict) and all(seen.get(i) == v for i, v in checkpoints.items())
        if old["key"] == key and same and isinstance(old["count"], int) \
                and isinstance(old["before"]["total"], int):
            return old
        say(f"retention: {JOURNAL} of an interrupted run does not match the pool now (new or rewritten "
            "checkpoints, runs, scope or study); counting from the pool as it is")
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        say(f"retention: ignored the unreadable {JOURNAL} ({exc}); counting from the pool as it is")
    atomic.write_json(path, {"key": key, "checkpoints": dict(sorted(checkpoints.items())), "before": before,
                             "count": count})
    return None


def _files(*dirs: Path):
    for d in dirs:
        if d.is_dir():
            yield from (f for f in d.rglob("*") if f.is_file() and not f.is_symlink())


def _inodes(files) -> dict[tuple[int, int], int]:
    """Each file once, however many hard links point at it: (device, inode) -> size."""
    out = {}
    for f in files:
        st = f.stat()
        out[(st.st_dev, st.st_ino)] = st.st_size
    return out


def _dvc_config(root: Path) -> dict[str, str]:
    """The [cache] section of .dvc/config and .dvc/config.local (local wins), read without importing DVC."""
    out: dict[str, str] = {}
    for name in ("config", "config.local"):
        path = root / ".dvc" / name
        section = None
        for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[]").strip().strip("'\"")
            elif section == "cache" and "=" in line:
                key, value = (x.strip() for x in line.split("=", 1))
                out[key] = value.strip("'\"")  # `dvc config` (configobj) quotes values with commas or spaces
    return out


def _md5(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


class Cache:
    """The DVC cache of the project, as far as the tracked set is concerned (None-like when not a DVC repo)."""

    def __init__(self, root: Path):
        cfg = _dvc_config(root)
        self.on = (root / ".dvc").is_dir()
        folder = Path(cfg.get("dir", "cache"))
        self.dir = folder if folder.is_absolute() else root / ".dvc" / folder
        # What DVC does with the out when it commits it (dvc/output.py: it moves files into the cache by hard
        # link only when cache.type's first type is hardlink, then checks the out out again from the cache):
        # hardlink: workspace, cache and pool share one inode; symlink: the cache gets a copy and the workspace
        # becomes symlinks; copy (and reflink, counted as a copy: shared blocks are invisible to stat): the
        # cache gets a copy and the workspace another, fresh from the cache, no longer sharing the pool's
        first = [t.strip() for t in cfg.get("type", "reflink,copy").split(",")][0]
        self.mode = first if first in ("hardlink", "symlink") else "copy"
        self.links = self.mode == "hardlink"

    def object(self, md5: str) -> Path:
        return self.dir / "files" / "md5" / md5[:2] / md5[2:]

    def previous(self, root: Path) -> list[Path]:
        """The cache objects of the tracked set as dvc.lock last recorded it (they stay until `dvc gc`)."""
        import yaml

        try:
            lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8")) or {}
            outs = lock["stages"]["retention"]["outs"]
            md5 = next(o["md5"] for o in outs if o["path"] == layout.RETAINED.as_posix())
            listing = json.loads(self.object(md5).read_text(encoding="utf-8"))
            return [self.object(e["md5"]) for e in listing] + [self.object(md5)]
        except (OSError, ValueError, KeyError, TypeError, StopIteration, AttributeError, yaml.YAMLError):
            return []

    def for_files(self, files) -> tuple[list[Path], int]:
        """(objects already in the cache, bytes DVC will add on commit) for these workspace files."""
        present, pending, seen = [], 0, set()
        for f in files:
            md5 = _md5(f)
            if md5 in seen:
                continue
            seen.add(md5)
            obj = self.object(md5)
            if obj.is_file():
                present.append(obj)
            elif not self.links:
                pending += f.stat().st_size
        return present, pending


def accounting(root: Path, pool: Path, runs: list[str], cache: Cache, previous: list[Path],
               new_tracked: bool) -> dict[str, int]:
    """Checkpoint bytes on disk now, per place and in total (each file once).

    pool: the step-* folders and assets of the in-scope runs; tracked: stages/retention;
    dvc_cache: the objects of the previous tracked set still in the cache, plus, with new_tracked, those
    of the tracked set now in place (present, or pending: what DVC copies in when it commits the out).
    """
    pool_files = list(_files(*[d for n in runs for d in (pool / n).glob("step-*")], *[pool / n / ASSETS for n in runs]))
    tracked_files = list(_files(root / layout.RETAINED))
    objects = [o for o in previous if o.is_file()]
    pending = 0
    tracked = _inodes(tracked_files)
    unshared = 0  # bytes of tracked files that DVC's checkout after the commit re-creates on their own inodes
    if new_tracked and cache.on:
        present, pending = cache.for_files(tracked_files)
        objects += present
        if cache.mode != "hardlink":
            unshared = 0 if cache.mode == "symlink" else sum(tracked.values())
            tracked = {}
    places = {"pool": _inodes(pool_files), "tracked": tracked, "dvc_cache": _inodes(objects)}
    every: dict[tuple[int, int], int] = {}
    for inodes in places.values():
        every |= inodes
    out = {name: sum(v.values()) for name, v in places.items()}
    out["tracked"] += unshared
    out["dvc_cache"] += pending
    out |= {"dvc_cache_pending": pending, "total": sum(every.values()) + unshared + pending}
    return out


def _entry(d: Decision) -> dict[str, Any]:
    r = d.record
    out = {"rank": d.rank, "run": r["run"], "step": r["step"], "epoch": r.get("epoch"), "score": r.get("score"),
           "metric": r.get("metric"), "bytes": int(r.get("bytes") or 0), "reasons": list(d.reasons)}
    if "fold_score" in r:
        out["fold_score"] = r["fold_score"]
    return out


def _bytes(records) -> int:
    return sum(int(r.get("bytes") or 0) for r in records)


def run(params: Params, root: Path = Path("."), dry_run: bool | None = None, write: bool = True) -> dict:
    """Plan, copy the best-K set into the stage's out, delete the rest of the pool; write the reports.

    dry_run (default retention.dry_run): delete nothing and touch no run folder. write=False (the CLI's
    --dry-run): only plan and return the manifest; nothing at all is written.
    """
    root = Path(root)
    rp = params.retention
    dry = (rp.dry_run if dry_run is None else dry_run) or not write
    if write:  # --dry-run writes and deletes nothing, leftovers included
        gone = clear_leftovers(root)
        if gone:
            say(f"retention: removed {len(gone)} leftover{'s' if len(gone) > 1 else ''} of an interrupted "
                "run: " + ", ".join(p.relative_to(root).as_posix() for p in gone))
    metric = params.train.early_stopping.metric
    mode = mode_for(metric)
    pool = root / params.train.checkpoint.dir
    study = current_study(root) if rp.scope == "current" else None
    names = run_dirs(pool)
    # out-of-scope runs are only listed: a worker of another study may be writing there right now
    runs = [open_run(pool, n, read_only=dry) for n in names if in_scope(n, rp.scope, study)]
    others = [n for n in names if not in_scope(n, rp.scope, study)]
    skipped = []  # in scope but left alone, with the reason
    train = next((r for r in runs if r.name == layout.TRAIN_RUN), None)
    reason = stale_train(root, train, metric) if train is not None else None
    if reason:
        runs.remove(train)
        skipped.append({"run": train.name, "checkpoints": len(train.records), "bytes": _bytes(train.records),
                        "reason": reason})
    records, other_metric = [], []
    for r in runs:
        for rec in r.records:
            if rec.get("metric") not in (None, metric):
                other_metric.append(rec)  # not comparable, so neither ranked nor deleted
            elif is_fold(r.name):  # scored on its own fold, not on the val split that ranks the rest
                records.append({**rec, "score": None, "fold_score": rec.get("score")})
            else:
                records.append(rec)
    if not records:
        looked = "every run" if rp.scope == "all" else f"the '{layout.TRAIN_RUN}' run" + (
            f" and study {study}" if study else "")
        why = f" ({skipped[0]['run']}: {skipped[0]['reason']})" if skipped else ""
        raise UserError(f"retention: no checkpoints in {pool} scored on {metric} for {looked}{why}; the pool "
                        "is scratch space that `dvc checkout` does not restore: re-create it with "
                        "`dvc repro -f train` (or set retention.scope: all)")
    cache = Cache(root)
    previous = cache.previous(root) if cache.on else []
    scoped = [r.name for r in runs]
    before_bytes = accounting(root, pool, scoped, cache, previous, new_tracked=False)
    max_bytes = None if rp.max_total_gb is None else int(rp.max_total_gb * 1e9)
    # ranked and budgeted by what the tracked set holds of each: its weights (a resume point keeps its state in the pool)
    records = [{**r, "pool_bytes": int(r.get("bytes") or 0), "bytes": int(r.get("weights_bytes") or r.get("bytes") or 0)}
               for r in records]
    decisions = decide_retention(records, rp.keep_best_k, rp.keep_last_n, mode, max_bytes=max_bytes)
    if all(d.rank is None for d in decisions):
        raise UserError(f"retention: none of the {len(records)} checkpoints in scope has a finite {metric} on the "
                        "val split (diverged runs or cross-validation folds only): nothing to rank, nothing deleted")
    # everything kept is tracked: the best K by rank, then last-N-only checkpoints by run and step
    kept = sorted((d for d in decisions if d.keep),
                  key=lambda d: (d.rank is None, d.rank or 0, d.record["run"], d.record["step"]))
    dropped = [d for d in decisions if not d.keep]
    index = [{**_entry(d), "path": f"{d.record['run']}/{d.record['path']}"} for d in kept]
    count = len(records) + len(other_metric)
    before_count, resumed = count, None
    if not dry:  # what an interrupted run of this plan deleted is part of this run's effect
        key = {"pool": params.train.checkpoint.dir, "scope": rp.scope, "study": study, "metric": metric,
               "runs": scoped}
        ids = {f"{r['run']}/{r['path']}": identity(pool / r["run"] / r["path"], r)
               for r in records + other_metric}
        resumed = carry_over(root, key, ids, before_bytes, count)
        if resumed is not None:
            before_bytes, before_count = resumed["before"], resumed["count"]
            say("retention: finishing an interrupted run: counting from the pool as it found it "
                f"({before_count} checkpoints, {before_bytes['total'] / 1e6:.1f} MB)")
    if write:
        write_tracked(root / layout.RETAINED, pool, kept, index)
    if not dry:
        by_run: dict[str, list[dict]] = {}
        for d in dropped:
            by_run.setdefault(d.record["run"], []).append(d.record)
        for r in progress([r for r in runs if r.name in by_run], desc="retention: delete"):
            r.registry.remove(by_run[r.name])
        # the pool's copies of the tracked ones: weights only, unless kept as a resume point (last N)
        strip: dict[str, list[dict]] = {}
        for d in kept:
            if "last_n" not in d.reasons:
                strip.setdefault(d.record["run"], []).append(d.record)
        for r in runs:
            if r.name in strip:
                r.registry.strip(strip[r.name])
    freed = sum(d.record["pool_bytes"] for d in dropped)
    after_bytes = accounting(root, pool, scoped, cache, previous, new_tracked=write) if write else None
    before = before_bytes["total"]
    after = after_bytes["total"] if after_bytes is not None else before - (0 if dry else freed)
    written = sum(written_bytes(pool / n) for n in scoped)
    reduction = round(100.0 * (before - after) / before, 2) if before else 0.0
    freed_pct = round(100.0 * (written - after) / written, 2) if written else 0.0
    manifest = {
        "policy": {**rp.model_dump(), "dry_run": dry, "metric": metric, "mode": mode},
        "pool": params.train.checkpoint.dir,
        "study": study,
        "kept": index,  # = stages/retention/index.json: everything kept is tracked
        "would_delete" if dry else "deleted": [_entry(d) for d in dropped],
        "other_metric": [{"run": r["run"], "step": r["step"], "metric": r.get("metric"), "score": r.get("score"),
                          "bytes": int(r.get("bytes") or 0)} for r in other_metric],
        "skipped": skipped,
        "out_of_scope": [{"run": n, "checkpoints": len(steps), "bytes": sum(_size(d) for d in steps)}
                         for n in others for steps in [[d for d in (pool / n).glob("step-*") if d.is_dir()]]],
        # on disk, each file once: "before" as the stage found it, "after" once DVC has committed the out
        "bytes": {"before": before_bytes, "after": after_bytes, "written": written,
                  "cache": {"dir": str(cache.dir) if cache.on else None, "type": cache.mode if cache.on else None,
                            "previous_objects": len(previous)}},
        "reduction_pct": reduction,
        "freed_pct": freed_pct,
    }
    if dry:
        manifest["would_free_bytes"] = freed
    if resumed is not None:  # `deleted` lists this run's deletions; before counts the interrupted run's too
        manifest["interrupted_run"] = {"checkpoints_before": before_count, "deleted": before_count - count}
    if not write:
        return manifest
    metrics = {
        "checkpoints": {"before": before_count, "kept": len(kept),
                        "best_k": sum(not {"best", "best_k"}.isdisjoint(d.reasons) for d in kept),
                        "deleted": 0 if dry else before_count - count + len(dropped)},
        # bytes on disk in the pool's in-scope runs, the tracked set and its DVC cache objects (each file once);
        # written = every checkpoint the in-scope runs saved; freed_pct = the share of that no longer on disk
        "bytes": {"before": before, "after": after, "written": written},
        "reduction_pct": reduction,
        "freed_pct": freed_pct,
        "best_score": round(float(kept[0].record["score"]), 6),
        "dry_run": dry,
    }
    atomic.write_json(root / layout.RETENTION_MANIFEST, manifest)
    if not dry:  # complete: the next run starts from the pool as it finds it
        # dropped before the metrics, not after: a kill in between loses only this run's whole-effect count
        # (the next run counts from what is left), where the other order has the next run report these
        # deletions a second time
        (root / JOURNAL).unlink(missing_ok=True)
    atomic.write_json(root / layout.RETENTION_METRICS, metrics)
    return manifest
