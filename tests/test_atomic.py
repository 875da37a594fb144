"""Atomic writes leave what a plain open() would: the same permissions, and nothing when they fail."""

from __future__ import annotations

import stat

import pytest

from dsm5lab import atomic


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_and_folders_have_the_permissions_open_and_mkdir_give(tmp_path):
    """mkstemp/mkdtemp create 0600/0700: a metrics file or a stage folder must be readable as the umask allows."""
    (tmp_path / "plain").write_text("x")
    (tmp_path / "plain_dir").mkdir()
    atomic.write_json(tmp_path / "m.json", {"a": 1})
    with atomic.staged_dir(tmp_path / "stage") as tmp:
        (tmp / "f").write_text("x")
    assert mode(tmp_path / "m.json") == mode(tmp_path / "plain")
    assert mode(tmp_path / "stage") == mode(tmp_path / "plain_dir")


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "m.json"
    atomic.write_json(target, {"a": 1})

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", no_rename)
    with pytest.raises(OSError):
        atomic.write_json(target, {"a": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"] and target.read_text() == '{\n  "a": 1\n}\n'
