"""Seeded generator of a ReDSM5-format bundle (the project's default data source).

Posts are built from the templates in `phrasebank`: evidence sentences for quota-assigned
criteria, hard negatives, SPECIAL_CASE sentences and unannotated filler, with Reddit-style
noise. A few annotation rows drift from the post text (whitespace, quotes, case) or are
reworded, as in the real data, so alignment has to be robust. One numpy Generator seeded
from `cfg.seed` drives every choice, so a config always yields byte-identical CSVs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path

import numpy as np
import pandas as pd

from dsm5lab.config import SyntheticConfig
from dsm5lab.data import phrasebank as pb
from dsm5lab.data.labels import (
    ANNOTATION_LABELS,
    ANNOTATIONS_COLUMNS,
    ANNOTATIONS_FILE,
    NO_SYMPTOMS,
    POSTS_COLUMNS,
    POSTS_FILE,
    REDSM5_POSTS,
    REDSM5_POSTS_PER_LABEL,
    SPECIAL_CASE,
    SYMPTOMS,
)

SHORT_POST_WORDS = 20  # posts with fewer target words carry no annotation at all
_FORCED_SHORT = 0.015  # share of posts drawn as 2-14 words, like ReDSM5's one-liners
_SIGMA = 0.9  # lognormal spread of post length
_LENGTH_SCALE = 1.015  # scales the lognormal target; filler overshoot and one-liners roughly cancel
_EVIDENCE_P = (0.75, 0.18, 0.07)  # 1, 2 or 3 evidence sentences per (post, criterion)
_OWN_NEGATIVE = 0.35  # chance a hard negative is judged against one of the post's own criteria
_CURLY_POSTS = 0.2
_PARAGRAPH_POSTS = 0.45
_UNRECOGNISABLE = 0.2  # share of reworded rows reworded beyond recognition
_OPTION = re.compile(r"\[([^\[\]]*)\]")
_SLOT = re.compile(r"\{(\w+)\}")


def _word_pattern(word: str) -> re.Pattern:
    """A whole-word pattern; an apostrophe in `word` also matches a curly one."""
    body = re.escape(word).replace("'", "['’]")
    return re.compile(rf"(?<![\w'’]){body}(?![\w'’])")


_TYPOS = [(_word_pattern(k), v) for k, v in pb.TYPOS.items()]
_SYNONYMS = [(_word_pattern(k), v) for k, v in pb.SYNONYMS.items()]


@dataclass
class _Sentence:
    text: str
    rows: list[tuple[str, int, str]]  # (DSM5_symptom, status, explanation)


def post_quotas(cfg: SyntheticConfig) -> dict[str, int]:
    """Posts per criterion, SPECIAL_CASE and NO_SYMPTOMS that `generate` produces for cfg.

    ReDSM5's posts per criterion scaled to n_posts, floored at min_posts_per_criterion; a
    criterion cannot sit on more posts than are symptomatic, and posts the criteria cannot
    cover (only with a very low symptom_free_ratio) stay symptom-free.
    """
    n = cfg.n_posts
    free = round(cfg.symptom_free_ratio * n)
    out = {}
    for s in SYMPTOMS:
        scaled = round(REDSM5_POSTS_PER_LABEL[s] * n / REDSM5_POSTS)
        out[s] = min(max(scaled, cfg.min_posts_per_criterion), n - free)
    out[NO_SYMPTOMS] = max(free, n - sum(out.values()))
    out[SPECIAL_CASE] = round(cfg.special_case_ratio * n)
    return out


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _render(rng: np.random.Generator, template: str) -> str:
    text = _OPTION.sub(lambda m: _pick(rng, m.group(1).split("|")), template)
    text = _SLOT.sub(lambda m: _pick(rng, pb.SLOTS[m.group(1)]), text)
    return text[0].upper() + text[1:]


def _similarity(a: str, b: str) -> float:
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def _assign(rng: np.random.Generator, n: int, quotas: dict[str, int]) -> list[list[str]]:
    """Give each of n posts >= 1 criterion so that criterion s sits on exactly quotas[s] posts."""
    has: list[list[str]] = [[] for _ in range(n)]
    covered = np.zeros(n, dtype=bool)
    order = sorted(SYMPTOMS, key=lambda s: -quotas[s])
    rest = sum(quotas.values())
    overlap = max(0, rest - n) / max(rest, 1)
    for s in order:
        q = quotas[s]
        rest -= q
        unc, cov = np.flatnonzero(~covered), np.flatnonzero(covered)
        k = min(q, len(unc), max(q - len(cov), len(unc) - rest, round(q * (1 - overlap))))
        chosen = list(rng.choice(unc, k, replace=False)) if k else []
        if q > k:  # favour posts where a two-criterion sentence exists, as co-occurrence does
            w = np.array([3.0 if any(s in p for p in _pairs_of(has[i] + [s])) else 1.0 for i in cov])
            chosen += list(rng.choice(cov, q - k, replace=False, p=w / w.sum()))
        for i in chosen:
            has[i].append(s)
            covered[i] = True
    return [sorted(h, key=SYMPTOMS.index) for h in has]


def _pairs_of(symptoms: list[str]) -> list[tuple[str, str]]:
    return [p for p in pb.PAIRS if p[0] in symptoms and p[1] in symptoms]


def _annotated(rng, symptoms, pair, special: bool, n_neg: int) -> list[_Sentence]:
    out = []
    if pair:
        rows = [(s, 1, _pick(rng, pb.POSITIVE_EXPLANATION[s])) for s in pair]
        out.append(_Sentence(_render(rng, _pick(rng, pb.PAIRS[pair])), rows))
    for s in symptoms:
        k = int(rng.choice(3, p=_EVIDENCE_P)) + 1 - (s in (pair or ()))
        for t in rng.permutation(len(pb.POSITIVE[s]))[:k]:
            why = _pick(rng, pb.POSITIVE_EXPLANATION[s])
            out.append(_Sentence(_render(rng, pb.POSITIVE[s][t]), [(s, 1, why)]))
    if special:
        cats = list(pb.SPECIAL)
        for c in rng.permutation(len(cats))[: 1 + int(rng.random() < 0.15)]:
            why = _pick(rng, pb.SPECIAL_EXPLANATION[cats[c]])
            out.append(_Sentence(_render(rng, _pick(rng, pb.SPECIAL[cats[c]])), [(SPECIAL_CASE, 1, why)]))
    for _ in range(n_neg):
        s = _pick(rng, symptoms) if symptoms and rng.random() < _OWN_NEGATIVE else _pick(rng, SYMPTOMS)
        kind = _pick(rng, list(pb.NEGATIVE[s]))
        why = _pick(rng, pb.NEGATIVE_EXPLANATION[kind]).format(theme=pb.THEME[s])
        out.append(_Sentence(_render(rng, _pick(rng, pb.NEGATIVE[s][kind])), [(s, 0, why)]))
    return out


def _fillers(rng, target: int, words: int) -> list[_Sentence]:
    out: list[_Sentence] = []
    if target < SHORT_POST_WORDS:
        while words < target:
            used = {s.text for s in out}
            fits = [t for t in pb.SHORT if len(t.split()) <= target - words and t not in used]
            if not fits:
                break
            out.append(_Sentence(_pick(rng, fits), []))
            words += len(out[-1].text.split())
        return out or [_Sentence(_pick(rng, pb.SHORT), [])]
    order = rng.permutation(len(pb.FILLER))  # cycle through all templates before repeating
    while words < target:
        out.append(_Sentence(_render(rng, pb.FILLER[order[len(out) % len(order)]]), []))
        words += len(out[-1].text.split())
    return out


def _noise(rng, text: str, gentle: bool) -> str:
    """Reddit-style noise: a typo, slang, a dropped full stop, an emoji, lower case."""
    lower, punct, typo, slang, emoji = rng.random(5) < (0.45, 0.45, 0.35, 0.25, 0.1)
    if typo:
        hits = [(p, v) for p, v in _TYPOS if p.search(text)]
        if hits:
            p, v = hits[int(rng.integers(len(hits)))]
            text = p.sub(v, text, count=1)
    if slang:
        word = _pick(rng, [w for w in pb.SLANG if not gentle or w != "lol"])
        body, end = re.match(r"(.*?)([.!?]*)$", text, re.S).groups()
        text = f"{word} {text[0].lower()}{text[1:]}" if rng.random() < 0.4 else f"{body} {word}{end}"
    if punct or not (lower or typo or slang or emoji):
        text = text.rstrip(".!?")
    if emoji and not gentle:
        text = f"{text} {_pick(rng, pb.EMOJI)}"
    return text.lower() if lower else text


def _curly(text: str) -> str:
    return re.sub(r'"([^"]*)"', "“\\1”", text).replace("'", "’")


def _join(rng, texts: list[str]) -> str:
    if len(texts) < 5 or rng.random() >= _PARAGRAPH_POSTS:
        return " ".join(texts)
    breaks, single = rng.random(len(texts) - 1) < 0.25, rng.random(len(texts) - 1) < 0.15
    seps = np.where(breaks, np.where(single, "\n", "\n\n"), " ")
    return texts[0] + "".join(sep + t for sep, t in zip(seps, texts[1:]))


def _drift(rng, text: str, post: str) -> str | None:
    """The same sentence with whitespace, quotes or case changed; None if nothing applies."""
    spaces = [m.start() for m in re.finditer(" ", text)]
    for op in rng.permutation(4):
        if op < 2 and spaces:
            i = spaces[int(rng.integers(len(spaces)))]
            out = text[:i] + ("  " if op == 0 else "\n") + text[i + 1 :]
        elif op == 2:
            out = text.lower() if text != text.lower() else text[0].upper() + text[1:]
        elif op == 3 and any(c in text for c in "'\"’“”"):
            straight = "'" in text or '"' in text
            out = _curly(text) if straight else text.translate(str.maketrans("’“”", "'\"\""))
        else:
            continue
        if out != text and out not in post:
            return out
    return None


def _reword(rng, text: str, post: str) -> str | None:
    """A slight rewording (a word swapped, or a filler word dropped) still >= 0.9 similar, or None."""
    pos = max(post.find(text), 0)
    ctx = post[max(pos - 8, 0) : pos + len(text) + 8]
    words = text.split(" ")
    drops = [i for i in range(1, len(words) - 1) if words[i].lower() in pb.DROPPABLE]
    options = [(p, v) for p, v in _SYNONYMS if p.search(text)] + drops
    for j in rng.permutation(len(options)):
        opt = options[j]
        if isinstance(opt, tuple):
            out = opt[0].sub(opt[1], text, count=1)
        else:
            out = " ".join(words[:opt] + words[opt + 1 :])
        # a partial-ratio style score (best same-length window of the post), as fuzzy aligners use
        windows = [ctx[k : k + len(out)] for k in range(max(1, len(ctx) - len(out) + 1))]
        partial = max(_similarity(out, w) for w in windows)
        if out not in post and _similarity(out, text) >= 0.9 and partial >= 0.93:
            return out
    return None


def _unrecognisable(rng, symptom: str, status: int, sentences: list[str]) -> str | None:
    """Another sentence of the same kind, far from every sentence of the post (ends up unaligned)."""
    if symptom == SPECIAL_CASE:
        pool = [t for v in pb.SPECIAL.values() for t in v]
    else:
        pool = pb.POSITIVE[symptom] if status else [t for v in pb.NEGATIVE[symptom].values() for t in v]
    for _ in range(20):
        out = _render(rng, _pick(rng, pool))
        if all(_similarity(out, s) < 0.6 for s in sentences):
            return out
    return None


def _annotation_text(rng, cfg: SyntheticConfig, row: tuple, text: str, post: str, sentences: list[str]):
    """(sentence_text, kind) for one row: usually the post's sentence, sometimes drifted or reworded."""
    u = rng.random()
    if u < cfg.annotation_drift:
        out, kind = _drift(rng, text, post), "drift"
    elif u >= cfg.annotation_drift + cfg.annotation_paraphrase:
        out, kind = None, "exact"
    elif rng.random() < _UNRECOGNISABLE:
        out, kind = _unrecognisable(rng, row[0], row[1], sentences), "unrecognisable"
    else:
        out, kind = _reword(rng, text, post), "paraphrase"
    return (out, kind) if out else (text, "exact")


