"""Set values in params.yaml in place, keeping comments, key order and quoting (ruamel round trip).

Shared by `dsm5lab hpo promote` and `dsm5lab preset`: both write dotted values, validate the result
with the params schema and show a unified diff.
"""

from __future__ import annotations

import difflib
import io
import math
from pathlib import Path
from typing import Any

from dsm5lab import atomic
from dsm5lab.config import validate
from dsm5lab.errors import UserError


def set_values(params_file: Path, values: dict[str, Any], origin: str, action: str,
               dry_run: bool = False) -> tuple[dict[str, Any], str]:
    """Write dotted `values` into params_file; returns (changed values, unified diff).

    `origin` names where the values come from in the unknown-key error; `action` labels the diff and
    the validation message. Every key must already exist; the file is only written when valid.
    """
    if not params_file.is_file():
        raise UserError(f"params file not found: {params_file}")
    yaml = round_trip_yaml()
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
            raise UserError(f"{origin}: '{key}' is not a key of {params_file}")
        if node[leaf] != value or isinstance(node[leaf], bool) != isinstance(value, bool):
            node[leaf] = value
            changed[key] = value
    buf = io.StringIO()
    yaml.dump(doc, buf)
    after = buf.getvalue()
    validate(_read_text(after, params_file, action), source=f"{params_file} after {action}")
    diff = "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        fromfile=f"{params_file} (before)", tofile=f"{params_file} ({action})"))
    if changed and not dry_run:
        atomic.write_text(params_file, after)
    return changed, diff


def round_trip_yaml():
    """A ruamel YAML that writes params.yaml back as it was: comments, order, quoting, `null`, list indents."""
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip mode: comments, key order and quoting survive
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a line (flow collections are written on one line)
    yaml.indent(mapping=2, sequence=4, offset=2)  # `  - item` under its key, as params.yaml writes lists
    yaml.representer.add_representer(type(None), _null)
    yaml.representer.add_representer(float, _float)
    return yaml


def _null(representer, _):
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")  # ruamel's default writes nothing


def _float(representer, value: float):
    """A new float with a dot in its mantissa (5.0e-05, not 5e-05: YAML 1.1 readers take that for a string)."""
    text = repr(value)
    if not math.isfinite(value):
        return representer.represent_float(value)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def _read_text(text: str, source: Path, action: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping after {action}")
    return data
