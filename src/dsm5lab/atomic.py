"""File I/O: outputs written so that a failure never leaves a half-written file or folder behind, and
JSON-lines input read with one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dsm5lab.errors import UserError


def _read_umask() -> int:
    umask = os.umask(0)  # the only portable way to read it; done once, at import, before any thread starts
    os.umask(umask)
    return umask


UMASK = _read_umask()


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield an empty sibling temp dir; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o777 & ~UMASK)  # mkdtemp's 0700 would otherwise become the output's permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, target)


def replace_dir(src: Path, target: Path) -> None:
    """Move directory `src` to `target`, replacing it; the old one is removed only after the move."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(src, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # as open() would make it: mkstemp's 0600 would hide it from the group
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically with sorted-free, stable formatting (2-space indent, final newline)."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_jsonl(path: Path, what: str, text: str | None = None) -> list[tuple[int, Any]]:
    """(line number, value) for every non-blank line of a JSON-lines file (or of `text`, read from it).

    A line that is not JSON is a UserError naming `what`, the file and the line.
    """
    path = Path(path)
    if text is None:
        text = path.read_text(encoding="utf-8")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise UserError(f"{what}: {path} line {n} is not valid JSON ({exc.msg})") from None
    return out


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
