"""Read and validate a ReDSM5 bundle (posts + annotations), whatever its source.

Every source ends here: the CSV reader, the `datasets` reader and the synthetic
generator (through the CSV reader) hand over two string tables, and `validate_bundle`
checks them against the ReDSM5 contract. Faults the user must fix raise UserError
naming the file, row and column; harmless faults (duplicates, empty text) are
rejected and counted, never dropped silently.
"""

from __future__ import annotations

import difflib
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dsm5lab.data.labels import (
    ANNOTATION_LABELS,
    ANNOTATIONS_COLUMNS,
    ANNOTATIONS_FILE,
    POSTS_COLUMNS,
    POSTS_FILE,
)
from dsm5lab.errors import UserError

# Reasons a row can be rejected; all appear in reports/prepare/stats.json, zero or not.
REJECT_REASONS = (
    "empty_post_text",
    "empty_sentence_text",
    "duplicate_annotation",
    "annotation_of_rejected_post",
)


@dataclass
class RawBundle:
    """Validated ReDSM5 tables. `annotations.row` is the 1-based data row in the source."""

    posts: pd.DataFrame  # post_id, text
    annotations: pd.DataFrame  # row, post_id, sentence_id, sentence_text, symptom, status, explanation
    origin: str
    rejected: Counter = field(default_factory=Counter)


