"""Per-post test decisions, written by evaluate, and the paired bootstrap the gate runs on them.

The evaluate stage writes the model's test decisions (not its text: post ids and 0/1 strings over the
nine criteria, in `SYMPTOMS` order) to `reports/evaluate/predictions/`, committed to git beside the
metrics. `dsm5lab gate` reads the baseline's copy at the baseline revision (`git show`, so it works on
a fresh clone with no DVC remote) and scores new against baseline on the same resampled test posts:
a metric that moved beyond its tolerance fails only when the paired bootstrap calls the drop significant.

- test_posts.csv: post_id, gold, at_tuned (thresholds tuned on val), at_0.5, one row per test post.
- test_sentences.csv: post_id, sentence (its position in the post), gold, pred (evidence at 0.5); only
  sentences with a gold or predicted positive, as all-negative rows add nothing to any F1.

Every headline metric the decisions determine is recomputed from them (`statistic`); the gate checks
that it equals the committed number, so stale predictions are refused rather than compared. numpy and
pandas only: the gate stays torch-free.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dsm5lab import atomic
from dsm5lab.data.labels import SYMPTOMS
from dsm5lab.errors import UserError
from dsm5lab.metrics import multilabel_f1, paired_bootstrap, with_none_class

POSTS = "test_posts.csv"
SENTENCES = "test_sentences.csv"
POST_COLUMNS = ("gold", "at_tuned", "at_0.5")
SENTENCE_COLUMNS = ("gold", "pred")


def bits(matrix: np.ndarray) -> list[str]:
    """(N, 9) 0/1 -> N strings like '010000000'."""
    return ["".join("1" if v else "0" for v in row) for row in np.asarray(matrix).astype(bool)]


def unbits(strings, source: str) -> np.ndarray:
    """The inverse of bits(): one line naming the file when a value is not nine 0/1 characters."""
    strings = list(strings)
    bad = next((s for s in strings if not isinstance(s, str) or len(s) != len(SYMPTOMS) or set(s) - {"0", "1"}),
               None)
    if bad is not None:
        raise UserError(f"{source}: expected {len(SYMPTOMS)} characters of 0/1 per criterion column (got {bad!r})")
    return np.array([[c == "1" for c in s] for s in strings], dtype=bool).reshape(len(strings), len(SYMPTOMS))


def frames(post_ids: list[str], gold: np.ndarray, at_tuned: np.ndarray | None, at_half: np.ndarray | None,
           sentences: list[tuple[np.ndarray, np.ndarray]] | None) -> dict[str, pd.DataFrame]:
    """The prediction files of one test split: sentences is per post (gold (n, 9), pred (n, 9)), or None."""
    posts = pd.DataFrame({"post_id": post_ids, "gold": bits(gold)})
    if at_tuned is not None:
        posts["at_tuned"], posts["at_0.5"] = bits(at_tuned), bits(at_half)
    out = {POSTS: posts}
    if sentences is not None:
        rows = []
        for pid, (g, p) in zip(post_ids, sentences):
            g, p = np.asarray(g).astype(bool), np.asarray(p).astype(bool)
            for k in np.flatnonzero(g.any(1) | p.any(1)):
                rows.append((pid, int(k), bits(g[k : k + 1])[0], bits(p[k : k + 1])[0]))
        out[SENTENCES] = pd.DataFrame(rows, columns=["post_id", "sentence", *SENTENCE_COLUMNS])
    return out


def write(directory: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Replace `directory` with the given files in one step."""
    with atomic.staged_dir(directory) as tmp:
        for name, frame in tables.items():
            frame.to_csv(tmp / name, index=False, lineterminator="\n")


@dataclass(frozen=True)
class Predictions:
    """One model's test decisions: post rows in file order, sentence rows pointing at their post's row."""

    post_ids: tuple[str, ...]
    posts: dict[str, np.ndarray]  # POST_COLUMNS present -> (n, 9) bool
    sentence_post: np.ndarray | None  # (m,) row of each sentence's post
    sentences: dict[str, np.ndarray] | None  # SENTENCE_COLUMNS -> (m, 9) bool

    def aligned_to(self, order: tuple[str, ...]) -> Predictions:
        """The same decisions with posts in `order` (a permutation of post_ids)."""
        where = {pid: i for i, pid in enumerate(self.post_ids)}
        perm = np.array([where[p] for p in order], dtype=np.int64)
        inverse = np.empty_like(perm)
        inverse[perm] = np.arange(len(perm))
        return Predictions(order, {k: v[perm] for k, v in self.posts.items()},
                           None if self.sentence_post is None else inverse[self.sentence_post], self.sentences)


