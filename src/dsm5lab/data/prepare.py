"""The `prepare` stage: source -> validated, aligned, split tables under stages/prepare/."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dsm5lab import atomic, layout
from dsm5lab.config import Params
from dsm5lab.data import coverage
from dsm5lab.data.alignment import METHODS, UNALIGNED, Aligner, Match, sentence_index
from dsm5lab.data.criteria import criteria_document, load_criteria
from dsm5lab.data.labels import ANNOTATION_LABELS, NO_SYMPTOMS, POST_LABELS, SYMPTOMS
from dsm5lab.data.raw import RawBundle
from dsm5lab.data.schema import SCHEMA_VERSION, conform
from dsm5lab.data.segment import EVIDENCE_RULE, segment
from dsm5lab.data.sources import load_bundle
from dsm5lab.data.splits import check_disjoint, make_splits
from dsm5lab.errors import UserError
from dsm5lab.progress import progress

SPLITS = ("train", "val", "test")


@dataclass
class Prepared:
    posts: pd.DataFrame
    sentences: pd.DataFrame
    annotations: pd.DataFrame
    metrics: dict
    manifest: dict
    criteria: dict


def evidence_sentences(starts: np.ndarray, ends: np.ndarray, start: int, end: int, natural: bool) -> np.ndarray:
    """Indices of the sentences an aligned span [start, end) marks. Segmented around the spans (natural False),
    every sentence it touches is inside it; segmented naturally, EVIDENCE_RULE decides."""
    overlap = np.minimum(ends, end) - np.maximum(starts, start)
    touched = overlap > 0
    if not natural or not touched.any():
        return np.flatnonzero(touched)
    enough = touched & ((2 * overlap >= end - start) | (2 * overlap >= ends - starts))
    return np.flatnonzero(enough) if enough.any() else np.array([int(np.argmax(overlap))])


def align_and_segment(bundle: RawBundle, fuzzy_threshold: float, natural: frozenset[str] | set[str] = frozenset()):
    """Align annotations to char offsets (by text, else by sentence_id: alignment.Aligner), segment posts, label
    sentences; (annotations, sentences, label conflicts, per annotation: whether its aligned span crosses a
    natural sentence boundary).

    Posts in `natural` (val and test) are segmented as `predict` segments any text, blind to the annotations,
    and labelled by EVIDENCE_RULE; the others (train) are cut around the aligned spans, so each span is whole
    sentences of its own."""
    ann = bundle.annotations
    by_post: dict[str, list[int]] = {}
    for i, pid in enumerate(ann["post_id"]):
        by_post.setdefault(pid, []).append(i)
    n_ann = len(ann)
    start = np.full(n_ann, -1, np.int64)
    end = np.full(n_ann, -1, np.int64)
    first = np.full(n_ann, -1, np.int64)
    last = np.full(n_ann, -1, np.int64)
    method = np.array(["unaligned"] * n_ann, dtype=object)
    score = np.zeros(n_ann, np.float64)
    texts, symptoms, statuses = ann["sentence_text"].tolist(), ann["symptom"].tolist(), ann["status"].tolist()
    indices = [sentence_index(p, s) for p, s in zip(ann["post_id"], ann["sentence_id"])]
    label_col = {label: j for j, label in enumerate(ANNOTATION_LABELS)}
    sentence_rows: list[tuple] = []
    conflicts = 0
    crosses = np.zeros(n_ann, bool)
    posts = bundle.posts
    for pid, text in progress(zip(posts["post_id"], posts["text"]), "aligning", total=len(posts)):
        rows = by_post.get(pid, [])
        aligner = Aligner(text, fuzzy_threshold)
        cache: dict[tuple[str, int | None], Match] = {}
        for i in rows:
            key = texts[i], indices[i]
            if key not in cache:
                cache[key] = aligner.align(*key)
            m = cache[key]
            if m is not UNALIGNED:
                start[i], end[i], method[i], score[i] = m.start, m.end, m.method, m.score
        spans = sorted({(int(start[i]), int(end[i])) for i in rows if start[i] >= 0})
        blind = segment(text)
        is_natural = pid in natural
        sents = blind if is_natural else segment(text, spans)
        cuts = np.array([e for _, e in blind[:-1]], dtype=np.int64)  # natural boundaries between sentences
        marks = np.zeros((len(sents), len(ANNOTATION_LABELS)), np.int8)
        positive = np.zeros_like(marks, dtype=bool)
        negative = np.zeros_like(marks, dtype=bool)
        starts = np.array([s for s, _ in sents], dtype=np.int64)
        ends = np.array([e for _, e in sents], dtype=np.int64)
        for i in rows:
            if start[i] < 0:
                continue
            covered = evidence_sentences(starts, ends, int(start[i]), int(end[i]), is_natural)
            if len(covered) == 0:
                method[i], start[i], end[i], score[i] = "unaligned", -1, -1, 0.0
                continue
            crosses[i] = bool(((cuts > start[i]) & (cuts < end[i])).any())
            first[i], last[i] = covered[0], covered[-1]
            target = positive if statuses[i] == 1 else negative
            target[covered, label_col[symptoms[i]]] = True
        conflicts += int((positive & negative).sum())
        marks[negative] = -1
        marks[positive] = 1
        for k, (s, e) in enumerate(sents):
            sentence_rows.append((pid, k, s, e, text[s:e], *marks[k].tolist()))
    ann = ann.assign(
        align_method=method, align_score=score, start=start, end=end,
        first_sentence=first, last_sentence=last,
    )
    sentences = pd.DataFrame(
        sentence_rows,
        columns=["post_id", "sentence_index", "start", "end", "text", *ANNOTATION_LABELS],
    )
    return ann, sentences, conflicts, crosses


def post_labels(posts: pd.DataFrame, ann: pd.DataFrame) -> pd.DataFrame:
    """Post-level multi-hot labels from status-1 rows (aligned or not), plus NO_SYMPTOMS."""
    pos = ann.loc[ann["status"] == 1, ["post_id", "symptom"]].drop_duplicates()
    hot = pd.crosstab(pos["post_id"], pos["symptom"]).clip(upper=1)
    hot = hot.reindex(index=posts["post_id"], columns=list(ANNOTATION_LABELS), fill_value=0)
    hot[NO_SYMPTOMS] = (hot[list(SYMPTOMS)].sum(axis=1) == 0).astype(int)
    return hot.reset_index(drop=True).astype("int8")


def check_coverage(posts: pd.DataFrame, require_all: bool) -> None:
    """Fail on an empty split, or on a split missing a criterion when that is required."""
    n = len(posts)
    for name in SPLITS:
        if not (posts["split"] == name).any():
            raise UserError(
                f"prepare.split.{name}: split {name!r} is empty ({n} posts in all); "
                f"use more posts or a larger prepare.split.{name}"
            )
    if not require_all:
        return
    for label in SYMPTOMS:
        total = int(posts[label].sum())
        for name in SPLITS:
            if not posts.loc[posts["split"] == name, label].any():
                raise UserError(
                    f"prepare.require_all_criteria: split {name!r} has no post with {label} "
                    f"({total} positive posts in all; each of the {len(SPLITS)} splits needs one): "
                    "add data, or set prepare.require_all_criteria=false"
                )


def fingerprint(posts: pd.DataFrame, ann: pd.DataFrame) -> str:
    """sha256 over the validated source tables (order-independent for posts)."""
    h = hashlib.sha256()
    for pid, text in sorted(zip(posts["post_id"], posts["text"])):
        h.update(f"{pid}\x1f{text}\x1e".encode())
    for row in ann[["post_id", "sentence_id", "sentence_text", "symptom", "status"]].itertuples(index=False):
        h.update("\x1f".join(map(str, row)).encode() + b"\x1e")
    return h.hexdigest()


def per_split(frame: pd.DataFrame) -> dict:
    counts = frame["split"].value_counts()
    return {"total": int(len(frame)), **{s: int(counts.get(s, 0)) for s in SPLITS}}


def compute_metrics(prep_posts, sentences, ann, bundle: RawBundle, conflicts: int, n_folds: int) -> dict:
    methods = Counter(ann["align_method"])
    n_ann = max(len(ann), 1)
    folds = prep_posts.loc[prep_posts["fold"] >= 0]
    fold_sizes = folds["fold"].value_counts()
    missing_in_folds = sum(
        int(not folds.loc[folds["fold"] == f, label].any()) for f in range(n_folds) for label in SYMPTOMS
    )
    return {
        "posts": per_split(prep_posts),
        "sentences": per_split(sentences),
        "annotations": {
            **per_split(ann),
            "positive": int((ann["status"] == 1).sum()),
            "hard_negative": int((ann["status"] == 0).sum()),
        },
        "criteria": {
            label: {s: int(prep_posts.loc[prep_posts["split"] == s, label].sum()) for s in SPLITS}
            for label in POST_LABELS
        },
        "alignment": {
            **{m: int(methods.get(m, 0)) for m in METHODS},
            "aligned_share": round(1 - methods.get("unaligned", 0) / n_ann, 4),
        },
        "rejected": {k: int(v) for k, v in sorted(bundle.rejected.items())},
        "label_conflicts": conflicts,
        "folds": {
            "k": n_folds,
            "min_posts": int(fold_sizes.min()),
            "max_posts": int(fold_sizes.max()),
            "criteria_missing": missing_in_folds,
        },
    }


def build(params: Params) -> Prepared:
    """Everything prepare computes, in memory; nothing is written."""
    cfg = params.prepare
    criteria = load_criteria(params.data.criteria_file)
    bundle = load_bundle(params.data)
    posts = bundle.posts.sort_values("post_id", kind="stable").reset_index(drop=True)
    # post labels need no alignment (status-1 rows, aligned or not): split first, so that val and test posts
    # can be segmented blind to their annotations
    labels = post_labels(posts, bundle.annotations)
    split, fold = make_splits(labels[list(POST_LABELS)].to_numpy(), cfg.split.model_dump(), cfg.n_folds, params.seed)
    check_disjoint(posts["post_id"].tolist(), split.tolist(), fold.tolist())
    held_out = frozenset(posts["post_id"][np.isin(split, ["val", "test"])])
    ann, sentences, conflicts, crosses = align_and_segment(
        RawBundle(posts, bundle.annotations, bundle.origin, bundle.rejected), cfg.alignment.fuzzy_threshold,
        natural=held_out,
    )
    sent_counts = sentences["post_id"].value_counts()
    prep_posts = pd.concat(
        [
            posts.assign(
                n_words=posts["text"].str.split().str.len(),
                n_sentences=posts["post_id"].map(sent_counts).fillna(0),
                split=split,
                fold=fold,
            ),
            labels,
        ],
        axis=1,
    )
    check_coverage(prep_posts, cfg.require_all_criteria)
    where = prep_posts.set_index("post_id")[["split", "fold"]]
    sentences = sentences.join(where, on="post_id")
    ann = ann.join(where, on="post_id")
    metrics = compute_metrics(prep_posts, sentences, ann, bundle, conflicts, cfg.n_folds)
    metrics["segmentation"] = {
        "train": "cut around the aligned annotation spans (each span is whole sentences)",
        "val_test": "natural, as `dsm5lab predict` segments any text (no annotation is used)",
        "evidence_rule": EVIDENCE_RULE,
        # aligned spans a natural segmentation cuts: on val/test these mark more than one sentence, or part of one
        "spans_crossing_natural_boundaries": per_split(ann.loc[crosses]),
        "aligned_spans": per_split(ann.loc[ann["start"] >= 0]),
    }
    metrics["windows"] = coverage.count(params, prep_posts, sentences, [c.description for c in criteria])
    metrics["warnings"] = warnings(metrics, cfg.split.model_dump())
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "origin": bundle.origin,
        "fingerprint": fingerprint(posts, bundle.annotations),
        "rows": {"posts": len(prep_posts), "sentences": len(sentences), "annotations": len(ann)},
    }
    return Prepared(
        posts=conform(prep_posts, "posts"),
        sentences=conform(sentences, "sentences"),
        annotations=conform(ann, "annotations"),
        metrics=metrics,
        manifest=manifest,
        criteria=criteria_document(criteria),
    )


def label_distribution(posts: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per split: posts and share of posts for each post label (the DVC bar plot data)."""
    out = {}
    for name in SPLITS:
        part = posts.loc[posts["split"] == name]
        counts = [int(part[label].sum()) for label in POST_LABELS]
        out[name] = pd.DataFrame(
            {
                "criterion": list(POST_LABELS),
                "posts": counts,
                "share": [round(c / max(len(part), 1), 4) for c in counts],
            }
        )
    return out


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, compression="zstd")


