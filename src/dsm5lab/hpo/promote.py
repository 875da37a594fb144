"""`dsm5lab hpo promote`: write the best trial's values into params.yaml, keeping comments and order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsm5lab.config import read_yaml
from dsm5lab.dotted import flatten
from dsm5lab.errors import UserError
from dsm5lab.yaml_edit import set_values


def promote(best_file: Path, params_file: Path, dry_run: bool = False) -> tuple[dict[str, Any], str]:
    """Apply best_file's values to params_file; returns (changed values, unified diff)."""
    if not best_file.is_file():
        raise UserError(f"{best_file}: not found; run the hpo stage first (`dvc repro hpo`)")
    values = flatten(read_yaml(best_file))
    if not values:
        raise UserError(f"{best_file}: holds no values to promote")
    return set_values(params_file, values, origin=str(best_file), action="promote", dry_run=dry_run)
