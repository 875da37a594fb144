"""The study's best trial as the final model's params: what `dsm5lab train` uses when hpo.enabled is true.

The hpo stage writes stages/hpo/best_params.yaml, headed by the name of the study it comes from; train
applies its values (the searched keys, a batch above hpo.max_micro_batch already turned into
accumulation) over params.yaml, after checking that the study is the one params.yaml and the prepared
data define now, so a model is never trained on the winner of another study.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dsm5lab import dotted, layout
from dsm5lab.config import Params, read_yaml, validate
from dsm5lab.errors import UserError

HEADER = re.compile(r"^# best trial (\d+) of study (\S+):")


def read(path: Path) -> tuple[int, str, dict[str, Any]]:
    """(trial number, study name, dotted values) of a best_params.yaml the hpo stage wrote."""
    if not path.is_file():
        raise UserError(f"{path}: not found; hpo.enabled is true, so train trains the study's best trial: run "
                        "`dvc repro hpo` (or `dsm5lab hpo run`) first, or set hpo.enabled=false to train "
                        "params.yaml's values")
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    found = HEADER.match(first)
    if found is None:
        raise UserError(f"{path}: its first line is not '# best trial N of study NAME: ...' (was it written by "
                        "`dsm5lab hpo run` with hpo.enabled true?); re-run `dvc repro hpo`")
    values = dotted.flatten(read_yaml(path) or {})
    if not values:
        raise UserError(f"{path}: holds no values; re-run `dvc repro hpo`")
    return int(found.group(1)), found.group(2), values


def apply(params: Params, root: Path = Path(".")) -> tuple[Params, list[str]]:
    """params with the current study's best values (when hpo.enabled), and the lines that say so."""
    if not params.hpo.enabled:
        return params, []
    from dsm5lab.hpo.space import study_identity

    root = Path(root)
    path = root / layout.HPO_BEST
    number, study, values = read(path)
    expected, _, _ = study_identity(params, root / layout.PREPARED)
    if study != expected:
        raise UserError(f"{path}: holds the best trial of study {study}, but params.yaml and the prepared data "
                        f"define study {expected} now; run `dvc repro hpo` first, or set hpo.enabled=false")
    raw = params.model_dump()
    moved = []
    for key, value in sorted(values.items()):
        try:
            before = dotted.get(raw, key)
        except KeyError:
            raise UserError(f"{path}: {key} is not a params.yaml key; re-run `dvc repro hpo`") from None
        if before != value:
            moved.append(f"{key} {before!r} -> {value!r}")
        dotted.put(raw, key, value)
    applied = validate(raw, source=f"params.yaml with {path}")
    lines = [f"train: {len(values)} value(s) from trial {number} of study {study} (hpo.enabled; "
             f"hpo.enabled=false trains params.yaml's as they are)"
             + (": " + ", ".join(moved) if moved else ", all already in params.yaml")]
    return applied, lines
