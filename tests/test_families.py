"""Every encoder family through the real path: train (joint) -> export -> reload -> evaluate -> predict.

Each family is a tiny random-init model directory (config.json, model.safetensors and a tokenizer trained
here with `tokenizers`, or with `sentencepiece` for DeBERTa-v3's spm.model-only layout): nothing is
downloaded. The directories are built once per module from the prepared project's posts.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from conftest import copy_project, new_project
from dsm5lab.config import load_params
from dsm5lab.errors import UserError
from test_train import TINY, sets

# TINY with 60 short posts, one epoch of 3 steps: the path is under test, not what the models learn
FAST = TINY + ["data.synthetic.n_posts=60", "data.synthetic.mean_words=120", "train.epochs=1", "train.batch_size=16",
               "evaluate.bootstrap_resamples=20"]
SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
VOCAB = 1500
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FAIRSEQ_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa / XLM-R ids 0..4: pad 1


def wordpiece_vocab(texts: list[str]) -> dict[str, int]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=BERT_SPECIALS))
    return tok.get_vocab()


def byte_bpe(texts: list[str], specials: list[str]):
    """A byte-level BPE (RoBERTa, Longformer, ModernBERT): the tokenizer, its vocab and merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return tok, model["vocab"], merges


def unigram_vocab(texts: list[str], specials: list[str], unk: str) -> list[tuple[str, float]]:
    """A sentencepiece-style Unigram vocabulary (DeBERTa-v3, XLM-R), trained with `tokenizers`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=specials, unk_token=unk))
    return [tuple(p) for p in json.loads(tok.to_str())["model"]["vocab"]]


def _deberta_config(vocab_size: int):
    from transformers import DebertaV2Config

    # deberta-v3-base's layout: relative attention only, no absolute positions, no token types
    return DebertaV2Config(vocab_size=vocab_size, max_position_embeddings=512, type_vocab_size=0,
                           relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
                           position_buckets=32, max_relative_positions=-1, norm_rel_ebd="layer_norm",
                           share_att_key=True, pad_token_id=0, **SMALL)


def _fairseq_config(cls, vocab_size: int, **extra):
    """RoBERTa-style: positions numbered from padding_idx 1 + 1, so 514 rows give 512 usable positions."""
    return cls(vocab_size=vocab_size, max_position_embeddings=514, pad_token_id=1, bos_token_id=0, eos_token_id=2,
               type_vocab_size=1, **SMALL, **extra)


def build_bert(texts, tf):
    vocab = wordpiece_vocab(texts)
    return tf.BertTokenizer(vocab=vocab), tf.BertConfig(vocab_size=len(vocab), max_position_embeddings=128, **SMALL)


def build_electra(texts, tf):
    vocab = wordpiece_vocab(texts)
    config = tf.ElectraConfig(vocab_size=len(vocab), embedding_size=16, max_position_embeddings=128, **SMALL)
    return tf.ElectraTokenizerFast(vocab=vocab), config


def build_distilbert(texts, tf):
    vocab = wordpiece_vocab(texts)
    config = tf.DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                                 max_position_embeddings=128)
    return tf.DistilBertTokenizerFast(vocab=vocab), config


def build_roberta(texts, tf):
    _, vocab, merges = byte_bpe(texts, FAIRSEQ_SPECIALS)
    return tf.RobertaTokenizerFast(vocab=vocab, merges=merges), _fairseq_config(tf.RobertaConfig, len(vocab))


def build_longformer(texts, tf):
    _, vocab, merges = byte_bpe(texts, FAIRSEQ_SPECIALS)
    config = _fairseq_config(tf.LongformerConfig, len(vocab), attention_window=[16], sep_token_id=2)
    return tf.LongformerTokenizerFast(vocab=vocab, merges=merges), config


def build_xlm_roberta(texts, tf):
    vocab = unigram_vocab(texts, FAIRSEQ_SPECIALS, "<unk>")
    return tf.XLMRobertaTokenizerFast(vocab=vocab), _fairseq_config(tf.XLMRobertaConfig, len(vocab))


def build_deberta_v3(texts, tf):
    vocab = unigram_vocab(texts, ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], "[UNK]")
    return tf.DebertaV2TokenizerFast(vocab=vocab, unk_id=3), _deberta_config(len(vocab))


def build_deberta_v3_spm(texts, tf):
    """The Hub's deberta-v3 layout: the tokenizer is only spm.model (sentencepiece), no tokenizer.json."""
    import sentencepiece

    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=600, model_type="unigram", hard_vocab_limit=False,
        pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]", unk_id=3,
        unk_piece="[UNK]", user_defined_symbols=["[MASK]"], minloglevel=2, num_threads=1, max_sentence_length=100000)
    files = {"spm.model": buf.getvalue(), "tokenizer_config.json": json.dumps(
        {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False, "vocab_type": "spm"}).encode()}
    return files, _deberta_config(600)


