"""The synthetic ReDSM5-format generator: statistics, hard negatives, alignment, determinism, variety."""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from dsm5lab.config import SyntheticConfig
from dsm5lab.data import phrasebank, synthetic
from dsm5lab.data.labels import (
    ANNOTATION_LABELS,
    ANNOTATIONS_COLUMNS,
    ANNOTATIONS_FILE,
    POSTS_COLUMNS,
    POSTS_FILE,
    REDSM5_MEAN_WORDS,
    REDSM5_POSTS,
    REDSM5_POSTS_PER_LABEL,
    REDSM5_SYMPTOM_FREE_POSTS,
    SPECIAL_CASE,
    SYMPTOMS,
)

PARAMS = Path(__file__).parents[1] / "params.yaml"
_QUOTES = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"'})


def default_cfg(**overrides) -> SyntheticConfig:
    raw = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))["data"]["synthetic"]
    return SyntheticConfig(**{**raw, **overrides})


@pytest.fixture(scope="module")
def bundle() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return synthetic._generate(default_cfg())


def posts_with(ann: pd.DataFrame, labels) -> set[str]:
    return set(ann.loc[(ann.status == 1) & ann.DSM5_symptom.isin(list(labels)), "post_id"])


def norm(text: str) -> str:
    return " ".join(text.translate(_QUOTES).casefold().split())


def best_window_ratio(sentence: str, post: str) -> float:
    """Best similarity of the sentence to any run of about as many words in the post."""
    target, words = norm(sentence), norm(post).split()
    n = len(target.split())
    sm = SequenceMatcher(None, autojunk=False)
    sm.set_seq2(target)
    best = 0.0
    for size in (n - 1, n, n + 1):
        for k in range(max(1, len(words) - size + 1)):
            sm.set_seq1(" ".join(words[k : k + size]))
            if sm.real_quick_ratio() > best and sm.quick_ratio() > best:
                best = max(best, sm.ratio())
    return best


def within(value: float, reference: float, rel: float = 0.10) -> bool:
    return abs(value - reference) <= rel * reference


def test_default_size_matches_redsm5_statistics(bundle):
    posts, ann, _ = bundle
    cfg = default_cfg()
    assert cfg.n_posts == REDSM5_POSTS == len(posts)
    quotas = synthetic.post_quotas(cfg)
    for label in ANNOTATION_LABELS:
        n = len(posts_with(ann, [label]))
        assert n == quotas[label], label
        assert within(n, REDSM5_POSTS_PER_LABEL[label]), (label, n)
    symptomatic = posts_with(ann, SYMPTOMS)
    assert within(len(posts) - len(symptomatic), REDSM5_SYMPTOM_FREE_POSTS)
    evidence = ann[(ann.status == 1) & ann.DSM5_symptom.isin(SYMPTOMS)]
    per_post = evidence.groupby("post_id").DSM5_symptom.nunique()
    assert 1.1 < per_post.mean() < 1.3 and per_post.max() >= 3
    # SPECIAL_CASE sits on symptomatic and symptom-free posts alike
    special = posts_with(ann, [SPECIAL_CASE])
    assert special & symptomatic and special - symptomatic
    words = posts.text.str.split().str.len()
    assert within(words.mean(), REDSM5_MEAN_WORDS)
    assert words.max() > 450 and (words > 450).sum() > 20
    assert words.min() < 15


def test_tables_follow_the_redsm5_contract(bundle):
    posts, ann, _ = bundle
    assert tuple(posts.columns) == POSTS_COLUMNS and tuple(ann.columns) == ANNOTATIONS_COLUMNS
    assert posts.post_id.str.fullmatch(r"syn_\d{5}").all() and posts.post_id.is_unique
    assert ann.status.dtype.kind == "i" and set(ann.status) == {0, 1}
    for col in ("post_id", "sentence_id", "sentence_text", "DSM5_symptom", "explanation"):
        assert all(isinstance(v, str) and v.strip() for v in ann[col]), col
    assert set(ann.DSM5_symptom) == set(ANNOTATION_LABELS)
    assert set(ann.post_id) <= set(posts.post_id)
    ids = [re.fullmatch(rf"{re.escape(p)}_(\d+)", s) for p, s in zip(ann.post_id, ann.sentence_id)]
    assert all(ids)
    assert not ann.duplicated(["sentence_id", "DSM5_symptom"]).any()
    # very short posts carry no annotation
    words = dict(zip(posts.post_id, posts.text.str.split().str.len()))
    assert min(words[p] for p in ann.post_id) >= synthetic.SHORT_POST_WORDS


def test_hard_negatives_shared_sentences_and_explanations(bundle):
    posts, ann, kinds = bundle
    neg = ann[ann.status == 0]
    kinds_seen = neg.explanation.str.extract(r"^(Negated|Resolved|Opposite):")[0]
    assert kinds_seen.notna().all()
    assert set(kinds_seen) == {"Negated", "Resolved", "Opposite"}
    assert within(neg.post_id.nunique() / len(posts), default_cfg().hard_negative_ratio, rel=0.2)
    assert set(neg.post_id) - posts_with(ann, SYMPTOMS), "hard negatives in symptom-free posts"
    both = ann.groupby(["post_id", "DSM5_symptom"]).status.nunique()
    assert (both == 2).sum() > 20
    # one sentence, two criteria: the same text in the post, and a pair the phrasebank writes
    pos = ann[ann.status == 1].assign(source=kinds.source_text[ann.status == 1])
    shared = pos.groupby("sentence_id").filter(lambda g: len(g) == 2)
    assert shared.sentence_id.nunique() > 30
    for _, g in shared.groupby("sentence_id"):
        assert g.source.nunique() == 1 and tuple(g.DSM5_symptom) in phrasebank.PAIRS
    assert ann.explanation.nunique() > 50
    for label, why in zip(pos.DSM5_symptom, pos.explanation):
        assert why.endswith(f"(A.{SYMPTOMS.index(label) + 1}).") if label in SYMPTOMS else "A.1-A.9" in why