def parse(texts: dict[str, str | None], source: str) -> Predictions:
    """Predictions from the files' texts (None = file absent); one clear line on anything malformed."""
    if texts.get(POSTS) is None:
        raise UserError(f"{source}: no {POSTS}")
    posts = pd.read_csv(io.StringIO(texts[POSTS]), dtype=str, keep_default_na=False)
    missing = {"post_id", "gold"} - set(posts.columns)
    if missing:
        raise UserError(f"{source}/{POSTS}: missing column(s) {', '.join(sorted(missing))}")
    ids = tuple(posts["post_id"])
    if len(set(ids)) != len(ids) or not ids:
        raise UserError(f"{source}/{POSTS}: post_id must be unique and the file not empty")
    cols = {c: unbits(posts[c], f"{source}/{POSTS}") for c in POST_COLUMNS if c in posts.columns}
    sentence_post, sentences = None, None
    if texts.get(SENTENCES) is not None:
        sents = pd.read_csv(io.StringIO(texts[SENTENCES]), dtype=str, keep_default_na=False)
        row = {pid: i for i, pid in enumerate(ids)}
        unknown = sorted(set(sents["post_id"]) - set(row)) if "post_id" in sents.columns else ["<no post_id>"]
        if unknown:
            raise UserError(f"{source}/{SENTENCES}: post(s) not in {POSTS}: {', '.join(unknown[:3])}")
        sentence_post = sents["post_id"].map(row).to_numpy(dtype=np.int64)
        sentences = {c: unbits(sents[c], f"{source}/{SENTENCES}") for c in SENTENCE_COLUMNS}
    return Predictions(ids, cols, sentence_post, sentences)


def at_revision(root: Path, rev: str, directory: str, label: str | None = None) -> Predictions | None:
    """The prediction files committed at git revision `rev` (`git show`, so no DVC remote is needed), or None when
    that revision has none; `label` names the revision in error lines (default: rev)."""
    import subprocess

    texts = {}
    for name in (POSTS, SENTENCES):
        shown = subprocess.run(["git", "show", f"{rev}:./{directory}/{name}"], cwd=root, capture_output=True,
                               text=True)
        texts[name] = shown.stdout if shown.returncode == 0 else None
    return None if texts[POSTS] is None else parse(texts, f"{directory} at {label or rev}")


def read(directory: Path) -> Predictions | None:
    """The prediction files in a directory, or None when it has none."""
    directory = Path(directory)
    if not (directory / POSTS).is_file():
        return None
    texts = {n: (directory / n).read_text(encoding="utf-8") if (directory / n).is_file() else None
             for n in (POSTS, SENTENCES)}
    return parse(texts, str(directory))


# metrics/evaluate.json key -> (what it needs, statistic over resampled post rows)
def _posts(column: str, kind: str, none_class: bool) -> tuple[str, Callable]:
    def fn(p: Predictions, idx: np.ndarray) -> float | None:
        gold, pred = p.posts["gold"][idx], p.posts[column][idx]
        if none_class:
            gold, pred = with_none_class(gold, pred)
        f = multilabel_f1(gold, pred)
        return f[kind] if f["n_classes"] else None

    return column, fn


def _sentence_macro(p: Predictions, idx: np.ndarray) -> float | None:
    counts = np.bincount(idx, minlength=len(p.post_ids))
    rows = np.repeat(np.arange(len(p.sentence_post)), counts[p.sentence_post])
    f = multilabel_f1(p.sentences["gold"][rows], p.sentences["pred"][rows])
    return f["macro"] if f["n_classes"] else None


STATISTICS: dict[str, tuple[str, Callable]] = {
    "test.macro_f1": _posts("at_tuned", "macro", False),
    "test.micro_f1": _posts("at_tuned", "micro", False),
    "test.macro_f1_at_0.5": _posts("at_0.5", "macro", False),
    "paper.micro_f1": _posts("at_0.5", "micro", True),
    "paper.macro_f1": _posts("at_0.5", "macro", True),
    "evidence.sentence_macro_f1": ("sentences", _sentence_macro),
}


def supports(p: Predictions, key: str) -> bool:
    """Whether `key` has a statistic and `p` holds what it needs."""
    if key not in STATISTICS:
        return False
    need = STATISTICS[key][0]
    return p.sentences is not None if need == "sentences" else need in p.posts


def statistic(p: Predictions, key: str, idx: np.ndarray | None = None) -> float | None:
    """The metric `key` recomputed from the decisions, over post rows idx (all by default)."""
    idx = np.arange(len(p.post_ids)) if idx is None else idx
    return STATISTICS[key][1](p, idx)


def compare(new: Predictions, base: Predictions, key: str, resamples: int, seed: int, alpha: float) -> dict:
    """Paired bootstrap of `key`, new minus baseline, over the test posts both scored (same ids required)."""
    if set(new.post_ids) != set(base.post_ids):
        raise ValueError("new and baseline scored different test posts")
    base = base.aligned_to(new.post_ids)
    fn = STATISTICS[key][1]
    return paired_bootstrap(lambda idx: (fn(new, idx), fn(base, idx)), len(new.post_ids), resamples, seed, alpha)