def write(prep: Prepared, root: Path) -> None:
    """Write every output; each lands whole or not at all."""
    import json

    root = Path(root)
    with atomic.staged_dir(root / layout.PREPARED) as out:
        _write_parquet(prep.posts, out / "posts.parquet")
        _write_parquet(prep.sentences, out / "sentences.parquet")
        _write_parquet(prep.annotations, out / "annotations.parquet")
        (out / "criteria.json").write_text(json.dumps(prep.criteria, indent=2) + "\n", encoding="utf-8")
        (out / "manifest.json").write_text(json.dumps(prep.manifest, indent=2) + "\n", encoding="utf-8")
    with atomic.staged_dir(root / layout.PREPARE_REPORTS / "label_distribution") as plots:
        for name, frame in label_distribution(prep.posts).items():
            frame.to_csv(plots / f"{name}.csv", index=False, lineterminator="\n")
    atomic.write_json(root / layout.PREPARE_STATS, prep.metrics)
    atomic.write_json(root / layout.PREPARE_METRICS, headline(prep.metrics))


MIN_ALIGNED_SHARE = 0.90  # below it, most of the evidence the bundle annotates is not where training looks
MAX_SPLIT_DRIFT = 0.05  # realised minus requested share of posts in a split, absolute


def warnings(stats: dict, ratios: dict[str, float]) -> list[str]:
    """One line per thing about the data a user should know before trusting a number trained on it."""
    out = []
    a = stats["alignment"]
    if a["aligned_share"] < MIN_ALIGNED_SHARE:
        total = sum(a[m] for m in METHODS)
        out.append(f"aligned share {a['aligned_share']:.1%} is under {MIN_ALIGNED_SHARE:.0%}: {a['unaligned']} of "
                   f"{total} annotations were found neither in their post's text nor as the sentence their sentence_id "
                   "numbers, so their evidence is neither trained nor scored (check the bundle's sentence_text "
                   "and sentence_id against the posts, or prepare.alignment.fuzzy_threshold)")
    posts = stats["posts"]
    want = {s: ratios[s] / sum(ratios.values()) for s in SPLITS}
    got = {s: posts[s] / max(posts["total"], 1) for s in SPLITS}
    if any(abs(got[s] - want[s]) > MAX_SPLIT_DRIFT for s in SPLITS):
        out.append("split ratios had to change: asked " + " / ".join(f"{s} {want[s]:.2f}" for s in SPLITS)
                   + ", got " + " / ".join(f"{got[s]:.2f}" for s in SPLITS) + f" of {posts['total']} posts "
                   "(every criterion is kept in every split, which moves posts when the data is small)")
    return out


