"""`dsm5lab preset`: catalog values into params.yaml with comments kept; the pretrained search space."""

from __future__ import annotations

import optuna
import pytest
import yaml

from conftest import ROOT, default_params
from dsm5lab.config import load_params, validate
from dsm5lab.models import catalog
from dsm5lab.yaml_edit import set_values

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_preset_writes_the_recommended_values_keeping_comments(workdir, cli):
    params = workdir / "params.yaml"
    params.write_text("# my header comment\n" + params.read_text().replace(
        "  pooling: attention", "  pooling: attention  # keep this comment", 1))
    result = cli("preset", "electra-base")
    assert result.exit_code == 0, result.output
    assert "+  learning_rate: 0.0001" in result.output and "preset electra-base: changed 7 value(s)" in result.output
    after = params.read_text()
    assert after.startswith("# my header comment\n") and "# keep this comment" in after
    cfg = load_params(params)
    rec = catalog.get("electra-base").recommended
    assert cfg.model.backbone == "electra-base" and cfg.model.max_length == rec.max_length
    t = cfg.train
    assert (t.learning_rate, t.batch_size, t.warmup_ratio, t.weight_decay, t.epochs, t.layer_lr_decay) == (
        rec.learning_rate, rec.batch_size, rec.warmup_ratio, rec.weight_decay, rec.epochs, 0.8)
    # only the preset's lines change: nulls, list indents and one-line flow maps are written back as they were
    changed = [line for line in result.output.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    keys = {line[1:].split(":")[0].strip() for line in changed}
    assert keys == {"backbone", "max_length", "epochs", "batch_size", "learning_rate", "layer_lr_decay",
                    "weight_decay"}, changed
    again = cli("preset", "electra-base")
    assert again.exit_code == 0 and "changed 0 value(s)" in again.output
    cli("preset", "minilm")  # a second preset resets layer_lr_decay and writes exponents YAML 1.1 reads as floats
    assert yaml.safe_load(params.read_text())["train"]["learning_rate"] == 5e-5
    assert load_params(params).train.layer_lr_decay == 1.0


def test_dry_run_writes_nothing(workdir, cli):
    before = (workdir / "params.yaml").read_bytes()
    result = cli("preset", "roberta-base", "--dry-run")
    assert result.exit_code == 0
    assert "+  backbone: roberta-base" in result.output and "would change" in result.output
    assert (workdir / "params.yaml").read_bytes() == before


def test_unknown_preset_is_one_line_listing_the_names(workdir, cli):
    before = (workdir / "params.yaml").read_bytes()
    result = cli("preset", "roberta-bas")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "'roberta-bas' is not a catalog name (allowed: tiny, minilm," in lines[0]
    assert "did you mean 'roberta-base'?" in lines[0]
    assert (workdir / "params.yaml").read_bytes() == before


def test_every_catalog_preset_fits_the_params_schema(workdir):
    from dsm5lab.preset import apply_preset

    for name in catalog.entries():
        changed, _ = apply_preset(name, workdir / "params.yaml", dry_run=True)
        if name == "tiny":
            assert not changed, "the tiny preset is the params.yaml default"
        else:
            assert changed["model.backbone"] == name


def test_the_writer_rejects_unknown_keys_and_invalid_results(workdir):
    from dsm5lab.errors import UserError

    params = workdir / "params.yaml"
    before = params.read_bytes()
    with pytest.raises(UserError, match="preset x: 'train.learning_rat' is not a key"):
        set_values(params, {"train.learning_rat": 1e-5}, origin="preset x", action="preset x")
    with pytest.raises(UserError, match="after preset x: train.layer_lr_decay"):
        set_values(params, {"train.layer_lr_decay": 1.5}, origin="preset x", action="preset x")
    assert params.read_bytes() == before


# ---------------------------------------------------------------- the pretrained search space

def params_with_space(name: str):
    raw = default_params()
    raw["hpo"]["space"] = name
    return validate(raw)


def test_the_pretrained_space_validates_with_literature_ranges():
    params = params_with_space("pretrained")
    space = params.hpo.search_space
    lr = space["train.learning_rate"]
    assert lr.log and lr.low == 1e-6 and lr.high == 1e-4
    wd = space["train.weight_decay"]
    assert wd.low == 0.0 and not wd.log  # no weight decay is a recipe of its own (ELECTRA)
    assert max(space["train.batch_size"].choices) == 128
    assert 0.0 <= space["train.warmup_ratio"].low and space["train.warmup_ratio"].high <= 0.2
    assert space["train.layer_lr_decay"].high == 1.0
    for key in ("model.hidden_dropout", "model.attention_dropout", "model.classifier_dropout", "train.loss"):
        assert key in space
    for name in space["model.backbone"].choices:
        entry = catalog.get(name)
        assert entry.pretrained and entry.fast_tokenizer and entry.max_positions >= 512, name
    assert params_with_space("full").hpo.search_space["train.learning_rate"].low <= 1e-6


def test_pretrained_trials_validate_and_big_batches_accumulate():
    from dsm5lab.hpo.space import resolved_values, suggest, trial_params

    params = params_with_space("pretrained")
    base = params.model_dump(include={"model", "train"})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        values = resolved_values(params, suggest(study.ask(), params.hpo.search_space, base))
        trial = trial_params(params, values)
        assert trial.train.batch_size <= params.hpo.max_micro_batch
        seen.add(trial.train.batch_size * trial.train.grad_accum_steps)
    assert 128 in seen or 64 in seen


def test_params_yaml_round_trips_byte_for_byte():
    """The comment-keeping writer changes nothing it was not asked to (promote and preset share it)."""
    import io

    from dsm5lab.yaml_edit import round_trip_yaml

    text = (ROOT / "params.yaml").read_text()
    y = round_trip_yaml()
    out = io.StringIO()
    y.dump(y.load(text), out)
    assert out.getvalue() == text