@dataclass
class _Plan:
    """What one post will carry, decided for all posts before any text is written."""

    words: int
    symptoms: list[str]
    pair: tuple[str, str] | None = None
    special: bool = False
    negatives: int = 0


def _plan(rng: np.random.Generator, cfg: SyntheticConfig) -> list[_Plan]:
    """Lengths, criteria (exact quotas), shared sentences, SPECIAL_CASE and hard negatives per post."""
    n = cfg.n_posts
    quotas = post_quotas(cfg)
    mu = np.log(cfg.mean_words * _LENGTH_SCALE) - _SIGMA**2 / 2
    words = rng.lognormal(mu, _SIGMA, n)
    forced = rng.random(n) < _FORCED_SHORT
    words[forced] = rng.integers(2, 15, int(forced.sum()))
    words = np.clip(np.rint(words), 2, cfg.max_words).astype(int)
    short = words < SHORT_POST_WORDS
    plans = [_Plan(int(w), []) for w in words]

    order = rng.permutation(n)  # symptom-free posts: every short post first, then random others
    ranked = np.concatenate([order[short[order]], order[~short[order]]])
    sym_posts = np.sort(ranked[quotas[NO_SYMPTOMS] :])
    for i, syms in zip(sym_posts, _assign(rng, len(sym_posts), {s: quotas[s] for s in SYMPTOMS})):
        plans[i].symptoms = syms
    eligible = [int(i) for i in sym_posts if _pairs_of(plans[i].symptoms)]
    n_shared = min(round(cfg.shared_sentence_ratio * len(sym_posts)), len(eligible))
    for i in rng.choice(eligible, n_shared, replace=False) if n_shared else []:
        options = _pairs_of(plans[i].symptoms)
        plans[i].pair = options[int(rng.integers(len(options)))]
    long_posts = np.flatnonzero(~short)
    for i in rng.choice(long_posts, min(quotas[SPECIAL_CASE], len(long_posts)), replace=False):
        plans[i].special = True
    hard = rng.choice(long_posts, min(round(cfg.hard_negative_ratio * n), len(long_posts)), replace=False)
    for i, extra in zip(hard, rng.random(len(hard)) < 0.2):
        plans[i].negatives = 1 + int(extra)
    return plans