def build_modernbert(texts, tf):
    from tokenizers import decoders, processors

    tok, vocab, _ = byte_bpe(texts, BERT_SPECIALS)
    # like ModernBERT's own tokenizer.json: byte-level BPE, a BERT template, offsets that keep the leading space
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.ByteLevel()
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                           cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    ids = {k: vocab[f"[{k.upper()}]"] for k in ("pad", "cls", "sep")}
    config = tf.ModernBertConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=512, global_attn_every_n_layers=2,
                                 local_attention=16, pad_token_id=ids["pad"], cls_token_id=ids["cls"],
                                 sep_token_id=ids["sep"], bos_token_id=ids["cls"], eos_token_id=ids["sep"])
    return tokenizer, config


@dataclass(frozen=True)
class Family:
    build: Callable  # (texts, transformers) -> (tokenizer, or its files by name; config)
    encoder: str  # the transformers class the directory loads as
    tokenizer: str
    token_types: bool  # whether the encoder's forward takes token_type_ids


FAMILIES = {
    "bert": Family(build_bert, "BertModel", "BertTokenizer", True),
    "roberta": Family(build_roberta, "RobertaModel", "RobertaTokenizer", True),
    "deberta-v3": Family(build_deberta_v3, "DebertaV2Model", "DebertaV2Tokenizer", True),
    "deberta-v3-spm": Family(build_deberta_v3_spm, "DebertaV2Model", "DebertaV2Tokenizer", True),
    "distilbert": Family(build_distilbert, "DistilBertModel", "DistilBertTokenizer", False),
    "electra": Family(build_electra, "ElectraModel", "BertTokenizer", True),
    "xlm-roberta": Family(build_xlm_roberta, "XLMRobertaModel", "XLMRobertaTokenizer", True),
    "modernbert": Family(build_modernbert, "ModernBertModel", "TokenizersBackend", False),
    "longformer": Family(build_longformer, "LongformerModel", "RobertaTokenizer", True),
}


