"""The params.yaml schema: one typed model, unknown keys rejected, ranges checked.

Defaults live in params.yaml only; this module checks values, it does not invent them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from dsm5lab.config.base import Strict
from dsm5lab.config.hpo import HpoConfig, check_against_params
from dsm5lab.errors import UserError


class SyntheticConfig(Strict):
    """The seeded ReDSM5-format generator (data.source = synthetic)."""

    n_posts: int = Field(ge=20, le=200_000)
    seed: int = Field(ge=0)
    symptom_free_ratio: float = Field(ge=0.0, lt=1.0)
    special_case_ratio: float = Field(ge=0.0, le=1.0)
    hard_negative_ratio: float = Field(ge=0.0, le=1.0)
    shared_sentence_ratio: float = Field(ge=0.0, le=1.0)
    mean_words: int = Field(ge=20, le=5_000)
    max_words: int = Field(ge=50, le=20_000)
    text_noise: float = Field(ge=0.0, le=1.0)
    annotation_drift: float = Field(ge=0.0, le=1.0)
    annotation_paraphrase: float = Field(ge=0.0, le=1.0)
    min_posts_per_criterion: int = Field(ge=0, le=1_000)


class HFConfig(Strict):
    """A Hub dataset id or a local dataset directory read through `datasets`."""

    dataset: str = Field(min_length=1)
    revision: str | None
    posts_file: str = Field(min_length=1)
    annotations_file: str = Field(min_length=1)
    posts_split: str | None
    annotations_split: str | None


class DataConfig(Strict):
    source: Literal["synthetic", "csv", "hf"]
    csv_dir: str
    hf: HFConfig
    criteria_file: str | None
    synthetic: SyntheticConfig


class SplitRatios(Strict):
    train: float = Field(gt=0.0, lt=1.0)
    val: float = Field(gt=0.0, lt=1.0)
    test: float = Field(gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitRatios:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1 (got {total:g})")
        return self


class AlignmentConfig(Strict):
    fuzzy_threshold: float = Field(ge=50.0, le=100.0)


class PrepareConfig(Strict):
    split: SplitRatios
    n_folds: int = Field(ge=2, le=20)
    alignment: AlignmentConfig
    require_all_criteria: bool


class TinyConfig(Strict):
    hidden_size: int = Field(ge=8, le=2048)
    num_layers: int = Field(ge=1, le=48)
    num_heads: int = Field(ge=1, le=64)
    intermediate_size: int = Field(ge=8, le=16384)
    vocab_size: int = Field(ge=200, le=200_000)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        return self


class ModelConfig(Strict):
    backbone: str = Field(min_length=1)
    max_length: int = Field(ge=16, le=8192)
    stride: int = Field(ge=0)
    max_chunks: int = Field(ge=1, le=512)
    pooling: Literal["cls", "mean", "attention", "last_2_layer_mix"]
    criteria_head: Literal["linear", "mlp", "mlp_residual", "gated"]
    evidence_head: Literal["start_end_linear", "start_end_mlp", "biaffine", "bio_crf"]
    hidden_dim: int = Field(ge=1, le=8192)
    hidden_dropout: float = Field(ge=0.0, lt=1.0)
    attention_dropout: float = Field(ge=0.0, lt=1.0)
    classifier_dropout: float = Field(ge=0.0, lt=1.0)
    max_span_tokens: int = Field(ge=1, le=8192)
    gradient_checkpointing: bool
    tiny: TinyConfig

    @model_validator(mode="after")
    def _stride_fits(self) -> ModelConfig:
        if self.stride >= self.max_length // 2:
            raise ValueError(f"stride {self.stride} must be below max_length/2 ({self.max_length // 2})")
        return self


class EarlyStopping(Strict):
    metric: str = Field(pattern=r"^val/[a-z0-9_]+$")
    patience: int = Field(ge=1)
    min_delta: float = Field(ge=0.0)


class BatchProbe(Strict):
    enabled: bool
    headroom: float = Field(ge=0.0, lt=1.0)


class CheckpointConfig(Strict):
    dir: str = Field(min_length=1)
    keep_last_n: int = Field(ge=1)
    keep_best_k: int = Field(ge=1)
    min_free_gb: float = Field(ge=0.0)


AugmentMethod = Literal["synonym", "random_swap", "random_delete", "contextual"]


class AugmentConfig(Strict):
    """train.augment: training posts only, unannotated sentences only, redrawn each epoch (training.augment)."""

    methods: list[AugmentMethod]  # [] = off
    prob: float = Field(ge=0.0, lt=1.0)  # EDA's alpha: the share of an augmented sentence's words changed
    wordnet_dir: str = Field(min_length=1)  # synonym: WordNet 3.0's index.* and data.* (Debian's wordnet-base)
    mlm_model: str | None  # contextual: a model with a masked-LM head; null = model.backbone

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> Any:
        # an HPO categorical holds scalars only: "synonym+random_swap" stands for [synonym, random_swap]
        if isinstance(value, str):
            value = [m.strip() for m in value.split("+")] if value.strip() else []
        if isinstance(value, list) and len(set(map(str, value))) != len(value):
            raise ValueError(f"methods repeat a method: {value} (allowed: {', '.join(get_args(AugmentMethod))})")
        return value


class TrainConfig(Strict):
    task: Literal["criteria", "evidence", "joint"]
    input_format: Literal["multi_label", "binary_pairs"]
    level: Literal["post", "sentence"]
    task_coupling: Literal["independent", "coupled"]
    criteria_loss_weight: float = Field(ge=0.0)
    evidence_loss_weight: float = Field(ge=0.0)
    loss: Literal["bce", "weighted_bce", "focal", "hybrid"]
    focal_gamma: float = Field(ge=0.0, le=10.0)
    focal_alpha: float = Field(ge=-1.0, le=1.0)
    hybrid_weight: float = Field(ge=0.0, le=1.0)
    label_smoothing: float = Field(ge=0.0, lt=0.5)
    epochs: int = Field(ge=1, le=1000)
    batch_size: int = Field(ge=1)
    eval_batch_size: int = Field(ge=1)
    grad_accum_steps: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0, le=1.0)
    head_lr_multiplier: float = Field(gt=0.0)
    layer_lr_decay: float = Field(gt=0.0, le=1.0)  # 1 = off; the encoder's layer k below the top gets lr * decay^k
    weight_decay: float = Field(ge=0.0)
    scheduler: Literal["linear", "cosine", "constant"]
    warmup_ratio: float = Field(ge=0.0, lt=1.0)
    max_grad_norm: float = Field(ge=0.0)
    precision: Literal["fp32", "bf16", "fp16"]
    eval_every_steps: int = Field(ge=0)
    log_every_steps: int = Field(ge=1)
    early_stopping: EarlyStopping
    batch_probe: BatchProbe
    checkpoint: CheckpointConfig
    deterministic: bool
    num_workers: int = Field(ge=0, le=64)
    threads: int | Literal["auto"]  # 0: torch's default; auto: cores / concurrent processes (dsm5lab.concurrency)
    augment: AugmentConfig

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 512):
            return value
        raise ValueError("must be an integer 0-512 (0: torch's default) or 'auto' (cores / concurrent processes)")

    @model_validator(mode="after")
    def _level_fits_task(self) -> TrainConfig:
        if self.level == "sentence" and self.task != "criteria":
            raise ValueError(f"level 'sentence' works with task 'criteria' only (got task '{self.task}'); "
                             "evidence needs the whole post")
        return self


class TrackingConfig(Strict):
    mlflow_uri: str | None
    experiment: str = Field(min_length=1)


class EvaluateConfig(Strict):
    batch_size: int = Field(ge=1)
    bootstrap_resamples: int = Field(ge=0, le=100_000)
    ci_level: float = Field(gt=0.5, lt=1.0)
    ranking_k: int = Field(ge=1, le=100)
    calibration_bins: int = Field(ge=2, le=100)
    max_errors: int = Field(ge=0)
    max_chunks: int | None = Field(default=None, ge=1)  # windows read per post; None = all (training caps at model.max_chunks)
    # the operating point chosen on val (dsm5lab.evaluation.operating): F1, or a precision / recall target
    threshold_objective: Literal["f1", "recall_at_precision", "precision_at_recall"] = "f1"
    threshold_target: float = Field(default=0.8, gt=0.0, le=1.0)
    threshold_targets: dict[str, float] = Field(default_factory=dict)  # per criterion, e.g. SUICIDAL_THOUGHTS: 0.95
    temperature_scaling: bool = False  # fit one temperature per criterion on val; report test ECE/Brier after it

    @field_validator("threshold_targets")
    @classmethod
    def _known_criteria(cls, value: dict[str, float]) -> dict[str, float]:
        from dsm5lab.data.labels import SYMPTOMS

        for name, target in value.items():
            if name not in SYMPTOMS:
                raise ValueError(f"unknown criterion {name!r} (allowed: {', '.join(SYMPTOMS)})")
            if not 0.0 < target <= 1.0:
                raise ValueError(f"{name}: target {target} must be in (0, 1]")
        return value


class SpreadConfig(Strict):
    """The spread stage (its own section, so the evaluate stage does not re-run when these change)."""

    seeds: list[int] = Field(default_factory=list)  # train + evaluate the train config once per seed; [] = off
    cv: bool = False  # out-of-fold estimate over prepare's folds

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(s < 0 for s in value):
            raise ValueError(f"seeds must be distinct non-negative integers (got {value})")
        return value


class NumericsConfig(Strict):
    """How CPU kernels are dispatched (dsm5lab.numerics): avx2 pins them for bit-identical runs on any x86-64."""

    cpu_isa: Literal["avx2", "native"]


class RetentionConfig(Strict):
    """The retention stage: which checkpoints of the scratch pool (train.checkpoint.dir) survive."""

    keep_best_k: int = Field(ge=1, le=1000)
    keep_last_n: int = Field(ge=0, le=1000)
    max_total_gb: float | None = Field(gt=0.0, allow_inf_nan=False)
    max_pool_gb: float | None = Field(gt=0.0, allow_inf_nan=False)  # the HPO study's pool while it runs
    scope: Literal["current", "all"]
    dry_run: bool


class Params(Strict):
    seed: int = Field(ge=0)
    data: DataConfig
    prepare: PrepareConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    spread: SpreadConfig = Field(default_factory=SpreadConfig)
    tracking: TrackingConfig
    hpo: HpoConfig
    retention: RetentionConfig
    numerics: NumericsConfig

    @model_validator(mode="after")
    def _space_fits_params(self) -> Params:
        check_against_params(self.hpo, self.model_dump(include={"model", "train"}), _validate_trial)
        return self


def _validate_trial(raw: dict[str, Any]) -> None:
    """Validate the model and train sections of a trial's params; ValueError with the first problem."""
    for name, section in (("model", ModelConfig), ("train", TrainConfig)):
        try:
            section.model_validate(raw[name])
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"{name}{'.' + where if where else ''}: {err['msg']}") from None


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the sub-model that `loc` points into (for unknown-key messages)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            break
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    return list(model.model_fields)


