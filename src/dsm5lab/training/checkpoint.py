"""Checkpoints: atomic save/load with RNG state, a disk guard, and a run folder pruned on save."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsm5lab.atomic import staged_dir, write_json
from dsm5lab.errors import UserError
from dsm5lab.models.saved import check_safetensors
from dsm5lab.pool.policy import is_finite_score, plan_retention
from dsm5lab.pool.registry import LEDGER, REGISTRY, STATE_FILE, WEIGHT_FILES, Registry

FORMAT_VERSION = 1
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


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
    meta.json copies epoch/step/score/metric/run from `state` (non-finite score -> null); its epoch is 1-based,
    as in metrics/train.json and the progress lines, while the state's (kept for resuming) is the 0-based index
    of the epoch in progress.
    """
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
    try:
        with staged_dir(path) as tmp:  # on any error the temp dir goes and a previous `path` stays
            _save_weights(model, tmp / "model.safetensors")
            write_json(tmp / "config.json", config)
            _torch_save(trainer_state, tmp / STATE_FILE)
            size = sum(f.stat().st_size for f in tmp.iterdir())
            score = state.get("score")
            meta = {k: state.get(k) for k in ("run", "epoch", "step", "metric") if k in state}
            if isinstance(meta.get("epoch"), int):
                meta["epoch"] += 1
            meta |= {
                "score": float(score) if is_finite_score(score) else None,
                "wall_time": time.time(),
                "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "bytes": size,  # model + config + trainer state (meta.json itself excluded)
            }
            write_json(tmp / "meta.json", meta)
    except OSError as exc:
        raise _write_failed(path, exc, estimate_checkpoint_bytes(model, optimizer is not None)) from exc


class _Sink:
    """The file torch.save writes through: torch's C++ writer turns a failed write into 'enforce fail at
    inline_container.cc' with no errno, so the OSError is kept here."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _torch_save(obj, file: Path) -> None:
    """torch.save(obj, file), failing with the OSError of the write that failed (ENOSPC: a full disk)."""
    with open(file, "wb") as fh:
        sink = _Sink(fh)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is None:
                raise
            raise sink.error from None


def _save_weights(model: torch.nn.Module, file: Path) -> None:
    """safetensors' save_model, failing with an OSError where its Rust writer reports one as text."""
    from safetensors import SafetensorError
    from safetensors.torch import save_model

    try:
        save_model(model, str(file))
    except SafetensorError as exc:
        found = re.search(r"\(os error (\d+)\)", str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(file)) from exc


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def _existing(directory: Path) -> Path:
    """`directory`, or its nearest existing parent (what shutil.disk_usage can probe)."""
    probe = Path(directory).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _write_failed(where: Path, exc: OSError, need: int | None) -> UserError:
    """One line for a failed checkpoint write: where, the OS's reason, and for a full disk the bytes needed."""
    reason = exc.strerror or str(exc)
    if exc.errno not in FULL_DISK:
        return UserError(f"checkpoint: cannot write {where}: {reason}; no partial checkpoint is left "
                         "(train.checkpoint.dir must be a writable folder)")
    needed = f"a checkpoint of this model takes about {_size(need)}, " if need else ""
    free = _size(shutil.disk_usage(_existing(where)).free)
    return UserError(f"checkpoint: cannot write {where}: {reason} ({needed}{free} free there); no partial checkpoint "
                     "is left: free disk space or point train.checkpoint.dir at a larger disk")


def _read_state(file: Path, map_location="cpu") -> dict:
    """trainer_state.pt read with torch.load(weights_only=True): tensors and plain values only, never code."""
    try:
        saved = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign: UnpicklingError, RuntimeError, EOFError, KeyError...
        raise UserError(f"checkpoint: {file} cannot be trusted or read ({type(exc).__name__}: corrupt, truncated, "
                        "or holding objects other than tensors and plain values); delete it (or its step-* folder) "
                        "or train without --resume") from exc
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) or "rng" not in saved:
        raise UserError(f"checkpoint: {file} is not a dsm5lab trainer state (no 'state' and 'rng'); delete it "
                        "(or its step-* folder) or train without --resume")
    return saved


def peek_state(path: Path) -> dict:
    """The `state` dict of a checkpoint, without touching any model or RNG."""
    file = Path(path) / STATE_FILE
    if not file.is_file():
        raise UserError(f"checkpoint: {path} holds weights only ({STATE_FILE} missing: retention strips finished "
                        "runs' checkpoints), so it cannot be resumed from; keep resume points with "
                        "retention.keep_last_n >= 1, or train without --resume")
    return _read_state(file)["state"]


