"""DSM-5 criterion descriptions used as model input: the packaged JSON or a user's file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dsm5lab.data.labels import SYMPTOMS
from dsm5lab.errors import UserError

EXPECTED_IDS = tuple(f"A.{i}" for i in range(1, len(SYMPTOMS) + 1))


@dataclass(frozen=True)
class Criterion:
    id: str
    symptom: str
    name: str
    description: str


def _parse(doc: object, where: str) -> list[Criterion]:
    if not isinstance(doc, dict) or not isinstance(doc.get("criteria"), list):
        raise UserError(f"{where}: expected an object with a 'criteria' list")
    out: list[Criterion] = []
    for i, item in enumerate(doc["criteria"]):
        if not isinstance(item, dict):
            raise UserError(f"{where}: criteria[{i}] must be an object")
        missing = [k for k in ("id", "symptom", "name", "description") if not str(item.get(k, "")).strip()]
        if missing:
            raise UserError(f"{where}: criteria[{i}] lacks {', '.join(missing)}")
        out.append(Criterion(*(str(item[k]).strip() for k in ("id", "symptom", "name", "description"))))
    by_symptom = {c.symptom: c for c in out}
    unknown = [c.symptom for c in out if c.symptom not in SYMPTOMS]
    if unknown:
        raise UserError(f"{where}: unknown symptom {unknown[0]!r} (allowed: {', '.join(SYMPTOMS)})")
    if len(by_symptom) != len(out) or set(by_symptom) != set(SYMPTOMS):
        lacking = [s for s in SYMPTOMS if s not in by_symptom]
        raise UserError(
            f"{where}: needs each of the nine symptoms exactly once"
            + (f" (missing: {', '.join(lacking)})" if lacking else " (duplicates found)")
        )
    for c in out:
        expected = EXPECTED_IDS[SYMPTOMS.index(c.symptom)]
        if c.id != expected:
            raise UserError(f"{where}: {c.symptom} must have id {expected!r} (got {c.id!r})")
    return sorted(out, key=lambda c: SYMPTOMS.index(c.symptom))


def load_criteria(path: str | Path | None = None) -> list[Criterion]:
    """Load criteria A.1-A.9 in DSM-5 order from `path`, or the packaged file when None."""
    if path is None:
        text = resources.files("dsm5lab.data").joinpath("criteria.json").read_text(encoding="utf-8")
        where = "packaged criteria.json"
    else:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"data.criteria_file: file not found: {p}")
        text, where = p.read_text(encoding="utf-8"), str(p)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return _parse(doc, where)


def criteria_document(criteria: list[Criterion]) -> dict:
    """The JSON document prepare writes next to its tables."""
    return {
        "version": 1,
        "criteria": [
            {"id": c.id, "symptom": c.symptom, "name": c.name, "description": c.description}
            for c in criteria
        ],
    }
