"""One run folder's checkpoint registry: `registry.jsonl` listing exactly the `step-*` checkpoints on disk.

Beside it, `ledger.jsonl` gets one line per checkpoint ever saved in the run (its bytes), so the
retention stage can say how much of what was written is still on disk.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from dsm5lab.atomic import read_jsonl, write_text
from dsm5lab.errors import UserError
from dsm5lab.pool.policy import is_finite_score

FILES = ("model.safetensors", "config.json", "trainer_state.pt", "meta.json")
WEIGHT_FILES = ("model.safetensors", "config.json", "meta.json")  # what evaluate and predict load
STATE_FILE = "trainer_state.pt"  # optimizer, scheduler, scaler and RNG state: only a resume needs it
REGISTRY = "registry.jsonl"
LEDGER = "ledger.jsonl"


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _weights_bytes(path: Path) -> int:
    return sum((path / f).stat().st_size for f in WEIGHT_FILES if (path / f).is_file())


def written_bytes(root: Path) -> int:
    """Bytes of every checkpoint saved in this run folder since it was last cleared (its ledger).

    A torn last line (a kill mid-append) is skipped: the ledger only ever under-counts.
    """
    path = Path(root) / LEDGER
    if not path.is_file():
        return 0
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            total += int(json.loads(line)["bytes"])
        except (ValueError, KeyError, TypeError):
            continue
    return total


def log_written(root: Path, name: str, size: int) -> None:
    """Append one saved checkpoint to the run's ledger (an append: cheap, and a kill tears at most one line)."""
    with open(Path(root) / LEDGER, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"path": name, "bytes": int(size)}) + "\n")


class Registry:
    """The records of one run folder's checkpoints, read on construction. One writer per folder.

    read_only: only read (for planning): no folder is created, no leftover of a killed write cleared,
    and nothing written or deleted.
    """

    def __init__(self, root: Path, *, run: str = "run", read_only: bool = False):
        """run: the run name given to adopted checkpoints whose meta.json names none."""
        self.root, self.run, self.read_only = Path(root), run, read_only
        if not read_only:
            self.root.mkdir(parents=True, exist_ok=True)
            self._recover()
        self._records = self._read()
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

    def _read(self) -> list[dict]:
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
        # A checkpoint deleted by hand (or by another process's pool budget) is forgotten, not reported as best.
        records = [r for r in records if (self.root / r["path"]).is_dir()]
        for r in records:
            if "weights_bytes" not in r:  # written before the field existed: measured, not guessed
                try:
                    r["weights_bytes"] = _weights_bytes(self.root / r["path"])
                except FileNotFoundError:
                    pass
        return records

    def _adopt_orphans(self) -> None:
        """Register complete checkpoints the registry lacks (killed between rename and registry write)."""
        known = {r["path"] for r in self._records}
        for d in sorted(self.root.glob("step-*")):
            if d.name in known or not d.is_dir() or not all((d / f).is_file() for f in FILES):
                # a stripped (weights-only) checkpoint is always registered before it is stripped
                continue
            try:
                meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
                record = self.record_for(d, meta.get("run", self.run), meta.get("epoch"), meta.get("step", 0),
                                         meta.get("score"), meta.get("metric"))
            except FileNotFoundError:  # a read-only view of a live run: its own pruning removed it just now
                continue
            self._records.append(record)

    def record_for(self, d: Path, run, epoch, step, score, metric) -> dict:
        """The registry record of checkpoint folder `d` (size from disk; a non-finite score is None)."""
        return {
            "run": run,
            "epoch": epoch,
            "step": step,
            "score": float(score) if is_finite_score(score) else None,
            "metric": metric,
            "path": d.name,
            "bytes": _dir_bytes(d),
            "weights_bytes": _weights_bytes(d),  # what it takes once stripped to weights only
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def _write(self) -> None:
        if self.read_only:
            raise RuntimeError(f"registry {self.root / REGISTRY} was opened read-only")
        write_text(self.root / REGISTRY, "".join(json.dumps(r) + "\n" for r in self._records))

    def add(self, record: dict) -> None:
        """Register a new checkpoint (replacing any record of the same folder), rewrite the registry, log its bytes."""
        self._records = [r for r in self._records if r["path"] != record["path"]]
        self._records.append(record)
        self._write()
        log_written(self.root, record["path"], record.get("bytes") or 0)

    def strip(self, records: list[dict]) -> int:
        """Delete the training state of these checkpoints, keeping what evaluate and predict load; bytes freed.

        For checkpoints of finished runs only: a stripped checkpoint can no longer be resumed from.
        The registry is rewritten after the files go, so a kill in between leaves a record whose
        bytes are an over-count until the next strip or retention, never a record of missing weights.
        """
        freed, names = 0, {r["path"] for r in records}
        for rec in self._records:
            if rec["path"] not in names or rec.get("weights_only"):
                continue
            state = self.root / rec["path"] / STATE_FILE
            try:
                freed += state.stat().st_size
                state.unlink()
            except FileNotFoundError:  # another worker's budget pass got there first
                pass
            rec["weights_only"] = True  # meta.json stays as it is: the tracked set may hard-link it
            rec["bytes"] = _dir_bytes(self.root / rec["path"])
            rec["weights_bytes"] = _weights_bytes(self.root / rec["path"])
        self._write()
        return freed

    def remove(self, records: list[dict]) -> None:
        """Forget, then delete, these checkpoints of this folder.

        The registry is rewritten first, so it never lists a deleted checkpoint; each folder is renamed
        to a `.tmp-` name before removal, so a kill mid-way leaves either a whole checkpoint or a temp
        folder that the next writable Registry clears. Calling it again for the same records is a no-op.
        """
        gone = {r["path"] for r in records}
        if not gone:
            return
        self._records = [r for r in self._records if r["path"] not in gone]
        self._write()
        for name in sorted(gone):
            target = self.root / name
            if not target.exists():
                continue
            trash = self.root / f".{name}.tmp-gc-{os.getpid()}"
            try:
                os.replace(target, trash)
            except FileNotFoundError:  # another worker's budget pass removed it between the check and here
                continue
            shutil.rmtree(trash, ignore_errors=True)

    @property
    def records(self) -> list[dict]:
        """Copies of the records, ordered by step."""
        return [dict(r) for r in sorted(self._records, key=lambda r: r["step"])]

    def latest(self, run: str) -> Path | None:
        """The checkpoint with the highest step of `run` (what a resume loads)."""
        mine = [r for r in self._records if r["run"] == run]
        return self.root / max(mine, key=lambda r: r["step"])["path"] if mine else None