def load_checkpoint(path: Path, model: torch.nn.Module, *, optimizer=None, scheduler=None, scaler=None,
                    restore_rng: bool = True, map_location="cpu") -> dict:
    """Load weights (strict) and the given optimizer/scheduler/scaler state, restore RNGs; return `state`."""
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"checkpoint: {path} does not exist or is not a directory")
    for name in WEIGHT_FILES:
        if not (path / name).is_file():
            raise UserError(
                f"checkpoint: {path} is incomplete: {name} is missing (expected {', '.join(WEIGHT_FILES)})"
            )
    wants_state = restore_rng or any(obj is not None for obj in (optimizer, scheduler, scaler))
    if wants_state and not (path / STATE_FILE).is_file():
        raise UserError(f"checkpoint: {path} holds weights only ({STATE_FILE} missing: a finished run's checkpoint "
                        "is stripped of its optimizer state by retention), so it cannot be resumed from")
    check_safetensors(path / "model.safetensors", "checkpoint",
                      "it is truncated or corrupt: delete its step-* folder, or train without --resume")
    try:
        load_model(model, path / "model.safetensors", strict=True, device=str(map_location))
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()] or [str(exc)]
        detail = "; ".join(lines)  # one line: the missing/unexpected keys and shape mismatches
        detail = detail if len(detail) <= 400 else detail[:400] + " ..."
        raise UserError(f"checkpoint: weights in {path} do not match the model: {detail}") from exc
    if not (path / STATE_FILE).is_file():  # weights only, and only the weights were asked for
        return json.loads((path / "meta.json").read_text(encoding="utf-8"))
    saved = _read_state(path / STATE_FILE, map_location)
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
    (root / LEDGER).unlink(missing_ok=True)  # a fresh run counts only its own bytes written


def check_free_space(directory: Path, min_free_gb: float) -> None:
    """Raise UserError when free space at `directory` (or its nearest existing parent) is below min_free_gb.

    GB here is 1e9 bytes; min_free_gb <= 0 disables the check.
    """
    if min_free_gb <= 0:
        return
    free_gb = shutil.disk_usage(_existing(directory)).free / 1e9
    if free_gb < min_free_gb:
        raise UserError(
            f"checkpoint: only {free_gb:.1f} GB free at {directory}, "
            f"below train.checkpoint.min_free_gb={min_free_gb:g}"
        )


def estimate_checkpoint_bytes(model: torch.nn.Module, with_optimizer: bool = True) -> int:
    """What one checkpoint of `model` will take before it is written: its weights, plus AdamW's two
    moments per trainable parameter (same dtype) when the optimizer state is saved with it."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return weights + (moments if with_optimizer else 0)


class CheckpointManager:
    """A folder of `step-XXXXXXXX` checkpoints and registry.jsonl, pruned to best K + last N per run on save.

    One writer per root. The registry (`pool.registry.Registry`) lists exactly the checkpoints on disk.
    """

    def __init__(self, root: Path, *, keep_last_n: int, keep_best_k: int, mode: str = "max",
                 min_free_gb: float = 0.0, run: str = "run"):
        plan_retention([], keep_best_k, keep_last_n, mode)  # validates the policy values
        self.root = Path(root)
        self.keep_last_n, self.keep_best_k, self.mode = keep_last_n, keep_best_k, mode
        self.min_free_gb, self.run = min_free_gb, run
        self.registry = Registry(self.root, run=run)

    def check_room(self, expected_bytes: int) -> None:
        """Refuse to start a run whose first checkpoint (about expected_bytes) would not fit on the disk.

        Free space below expected_bytes plus train.checkpoint.min_free_gb is a UserError, before any
        epoch runs, rather than an ENOSPC traceback at the end of the first one.
        """
        free = shutil.disk_usage(_existing(self.root)).free
        need = expected_bytes + self.min_free_gb * 1e9
        if free < need:
            raise UserError(
                f"checkpoint: {free / 1e9:.2f} GB free at {self.root}, but one checkpoint of this model takes "
                f"about {expected_bytes / 1e9:.2f} GB (+ train.checkpoint.min_free_gb={self.min_free_gb:g}); "
                "free disk space or point train.checkpoint.dir at a larger disk"
            )

    def save(self, model: torch.nn.Module, *, step: int, epoch: int, score: float | None, metric: str,
             optimizer=None, scheduler=None, scaler=None, state: dict, config: dict) -> Path:
        """Save root/step-XXXXXXXX, register it, prune; returns its path (deleted if the policy drops it).

        `epoch` is the 0-based index of the epoch in progress (what resuming needs); meta.json and the registry
        (hence the retention manifest) record it 1-based, as metrics/train.json and the progress lines do."""
        check_free_space(self.root, self.min_free_gb)
        target = self.root / f"step-{step:08d}"
        score = None if score is None else float(score)  # numpy/tensor scores would not reload
        full_state = {**state, "run": self.run, "epoch": epoch, "step": step, "score": score,
                      "metric": metric}
        save_checkpoint(target, model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                        state=full_state, config=config)
        try:  # registry.jsonl is replaced atomically; a checkpoint it misses is adopted on the next start
            self.registry.add(self.registry.record_for(target, self.run, epoch + 1, step, score, metric))
            self.prune()
        except OSError as exc:
            raise _write_failed(self.root / REGISTRY, exc, None) from exc
        return target

    def prune(self) -> list[dict]:
        """Apply the retention policy: rewrite the registry with the kept records, then delete the rest."""
        _, drop = plan_retention(self.registry.records, self.keep_best_k, self.keep_last_n, self.mode)
        self.registry.remove(drop)  # registry first, then the folders: safe against a kill
        return drop

    @property
    def records(self) -> list[dict]:
        """Copies of the records, ordered by step."""
        return self.registry.records

    @property
    def best(self) -> Path | None:
        """The best finite-score checkpoint (ties: later step)."""
        keep, _ = plan_retention(self.registry.records, 1, 0, self.mode)
        return self.root / keep[0]["path"] if keep else None

    @property
    def latest(self) -> Path | None:
        """The checkpoint with the highest step of this manager's run (what a resume loads)."""
        return self.registry.latest(self.run)
