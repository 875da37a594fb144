"""`dsm5lab hpo promote`: write the best trial's values into params.yaml, keeping comments and order."""

from __future__ import annotations

import difflib
import io
from pathlib import Path
from typing import Any

from dsm5lab import atomic
from dsm5lab.config import read_yaml, validate
from dsm5lab.dotted import flatten
from dsm5lab.errors import UserError


def promote(best_file: Path, params_file: Path, dry_run: bool = False) -> tuple[dict[str, Any], str]:
    """Apply best_file's values to params_file; returns (changed values, unified diff)."""
    from ruamel.yaml import YAML

    if not best_file.is_file():
        raise UserError(f"{best_file}: not found; run the hpo stage first (`dvc repro hpo`)")
    values = flatten(read_yaml(best_file))
    if not values:
        raise UserError(f"{best_file}: holds no values to promote")
    if not params_file.is_file():
        raise UserError(f"params file not found: {params_file}")
    yaml = YAML()  # round-trip mode: comments, key order and quoting survive
    yaml.preserve_quotes = True
    yaml.width = 4096
    before = params_file.read_text(encoding="utf-8")
    doc = yaml.load(before)
    changed = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = doc
        for part in parents:
            node = node.get(part) if hasattr(node, "get") else None
            if node is None:
                break
        if node is None or not hasattr(node, "get") or leaf not in node:
            raise UserError(f"{best_file}: '{key}' is not a key of {params_file}")
        if node[leaf] != value or isinstance(node[leaf], bool) != isinstance(value, bool):
            node[leaf] = value
            changed[key] = value
    buf = io.StringIO()
    yaml.dump(doc, buf)
    after = buf.getvalue()
    validate(read_yaml_text(after, params_file), source=f"{params_file} after promote")
    diff = "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        fromfile=f"{params_file} (before)", tofile=f"{params_file} (promoted)"))
    if changed and not dry_run:
        atomic.write_text(params_file, after)
    return changed, diff


def read_yaml_text(text: str, source: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping after promote")
    return data
