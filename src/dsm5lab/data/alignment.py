"""Find each annotation's `sentence_text` in its post: exact, normalised, fuzzy, then by sentence index.

Normalisation (NFKC, straight quotes and dashes, casefold, collapsed whitespace)
keeps a map back to the original characters, so a normalised or fuzzy match still
yields char offsets into the untouched post text. A paraphrased `sentence_text`
(ReDSM5's public sample is paraphrased) is found by none of these; its
`sentence_id` (`<post_id>_<index>`) still names the sentence, so the last resort
takes the post's natural sentence number <index> (0-based, as `segment` numbers
them) when it reads like the annotation (INDEX_FLOOR) and reads more like it than any
other sentence of the post does (INDEX_MARGIN): an id off by one, as another splitter's
numbering gives, then leaves the row unaligned instead of labelling the neighbour.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from rapidfuzz import fuzz, utils

from dsm5lab.data.segment import segment

METHODS = ("exact", "normalized", "fuzzy", "sentence_index", "unaligned")
# rapidfuzz token_sort_ratio (0-100, normalised words, punctuation dropped) the indexed sentence needs. Measured on
# the default synthetic bundle: a sentence_text against another sentence of its own post (what a wrong index
# gives) reaches 50 for 3.2% of 2,274 rows (55: 0.5%); 16 hand-written paraphrases against their sentence score
# 53-89, the same phrasebank template rendered twice 98% >= 50. Only the index as given is tried (0-based, as the
# generator writes ids): a 1-based second guess would give a wrong sentence a second chance at the floor.
INDEX_FLOOR = 50.0
# ... and by how much the indexed sentence must outscore every other natural sentence of the post. A floor alone
# is low for first-person posts ("feeling really down and empty" vs "feeling really tired", 68), so an
# off-by-one id would label the neighbour. Measured: the 16 paraphrases beat their post's other sentences by
# 15.5-46.1; on the default synthetic bundle each annotated sentence's template rendered again (1,712 rows)
# has its own sentence accepted 96.8% at the floor alone, 92.5% with this margin, while a neighbour (index
# +-1) is accepted 2.31% at the floor alone, 0.06% with it.
INDEX_MARGIN = 5.0
_INDEX = re.compile(r"[0-9]+")
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
    score: float  # 100 for exact/normalized, the fuzzy or sentence_index score otherwise, 0 when unaligned


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


def sentence_index(post_id: str, sentence_id: str) -> int | None:
    """The <index> of a `<post_id>_<index>` sentence_id; None when the id has any other form."""
    prefix = f"{post_id}_"
    if not sentence_id.startswith(prefix) or not _INDEX.fullmatch(sentence_id[len(prefix) :]):
        return None
    return int(sentence_id[len(prefix) :])


def _words(text: str) -> str:
    return utils.default_process(normalize(text)[0])


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
        self._sentences: list[tuple[int, int]] | None = None  # natural sentences, segmented on first use

    def _to_source(self, nstart: int, nend: int) -> tuple[int, int]:
        return self._index[nstart], self._index[nend - 1] + 1

    def align(self, sentence: str, index: int | None = None) -> Match:
        """Where `sentence` is in the post; `index` (from its sentence_id) is tried only when the text is not found."""
        found = self._find(sentence)
        return found if found is not UNALIGNED or index is None else self.by_index(sentence, index)

    def by_index(self, sentence: str, index: int) -> Match:
        """The post's natural sentence number `index` (0-based) if it scores INDEX_FLOOR against `sentence` and
        beats every other natural sentence of the post by INDEX_MARGIN."""
        if self._sentences is None:
            self._sentences = segment(self.post)
        if not 0 <= index < len(self._sentences):
            return UNALIGNED
        words = _words(sentence)
        scores = [fuzz.token_sort_ratio(words, _words(self.post[a:b])) for a, b in self._sentences]
        score = scores.pop(index)
        if score < INDEX_FLOOR or (scores and score < max(scores) + INDEX_MARGIN):
            return UNALIGNED
        start, end = self._sentences[index]
        return Match(start, end, "sentence_index", round(float(score), 2))

    def _find(self, sentence: str) -> Match:
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
