"""Turn prepared tables into model inputs: token windows per post (or sentence), targets per channel.

A *group* is what one prediction is about: a post (multi_label), a (post, criterion)
pair (binary_pairs), or a sentence at level=sentence. A group has one or more
token windows; the model pools window outputs back to the group. Channels are the
criteria a group predicts: the nine symptoms (multi_label) or one (binary_pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dsm5lab.data.labels import SYMPTOMS


@dataclass
class Window:
    input_ids: np.ndarray  # (T,) int64, special tokens included
    token_type_ids: np.ndarray  # (T,) int64
    sentence_ids: np.ndarray  # (T,) sentence index within the post, -1 for special/description tokens
    offsets: np.ndarray  # (T, 2) char offsets into the post text, -1 outside it (or only whitespace)
    spans: list[list[tuple[int, int]]]  # per channel: inclusive token spans of evidence in this window


@dataclass
class Group:
    post_id: str
    criterion: int  # channel's criterion for binary_pairs, -1 for multi_label
    sentence_index: int  # level=sentence: the sentence, else -1
    windows: list[Window]
    labels: np.ndarray  # (C,) float32
    evidence_mask: np.ndarray  # (C,) float32: 1 where the post has evidence for the channel
    sentence_labels: np.ndarray  # (n_sentences, C) float32 (level=post), else (0, C)
    n_tokens: int = field(default=0)


@dataclass(frozen=True)
class WindowSpec:
    input_format: str  # multi_label | binary_pairs
    level: str  # post | sentence
    max_length: int
    stride: int
    max_chunks: int
    with_evidence: bool
    use_token_types: bool

    @property
    def channels(self) -> int:
        return len(SYMPTOMS) if self.input_format == "multi_label" else 1


def special_layout(tokenizer) -> dict[str, list[list[int]]]:
    """Special-token ids around one text ('single': prefix, suffix) and a pair ('pair': prefix, middle, suffix)."""
    out = {}
    for kind, args in (("single", ("a",)), ("pair", ("a", "b"))):
        enc = tokenizer(*args, add_special_tokens=True)
        groups: list[list[int]] = [[]]
        in_text = False
        for tok, sid in zip(enc["input_ids"], enc.sequence_ids()):
            if sid is None:
                if in_text:
                    groups.append([])
                    in_text = False
                groups[-1].append(tok)
            else:
                in_text = True
        if in_text:
            groups.append([])
        out[kind] = groups
    return out


def _window_starts(n: int, room: int, stride: int, max_chunks: int) -> list[int]:
    step = max(room - stride, 1)
    starts = [0]
    while starts[-1] + room < n and len(starts) < max_chunks:
        starts.append(starts[-1] + step)
    return starts


def trim_offsets(text: str, offsets: np.ndarray) -> np.ndarray:
    """Offsets of the text itself: starts moved past leading whitespace, which byte-level BPE without offset
    trimming (ModernBERT's, GPT-2-style) and sentencepiece pieces give "Ġword"/"▁word", so the token falls in its
    sentence; tokens that are only whitespace (a lone "▁") get -1, as no text, so no evidence span ends on one."""
    if len(offsets) == 0 or not text:
        return offsets
    n = len(text)
    keep = np.fromiter((not c.isspace() for c in text), dtype=bool, count=n)
    first = np.where(keep, np.arange(n), n)
    next_text = np.append(np.minimum.accumulate(first[::-1])[::-1], n)  # first non-space at or after i
    starts, ends = offsets[:, 0], offsets[:, 1]
    moved = next_text[np.clip(starts, 0, n)]
    out = offsets.copy()
    wide = starts < ends
    out[:, 0] = np.where(wide & (moved < ends), moved, starts)
    out[wide & (moved >= ends)] = -1
    return out


def _sentence_of(offsets: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    if len(starts) == 0:  # text with tokens but no sentence (e.g. only punctuation)
        return np.full(len(offsets), -1, dtype=np.int64)
    idx = np.searchsorted(starts, offsets[:, 0], side="right") - 1
    ok = (idx >= 0) & (offsets[:, 0] < ends[np.clip(idx, 0, None)]) & (offsets[:, 1] > offsets[:, 0])
    return np.where(ok, idx, -1)


def _spans(sent_ids: np.ndarray, evidence: list[np.ndarray]) -> list[list[tuple[int, int]]]:
    """Inclusive token spans covering each evidence sentence, per channel."""
    out = []
    for sentences in evidence:
        spans = []
        for s in sentences:
            hit = np.flatnonzero(sent_ids == s)
            if len(hit):
                spans.append((int(hit[0]), int(hit[-1])))
        out.append(spans)
    return out


class Windower:
    """Tokenizes posts/sentences and cuts them into model windows (Groups); descriptions are the criteria texts (A.1-A.9)."""

    def __init__(self, tokenizer, spec: WindowSpec, descriptions: list[str]):
        self.tok = tokenizer
        # posts are tokenized whole and windowed here, so the tokenizer's length warning does not apply
        tokenizer.model_max_length = 10**9
        self.spec = spec
        self.layout = special_layout(tokenizer)
        self.desc_ids = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in descriptions]

    def _window(self, ids, offs, sent_of, a, b, desc, evidence) -> Window:
        if desc is None:
            pre, suf = self.layout["single"]
            head, tail = list(pre), list(suf)
            types_head = [0] * len(head)
        else:
            pre, mid, suf = self.layout["pair"]
            head, tail = list(pre) + list(desc) + list(mid), list(suf)
            types_head = [0] * (len(pre) + len(desc) + len(mid))
        body = ids[a:b]
        input_ids = np.array(head + list(body) + tail, dtype=np.int64)
        second = 1 if (desc is not None and self.spec.use_token_types) else 0
        types = np.array(types_head + [second] * (len(body) + len(tail)), dtype=np.int64)
        n_head = len(head)
        offsets = np.full((len(input_ids), 2), -1, dtype=np.int64)
        offsets[n_head : n_head + len(body)] = offs[a:b]
        sent_ids = np.full(len(input_ids), -1, dtype=np.int64)
        sent_ids[n_head : n_head + len(body)] = sent_of[a:b]
        spans = _spans(sent_ids, evidence) if evidence is not None else [[] for _ in range(self.spec.channels)]
        return Window(input_ids, types, sent_ids, offsets, spans)

    def _windows(self, ids, offs, sent_of, desc, evidence) -> list[Window]:
        room = self.spec.max_length - len(self.layout["single"][0]) - len(self.layout["single"][1])
        if desc is not None:
            room = self.spec.max_length - sum(len(p) for p in self.layout["pair"]) - len(desc)
        if room < 8:
            from dsm5lab.errors import UserError

            raise UserError(f"model.max_length: {self.spec.max_length} tokens leave no room for text after a "
                            f"{len(desc or [])}-token criterion description; raise it")
        starts = _window_starts(len(ids), room, self.spec.stride, self.spec.max_chunks)
        return [self._window(ids, offs, sent_of, a, min(a + room, len(ids)), desc, evidence) for a in starts]

    def encode_posts(self, posts: pd.DataFrame, sentences: pd.DataFrame) -> list[Group]:
        """Groups for level=post (one per post, or per post and criterion for binary_pairs)."""
        texts = posts["text"].tolist()
        enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        by_post = {pid: g for pid, g in sentences.groupby("post_id", sort=False)}
        groups: list[Group] = []
        for i, pid in enumerate(posts["post_id"]):
            ids = np.asarray(enc["input_ids"][i], dtype=np.int64)
            offs = trim_offsets(texts[i], np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2))
            sents = by_post.get(pid)
            if sents is None:
                sents = sentences.iloc[:0]
            starts, ends = sents["start"].to_numpy(), sents["end"].to_numpy()
            sent_of = _sentence_of(offs, starts, ends)
            sent_labels = (sents[list(SYMPTOMS)].to_numpy() == 1).astype(np.float32)
            post_labels = posts.iloc[i][list(SYMPTOMS)].to_numpy(dtype=np.float32)
            evidence_all = [np.flatnonzero(sent_labels[:, c]) for c in range(len(SYMPTOMS))]
            if self.spec.input_format == "multi_label":
                wins = self._windows(ids, offs, sent_of, None, evidence_all if self.spec.with_evidence else None)
                groups.append(Group(pid, -1, -1, wins, post_labels, post_labels.copy(), sent_labels))
            else:
                for c in range(len(SYMPTOMS)):
                    ev = [evidence_all[c]] if self.spec.with_evidence else None
                    wins = self._windows(ids, offs, sent_of, self.desc_ids[c], ev)
                    lab = post_labels[c : c + 1].copy()
                    groups.append(Group(pid, c, -1, wins, lab, lab.copy(), sent_labels[:, c : c + 1]))
        for g in groups:
            g.n_tokens = sum(len(w.input_ids) for w in g.windows)
        return groups

    def encode_sentences(self, sentences: pd.DataFrame) -> list[Group]:
        """Groups for level=sentence: each sentence (or sentence and criterion) is one truncated window."""
        texts = sentences["text"].tolist()
        enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        labels = (sentences[list(SYMPTOMS)].to_numpy() == 1).astype(np.float32)
        groups: list[Group] = []
        for i, (pid, idx, start) in enumerate(zip(sentences["post_id"], sentences["sentence_index"], sentences["start"])):
            ids = np.asarray(enc["input_ids"][i], dtype=np.int64)
            offs = trim_offsets(texts[i], np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2))
            offs = np.where(offs >= 0, offs + int(start), offs)
            sent_of = np.full(len(ids), int(idx), dtype=np.int64)
            descs = [None] if self.spec.input_format == "multi_label" else self.desc_ids
            for c, desc in enumerate(descs):
                win = self._windows(ids, offs, sent_of, desc, None)[0]
                lab = labels[i] if desc is None else labels[i, c : c + 1]
                crit = -1 if desc is None else c
                groups.append(Group(pid, crit, int(idx), [win], lab.copy(), np.zeros_like(lab),
                                    np.zeros((0, len(lab)), np.float32), len(win.input_ids)))
        return groups

    def encode(self, posts: pd.DataFrame, sentences: pd.DataFrame) -> list[Group]:
        if self.spec.level == "sentence":
            keep = sentences["post_id"].isin(set(posts["post_id"]))
            return self.encode_sentences(sentences.loc[keep])
        return self.encode_posts(posts, sentences)


def bucket_batches(lengths: list[int], batch_size: int, rng: np.random.Generator | None, bucket: int = 50) -> list[list[int]]:
    """Batches of indices with similar lengths; shuffled when `rng` is given, sorted otherwise."""
    n = len(lengths)
    if rng is None:
        order = sorted(range(n), key=lambda i: (lengths[i], i))
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    perm = rng.permutation(n).tolist()
    batches = []
    chunk = batch_size * bucket
    for k in range(0, n, chunk):
        part = sorted(perm[k : k + chunk], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def collate(groups: list[Group], pad_id: int, evidence_kind: str | None, max_span_len: int | None = None) -> dict:
    """Pad a batch of groups into tensors (dynamic padding to the longest window in the batch)."""
    import torch

    windows = [w for g in groups for w in g.windows]
    n_win, width = len(windows), max(len(w.input_ids) for w in windows)
    channels = len(groups[0].labels)
    input_ids = torch.full((n_win, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n_win, width), dtype=torch.long)
    types = torch.zeros((n_win, width), dtype=torch.long)
    sentence_map = torch.full((n_win, width), -1, dtype=torch.long)
    text_mask = torch.zeros((n_win, width), dtype=torch.bool)  # tokens of the text itself (spans may only use these)
    window_group = torch.empty(n_win, dtype=torch.long)
    window_mask = torch.empty((n_win, channels), dtype=torch.float32)
    sentence_labels, sentence_group = [], []
    k = s_off = 0
    for gi, g in enumerate(groups):
        n_sent = len(g.sentence_labels)
        for w in g.windows:
            t = len(w.input_ids)
            input_ids[k, :t] = torch.from_numpy(w.input_ids)
            attention[k, :t] = 1
            text_mask[k, :t] = torch.from_numpy(w.offsets[:, 0] >= 0)
            types[k, :t] = torch.from_numpy(w.token_type_ids)
            if n_sent:
                sids = torch.from_numpy(w.sentence_ids)
                sentence_map[k, :t] = torch.where(sids >= 0, sids + s_off, sids)
            window_group[k] = gi
            window_mask[k] = torch.from_numpy(g.evidence_mask)
            k += 1
        if n_sent:
            sentence_labels.append(torch.from_numpy(g.sentence_labels))
            sentence_group.append(torch.full((n_sent,), gi, dtype=torch.long))
        s_off += n_sent
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "token_type_ids": types,
        "window_group": window_group,
        "n_groups": len(groups),
        "labels": torch.from_numpy(np.stack([g.labels for g in groups])),
        "window_channel_mask": window_mask,
        "n_sentences": s_off,
        "sentence_map": sentence_map,
        "text_mask": text_mask,
    }
    if s_off:
        batch["sentence_labels"] = torch.cat(sentence_labels)
        batch["sentence_group"] = torch.cat(sentence_group)
    if evidence_kind is not None:
        from dsm5lab.models.heads import spans_to_targets

        batch["evidence_targets"] = spans_to_targets([w.spans for w in windows], width, evidence_kind, max_span_len)
    return batch