def read_csv_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read one ReDSM5 CSV as strings: UTF-8 (BOM tolerated), quoted multi-line fields."""
    if not path.exists():
        raise UserError(f"{path}: file not found (expected {', '.join(columns)} columns)")
    if not path.is_file():
        raise UserError(f"{path}: is not a file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not valid UTF-8 (bad byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None
    if not text.strip():
        raise UserError(f"{path}: file is empty (expected a header with {', '.join(columns)})")
    check_field_counts(path, text)
    try:
        # index_col=False: pandas would otherwise take a first column as the index when every row has one
        # field more than the header, and every column would shift silently
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False,
                            index_col=False)
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: malformed CSV: {str(exc).strip().splitlines()[-1]}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    check_columns(frame, columns, str(path))
    return frame


def check_field_counts(path: Path, text: str) -> None:
    """Every record has as many fields as the header: a ragged row (an unquoted comma in a text, a field
    added or lost by an export) fails naming the file, the data row (counted from 1) and both counts."""
    import csv

    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a long post is one field (default 128 KiB)
    reader = csv.reader(io.StringIO(text))
    try:
        header = next((row for row in reader if row), [])  # blank lines are skipped, as pandas does
        records = (row for row in reader if row)
        for row_no, row in enumerate(records, start=1):
            if len(row) != len(header):
                raise UserError(f"{path}: data row {row_no} has {len(row)} fields, the header {len(header)} "
                                f"({', '.join(header)}); quote fields that contain commas")
    except csv.Error as exc:
        raise UserError(f"{path}: malformed CSV near line {reader.line_num}: {exc}") from None


def check_columns(frame: pd.DataFrame, expected: tuple[str, ...], where: str) -> None:
    """Fail on a missing column, suggesting the closest found name for a misspelling."""
    found = list(frame.columns)
    for col in expected:
        if col in found:
            continue
        extra = [c for c in found if c not in expected]
        close = difflib.get_close_matches(col, extra, n=1, cutoff=0.6)
        hint = f"; found {close[0]!r}, did you mean {col!r}?" if close else ""
        raise UserError(
            f"{where}: missing column {col!r} (expected columns: {', '.join(expected)}; "
            f"found: {', '.join(found) or 'none'}){hint}"
        )


def read_csv_dir(directory: Path) -> RawBundle:
    """Read the two ReDSM5 CSV files from a directory."""
    if not directory.exists():
        raise UserError(
            f"data.csv_dir: directory not found: {directory} "
            f"(expected {POSTS_FILE} and {ANNOTATIONS_FILE} in it)"
        )
    if not directory.is_dir():
        raise UserError(f"data.csv_dir: {directory} is not a directory")
    posts = read_csv_table(directory / POSTS_FILE, POSTS_COLUMNS)
    annotations = read_csv_table(directory / ANNOTATIONS_FILE, ANNOTATIONS_COLUMNS)
    return validate_bundle(
        posts,
        annotations,
        posts_where=str(directory / POSTS_FILE),
        annotations_where=str(directory / ANNOTATIONS_FILE),
        origin=f"csv:{directory}",
    )


def _parse_status(value: str, where: str, row: int) -> int:
    text = str(value).strip()
    if text in ("0", "1", "0.0", "1.0"):
        return int(float(text))
    raise UserError(f"{where}: row {row}, column status: expected 0 or 1, got {value!r}")


def validate_bundle(
    posts: pd.DataFrame,
    annotations: pd.DataFrame,
    *,
    posts_where: str,
    annotations_where: str,
    origin: str,
) -> RawBundle:
    """Check a posts/annotations pair against the ReDSM5 contract; reject and count harmless faults.

    Row numbers in messages count data rows from 1 (the header is not a row).
    """
    check_columns(posts, POSTS_COLUMNS, posts_where)
    check_columns(annotations, ANNOTATIONS_COLUMNS, annotations_where)
    if posts.empty:
        raise UserError(f"{posts_where}: has a header but no rows")
    if annotations.empty:
        raise UserError(f"{annotations_where}: has a header but no rows")
    rejected: Counter = Counter({reason: 0 for reason in REJECT_REASONS})

    posts = posts.loc[:, list(POSTS_COLUMNS)].astype(str)
    posts["post_id"] = posts["post_id"].str.strip()
    posts["text"] = posts["text"].str.replace("\r\n", "\n", regex=False)
    first_row: dict[str, int] = {}
    for row, pid in enumerate(posts["post_id"], start=1):
        if not pid:
            raise UserError(f"{posts_where}: row {row}, column post_id: empty post_id")
        if pid in first_row:
            raise UserError(
                f"{posts_where}: row {row}, column post_id: duplicate post_id {pid!r} "
                f"(first seen in row {first_row[pid]}); post ids must be unique"
            )
        first_row[pid] = row
    empty_text = posts["text"].str.strip() == ""
    rejected["empty_post_text"] = int(empty_text.sum())
    kept_ids = set(posts.loc[~empty_text, "post_id"])
    posts = posts.loc[~empty_text].reset_index(drop=True)

    ann = annotations.loc[:, list(ANNOTATIONS_COLUMNS)].astype(str).copy()
    ann.insert(0, "row", range(1, len(ann) + 1))
    for col in ("post_id", "sentence_id", "DSM5_symptom"):
        ann[col] = ann[col].str.strip()
    allowed = set(ANNOTATION_LABELS)
    statuses = []
    for row, pid, symptom, status in zip(ann["row"], ann["post_id"], ann["DSM5_symptom"], ann["status"]):
        if pid not in first_row:
            raise UserError(
                f"{annotations_where}: row {row}, column post_id: {pid!r} is not a post_id in {posts_where}"
            )
        if symptom not in allowed:
            close = difflib.get_close_matches(symptom.upper(), list(ANNOTATION_LABELS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(
                f"{annotations_where}: row {row}, column DSM5_symptom: unknown label {symptom!r} "
                f"(allowed: {', '.join(ANNOTATION_LABELS)}){hint}"
            )
        statuses.append(_parse_status(status, annotations_where, row))
    ann["status"] = statuses
    ann = ann.rename(columns={"DSM5_symptom": "symptom"})
    ann["sentence_text"] = ann["sentence_text"].str.replace("\r\n", "\n", regex=False)

    of_rejected = ~ann["post_id"].isin(kept_ids)
    rejected["annotation_of_rejected_post"] = int(of_rejected.sum())
    ann = ann.loc[~of_rejected]
    empty_sentence = ann["sentence_text"].str.strip() == ""
    rejected["empty_sentence_text"] = int(empty_sentence.sum())
    ann = ann.loc[~empty_sentence]
    dup = ann.duplicated(subset=["post_id", "sentence_id", "sentence_text", "symptom", "status"])
    rejected["duplicate_annotation"] = int(dup.sum())
    ann = ann.loc[~dup].reset_index(drop=True)
    return RawBundle(posts=posts, annotations=ann, origin=origin, rejected=rejected)