def build_family(name: str, texts: list[str], out: Path) -> Path:
    """A tiny random-init model directory of family `name`, as save_pretrained writes it."""
    import transformers as tf

    tokenizer, config = FAMILIES[name].build(texts, tf)
    torch.manual_seed(0)
    tf.AutoModel.from_config(config).save_pretrained(out)
    if isinstance(tokenizer, dict):
        for file, data in tokenizer.items():
            (out / file).write_bytes(data)
    else:
        tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared project of 60 synthetic posts; its copies share one MLflow store (created once)."""
    root = tmp_path_factory.mktemp("families-project")
    new_project(root, "prepare", *sets(FAST))
    return root


@pytest.fixture(scope="module")
def family_dir(prepared, tmp_path_factory):
    """family name -> its model directory, built on first use from the prepared posts and criteria."""
    import pandas as pd

    root = tmp_path_factory.mktemp("families")
    posts = pd.read_parquet(prepared / "stages/prepare/posts.parquet")
    criteria = json.loads((prepared / "stages/prepare/criteria.json").read_text())["criteria"]
    texts = posts["text"].tolist() + [c["description"] for c in criteria]
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_family(name, texts, root / name)
        return built[name]

    return get


@pytest.fixture
def project(prepared, tmp_path, monkeypatch):
    return copy_project(prepared, tmp_path, monkeypatch)


def _overrides(prepared: Path, model_dir: Path, extra=()) -> list[str]:
    return FAST + [f"model.backbone={model_dir}", f"tracking.mlflow_uri=sqlite:///{prepared / 'mlflow.db'}", *extra]


def _reloaded_validation(over: list[str]) -> dict:
    """The validation metrics of the exported model, reloaded from disk, on the training run's val split."""
    from dsm5lab.training.inference import load_for_inference, predict, validation_metrics
    from dsm5lab.training.multitask_loss import class_weights
    from dsm5lab.training.run import load_splits

    params = load_params("params.yaml", over)
    model, windower, _, _ = load_for_inference(Path("stages/train/model"), max_chunks=params.model.max_chunks)
    train, val, sentences = load_splits(Path("stages/prepare"), None, None)
    device = next(model.parameters()).device
    weights = class_weights(windower.encode(train, sentences), params.train.loss, device)
    groups = windower.encode(val, sentences)
    pred = predict(model, groups, params.train.eval_batch_size, windower.tok.pad_token_id, device, "fp32", params,
                   weights)
    return validation_metrics(groups, pred, val, params.train.task)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_trains_exports_reloads_evaluates_and_predicts(name, family_dir, prepared, project, cli):
    from dsm5lab.evaluation.stage import validate_report
    from dsm5lab.models.saved import load_model

    over = _overrides(prepared, family_dir(name))
    result = cli("train", *sets(over))
    assert result.exit_code == 0, result.output
    model, tokenizer, config, _ = load_model(Path("stages/train/model"))
    family = FAMILIES[name]
    assert (type(model.encoder).__name__, type(tokenizer).__name__) == (family.encoder, family.tokenizer)
    assert config["spec"]["task"] == "joint"
    # the exported model, reloaded with its own config and tokenizer, computes what training validated
    reloaded, recorded = _reloaded_validation(over), config["validation"]
    for key, value in reloaded.items():
        assert value == pytest.approx(recorded[key], abs=1e-5), (key, reloaded, recorded)

    result = cli("evaluate", *sets(over))
    assert result.exit_code == 0, result.output
    validate_report(json.loads(Path("reports/evaluate/evaluation_report.json").read_text()))

    text = "I can't sleep at night. I feel worthless and tired all the time."
    result = cli("predict", text)
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout)
    assert len(line["probabilities"]) == 9
    for ev in line["evidence"].values():
        for s in ev["sentences"]:
            assert text[s["start"]: s["end"]] == s["text"]
        if "span" in ev:
            span = ev["span"]
            assert text[span["start"]: span["end"]] == span["text"] and span["text"] == span["text"].strip()


def _windower(model_dir: Path, input_format: str, max_length: int = 64):
    from dsm5lab.data.criteria import load_criteria
    from dsm5lab.models.backbone import build_backbone
    from dsm5lab.training.encoding import Windower
    from dsm5lab.training.run import window_spec

    params = load_params("params.yaml", FAST + [f"model.backbone={model_dir}", f"model.max_length={max_length}",
                                                f"train.input_format={input_format}"])
    backbone = build_backbone(params.model, [])
    descriptions = [c.description for c in load_criteria(Path("stages/prepare/criteria.json"))]
    return backbone, Windower(backbone.tokenizer, window_spec(params, backbone.encoder.config), descriptions)


def _posts():
    from dsm5lab.training.run import load_splits

    train, _, sentences = load_splits(Path("stages/prepare"), None, None)
    return train.iloc[:4], sentences


@pytest.mark.parametrize("name,template", [
    ("bert", [["[CLS]"], ["[SEP]"], ["[SEP]"]]),
    ("roberta", [["<s>"], ["</s>", "</s>"], ["</s>"]]),
    ("xlm-roberta", [["<s>"], ["</s>", "</s>"], ["</s>"]]),
    ("deberta-v3", [["[CLS]"], ["[SEP]"], ["[SEP]"]]),
    ("modernbert", [["[CLS]"], ["[SEP]"], ["[SEP]"]]),
])
def test_binary_pair_windows_are_each_familys_own_pair_encoding(name, template, family_dir, project):
    """The first window of (criterion description, post) is exactly what the family's tokenizer builds for the
    pair truncated to the window: its special tokens around and between, token types where the model takes them."""
    from dsm5lab.data.criteria import load_criteria

    backbone, windower = _windower(family_dir(name), "binary_pairs")
    tokenizer = backbone.tokenizer
    assert [tokenizer.convert_ids_to_tokens(ids) for ids in windower.layout["pair"]] == template
    posts, sentences = _posts()
    criteria = [c.description for c in load_criteria(Path("stages/prepare/criteria.json"))]
    for group in windower.encode(posts, sentences)[:9]:
        text = posts.set_index("post_id").loc[group.post_id, "text"]
        own = tokenizer(criteria[group.criterion], text, truncation="only_second", max_length=windower.spec.max_length)
        window = group.windows[0]
        assert window.input_ids.tolist() == own["input_ids"]
        if windower.spec.use_token_types:
            assert window.token_type_ids.tolist() == own["token_type_ids"]
        else:
            assert not window.token_type_ids.any()


