"""From a search space to a trial's params: conditional sampling, batch-to-accumulation, study fingerprint."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from dsm5lab import dotted
from dsm5lab.config import Params, validate
from dsm5lab.errors import UserError
from dsm5lab.config.hpo import Dist

# Keys that change how a trial runs, not what it learns: left out of the study fingerprint.
OPERATIONAL = ("train.checkpoint", "train.threads", "train.num_workers", "train.log_every_steps",
               "train.eval_batch_size", "train.batch_probe")


class InvalidTrialParams(UserError):
    """A sampled combination that the params schema rejects; the trial fails and the study goes on."""


def active(dist: Dist, chosen: dict[str, Any], base: dict[str, Any]) -> bool:
    """True when every `when` condition holds for the values sampled so far (else the base params)."""
    for key, allowed in (dist.when or {}).items():
        value = chosen[key] if key in chosen else dotted.get(base, key)
        if value not in allowed:
            return False
    return True


def suggest(trial, space: dict[str, Dist], base: dict[str, Any]) -> dict[str, Any]:
    """Ask the trial for each parameter whose conditions hold, in the order of the space."""
    chosen: dict[str, Any] = {}
    for key, dist in space.items():
        if not active(dist, chosen, base):
            continue
        if dist.type == "categorical":
            chosen[key] = trial.suggest_categorical(key, dist.choices)
        elif dist.type == "int":
            chosen[key] = trial.suggest_int(key, int(dist.low), int(dist.high), step=int(dist.step or 1), log=dist.log)
        else:
            chosen[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return chosen


def resolved_values(params: Params, chosen: dict[str, Any]) -> dict[str, Any]:
    """The params.yaml values a trial trains with: a batch above hpo.max_micro_batch becomes accumulation."""
    values = dict(chosen)
    limit = params.hpo.max_micro_batch
    batch = values.get("train.batch_size")
    if batch is not None:  # always set, so the params.yaml value (e.g. after a promote) never leaks in
        micro = min(batch, limit) if limit is not None else batch
        values["train.batch_size"] = micro
        values["train.grad_accum_steps"] = math.ceil(batch / micro)
    return values


def trial_params(params: Params, values: dict[str, Any]) -> Params:
    """params with the study's trial_overrides, then the trial's values, applied and validated."""
    raw = params.model_dump()
    for key, value in {**params.hpo.trial_overrides, **values}.items():
        dotted.put(raw, key, value)
    try:
        return validate(raw, source="trial params")
    except UserError as exc:
        raise InvalidTrialParams(str(exc)) from None


def data_hash(prepared: Path) -> str:
    """sha256 over the prepared tables (names and bytes): trials on different data are not comparable."""
    h = hashlib.sha256()
    prepared = Path(prepared)
    files = sorted(p for p in prepared.iterdir() if p.is_file() and p.suffix in (".parquet", ".json")) \
        if prepared.is_dir() else []
    if not files:
        raise UserError(f"{prepared}: no prepared tables; run `dsm5lab prepare` (or `dvc repro prepare`) first")
    for path in files:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def no_effect_keys(params: Params) -> tuple[str, ...]:
    """model/train keys whose value cannot change a trial: early stopping's patience (and the min_delta that
    only feeds it) when a trial validates once per epoch for a fixed number of epochs and patience >=
    epochs - 1, so it could only stop a trial at its last validation, where the trial ends anyway; and
    train.augment while no trial augments (no method or prob 0, none of its keys searched)."""
    return _no_effect_patience(params) + _no_effect_augment(params)


def _no_effect_patience(params: Params) -> tuple[str, ...]:
    hpo = params.hpo
    if "train.epochs" in hpo.search_space or any(k.startswith("train.early_stopping") for k in hpo.search_space):
        return ()
    epochs = int(hpo.trial_overrides.get("train.epochs", params.train.epochs))
    every = hpo.trial_overrides.get("train.eval_every_steps", params.train.eval_every_steps)
    patience = int(hpo.trial_overrides.get("train.early_stopping.patience", params.train.early_stopping.patience))
    if every == 0 and patience >= epochs - 1:
        return ("train.early_stopping.patience", "train.early_stopping.min_delta")
    return ()


def _no_effect_augment(params: Params) -> tuple[str, ...]:
    hpo, aug = params.hpo, params.train.augment
    if any(k.startswith("train.augment.") for k in (*hpo.search_space, *hpo.trial_overrides)):
        return ()
    return ("train.augment",) if not aug.methods or aug.prob == 0 else ()


def definition(params: Params) -> dict[str, Any]:
    """What a trial can see, and so what defines a study (less the prepared data's hash).

    The model/train values every trial starts from, less the searched keys (every trial sets them, so
    `hpo promote` does not start a new study), the keys hpo.trial_overrides replaces (train.epochs is the
    final model's, not a trial's), the operational keys and those without effect on a trial
    (no_effect_keys); then the overrides, the selected space, the objectives, the numerics and a warm start. The study
    stage writes it to stages/study/definition.json, the hpo stage's dependency in place of model/train.
    """
    hpo = params.hpo
    base = params.model_dump(include={"seed", "model", "train"})
    derived = ("train.grad_accum_steps",) if "train.batch_size" in hpo.search_space else ()
    for key in (*hpo.search_space, *OPERATIONAL, *derived, *hpo.trial_overrides, *no_effect_keys(params)):
        dotted.drop(base, key)
    # a warm start changes which trials run first: naming one starts a new study, where they are enqueued
    warm = {"warm_start": {"study": hpo.warm_start.study, "n_best": hpo.warm_start.n_best}} \
        if hpo.warm_start.study else {}
    return json.loads(json.dumps({
        "base": base, "trial_overrides": hpo.trial_overrides,
        "space": {k: v.model_dump() for k, v in hpo.search_space.items()},
        "objectives": [o.model_dump() for o in hpo.objectives], "cv": hpo.cv.model_dump(),
        "max_micro_batch": hpo.max_micro_batch, "numerics": params.numerics.model_dump(), **warm,
    }, default=str))


def fingerprint(params: Params, data: str) -> str:
    """sha256 of the study definition and the prepared data's hash."""
    what = {"data": data, **definition(params)}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def write_definition(params: Params, root: Path) -> Path:
    """The study stage: stages/study/definition.json, sorted, so an unchanged definition is unchanged bytes."""
    from dsm5lab import atomic, layout

    path = Path(root) / layout.STUDY_DEFINITION
    atomic.write_text(path, json.dumps(definition(params), sort_keys=True, indent=1) + "\n")
    return path


def study_name(params: Params, fp: str) -> str:
    return f"{params.hpo.study_name}-{fp[:8]}"


def study_identity(params: Params, prepared: Path) -> tuple[str, str, str]:
    """(name, fingerprint, data hash) of the study that params and the prepared data define."""
    data = data_hash(prepared)
    fp = fingerprint(params, data)
    return study_name(params, fp), fp, data


def base_values(params: Params) -> dict[str, Any]:
    """model and train values every trial starts from: params.yaml plus hpo.trial_overrides."""
    raw = copy.deepcopy(params.model_dump(include={"model", "train"}))
    for key, value in params.hpo.trial_overrides.items():
        dotted.put(raw, key, value)
    return raw
