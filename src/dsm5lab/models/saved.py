"""A trained model on disk, loadable by evaluate and predict.

Layout of a model directory (and of a training run's `checkpoints/<run>/assets/`):
    config.json         format version, model spec, encode spec, channel names, thresholds
    encoder/config.json the encoder's transformers config (to rebuild its skeleton offline)
    tokenizer/          the tokenizer (tokenizer.json and friends)
    criteria.json       the criterion descriptions the model was trained with
A model directory also holds model.safetensors (every weight of the MultiTaskModel). A
checkpoint directory (checkpoints/<run>/step-N/) holds its own model.safetensors and finds
the rest in ../assets, so any checkpoint can be evaluated as a model.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from dsm5lab import atomic
from dsm5lab.data.criteria import Criterion, criteria_document, load_criteria
from dsm5lab.data.labels import SYMPTOMS
from dsm5lab.errors import UserError

FORMAT = "dsm5lab-model"
VERSION = 1
ASSETS = "assets"


def _write_assets(out: Path, model, tokenizer, window_spec, criteria: list[Criterion], backbone: str,
                  extra: dict | None = None) -> None:
    config = {
        "format": FORMAT,
        "version": VERSION,
        "backbone": backbone,
        "spec": model.spec.to_dict(),
        "encode": asdict(window_spec),
        "channels": list(SYMPTOMS) if model.spec.channels == len(SYMPTOMS) else ["criterion"],
        "thresholds": {s: 0.5 for s in SYMPTOMS},
        "hidden_size": int(model.encoder.config.hidden_size),
        **(extra or {}),
    }
    model.encoder.config.save_pretrained(out / "encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    (out / "criteria.json").write_text(json.dumps(criteria_document(criteria), indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_run_assets(run_dir: Path, model, tokenizer, window_spec, criteria: list[Criterion], backbone: str) -> None:
    """Everything but the weights, once per training run, so its checkpoints load as models."""
    with atomic.staged_dir(Path(run_dir) / ASSETS) as tmp:
        _write_assets(tmp, model, tokenizer, window_spec, criteria, backbone)


def export_model(out: Path, model, tokenizer, window_spec, criteria: list[Criterion], result, backbone: str,
                 training_params: dict | None = None) -> None:
    """Write the model directory atomically; its config records the best validation and, when given, the
    hyperparameters it was trained with (deterministic values only, so the same params give the same bytes)."""
    from safetensors.torch import save_model

    with atomic.staged_dir(Path(out)) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        extra = {"validation": result.best, **({"training_params": training_params} if training_params else {})}
        _write_assets(tmp, model, tokenizer, window_spec, criteria, backbone, extra)


def check_safetensors(file: Path, what: str, fix: str) -> None:
    """Refuse in one line a safetensors file whose header does not read (truncated, or not safetensors at all)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt"):
            pass
    except Exception as exc:  # noqa: BLE001 - SafetensorError, or an OSError reading the file
        reason = str(exc).strip().splitlines()[0].removeprefix("Error while deserializing header: ")
        raise UserError(f"{what}: {file} is not a readable safetensors file ({reason}); {fix}") from exc


def load_model(model_dir: Path):
    """(model, tokenizer, config, criteria) from a model or checkpoint directory; a clear error otherwise."""
    from safetensors.torch import load_model as load_weights
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from dsm5lab.models.multitask import ModelSpec, MultiTaskModel

    model_dir = Path(model_dir)
    if not (model_dir / "model.safetensors").is_file():
        raise UserError(f"{model_dir}: not a dsm5lab model or checkpoint directory (no model.safetensors); "
                        "train one with `dvc repro train`")
    weights = model_dir / "model.safetensors"
    check_safetensors(weights, "model", "it is truncated or corrupt: export or train the model again")
    assets = model_dir if (model_dir / "encoder").is_dir() else model_dir.parent / ASSETS
    cfg_path = assets / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{model_dir}: no model config (looked for {cfg_path})")
    config = json.loads(cfg_path.read_text())
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise UserError(f"{cfg_path}: not a {FORMAT} v{VERSION} config (got {config.get('format')!r} "
                        f"v{config.get('version')!r})")
    for part in ("encoder/config.json", "tokenizer", "criteria.json"):
        if not (assets / part).exists():
            raise UserError(f"{assets}: incomplete model assets, {part} is missing")
    encoder = AutoModel.from_config(AutoConfig.from_pretrained(assets / "encoder", local_files_only=True))
    tokenizer = AutoTokenizer.from_pretrained(assets / "tokenizer", local_files_only=True)
    model = MultiTaskModel(encoder, config["hidden_size"], ModelSpec(**config["spec"]))
    missing, unexpected = load_weights(model, str(weights), strict=False)
    if missing or unexpected:
        raise UserError(f"{model_dir}: weights do not match its config (missing {len(missing)}, "
                        f"unexpected {len(unexpected)} tensors)")
    model.eval()
    return model, tokenizer, config, load_criteria(assets / "criteria.json")
