"""Sentence segmentation of posts, natural or with annotated spans kept whole.

A rule-based splitter (terminal punctuation, line breaks, common abbreviations):
deterministic, dependency-free and good enough for Reddit prose. For training
posts, aligned annotation spans are forced to be sentence units of their own, so
every aligned evidence sentence maps to exact sentence rows; val, test and
`predict` use the natural cuts only, and EVIDENCE_RULE labels their sentences.
"""

from __future__ import annotations

import re
import string

# how a sentence of a naturally segmented post (val, test, predict) becomes evidence for an aligned span
EVIDENCE_RULE = ("a sentence is evidence for an aligned span when their overlap is at least half the span or half "
                 "the sentence; a span that no sentence meets so marks the sentence it overlaps most")

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e approx dept est inc ltd fig".split()
)
# A sentence ends after ., ! or ? (runs, optional closing quote or bracket) before whitespace,
# or at a line break.
_END = re.compile(r"""(?:[.!?…]+['"’”)\]]*)(?=\s)|\n""")
_SKIP = set(string.punctuation) | set(string.whitespace) | set("‘’“”–—…")


def _natural_cuts(text: str) -> list[int]:
    cuts = []
    for m in _END.finditer(text):
        if m.group() != "\n" and m.group().startswith("."):
            word = text[: m.start()].rsplit(None, 1)[-1:] or [""]
            if word[0].lower().rstrip(".") in _ABBREVIATIONS or len(word[0]) == 1:
                continue
        cuts.append(m.end())
    return cuts


def _has_content(piece: str) -> bool:
    return any(ch not in _SKIP for ch in piece)


def segment(text: str, keep_whole: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Return (start, end) char offsets of the sentences of `text`, end exclusive.

    Each span in `keep_whole` becomes one or more whole sentences: no natural cut
    falls inside it, and its edges are cuts. Pieces without letters, digits or
    symbols (bare punctuation or whitespace) are not sentences.
    """
    spans = sorted(keep_whole or [])
    cuts = set(_natural_cuts(text))
    for start, end in spans:
        cuts = {c for c in cuts if not start < c < end}
    for start, end in spans:
        cuts.update((start, end))
    bounds = sorted(cuts | {0, len(text)})
    out: list[tuple[int, int]] = []
    for a, b in zip(bounds, bounds[1:]):
        piece = text[a:b]
        if not _has_content(piece):
            continue
        lead = len(piece) - len(piece.lstrip())
        trail = len(piece) - len(piece.rstrip())
        out.append((a + lead, b - trail))
    return out
