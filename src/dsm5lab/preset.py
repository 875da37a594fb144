"""`dsm5lab preset NAME`: write a catalog backbone's recommended fine-tuning values into params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsm5lab.models import catalog
from dsm5lab.yaml_edit import set_values


def preset_values(name: str) -> dict[str, Any]:
    """The dotted params.yaml values the catalog recommends for backbone `name` (UserError if unknown)."""
    return catalog.get(name, what="preset").recommended.params(name)


def apply_preset(name: str, params_file: Path, dry_run: bool = False) -> tuple[dict[str, Any], str]:
    """Write preset_values(name) into params_file (comments and order kept); returns (changed, diff)."""
    values = preset_values(name)
    return set_values(params_file, values, origin=f"preset {name}", action=f"preset {name}", dry_run=dry_run)