@pytest.mark.parametrize("name", ["modernbert", "deberta-v3-spm", "roberta", "xlm-roberta"])
def test_text_tokens_map_to_their_sentence(name, family_dir, project):
    """Offsets start on the word, not on the space before it (byte-level BPE and spm pieces keep it), so the
    first token of every sentence belongs to that sentence; a whitespace-only piece is no text."""
    _, windower = _windower(family_dir(name), "multi_label", max_length=256)
    posts, sentences = _posts()
    for group, text in zip(windower.encode(posts, sentences), posts["text"]):
        for w in group.windows:
            real = (w.offsets[:, 0] >= 0) & (w.offsets[:, 1] > w.offsets[:, 0])
            pieces = [text[s:e] for s, e in w.offsets[real]]
            assert not any(p[0].isspace() for p in pieces), pieces
        post = sentences[sentences["post_id"] == group.post_id]
        for index, start in zip(post["sentence_index"], post["start"]):
            for w in group.windows:  # the token covering the sentence's first character
                hit = np.flatnonzero((w.offsets[:, 0] <= start) & (w.offsets[:, 1] > start))
                if len(hit):
                    assert w.sentence_ids[hit[0]] == index, (text[w.offsets[hit[0], 0]: w.offsets[hit[0], 1]])
    # level=sentence: offsets into the post, inside the sentence, whitespace-only pieces still -1
    texts = dict(zip(posts["post_id"], posts["text"]))
    chosen = sentences[sentences["post_id"].isin(texts)]
    for group, (start, end) in zip(windower.encode_sentences(chosen), chosen[["start", "end"]].to_numpy()):
        offsets = group.windows[0].offsets
        real = offsets[offsets[:, 0] >= 0]
        assert ((real[:, 0] >= start) & (real[:, 1] <= end)).all() and (offsets[offsets[:, 0] < 0] == -1).all()
        assert not any(texts[group.post_id][a].isspace() for a, b in real if b > a)


def _spy_forward(model) -> list[dict]:
    calls: list[dict] = []
    real = model.encoder.forward

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    model.encoder.forward = spy
    return calls


@pytest.mark.parametrize("name", ["bert", "distilbert", "modernbert", "longformer"])
def test_encoder_gets_only_the_inputs_it_takes(name, family_dir, project):
    """token_type_ids only where forward names it (DistilBERT's and ModernBERT's **kwargs would swallow it);
    Longformer: global attention on the tokens before the text (CLS, and the description of a pair), and
    windows it pads to a multiple of its attention_window (16) inside, every hidden state cut back after."""
    from dsm5lab.models.multitask import MultiTaskModel
    from dsm5lab.training.encoding import collate
    from dsm5lab.training.run import model_spec

    backbone, windower = _windower(family_dir(name), "binary_pairs", max_length=60)
    posts, sentences = _posts()
    groups = windower.encode(posts, sentences)[:3]
    params = load_params("params.yaml", FAST + ["train.input_format=binary_pairs", "model.pooling=last_2_layer_mix"])
    model = MultiTaskModel(backbone.encoder, backbone.hidden_size, model_spec(params))
    calls = _spy_forward(model)
    batch = collate(groups, backbone.tokenizer.pad_token_id, model.spec.evidence_head, model.spec.max_span_tokens)
    out = model(batch)
    assert out["logits"].shape == (3, 1) and torch.isfinite(out["logits"]).all()
    width = batch["input_ids"].shape[1]
    assert out["evidence"]["start"].shape[-1] == width and (name != "longformer" or width % 16)
    assert ("token_type_ids" in calls[0]) == FAMILIES[name].token_types
    if name == "longformer":
        lead = calls[0]["global_attention_mask"]
        windows = [g for g in groups for _ in g.windows]
        for k, g in enumerate(windows):
            n = len(windower.desc_ids[g.criterion]) + 3  # <s> description </s></s>
            assert lead[k, :n].tolist() == [1] * n and not lead[k, n:].any()
    else:
        assert "global_attention_mask" not in calls[0]


