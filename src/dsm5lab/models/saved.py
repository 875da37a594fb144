"""A trained model on disk: weights, configs, tokenizer and criteria, loadable by evaluate and predict.

Layout of a model directory:
    model.safetensors   every weight of the MultiTaskModel
    config.json         format version, model spec, encode spec, channel names, thresholds, training summary
    encoder/config.json the encoder's transformers config (to rebuild its skeleton offline)
    tokenizer/          the tokenizer (tokenizer.json and friends)
    criteria.json       the criterion descriptions the model was trained with
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


def export_model(out: Path, model, tokenizer, encode_spec, criteria: list[Criterion], result, backbone: str) -> None:
    """Write the model directory atomically."""
    from safetensors.torch import save_model

    config = {
        "format": FORMAT,
        "version": VERSION,
        "backbone": backbone,
        "spec": model.spec.to_dict(),
        "encode": asdict(encode_spec),
        "channels": list(SYMPTOMS) if model.spec.channels == len(SYMPTOMS) else ["criterion"],
        "thresholds": {s: 0.5 for s in SYMPTOMS},
        "validation": result.best,
        "hidden_size": int(model.encoder.config.hidden_size),
    }
    with atomic.staged_dir(Path(out)) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        model.encoder.config.save_pretrained(tmp / "encoder")
        tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "criteria.json").write_text(json.dumps(criteria_document(criteria), indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_model(model_dir: Path):
    """(model, tokenizer, config, criteria) from a model directory; a clear error when it is not one."""
    from safetensors.torch import load_model as load_weights
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from dsm5lab.models.multitask import ModelSpec, MultiTaskModel

    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{model_dir}: not a dsm5lab model directory (no config.json); train one with `dvc repro train`")
    config = json.loads(cfg_path.read_text())
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise UserError(f"{model_dir}: config.json is not a {FORMAT} v{VERSION} model (got {config.get('format')!r} "
                        f"v{config.get('version')!r})")
    for part in ("model.safetensors", "encoder/config.json", "tokenizer", "criteria.json"):
        if not (model_dir / part).exists():
            raise UserError(f"{model_dir}: incomplete model directory, {part} is missing")
    encoder = AutoModel.from_config(AutoConfig.from_pretrained(model_dir / "encoder", local_files_only=True))
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "tokenizer", local_files_only=True)
    model = MultiTaskModel(encoder, config["hidden_size"], ModelSpec(**config["spec"]))
    load_weights(model, str(model_dir / "model.safetensors"))
    model.eval()
    return model, tokenizer, config, load_criteria(model_dir / "criteria.json")
