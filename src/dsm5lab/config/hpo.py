"""The `hpo` section of params.yaml: study settings and named search spaces (pydantic only, no optuna)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from dsm5lab import dotted
from dsm5lab.config.base import Strict

SEARCHABLE = ("model.", "train.")  # trials change model and train keys only; data and splits stay fixed


Choice = bool | int | float | str | None  # what Optuna stores as a categorical choice


class Dist(Strict):
    """One searched parameter: a float or int range, or categorical choices; `when` makes it conditional."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Choice] | None = None
    # sampled only when every named key currently has one of the listed values (an earlier
    # searched key of the same space, or a fixed model/train key)
    when: dict[str, list[Choice]] | None = None

    @model_validator(mode="after")
    def _shape(self) -> Dist:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("categorical takes 'choices' only (no low/high/step/log)")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not 'choices'")
        if self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"{self.type} needs low <= high")
        if self.log and self.step is not None:
            raise ValueError("'log' and 'step' cannot be combined (Optuna)")
        if self.log and self.low <= 0:
            raise ValueError("'log' needs low > 0")
        if self.type == "int":
            if self.low != int(self.low) or self.high != int(self.high) or (self.step or 1) != int(self.step or 1):
                raise ValueError("int needs whole-number low, high and step")
            if self.step is not None and self.step < 1:
                raise ValueError("int step must be >= 1")
        elif self.step is not None and self.step <= 0:
            raise ValueError("float step must be > 0")
        return self

    def values_to_check(self) -> list[Any]:
        """Values whose validity against the params schema stands for the whole range."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


class Objective(Strict):
    metric: str = Field(pattern=r"^(val/[a-z0-9_]+|model/n_parameters|train/seconds)$")
    direction: Literal["maximize", "minimize"]


class SamplerConfig(Strict):
    type: Literal["tpe", "random", "cmaes", "nsga2"]
    n_startup_trials: int = Field(ge=0)  # tpe/cmaes: random trials before the model-based sampler starts


class PrunerConfig(Strict):
    type: Literal["median", "hyperband", "none"]
    n_startup_trials: int = Field(ge=0)  # median: finished trials before anything is pruned
    n_warmup_steps: int = Field(ge=0)  # median: reports a trial makes before it can be pruned
    min_resource: int = Field(ge=1)  # hyperband: reports every trial gets
    reduction_factor: int = Field(ge=2)  # hyperband
    max_resource: int | None = Field(ge=1)  # hyperband: reports of a full trial; null = the trial's epochs (or folds)
    bootstrap_count: int = Field(ge=0)  # hyperband: the first N trials to reach a rung stop there (its yardstick)
    patience: int | None = Field(ge=1)  # also prune after this many reports without improvement; null = off
    min_delta: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _resources(self) -> PrunerConfig:
        if self.max_resource is not None and self.max_resource < self.min_resource:
            raise ValueError(f"max_resource {self.max_resource} is below min_resource {self.min_resource}")
        return self


class CVConfig(Strict):
    enabled: bool
    folds: int | None = Field(ge=1)  # use the first N folds prepare made; null = all of them
    aggregate: Literal["mean", "median", "min", "max"]


class StaleConfig(Strict):
    heartbeat_interval_s: int = Field(ge=1)  # SQL storages: a live trial writes a heartbeat this often
    grace_period_s: int = Field(ge=1)  # SQL storages: a RUNNING trial silent this long is failed
    max_retry: int = Field(ge=0)  # a failed stale trial is re-run with the same params up to this often


class WarmStartConfig(Strict):
    study: str | None = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # an earlier study's name; null = off
    storage: str | None  # where that study is; null = hpo.storage
    n_best: int = Field(ge=1)  # its best complete trials to enqueue (the Pareto front with several objectives)


# a CUDA_VISIBLE_DEVICES entry: an index in CUDA's order (nvidia-smi's only with CUDA_DEVICE_ORDER=PCI_BUS_ID on
# mixed-GPU machines), or a GPU/MIG UUID
Device = Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=r"^(GPU|MIG)-[A-Za-z0-9/-]+$")]


class HpoConfig(Strict):
    enabled: bool
    study_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    storage: str | None
    # where local trials compute: auto (every visible GPU, else the CPU) | cpu | a list of CUDA_VISIBLE_DEVICES
    # entries; `hpo run` gives each local process (itself and its workers) one device, in turn
    devices: Literal["auto", "cpu"] | list[Device] = Field(min_length=1)
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"]  # auto = one per device (1 on the CPU)
    n_trials: int = Field(ge=1)
    timeout_s: float | None = Field(gt=0)
    trial_timeout_s: float | None = Field(gt=0)
    objectives: list[Objective] = Field(min_length=1, max_length=4)
    sampler: SamplerConfig
    pruner: PrunerConfig
    cv: CVConfig
    stale: StaleConfig
    warm_start: WarmStartConfig
    max_micro_batch: int | None = Field(ge=1)
    trial_overrides: dict[str, Any]
    space: str
    spaces: dict[str, dict[str, Dist]]

    @model_validator(mode="after")
    def _consistent(self) -> HpoConfig:
        if self.space not in self.spaces:
            raise ValueError(f"space {self.space!r} is not defined (allowed: {', '.join(self.spaces) or 'none'})")
        multi = len(self.objectives) > 1
        if multi and self.pruner.type != "none":
            raise ValueError(f"{len(self.objectives)} objectives cannot be pruned (Optuna reports one value); "
                             "set hpo.pruner.type: none")
        if multi and self.sampler.type == "cmaes":
            raise ValueError("sampler cmaes optimises one objective; use nsga2, tpe or random for several")
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"objectives repeat a metric: {metrics}")
        if isinstance(self.devices, list) and len(set(map(str, self.devices))) != len(self.devices):
            raise ValueError(f"devices repeat an entry: {self.devices}")
        known = self.local_workers(len(self.devices) if isinstance(self.devices, list) else 0)
        if (self.devices != "auto" or self.workers != "auto") and known > 1:
            check_workers_storage(self.storage, known)  # auto on auto is checked once the GPUs are counted
        return self

    def local_workers(self, n_devices: int) -> int:
        """Processes `hpo run` computes with on this machine, given the GPUs it resolved (0 = the CPU)."""
        return self.workers if self.workers != "auto" else max(1, n_devices)

    @property
    def search_space(self) -> dict[str, Dist]:
        return self.spaces[self.space]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


def check_workers_storage(storage: str | None, workers: int) -> None:
    if (storage is None or storage.startswith("sqlite")) and workers > 1:
        raise ValueError(sqlite_workers_message(workers))


def sqlite_workers_message(workers: int | str) -> str:
    return (f"SQLite storage serves one worker only (got workers={workers}): concurrent writers lock it. "
            "Use a JournalStorage file (hpo.storage: journal:stages/hpo/journal.log) for several processes "
            "on one machine, or PostgreSQL (hpo.storage: postgresql://user:pass@host/db) for several machines")


def check_against_params(hpo: HpoConfig, raw: dict[str, Any], validate) -> None:
    """Each searched or overridden key must be a model/train value, and each range end or choice valid there.

    `validate(raw)` raises ValueError naming the bad key when a params mapping does not validate.
    """
    for name, space in hpo.spaces.items():
        seen: list[str] = []
        for key, dist in space.items():
            where = f"hpo.spaces.{name}.{key}"
            _check_key(key, raw, where)
            for cond in dist.when or {}:
                if cond in space and cond not in seen:
                    raise ValueError(f"{where}.when: '{cond}' is searched after '{key}'; list it first")
                if cond not in seen:
                    _check_key(cond, raw, f"{where}.when")
            for value in dist.values_to_check():
                # check the value in the situation where it is sampled: its conditions hold
                context = {**{c: allowed[0] for c, allowed in (dist.when or {}).items()}, key: value}
                _check_value(raw, context, where, validate)
            seen.append(key)
    for key, value in hpo.trial_overrides.items():
        _check_key(key, raw, "hpo.trial_overrides")
        _check_value(raw, {key: value}, f"hpo.trial_overrides.{key}", validate)


def _check_key(key: str, raw: dict[str, Any], where: str) -> None:
    if not key.startswith(SEARCHABLE):
        raise ValueError(f"{where}: '{key}' cannot be searched (allowed: keys under {', '.join(SEARCHABLE)})")
    try:
        value = dotted.get(raw, key)
    except KeyError:
        raise ValueError(f"{where}: '{key}' is not a key of params.yaml") from None
    if isinstance(value, dict):
        raise ValueError(f"{where}: '{key}' is a section; name one of its values")


def _check_value(raw: dict[str, Any], values: dict[str, Any], where: str, validate) -> None:
    import copy

    trial = copy.deepcopy(raw)
    for key, value in values.items():
        dotted.put(trial, key, value)
    try:
        validate(trial)
    except ValueError as exc:
        *_, (key, value) = values.items()
        raise ValueError(f"{where}: value {value!r} is not valid for {key} ({exc})") from None