def _write_post(rng, cfg: SyntheticConfig, pid: str, plan: _Plan) -> tuple[str, list[tuple], list[tuple]]:
    """One post's text, its annotation rows and, per row, (kind, sentence as in the post)."""
    annotated = _annotated(rng, plan.symptoms, plan.pair, plan.special, plan.negatives)
    sentences = _fillers(rng, plan.words, sum(len(s.text.split()) for s in annotated))
    slots = np.sort(rng.choice(len(sentences) + len(annotated), len(annotated), replace=False))
    for slot, j in zip(slots, rng.permutation(len(annotated))):
        sentences.insert(int(slot), annotated[j])
    curly = rng.random() < _CURLY_POSTS
    texts = []
    for s in sentences:
        t = _curly(s.text) if curly else s.text
        gentle = any(r[0] == "SUICIDAL_THOUGHTS" for r in s.rows)
        texts.append(_noise(rng, t, gentle) if rng.random() < cfg.text_noise else t)
    post = _join(rng, texts)
    rows, kinds = [], []
    for j, s in enumerate(sentences):
        for row in sorted(s.rows, key=lambda r: ANNOTATION_LABELS.index(r[0])):
            text, kind = _annotation_text(rng, cfg, row, texts[j], post, texts)
            rows.append((pid, f"{pid}_{j}", text, *row))
            kinds.append((kind, texts[j]))
    return post, rows, kinds


