"""Checkpoints: atomic save/load with RNG state, a disk guard, and best-K / last-N retention."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsm5lab.atomic import read_jsonl, staged_dir, write_json, write_text
from dsm5lab.errors import UserError

FILES = ("model.safetensors", "config.json", "trainer_state.pt", "meta.json")
REGISTRY = "registry.jsonl"
FORMAT_VERSION = 1
# the checkpoint pool (train.checkpoint.dir): the pipeline's train run, and HPO trials at hpo/<study>/trial-NNNN
TRAIN_RUN = "train"
HPO_POOL_DIR = "hpo"


def mode_for(metric: str) -> str:
    """'min' for a metric where lower is better (the validation loss), else 'max'."""
    return "min" if metric == "val/loss" else "max"


def _finite(score: Any) -> bool:
    """True for a real, finite number (numpy and 0-d tensor scores included)."""
    if score is None or isinstance(score, bool):
        return False
    try:
        return math.isfinite(float(score))
    except (TypeError, ValueError):
        return False


def _check_plain(value: Any, where: str = "state") -> None:
    """`state` must reload under torch.load(weights_only=True): fail at save time, not at resume."""
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return  # exact types: numpy scalars subclass float but do not load with weights_only
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, f"{where} key")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    else:
        raise TypeError(f"checkpoint {where} is a {type(value).__name__}; use plain Python types or tensors")


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
              if _finite(r.get("score")) and (metric is None or r.get("metric") == metric)]
    ranked.sort(key=lambda i: (sign * float(records[i]["score"]), records[i]["step"], str(records[i].get("run"))),
                reverse=True)
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


def _rng_state() -> dict:
    """Every RNG the training loop touches, as types torch.load(weights_only=True) accepts."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    n = state["numpy"]
    keys = n["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]][: torch.cuda.device_count()]
        for device, s in enumerate(cuda):
            torch.cuda.set_rng_state(s, device)


def _check_finite(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all()):
            raise ValueError(f"refusing to save a checkpoint: parameter {name!r} has non-finite values")


def save_checkpoint(path: Path, model: torch.nn.Module, *, optimizer=None, scheduler=None, scaler=None,
                    state: dict, config: dict) -> None:
    """Write model.safetensors, config.json, trainer_state.pt and meta.json into `path` atomically.

    The files go to a temp dir next to `path`, which replaces `path` only once complete.
    meta.json copies epoch/step/score/metric/run from `state` (non-finite score -> null).
    """
    from safetensors.torch import save_model

    _check_finite(model)
    _check_plain(state)
    path = Path(path)
    trainer_state = {
        "format_version": FORMAT_VERSION,
        "state": dict(state),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": _rng_state(),
    }
    with staged_dir(path) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        write_json(tmp / "config.json", config)
        torch.save(trainer_state, tmp / "trainer_state.pt")
        size = sum(f.stat().st_size for f in tmp.iterdir())
        score = state.get("score")
        meta = {k: state.get(k) for k in ("run", "epoch", "step", "metric") if k in state}
        meta |= {
            "score": float(score) if _finite(score) else None,
            "wall_time": time.time(),
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "bytes": size,  # model + config + trainer state (meta.json itself excluded)
        }
        write_json(tmp / "meta.json", meta)


def peek_state(path: Path) -> dict:
    """The `state` dict of a checkpoint, without touching any model or RNG."""
    file = Path(path) / "trainer_state.pt"
    if not file.is_file():
        raise UserError(f"checkpoint: {path} is incomplete (trainer_state.pt missing)")
    return torch.load(file, map_location="cpu", weights_only=True)["state"]


def load_checkpoint(path: Path, model: torch.nn.Module, *, optimizer=None, scheduler=None, scaler=None,
                    restore_rng: bool = True, map_location="cpu") -> dict:
    """Load weights (strict) and the given optimizer/scheduler/scaler state, restore RNGs; return `state`."""
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"checkpoint: {path} does not exist or is not a directory")
    for name in FILES:
        if not (path / name).is_file():
            raise UserError(
                f"checkpoint: {path} is incomplete: {name} is missing (expected {', '.join(FILES)})"
            )
    try:
        load_model(model, path / "model.safetensors", strict=True, device=str(map_location))
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()] or [str(exc)]
        detail = "; ".join(lines)  # one line: the missing/unexpected keys and shape mismatches
        detail = detail if len(detail) <= 400 else detail[:400] + " ..."
        raise UserError(f"checkpoint: weights in {path} do not match the model: {detail}") from exc
    saved = torch.load(path / "trainer_state.pt", map_location=map_location, weights_only=True)
    for label, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is None:
            continue
        if saved.get(label) is None:
            raise UserError(f"checkpoint: {path} holds no {label} state (it was saved without one)")
        obj.load_state_dict(saved[label])
    if restore_rng:
        _set_rng_state(saved["rng"])
    return saved["state"]


def clear_run(root: Path) -> None:
    """Forget a run's checkpoints (step-* folders and the registry) so a fresh run never picks up an old one.

    Other files in the folder (the tracker's event log and MLflow buffer, run assets) are left alone.
    """
    root = Path(root)
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.is_dir() and (p.name.startswith("step-") or ".tmp-" in p.name):
            shutil.rmtree(p)
    (root / REGISTRY).unlink(missing_ok=True)


