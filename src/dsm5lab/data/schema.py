"""The contract of the tables `prepare` writes under stages/prepare/ (Parquet).

Later stages read these tables through `read_table`, which checks them against
this contract, so a change here is a schema change: bump SCHEMA_VERSION.

posts.parquet — one row per post, sorted by post_id
    post_id        string   ReDSM5 post id
    text           string   post text (CRLF turned into LF; offsets below index this string)
    n_words        int32    whitespace-separated words
    n_sentences    int32    rows of this post in sentences.parquet
    split          string   train | val | test (post-disjoint, multi-label stratified)
    fold           int8     cross-validation fold 0..k-1 for train and val posts, -1 for test
    <LABEL> ...    int8     1 if the post has a status-1 annotation for LABEL (the nine
                            symptoms and SPECIAL_CASE), else 0; NO_SYMPTOMS is 1 when none of
                            the nine symptoms is 1 (SPECIAL_CASE does not count as a symptom)

sentences.parquet — one row per sentence, sorted by (post_id, sentence_index)
    post_id, sentence_index (int32, 0-based), start, end (int32 char offsets into the
    post text, end exclusive), text, split, fold, then one int8 column per annotation
    label (nine symptoms + SPECIAL_CASE):
        1  the sentence is evidence (an aligned status-1 annotation covers it)
        0  not annotated for this label (implicitly negative)
       -1  a clinician marked it explicitly NOT evidence (status 0): a hard negative
    An aligned annotation span is always a whole sentence (or several whole sentences).

annotations.parquet — one row per accepted annotation, in source order
    row (int32, 1-based data row in the source file), post_id, sentence_id, sentence_text,
    symptom, status (int8), explanation, align_method (exact | normalized | fuzzy |
    sentence_index | unaligned), align_score (float32, 0-100), start, end (int32, -1 when unaligned),
    first_sentence, last_sentence (int32 sentence_index range covered, -1 when
    unaligned), split, fold. Unaligned rows still count for post labels and keep their
    text for sentence-level use.

criteria.json — the criterion descriptions used (dsm5lab.data.criteria schema).
manifest.json — schema version, source origin, dataset fingerprint, row counts.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dsm5lab.data.labels import ANNOTATION_LABELS, POST_LABELS
from dsm5lab.errors import UserError

SCHEMA_VERSION = 1

COLUMNS: dict[str, dict[str, str]] = {
    "posts": {
        "post_id": "string",
        "text": "string",
        "n_words": "int32",
        "n_sentences": "int32",
        "split": "string",
        "fold": "int8",
        **{label: "int8" for label in POST_LABELS},
    },
    "sentences": {
        "post_id": "string",
        "sentence_index": "int32",
        "start": "int32",
        "end": "int32",
        "text": "string",
        "split": "string",
        "fold": "int8",
        **{label: "int8" for label in ANNOTATION_LABELS},
    },
    "annotations": {
        "row": "int32",
        "post_id": "string",
        "sentence_id": "string",
        "sentence_text": "string",
        "symptom": "string",
        "status": "int8",
        "explanation": "string",
        "align_method": "string",
        "align_score": "float32",
        "start": "int32",
        "end": "int32",
        "first_sentence": "int32",
        "last_sentence": "int32",
        "split": "string",
        "fold": "int8",
    },
}


def conform(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Return `frame` with exactly the columns and dtypes of table `name`, in order."""
    spec = COLUMNS[name]
    missing = [c for c in spec if c not in frame.columns]
    if missing:
        raise ValueError(f"table {name}: missing columns {missing}")
    return frame.loc[:, list(spec)].astype(spec).reset_index(drop=True)


def read_table(directory: Path, name: str) -> pd.DataFrame:
    """Read a prepared table and check it against the contract."""
    path = Path(directory) / f"{name}.parquet"
    if not path.is_file():
        raise UserError(f"{path}: prepared table not found; run `dvc repro prepare` first")
    frame = pd.read_parquet(path)
    spec = COLUMNS[name]
    if list(frame.columns) != list(spec):
        raise UserError(f"{path}: columns do not match schema v{SCHEMA_VERSION}; rerun prepare")
    return frame