def _generate(cfg: SyntheticConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """generate() plus, per annotation row, how its sentence_text relates to the post.

    The third frame has columns `kind` (exact | drift | paraphrase | unrecognisable) and
    `source_text` (the sentence as it stands in the post).
    """
    rng = np.random.default_rng(cfg.seed)
    width = max(5, len(str(cfg.n_posts - 1)))
    posts, rows, kinds = [], [], []
    for i, plan in enumerate(_plan(rng, cfg)):
        pid = f"syn_{i:0{width}d}"
        post, post_rows, post_kinds = _write_post(rng, cfg, pid, plan)
        posts.append((pid, post))
        rows += post_rows
        kinds += post_kinds
    post_df = pd.DataFrame(posts, columns=list(POSTS_COLUMNS))
    ann_df = pd.DataFrame(rows, columns=list(ANNOTATIONS_COLUMNS))
    ann_df["status"] = ann_df["status"].astype(int)
    return post_df, ann_df, pd.DataFrame(kinds, columns=["kind", "source_text"])


def generate(cfg: SyntheticConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (posts, annotations) with exactly the ReDSM5 columns; all str except status (int 0/1)."""
    posts, annotations, _ = _generate(cfg)
    return posts, annotations


def write_bundle(cfg: SyntheticConfig, out_dir: Path) -> tuple[Path, Path]:
    """Write redsm5_posts.csv and redsm5_annotations.csv into out_dir (UTF-8, '\\n'); return their paths."""
    posts, annotations = generate(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / POSTS_FILE, out_dir / ANNOTATIONS_FILE
    for frame, path in zip((posts, annotations), paths):
        path.write_bytes(frame.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    return paths