def check_free_space(directory: Path, min_free_gb: float) -> None:
    """Raise UserError when free space at `directory` (or its nearest existing parent) is below min_free_gb.

    GB here is 1e9 bytes; min_free_gb <= 0 disables the check.
    """
    if min_free_gb <= 0:
        return
    probe = Path(directory).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 1e9
    if free_gb < min_free_gb:
        raise UserError(
            f"checkpoint: only {free_gb:.1f} GB free at {directory}, "
            f"below train.checkpoint.min_free_gb={min_free_gb:g}"
        )


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class CheckpointManager:
    """A folder of `step-XXXXXXXX` checkpoints and registry.jsonl, pruned to best K + last N per run on save.

    One writer per root. The registry lists exactly the checkpoints on disk.
    """

    def __init__(self, root: Path, *, keep_last_n: int, keep_best_k: int, mode: str = "max",
                 min_free_gb: float = 0.0, run: str = "run", read_only: bool = False):
        """read_only: only read the registry (for planning): no folder is created, no leftover cleared."""
        plan_retention([], keep_best_k, keep_last_n, mode)  # validates the policy values
        self.root = Path(root)
        self.keep_last_n, self.keep_best_k, self.mode = keep_last_n, keep_best_k, mode
        self.min_free_gb, self.run = min_free_gb, run
        if not read_only:
            self.root.mkdir(parents=True, exist_ok=True)
            self._recover()
        self._records = self._read_registry()
        self._adopt_orphans()

    def _recover(self) -> None:
        """Undo a killed write: temp dirs/files go; a checkpoint moved aside but not replaced comes back."""
        for p in self.root.glob(".*"):
            if ".old-" in p.name and p.is_dir():
                target = self.root / p.name[1:].split(".old-")[0]
                if target.exists():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.rename(target)
            elif ".tmp-" in p.name and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(f".{REGISTRY}.") and p.is_file():
                p.unlink(missing_ok=True)

    def _read_registry(self) -> list[dict]:
        reg = self.root / REGISTRY
        if not reg.exists():
            return []
        records = []
        for n, record in read_jsonl(reg, "checkpoint"):
            if not isinstance(record, dict) or not isinstance(record.get("path"), str) \
                    or not isinstance(record.get("step"), int):
                raise UserError(f"checkpoint: {reg} line {n} is not a checkpoint record "
                                "(an object with a string 'path' and an integer 'step')")
            records.append(record)
        # A checkpoint deleted by hand is forgotten rather than reported as best.
        return [r for r in records if (self.root / r["path"]).is_dir()]

    def _adopt_orphans(self) -> None:
        """Register complete checkpoints the registry lacks (killed between rename and registry write)."""
        known = {r["path"] for r in self._records}
        for d in sorted(self.root.glob("step-*")):
            if d.name in known or not d.is_dir() or not all((d / f).is_file() for f in FILES):
                continue
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
            self._records.append(self._record(d, meta.get("run", self.run), meta.get("epoch"),
                                              meta.get("step", 0), meta.get("score"), meta.get("metric")))

    def _record(self, d: Path, run, epoch, step, score, metric) -> dict:
        return {
            "run": run,
            "epoch": epoch,
            "step": step,
            "score": float(score) if _finite(score) else None,
            "metric": metric,
            "path": d.name,
            "bytes": _dir_bytes(d),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def _write_registry(self) -> None:
        write_text(self.root / REGISTRY, "".join(json.dumps(r) + "\n" for r in self._records))

    def save(self, model: torch.nn.Module, *, step: int, epoch: int, score: float | None, metric: str,
             optimizer=None, scheduler=None, scaler=None, state: dict, config: dict) -> Path:
        """Save root/step-XXXXXXXX, register it, prune; returns its path (deleted if the policy drops it)."""
        check_free_space(self.root, self.min_free_gb)
        target = self.root / f"step-{step:08d}"
        score = None if score is None else float(score)  # numpy/tensor scores would not reload
        full_state = {**state, "run": self.run, "epoch": epoch, "step": step, "score": score,
                      "metric": metric}
        save_checkpoint(target, model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                        state=full_state, config=config)
        self._records = [r for r in self._records if r["path"] != target.name]
        self._records.append(self._record(target, self.run, epoch, step, score, metric))
        self._write_registry()
        self.prune()
        return target

    def prune(self) -> list[dict]:
        """Apply the retention policy: rewrite the registry with the kept records, then delete the rest."""
        _, drop = plan_retention(self._records, self.keep_best_k, self.keep_last_n, self.mode)
        self.remove(drop)
        return drop

    def remove(self, records: list[dict]) -> None:
        """Forget, then delete, these checkpoints of this root.

        The registry is rewritten first, so it never lists a deleted checkpoint; each folder is renamed
        to a `.tmp-` name before removal, so a kill mid-way leaves either a whole checkpoint or a temp
        folder that the next manager clears (`_recover`). Calling it again for the same records is a no-op.
        """
        gone = {r["path"] for r in records}
        if not gone:
            return
        self._records = [r for r in self._records if r["path"] not in gone]
        self._write_registry()
        for name in sorted(gone):
            target = self.root / name
            if not target.exists():
                continue
            trash = self.root / f".{name}.tmp-gc-{os.getpid()}"
            os.replace(target, trash)
            shutil.rmtree(trash, ignore_errors=True)

    @property
    def records(self) -> list[dict]:
        return [dict(r) for r in sorted(self._records, key=lambda r: r["step"])]

    @property
    def best(self) -> Path | None:
        """The best finite-score checkpoint (ties: later step)."""
        keep, _ = plan_retention(self._records, 1, 0, self.mode)
        return self.root / keep[0]["path"] if keep else None

    @property
    def latest(self) -> Path | None:
        """The checkpoint with the highest step of this manager's run (what a resume loads)."""
        mine = [r for r in self._records if r["run"] == self.run]
        return self.root / max(mine, key=lambda r: r["step"])["path"] if mine else None
