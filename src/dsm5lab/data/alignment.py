"""Find each annotation's `sentence_text` in its post: exact, normalised, then fuzzy.

Normalisation (NFKC, straight quotes and dashes, casefold, collapsed whitespace)
keeps a map back to the original characters, so a normalised or fuzzy match still
yields char offsets into the untouched post text.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from rapidfuzz import fuzz

METHODS = ("exact", "normalized", "fuzzy", "unaligned")
_TRANSLATE = {
    "‘": "'", "’": "'", "‚": "'", "‛": "'", "′": "'", "`": "'",
    "“": '"', "”": '"', "„": '"', "‟": '"', "″": '"',
    "–": "-", "—": "-", "‐": "-", "‑": "-", "−": "-",
}


@dataclass(frozen=True)
class Match:
    start: int  # char offset into the post, -1 when unaligned
    end: int  # exclusive
    method: str  # one of METHODS
    score: float  # 100 for exact/normalized, the fuzzy score otherwise, 0 when unaligned


UNALIGNED = Match(-1, -1, "unaligned", 0.0)


def normalize(text: str) -> tuple[str, list[int]]:
    """Normalised text and, for each of its characters, the index of the source character."""
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        for c in unicodedata.normalize("NFKC", ch):
            for d in _TRANSLATE.get(c, c).casefold():
                if d.isspace():
                    if not out or out[-1] == " ":
                        continue
                    d = " "
                out.append(d)
                index.append(i)
    while out and out[-1] == " ":
        out.pop()
        index.pop()
    return "".join(out), index


def _widen_to_words(text: str, start: int, end: int) -> tuple[int, int]:
    while start > 0 and text[start - 1].isalnum() and text[start].isalnum():
        start -= 1
    while end < len(text) and text[end - 1].isalnum() and text[end].isalnum():
        end += 1
    return start, end


class Aligner:
    """Aligns sentences to one post; the post's normalised form is computed once."""

    def __init__(self, post: str, fuzzy_threshold: float):
        self.post = post
        self.threshold = fuzzy_threshold
        self._norm, self._index = normalize(post)

    def _to_source(self, nstart: int, nend: int) -> tuple[int, int]:
        return self._index[nstart], self._index[nend - 1] + 1

    def align(self, sentence: str) -> Match:
        stripped = sentence.strip()
        if not stripped:
            return UNALIGNED
        pos = self.post.find(stripped)
        if pos >= 0:
            return Match(pos, pos + len(stripped), "exact", 100.0)
        norm, _ = normalize(stripped)
        if not norm or not self._norm:
            return UNALIGNED
        pos = self._norm.find(norm)
        if pos >= 0:
            start, end = self._to_source(pos, pos + len(norm))
            return Match(start, end, "normalized", 100.0)
        res = fuzz.partial_ratio_alignment(norm, self._norm, score_cutoff=self.threshold)
        if res is None or res.dest_end <= res.dest_start:
            return UNALIGNED
        start, end = self._to_source(res.dest_start, res.dest_end)
        start, end = _widen_to_words(self.post, start, end)
        return Match(start, end, "fuzzy", round(float(res.score), 2))
