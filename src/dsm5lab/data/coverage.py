"""How much of each post training reads: posts and evidence sentences past `model.max_chunks` windows.

Training cuts a post into at most model.max_chunks windows of model.max_length tokens (model.stride shared),
so the end of a long post is never seen (evaluate and predict read every window). prepare counts, per split,
the posts cut that way and the evidence sentences (annotation status 1) left wholly or partly unread, with
the tokenizer training will use: the built-in one is built here exactly as training builds it; a pretrained
backbone's tokenizer is loaded from its local files only. Without it offline, the counts are skipped with
the reason (prepare does not need the model).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dsm5lab.config import Params
from dsm5lab.data.labels import SYMPTOMS

SPLITS = ("train", "val", "test")


def _tokenizer(params: Params, train_texts: list[str], descriptions: list[str]):
    from dsm5lab.models.backbone import build_wordpiece, resolve

    kind, location = resolve(params.model.backbone)
    if kind == "builtin":
        return build_wordpiece(train_texts, params.model.tiny.vocab_size, descriptions)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(location, local_files_only=True)


def _covered(windows) -> int:
    """Char offset up to which the windows read the text (windows run contiguously from its start)."""
    return max(int(w.offsets[:, 1].max()) for w in windows)


def count(params: Params, posts: pd.DataFrame, sentences: pd.DataFrame, descriptions: list[str]) -> dict:
    """The window coverage block of reports/prepare/stats.json."""
    from dsm5lab.errors import UserError
    from dsm5lab.training.encoding import Windower, WindowSpec

    m, t = params.model, params.train
    settings = {"backbone": m.backbone, "max_length": m.max_length, "stride": m.stride, "max_chunks": m.max_chunks,
                "input_format": t.input_format, "level": t.level}
    train_texts = posts.loc[posts["split"] == "train", "text"].tolist()
    try:
        tok = _tokenizer(params, train_texts, descriptions)
    except (OSError, ValueError, UserError) as exc:
        return {**settings, "skipped": f"tokenizer not available offline: {str(exc).splitlines()[0]}"}
    spec = WindowSpec(input_format=t.input_format, level="post", max_length=m.max_length, stride=m.stride,
                      max_chunks=m.max_chunks, with_evidence=False, use_token_types=False)
    windower = Windower(tok, spec, descriptions)
    out: dict = dict(settings)
    if t.level == "sentence":  # one window per sentence: a long sentence loses its end
        out["note"] = "level=sentence: each sentence is one window; cut = sentences longer than a window"
    for split in SPLITS:
        part = posts.loc[posts["split"] == split]
        sents = sentences.loc[sentences["post_id"].isin(set(part["post_id"]))]
        out[split] = _split_counts(windower, part, sents, t.level == "sentence")
    return out


def _split_counts(windower, posts: pd.DataFrame, sentences: pd.DataFrame, by_sentence: bool) -> dict:
    evidence = sentences[list(SYMPTOMS)].to_numpy() == 1  # (n_sentences, 9)
    starts, ends = sentences["start"].to_numpy(), sentences["end"].to_numpy()
    unread = partly = cut_units = 0
    if by_sentence:
        groups = windower.encode_sentences(sentences) if len(sentences) else []
        # multi_label: one group per sentence; binary_pairs: one per (sentence, criterion), same order
        per = max(len(groups) // max(len(sentences), 1), 1)
        for k in range(len(sentences)):
            covered = min(_covered(groups[k * per + c].windows) for c in range(per))
            if covered < ends[k]:
                cut_units += 1
                partly += int(evidence[k].any())
        n_units = len(sentences)
    else:
        groups = windower.encode_posts(posts, sentences.iloc[:0]) if len(posts) else []
        enc = windower.tok(posts["text"].tolist(), add_special_tokens=False, return_offsets_mapping=True)
        text_end = {pid: (int(offs[-1][1]) if len(offs) else 0)
                    for pid, offs in zip(posts["post_id"], enc["offset_mapping"])}
        covered: dict[tuple[str, int], int] = {(g.post_id, g.criterion): _covered(g.windows) for g in groups}
        pairs = windower.spec.input_format == "binary_pairs"
        cut_posts = {pid for (pid, _), c in covered.items() if c < text_end[pid]}
        for k, pid in enumerate(sentences["post_id"]):
            for c in np.flatnonzero(evidence[k]):
                reach = covered[(pid, int(c) if pairs else -1)]
                unread += int(starts[k] >= reach)
                partly += int(starts[k] < reach < ends[k])
        cut_units, n_units = len(cut_posts), len(posts)
    n_evidence = int(evidence.sum())
    unit = "sentences" if by_sentence else "posts"
    # evidence = (sentence, criterion) annotations of status 1, as a sentence can support two criteria
    return {unit: int(n_units), f"{unit}_cut": int(cut_units),
            f"{unit}_cut_share": round(cut_units / n_units, 4) if n_units else 0.0,
            "evidence": n_evidence, "evidence_unread": int(unread), "evidence_partly_read": int(partly)}