@pytest.mark.parametrize("name,keys", [
    ("bert", {"hidden_dropout_prob": 0.2, "attention_probs_dropout_prob": 0.3}),
    ("distilbert", {"dropout": 0.2, "attention_dropout": 0.3}),
    ("modernbert", {"embedding_dropout": 0.2, "mlp_dropout": 0.2, "attention_dropout": 0.3}),
])
def test_dropouts_reach_each_familys_config(name, keys, family_dir, project):
    from dsm5lab.models.backbone import build_backbone

    params = load_params("params.yaml", FAST + [f"model.backbone={family_dir(name)}", "model.hidden_dropout=0.2",
                                                "model.attention_dropout=0.3"])
    config = build_backbone(params.model, []).encoder.config
    assert {k: getattr(config, k) for k in keys} == keys


@pytest.mark.parametrize("name,table", [("roberta", 514), ("xlm-roberta", 514), ("longformer", 514),
                                        ("deberta-v3", 512), ("bert", 128)])
def test_usable_positions_leave_out_the_padding_offset(name, table, family_dir, project):
    from dsm5lab.models.backbone import build_backbone

    usable = table - 2 if table == 514 else table  # RoBERTa-style: padding_idx 1, positions from 2
    params = load_params("params.yaml", FAST + [f"model.backbone={family_dir(name)}", f"model.max_length={usable}"])
    backbone = build_backbone(params.model, [])
    assert backbone.max_positions == usable
    too_long = load_params("params.yaml", FAST + [f"model.backbone={family_dir(name)}",
                                                  f"model.max_length={usable + 1}"])
    with pytest.raises(UserError, match=rf"{usable + 1} exceeds .* {usable} usable positions "
                                        rf"\(max_position_embeddings {table}\); allowed: up to {usable}"):
        build_backbone(too_long.model, [])


def test_longest_usable_roberta_window_runs(family_dir, project):
    """512 tokens through a 514-row RoBERTa position table: the last position is really there."""
    from dsm5lab.training.encoding import collate

    backbone, windower = _windower(family_dir("roberta"), "multi_label", max_length=512)
    posts, sentences = _posts()
    long_post = posts.assign(text=" ".join(posts["text"]) * 3).iloc[:1]
    window = windower.encode(long_post, sentences.iloc[:0])[0].windows[0]
    assert len(window.input_ids) == 512
    batch = collate(windower.encode(long_post, sentences.iloc[:0])[:1], backbone.tokenizer.pad_token_id, None)
    out = backbone.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.last_hidden_state.shape[1] == 512


def _one_line_refusal(cli, over, fragment):
    result = cli("train", *sets(over))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert "Traceback" not in result.output


def test_too_long_windows_for_roberta_are_refused(family_dir, prepared, project, cli):
    _one_line_refusal(cli, _overrides(prepared, family_dir("roberta"), ["model.max_length=513"]),
                      "model.max_length: 513 exceeds")


def test_tokenizer_without_offsets_is_refused(family_dir, prepared, project, cli, tmp_path):
    """A Python-only tokenizer (here ByT5's) has no char offsets, which evidence spans need."""
    import shutil

    model_dir = tmp_path / "no-offsets"
    model_dir.mkdir()
    for part in ("config.json", "model.safetensors"):
        shutil.copy(family_dir("bert") / part, model_dir / part)
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ByT5Tokenizer"}))
    _one_line_refusal(cli, _overrides(prepared, model_dir),
                      "has a ByT5Tokenizer without char offsets; dsm5lab needs a fast (tokenizers-backed) tokenizer")


def test_tokenizer_without_padding_token_is_refused(family_dir, prepared, project, cli, tmp_path):
    import shutil

    model_dir = tmp_path / "no-pad"
    shutil.copytree(family_dir("modernbert"), model_dir)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    _one_line_refusal(cli, _overrides(prepared, model_dir), "without a padding token; set pad_token")


def test_spm_only_tokenizer_without_sentencepiece_is_refused(family_dir, prepared, project, cli, monkeypatch):
    from transformers.utils import import_utils

    _, message = import_utils.BACKENDS_MAPPING["sentencepiece"]
    monkeypatch.setitem(import_utils.BACKENDS_MAPPING, "sentencepiece", (lambda: False, message))
    monkeypatch.setattr(import_utils, "is_sentencepiece_available", lambda: False)
    _one_line_refusal(cli, _overrides(prepared, family_dir("deberta-v3-spm")),
                      "ships its tokenizer only as a sentencepiece model (*.model, no tokenizer.json); reading it "
                      "needs the packages sentencepiece and protobuf")