def test_sentence_text_occurs_in_its_post_up_to_drift(bundle):
    posts, ann, kinds = bundle
    text = dict(zip(posts.post_id, posts.text))
    verbatim = np.array([s in text[p] for p, s in zip(ann.post_id, ann.sentence_text)])
    normalised = np.array([norm(s) in norm(text[p]) for p, s in zip(ann.post_id, ann.sentence_text)])
    kind = kinds.kind.to_numpy()
    assert verbatim[kind == "exact"].all()
    assert (kinds.source_text[kind == "exact"] == ann.sentence_text[kind == "exact"]).all()
    assert not verbatim[kind != "exact"].any()
    assert normalised[kind == "drift"].all()
    assert not normalised[(kind == "paraphrase") | (kind == "unrecognisable")].any()
    rows = np.flatnonzero(~normalised)
    ratios = {i: best_window_ratio(ann.sentence_text[i], text[ann.post_id[i]]) for i in rows}
    assert all(ratios[i] >= 0.9 for i in np.flatnonzero(kind == "paraphrase"))
    assert all(ratios[i] < 0.8 for i in np.flatnonzero(kind == "unrecognisable"))
    bad = sum(r < 0.9 for r in ratios.values()) / len(ann)
    assert verbatim.mean() >= 0.85 and bad <= 0.02
    assert (kind == "drift").sum() > 50 and (kind == "paraphrase").sum() > 10 and 0 < bad


def test_posts_have_reddit_noise_and_unicode(bundle):
    posts, _, _ = bundle
    joined = "".join(posts.text)
    for mark in ("\n\n", "’", "“", "—", "…", " idk", " tbh"):
        assert mark in joined, repr(mark)
    assert posts.text.str.contains("\n\n").mean() > 0.1
    assert re.search(r"(^|[.?!] )i [a-z]", joined), "lower-cased sentences"


def test_bundle_is_byte_identical_for_a_config(tmp_path):
    cfg = default_cfg()
    first = synthetic.write_bundle(cfg, tmp_path / "a")
    second = synthetic.write_bundle(cfg, tmp_path / "b")
    assert [p.name for p in first] == [POSTS_FILE, ANNOTATIONS_FILE]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
        data = a.read_bytes()
        assert not data.startswith(b"\xef\xbb\xbf") and b"\r\n" not in data
    back = pd.read_csv(first[0], dtype=str, keep_default_na=False)
    posts, _ = synthetic.generate(cfg)
    assert back.equals(posts)
    small = default_cfg(n_posts=80)
    x = synthetic.write_bundle(small, tmp_path / "x")
    y = synthetic.write_bundle(small.model_copy(update={"seed": small.seed + 1}), tmp_path / "y")
    assert x[0].read_bytes() != y[0].read_bytes() and x[1].read_bytes() != y[1].read_bytes()


def test_held_out_evidence_is_mostly_unseen(bundle):
    posts, ann, _ = bundle
    ids = posts.post_id.to_numpy().copy()
    np.random.default_rng(0).shuffle(ids)
    held_out = set(ids[: len(ids) // 5])
    evidence = ann[ann.status == 1]
    test_texts = set(evidence.loc[evidence.post_id.isin(held_out), "sentence_text"])
    train_texts = set(evidence.loc[~evidence.post_id.isin(held_out), "sentence_text"])
    assert len(test_texts) > 200
    assert len(test_texts - train_texts) / len(test_texts) >= 0.70


def test_small_bundle_still_covers_every_criterion():
    cfg = default_cfg(n_posts=60)
    posts, ann = synthetic.generate(cfg)
    assert len(posts) == 60
    quotas = synthetic.post_quotas(cfg)
    for label in SYMPTOMS:
        n = len(posts_with(ann, [label]))
        assert n == quotas[label] and n >= cfg.min_posts_per_criterion, label
    assert len(posts) - len(posts_with(ann, SYMPTOMS)) == round(cfg.symptom_free_ratio * 60)


def test_phrasebank_has_enough_templates():
    rng = np.random.default_rng(0)
    for s in SYMPTOMS:
        assert len(phrasebank.POSITIVE[s]) >= 15, s
        assert set(phrasebank.NEGATIVE[s]) == {"negation", "recovery", "opposite"}
        assert sum(map(len, phrasebank.NEGATIVE[s].values())) >= 8, s
    templates = [t for v in phrasebank.POSITIVE.values() for t in v] + list(phrasebank.FILLER)
    templates += [t for v in phrasebank.NEGATIVE.values() for k in v.values() for t in k]
    templates += [t for v in (*phrasebank.PAIRS.values(), *phrasebank.SPECIAL.values()) for t in v]
    for t in templates:  # every slot exists and no markup survives rendering
        out = synthetic._render(rng, t)
        assert not re.search(r"[{}\[\]|]", out), t
    for a, b in phrasebank.PAIRS:
        assert SYMPTOMS.index(a) < SYMPTOMS.index(b)