def _format_error(err: dict[str, Any], source: str) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(Params, err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{source}: unknown key '{key}' (allowed here: {', '.join(allowed)}){hint}"
    if kind == "missing":
        return f"{source}: missing key '{key}'"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:  # a check across sections: the message names its keys
        return f"{source}: {msg}"
    return f"{source}: {key}: {msg}{shown}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one `key.path=value` override; the value is read as YAML, like `dvc exp run -S`."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set '{text}': expected key=value, e.g. --set prepare.n_folds=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise UserError(f"--set '{text}': value is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with dotted-key overrides applied (new keys are caught by the schema)."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(path[: i + 1])
                raise UserError(f"--set '{text}': '{prefix}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def read_yaml(path: Path, what: str = "params file", expect: str = "a mapping of sections") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping, with one-line errors for the usual faults.

    `what` names the file in the not-found message, `expect` says what the top level should be.
    """
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:  # line and column of the fault (PyYAML counts from 0)
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        what_is_wrong = exc.problem or exc.context or str(exc).splitlines()[0]
        raise UserError(f"{path}{where}: not valid YAML: {what_is_wrong}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected {expect} at the top level")
    return data


def validate(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate a params mapping; raise UserError listing each bad key on its own line."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(e, source) for e in exc.errors()]
        raise UserError("\n".join(lines)) from None


def load_params(path: Path | str = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read, override and validate params.yaml."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate(raw, source=str(path))
