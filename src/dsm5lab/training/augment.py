"""Training-text augmentation, drawn anew each epoch: EDA's random swap and random deletion (Wei & Zou 2019),
WordNet synonyms and masked-LM (contextual) substitution.

Two rules keep it honest:
- Only the training split is augmented (`Run.prepare_epoch` hands it the run's training posts, never the
  validation posts, an HPO fold's held-out posts or anything evaluate reads).
- Only sentences without annotation change: a sentence with any label != 0 (evidence, or a clinician's
  hard negative) stays byte-identical. After substitution each post's text and every sentence's char
  offsets are rebuilt, so `text[start:end]` is each sentence again and evidence spans stay exact.
  A post with an unaligned status-1 annotation is not augmented at all: that annotation still sets the
  post's label, but its words sit in some "unannotated" sentence that augmentation would otherwise rewrite.

`prob` is EDA's alpha, per word of an augmented sentence: synonym and contextual replace each eligible
word (letters only, not a stopword) with that probability, random_delete drops each word with it (one
word always stays), random_swap makes Binomial(words, prob) swaps. Each sentence gets one of `methods`,
chosen at random. Randomness comes from (seed, epoch, post id) alone: the same post is augmented the
same way whichever fold it trains in, and a resumed run redraws exactly what it lost.
"""

from __future__ import annotations

import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from dsm5lab.data.labels import ANNOTATION_LABELS
from dsm5lab.errors import UserError

WORDNET_POS = ("noun", "verb", "adj", "adv")
TOP_K = 10  # contextual: the masked-LM's best candidates a replacement is drawn from (by their probability)
MLM_BATCH = 32
# EDA's stopword list: never replaced by a synonym or a masked-LM guess (negations included)
STOPWORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself
it its itself they them their theirs themselves what which who whom this that these those am is are was were be
been being have has had having do does did doing a an the and but if or because as until while of at by for with
about against between into through during before after above below to from up down in out on off over under
again further then once here there when where why how all any both each few more most other some such no nor not
only own same so than too very s t can will just don should now
""".split())
_CORE = re.compile(r"([^\w]*)([A-Za-z]+)([^\w]*)")  # a word's letters, with punctuation around them
# WordNet's morphology rules (morphy): inflected suffix -> base suffix, per part of speech
_DETACH = {
    "noun": (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
             ("ies", "y")),
    "verb": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "adj": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "adv": (),
}


def is_on(cfg) -> bool:
    """Whether train.augment changes anything: some method and a probability above zero."""
    return bool(cfg.methods) and cfg.prob > 0


def unaligned_evidence_posts(annotations: pd.DataFrame) -> frozenset[str]:
    """Posts with a status-1 annotation found in no sentence (prepared annotations, start -1): left whole."""
    return frozenset(annotations.loc[(annotations["status"] == 1) & (annotations["start"] < 0), "post_id"])


def protected(sentences: pd.DataFrame) -> np.ndarray:
    """Sentences that must stay byte-identical: any annotation (evidence 1 or hard negative -1)."""
    return (sentences[list(ANNOTATION_LABELS)].to_numpy() != 0).any(axis=1)


# ---------------------------------------------------------------- the thesaurus


class WordNet:
    """Synonyms from WordNet 3.0's database files (index.* and data.*, as Debian's wordnet-base ships them)."""

    def __init__(self, folder: Path):
        self.index: dict[str, dict[str, list[int]]] = {}  # pos -> lemma -> synset offsets
        self.data: dict[str, bytes] = {}
        self.exceptions: dict[str, dict[str, list[str]]] = {}
        for pos in WORDNET_POS:
            self.index[pos] = _read_index(folder / f"index.{pos}")
            self.data[pos] = (folder / f"data.{pos}").read_bytes()
            exc = folder / f"{pos}.exc"
            lines = exc.read_text(encoding="utf-8").splitlines() if exc.is_file() else []
            self.exceptions[pos] = {w[0]: w[1:] for w in (line.split() for line in lines) if len(w) > 1}
        self._cache: dict[str, tuple[str, ...]] = {}

    def _bases(self, word: str, pos: str) -> list[str]:
        """The word's lemmas in this part of speech (WordNet's morphy: exceptions, then suffix rules)."""
        forms = [word, *self.exceptions[pos].get(word, [])]
        forms += [word[: -len(old)] + new for old, new in _DETACH[pos] if word.endswith(old) and len(word) > len(old)]
        return [f for f in dict.fromkeys(forms) if f in self.index[pos]]

    def _lemmas(self, pos: str, offset: int) -> list[str]:
        data = self.data[pos]
        fields = data[offset: data.index(b"\n", offset)].decode("utf-8").split()
        n = int(fields[3], 16)  # w_cnt, then word / lex_id pairs
        return [re.sub(r"\([a-z]+\)$", "", w) for w in fields[4: 4 + 2 * n: 2]]

    def synonyms(self, word: str) -> tuple[str, ...]:
        """Other lemmas of every synset of `word` (lower case), in WordNet's order; '_' becomes a space."""
        if word not in self._cache:
            found, own = [], {word}
            for pos in WORDNET_POS:
                for base in self._bases(word, pos):
                    own.add(base)
                    found += [lemma for off in self.index[pos][base] for lemma in self._lemmas(pos, off)]
            self._cache[word] = tuple(w.replace("_", " ") for w in dict.fromkeys(found) if w.lower() not in own)
        return self._cache[word]