def headline(stats: dict) -> dict:
    """metrics/prepare.json: the few numbers `dvc exp show` needs (posts per split, the aligned share, the
    share of train evidence training cannot read, the val/test gold spans a natural sentence boundary cuts);
    every count is in reports/prepare/stats.json."""
    out = {"posts": {s: stats["posts"][s] for s in SPLITS}, "aligned_share": stats["alignment"]["aligned_share"]}
    train = stats["windows"].get("train")
    if train and train["evidence"]:
        out["evidence_unread_share"] = round(train["evidence_unread"] / train["evidence"], 4)
    cross = stats["segmentation"]["spans_crossing_natural_boundaries"]
    out["held_out_spans_crossing_sentences"] = cross["val"] + cross["test"]  # evidence not whole sentences there
    out["warnings"] = len(stats["warnings"])
    return out


def windows_line(w: dict) -> str:
    """One line on what training does not read (reports/prepare/stats.json `windows`)."""
    cap = f"{w['max_chunks']} x {w['max_length']} tokens ({w['backbone']})"
    if "skipped" in w:
        return f"coverage at {cap} skipped: {w['skipped']}"
    unit = "sentences" if "sentences" in w["train"] else "posts"
    tr = w["train"]
    return (f"training reads {cap}: {tr[f'{unit}_cut']} of {tr[unit]} train {unit} are cut, "
            f"{tr['evidence_unread']} of {tr['evidence']} evidence annotations unread "
            f"({tr['evidence_partly_read']} partly); evaluate and predict read every window")


def summary_rows(prep: Prepared) -> list[tuple[str, ...]]:
    """Rows of the printed summary: counts per split, then posts per label per split."""
    m = prep.metrics
    rows = [
        (key, *(str(m[key][s]) for s in ("total", *SPLITS)))
        for key in ("posts", "sentences", "annotations")
    ]
    for label in POST_LABELS:
        per = m["criteria"][label]
        rows.append((label, str(sum(per.values())), *(str(per[s]) for s in SPLITS)))
    return rows


def run(params: Params, root: Path = Path("."), dry_run: bool = False) -> Prepared:
    """Build the prepared data; write it unless `dry_run`."""
    prep = build(params)
    if not dry_run:
        write(prep, root)
    return prep


