"""`dsm5lab predict`: criteria probabilities, decisions and evidence for new texts, as JSON lines."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from dsm5lab import layout
from dsm5lab.atomic import read_jsonl
from dsm5lab.data.labels import ANNOTATION_LABELS, POST_LABELS, SYMPTOMS
from dsm5lab.data.segment import segment
from dsm5lab.errors import UserError

DEFAULT_MODELS = (layout.EVALUATED_MODEL, layout.TRAINED_MODEL)


def default_model() -> Path:
    """The evaluated model (with tuned thresholds) when there is one, else the trained model."""
    for path in DEFAULT_MODELS:
        if (path / "model.safetensors").is_file():
            return path
    raise UserError(f"--model: no model found at {' or '.join(map(str, DEFAULT_MODELS))}; run `dvc repro` "
                    "or pass --model PATH")


def read_file(path: Path, text_column: str) -> list[tuple[str, str]]:
    """(id, text) pairs from a .txt (one text per line), .jsonl ({"text", "id"?}) or .csv (a text column)."""
    if not path.is_file():
        raise UserError(f"--file: file not found: {path}")
    suffix = path.suffix.lower()
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"--file: {path} is not valid UTF-8") from None
    if suffix == ".txt":
        return [(str(i), line) for i, line in enumerate(raw.splitlines()) if line.strip()]
    if suffix == ".jsonl":
        out = []
        for n, obj in read_jsonl(path, "--file", text=raw):
            if not isinstance(obj, dict) or not isinstance(obj.get(text_column), str):
                raise UserError(f"--file: {path} line {n} has no string field {text_column!r}")
            out.append((str(obj.get("id", n - 1)), obj[text_column]))
        return out
    if suffix == ".csv":
        from dsm5lab.data.raw import check_field_counts

        if not raw.strip():
            raise UserError(f"--file: {path} is empty (expected a header with a {text_column!r} column)")
        try:
            check_field_counts(path, raw)  # a ragged row would score a missing text as ""
        except UserError as exc:
            raise UserError(f"--file: {exc}") from None
        reader = csv.DictReader(io.StringIO(raw))
        header = reader.fieldnames or []
        if text_column not in header:
            raise UserError(f"--file: {path} has no column {text_column!r} (found: {', '.join(header)}); "
                            "set --text-column")
        rows = list(reader)
        if not rows:
            raise UserError(f"--file: {path} has a header but no rows")
        key = "id" if "id" in header else "post_id" if "post_id" in header else None
        return [(str(r[key]) if key else str(i), r[text_column]) for i, r in enumerate(rows)]
    raise UserError(f"--file: {path}: unknown extension {suffix!r} (allowed: .txt, .jsonl, .csv)")


def _frames(items: list[tuple[str, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Posts and sentences tables in the prepared-table layout the encoder reads."""
    keys = [f"in{i}" for i in range(len(items))]
    posts = pd.DataFrame({"post_id": keys, "text": [t for _, t in items]})
    for label in POST_LABELS:
        posts[label] = 0
    rows = []
    for key, (_, text) in zip(keys, items):
        for k, (s, e) in enumerate(segment(text)):
            rows.append((key, k, s, e, text[s:e], *([0] * len(ANNOTATION_LABELS))))
    sentences = pd.DataFrame(rows, columns=["post_id", "sentence_index", "start", "end", "text", *ANNOTATION_LABELS])
    return posts, sentences


def _evidence(text: str, sent: pd.DataFrame, probs: np.ndarray, span: np.ndarray, top: int,
              threshold: float = 0.5) -> dict:
    picks = [int(k) for k in np.argsort(-probs, kind="stable")[:top] if probs[k] >= threshold]
    out = {"sentences": [{"text": sent["text"].iloc[k], "start": int(sent["start"].iloc[k]),
                          "end": int(sent["end"].iloc[k]), "score": round(float(probs[k]), 4)} for k in picks]}
    if span[0] >= 0:
        s, e = int(span[0]), int(span[1])
        out["span"] = {"text": text[s:e], "start": s, "end": e, "score": round(float(span[2]), 4)}
    return out


def predict_texts(model_dir: Path, items: list[tuple[str, str]], batch_size: int = 32,
                  top_sentences: int = 3, show_progress: bool = False,
                  max_chunks: int | None = None) -> Iterator[dict]:
    """One result dict per input, in input order, computed in batches; every window of a text unless max_chunks."""
    from dsm5lab.evaluation.views import predict_split
    from dsm5lab.progress import progress
    from dsm5lab.training.inference import load_for_inference

    model, windower, config, _ = load_for_inference(model_dir, max_chunks)
    budget = int(config["encode"]["max_chunks"])
    thresholds = np.array([config["thresholds"][s] for s in SYMPTOMS])
    evidence_at = config.get("evidence_thresholds") or {}  # tuned on val by evaluate; 0.5 for a trained model
    device = next(model.parameters()).device
    starts = range(0, len(items), batch_size)
    for start in (progress(starts, "predicting", total=len(starts)) if show_progress else starts):
        chunk = items[start : start + batch_size]
        posts, sentences = _frames(chunk)
        # the same per-post assembly the evaluate stage uses (criteria, sentence scores, best spans)
        split = predict_split("input", model, windower, posts, sentences, batch_size, device, budget)
        by_post = {pid: g for pid, g in sentences.groupby("post_id", sort=False)}
        for i, ((ident, text), pid) in enumerate(zip(chunk, posts["post_id"])):
            result: dict = {"id": ident}
            if split.prob is not None:
                prob = split.prob[i]
                result["probabilities"] = {s: round(float(p), 4) for s, p in zip(SYMPTOMS, prob)}
                result["decisions"] = {s: bool(p >= t) for s, p, t in zip(SYMPTOMS, prob, thresholds)}
                result["thresholds"] = {s: float(t) for s, t in zip(SYMPTOMS, thresholds)}
            if split.spans is not None:
                sent = by_post.get(pid, sentences.iloc[:0])
                sent_prob = split.sentences[i][1]
                result["evidence"] = {
                    s: _evidence(text, sent, sent_prob[:, c], split.spans[i, c], top_sentences,
                                 evidence_at.get(s, 0.5))
                    for c, s in enumerate(SYMPTOMS)
                }
            yield result


def write_lines(results: Iterable[dict], out) -> int:
    n = 0
    for result in results:
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
        n += 1
    return n


def stdin_items() -> list[tuple[str, str]]:
    return [(str(i), line) for i, line in enumerate(sys.stdin.read().splitlines()) if line.strip()]