def _read_index(path: Path) -> dict[str, list[int]]:
    out = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith(" "):  # the licence header
                continue
            fields = line.split()
            n = int(fields[2])  # synset_cnt: the last n fields are the synsets' byte offsets in data.<pos>
            out[fields[0]] = [int(x) for x in fields[-n:]]
    return out


@lru_cache(maxsize=2)
def load_wordnet(folder: str) -> WordNet:
    """WordNet from `folder`, read once per process (HPO trials share it); one line when it is not there."""
    path = Path(folder)
    if not all((path / f"{kind}.{pos}").is_file() for pos in WORDNET_POS for kind in ("index", "data")):
        raise UserError(f"train.augment: synonym needs WordNet's database files at {folder} (apt-get install "
                        "wordnet-base, or set train.augment.wordnet_dir)")
    return WordNet(path)


# ---------------------------------------------------------------- the masked LM


class MaskedLM:
    """A model with a trained masked-LM head, for contextual substitution (loaded offline, safetensors only)."""

    def __init__(self, name: str, key: str, device):
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        from dsm5lab import hub
        from dsm5lab.models.backbone import resolve

        kind, location = resolve(name)
        allowed = ("a local directory, catalog name or cached Hub id of a model with a trained masked-LM head, "
                   "e.g. bert-base, roberta-base, mental-bert, as train.augment.mlm_model")
        if kind == "builtin":
            raise UserError(f"{key}: contextual needs a masked-LM head; {name!r} is built with random weights and "
                            f"has none (allowed: {allowed})")
        local_only = kind == "local" or hub.offline()
        # a head built at random must not move training's RNG; a missing head is our error, not a load report
        with torch.random.fork_rng(devices=[]), _quiet_transformers():
            try:
                self.tok = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
                model, info = AutoModelForMaskedLM.from_pretrained(
                    location, local_files_only=local_only, use_safetensors=True, output_loading_info=True)
            except (OSError, ValueError, ImportError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise UserError(f"{key}: cannot load {name!r} ({location}) as a masked LM offline: {first} "
                                f"(allowed: {allowed})") from None
        prefix = model.base_model_prefix + "."
        head_missing = [k for k in info["missing_keys"] if not k.startswith(prefix)]
        if head_missing or self.tok.mask_token is None:
            raise UserError(f"{key}: {name!r} ({location}) has no trained masked-LM head (its weights are an "
                            f"encoder only: {head_missing[0] if head_missing else 'no mask token'} missing); "
                            f"contextual needs one (allowed: {allowed})")
        self.model = model.to(device).eval()
        self.device = device
        special = set(self.tok.all_special_ids)
        # a whole word the tokenizer can put in a sentence: letters only, not a WordPiece continuation
        vocab = self.tok.convert_ids_to_tokens(list(range(len(self.tok))))
        self.words = [None if i in special or tok is None or tok.startswith("##")
                      else (w if (w := self.tok.convert_tokens_to_string([tok]).strip()).isalpha() else None)
                      for i, tok in enumerate(vocab)]

    def candidates(self, texts: list[str]) -> list[list[tuple[list[str], np.ndarray]]]:
        """Per text, per mask token (in order): up to TOP_K replacement words and their probabilities."""
        import torch

        out = []
        limit = min(int(self.tok.model_max_length or 512), 512)
        for i in range(0, len(texts), MLM_BATCH):
            enc = self.tok(texts[i: i + MLM_BATCH], padding=True, truncation=True, max_length=limit,
                           return_tensors="pt").to(self.device)
            with torch.inference_mode():
                logits = self.model(**enc).logits
            masks = enc["input_ids"] == self.tok.mask_token_id
            for row in range(len(logits)):
                per_mask = []
                for pos in torch.nonzero(masks[row]).flatten().tolist():
                    top = torch.topk(logits[row, pos].float(), min(4 * TOP_K, logits.shape[-1]))
                    kept = [(self.words[j], v) for j, v in zip(top.indices.tolist(), top.values.tolist())
                            if self.words[j] is not None][:TOP_K]
                    if not kept:
                        per_mask.append(([], np.zeros(0)))
                        continue
                    scores = np.array([v for _, v in kept])
                    p = np.exp(scores - scores.max())
                    per_mask.append(([w for w, _ in kept], p / p.sum()))
                out.append(per_mask)
        return out


@contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------- per-sentence operations


@dataclass
class _Sentence:
    """A sentence cut into words and the whitespace around them, so unchanged parts keep their bytes."""

    lead: str
    words: list[str]
    gaps: list[str]  # gaps[k] lies between words[k] and words[k + 1]
    trail: str

    @classmethod
    def of(cls, text: str) -> _Sentence:
        spans = [m.span() for m in re.finditer(r"\S+", text)]
        if not spans:
            return cls(text, [], [], "")
        words = [text[a:b] for a, b in spans]
        gaps = [text[spans[k][1]: spans[k + 1][0]] for k in range(len(spans) - 1)]
        return cls(text[: spans[0][0]], words, gaps, text[spans[-1][1]:])

    def text(self, keep: list[int] | None = None) -> str:
        keep = list(range(len(self.words))) if keep is None else keep
        if not keep:
            return self.lead + self.trail
        body = self.words[keep[0]] + "".join(self.gaps[k - 1] + self.words[k] for k in keep[1:])
        return self.lead + body + self.trail

    def eligible(self) -> list[int]:
        """Words synonym and contextual may replace: letters (punctuation around them kept), no stopword."""
        return [k for k, w in enumerate(self.words)
                if (m := _CORE.fullmatch(w)) and m.group(2).lower() not in STOPWORDS]

    def replace(self, k: int, new: str) -> None:
        pre, core, post = _CORE.fullmatch(self.words[k]).groups()
        self.words[k] = pre + (new[:1].upper() + new[1:] if core[:1].isupper() else new) + post


def random_swap(s: _Sentence, rng: np.random.Generator, prob: float, wordnet: WordNet | None = None) -> str:
    n = len(s.words)
    for _ in range(rng.binomial(n, prob) if n > 1 else 0):
        a, b = rng.choice(n, size=2, replace=False)
        s.words[a], s.words[b] = s.words[b], s.words[a]
    return s.text()


def random_delete(s: _Sentence, rng: np.random.Generator, prob: float, wordnet: WordNet | None = None) -> str:
    if len(s.words) < 2:
        return s.text()
    keep = rng.random(len(s.words)) >= prob
    if not keep.any():
        keep[rng.integers(len(s.words))] = True
    return s.text(np.flatnonzero(keep).tolist())


def synonym(s: _Sentence, rng: np.random.Generator, prob: float, wordnet: WordNet) -> str:
    eligible = s.eligible()
    for k, draw in zip(eligible, rng.random(len(eligible))):
        if draw < prob and (options := wordnet.synonyms(_CORE.fullmatch(s.words[k]).group(2).lower())):
            s.replace(k, options[rng.integers(len(options))])
    return s.text()


# train.augment.methods -> the sentence operation; contextual (None) is done for all sentences at once (_fill)
METHODS = {"synonym": synonym, "random_swap": random_swap, "random_delete": random_delete, "contextual": None}


# ---------------------------------------------------------------- posts


def post_rng(seed: int, epoch: int, post_id: str) -> np.random.Generator:
    """A post's own stream: the same draws whichever other posts train beside it."""
    return np.random.default_rng([seed, epoch, zlib.crc32(post_id.encode("utf-8"))])


class Augmenter:
    """train.augment, ready to run: `augmenter(posts, sentences, seed, epoch)` -> augmented copies; the posts of
    `untouched` (unaligned_evidence_posts) come back as they went in."""

    def __init__(self, cfg, backbone: str, device, untouched: frozenset[str] = frozenset()):
        self.methods, self.prob = list(cfg.methods), float(cfg.prob)
        self.untouched = frozenset(untouched)
        self.wordnet = load_wordnet(cfg.wordnet_dir) if "synonym" in self.methods else None
        self.mlm = None
        if "contextual" in self.methods:
            key = "train.augment.mlm_model" if cfg.mlm_model else "train.augment (mlm_model null: model.backbone)"
            self.mlm = MaskedLM(cfg.mlm_model or backbone, key, device)

    def __call__(self, posts: pd.DataFrame, sentences: pd.DataFrame, seed: int,
                 epoch: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Copies of `posts` and of their sentences with unannotated sentences augmented, texts and offsets rebuilt."""
        sents = sentences[sentences["post_id"].isin(set(posts["post_id"]))]
        sents = sents.sort_values(["post_id", "start"], kind="stable").reset_index(drop=True)
        new = sents["text"].tolist()
        guard = protected(sents)
        pending: list[tuple[int, _Sentence, list[int], np.random.Generator]] = []  # contextual, filled below
        bounds, starts, ends = _post_bounds(sents), sents["start"].to_numpy(), sents["end"].to_numpy()
        for pid in posts["post_id"]:
            a, b = bounds.get(pid, (0, 0))
            if a == b or pid in self.untouched or not _disjoint(starts[a:b], ends[a:b]):
                continue
            rng = post_rng(seed, epoch, pid)
            for i in range(a, b):
                if guard[i]:
                    continue
                op = METHODS[self.methods[rng.integers(len(self.methods))]]
                s = _Sentence.of(new[i])
                if op is not None:
                    new[i] = op(s, rng, self.prob, self.wordnet)
                else:  # contextual: choose the words now, ask the masked LM for all sentences at once
                    eligible = s.eligible()
                    chosen = [k for k, d in zip(eligible, rng.random(len(eligible))) if d < self.prob]
                    if chosen:
                        pending.append((i, s, chosen, rng))
        if pending:
            self._fill(pending, new)
        return rebuild(posts, sents, new)

    def _fill(self, pending, new: list[str]) -> None:
        mask = self.mlm.tok.mask_token
        masked = []
        for _, s, chosen, _ in pending:
            words = list(s.words)
            for k in chosen:
                pre, _, post = _CORE.fullmatch(words[k]).groups()
                words[k] = pre + mask + post
            masked.append(_Sentence(s.lead, words, s.gaps, s.trail).text())
        for (i, s, chosen, rng), per_mask in zip(pending, self.mlm.candidates(masked)):
            for k, (options, p) in zip(chosen, per_mask):  # masks cut off by truncation keep their word
                original = _CORE.fullmatch(s.words[k]).group(2).lower()
                keep = [j for j, w in enumerate(options) if w.lower() != original]
                if keep:
                    q = p[keep] / p[keep].sum()
                    s.replace(k, options[keep[rng.choice(len(keep), p=q)]])
            new[i] = s.text()


def _post_bounds(sents: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """post id -> (first row, row after its last) in sentences sorted by post."""
    ids = sents["post_id"].to_numpy()
    if not len(ids):
        return {}
    cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(ids)]
    return {ids[a]: (int(a), int(b)) for a, b in zip(starts, ends)}


def _disjoint(starts: np.ndarray, ends: np.ndarray) -> bool:
    """Sentences in order and not overlapping: the only layout whose offsets `rebuild` can shift."""
    return bool((ends >= starts).all() and (starts[1:] >= ends[:-1]).all())


def rebuild(posts: pd.DataFrame, sents: pd.DataFrame, new: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Posts whose sentences' text is now `new`: the text between sentences is kept, every offset recomputed."""
    old = sents["text"].tolist()
    changed = {pid for pid, o, n in zip(sents["post_id"], old, new) if o != n}
    posts, sents = posts.copy(), sents.copy()
    if not changed:
        return posts, sents
    starts, ends = sents["start"].to_numpy().copy(), sents["end"].to_numpy().copy()
    bounds = _post_bounds(sents)
    texts = posts["text"].tolist()
    for row, pid in enumerate(posts["post_id"]):
        if pid not in changed:
            continue
        a, b = bounds[pid]
        text, pieces, cursor, shift = texts[row], [], 0, 0
        for i in range(a, b):
            pieces += [text[cursor: starts[i]], new[i]]
            cursor = ends[i]
            starts[i] += shift
            shift += len(new[i]) - len(old[i])
            ends[i] = starts[i] + len(new[i])
        texts[row] = "".join(pieces) + text[cursor:]
    posts["text"] = pd.array(texts, dtype=posts["text"].dtype)
    posts["n_words"] = np.array([len(t.split()) for t in texts], dtype=posts["n_words"].dtype)
    sents["text"] = pd.array(new, dtype=sents["text"].dtype)
    sents["start"], sents["end"] = starts, ends
    return posts, sents


def build_augmenter(params, device, annotations: pd.DataFrame | None = None) -> Augmenter | None:
    """The run's augmenter, or None when train.augment is off (then training is exactly as without it).
    `annotations` (the prepared table): its posts with an unaligned status-1 annotation are never augmented."""
    cfg = params.train.augment
    if not is_on(cfg):
        return None
    untouched = frozenset() if annotations is None else unaligned_evidence_posts(annotations)
    return Augmenter(cfg, params.model.backbone, device, untouched)
