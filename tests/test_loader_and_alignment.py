"""The CSV reader on a bundle with every ReDSM5 quirk, alignment, segmentation and sentence labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dsm5lab.data.alignment import Aligner, normalize
from dsm5lab.data.prepare import align_and_segment, post_labels
from dsm5lab.data.raw import RawBundle, read_csv_dir
from dsm5lab.data.segment import segment


@pytest.fixture
def bundle(quirky_dir):
    return read_csv_dir(quirky_dir)


def test_reads_quirky_csv(bundle):
    posts = bundle.posts.set_index("post_id")["text"]
    assert list(bundle.posts.columns) == ["post_id", "text"]  # BOM stripped from the first header
    assert posts["p1"].count("\n") == 2 and "\r" not in posts["p1"]  # quoted multi-line, CRLF -> LF
    assert "don’t" in posts["p1"] and "😔" in posts["p1"] and "—" in posts["p1"]
    assert '"you look tired"' in posts["p2"]
    assert bundle.rejected["duplicate_annotation"] == 1
    assert len(bundle.annotations) == 13 - 1
    assert bundle.annotations["status"].tolist().count(0) == 2


def test_alignment_methods_and_offsets(bundle):
    ann, sentences, conflicts, _ = align_and_segment(bundle, fuzzy_threshold=90)
    posts = bundle.posts.set_index("post_id")["text"]
    by_id = {(r.sentence_id, r.symptom): r for r in ann.itertuples()}
    assert by_id[("p1_0", "ANHEDONIA")].align_method == "exact"
    assert by_id[("p1_1", "ANHEDONIA")].align_method == "normalized"  # '-' vs '—'
    assert by_id[("p2_1", "SLEEP_ISSUES")].align_method == "normalized"  # case + whitespace
    fuzzy = by_id[("p4_0", "WORTHLESSNESS")]
    assert fuzzy.align_method == "fuzzy" and 90 <= fuzzy.align_score < 100
    assert posts["p4"][fuzzy.start : fuzzy.end] == "I feel like a burden to everyone around me."
    assert by_id[("p6_0", "COGNITIVE_ISSUES")].align_method == "unaligned"
    assert by_id[("p6_0", "COGNITIVE_ISSUES")].start == -1
    norm = by_id[("p1_1", "ANHEDONIA")]
    assert posts["p1"][norm.start : norm.end] == "Even gaming feels pointless — I just stare at the screen."
    assert conflicts == 0


def test_sentence_labels(bundle):
    ann, sentences, _, _ = align_and_segment(bundle, fuzzy_threshold=90)
    p2 = sentences[sentences["post_id"] == "p2"].set_index("text")
    shared = p2.loc["I'm not sad though, just worn out."]
    assert shared["FATIGUE"] == 1 and shared["DEPRESSED_MOOD"] == -1  # two symptoms, one a hard negative
    assert p2.loc['My mom says "you look tired" every day.'].drop(["post_id", "sentence_index", "start", "end"]).eq(0).all()
    texts = bundle.posts.set_index("post_id")["text"]
    for row in sentences.itertuples():
        assert texts[row.post_id][row.start : row.end] == row.text


def test_unaligned_annotation_still_labels_the_post(bundle):
    ann, _, _, _ = align_and_segment(bundle, fuzzy_threshold=90)
    labels = post_labels(bundle.posts, ann).set_index(bundle.posts["post_id"])
    assert ann.loc[ann["post_id"] == "p7", "align_method"].tolist() == ["unaligned"]
    assert labels.loc["p7", "SLEEP_ISSUES"] == 1 and labels.loc["p7", "NO_SYMPTOMS"] == 0
    assert labels.loc["p3", "SPECIAL_CASE"] == 1 and labels.loc["p3", "NO_SYMPTOMS"] == 1
    assert labels.loc["p3", "FATIGUE"] == 0  # status 0 is not a positive


def test_normalize_keeps_a_map_to_the_source():
    text = "I  DON’T\n know — “really”"
    norm, index = normalize(text)
    assert norm == "i don't know - \"really\""
    assert len(index) == len(norm)
    assert text[index[norm.index("'")]] == "’" and text[index[norm.index("-")]] == "—"
    assert text[index[norm.index("know")]: index[norm.index("know") + 3] + 1] == "know"


def test_fuzzy_threshold_is_respected():
    post = "Nothing is fun anymore and I stopped painting."
    assert Aligner(post, 90).align("Nothing is fun any more and I quit painting.").method == "unaligned"
    assert Aligner(post, 75).align("Nothing is fun any more and I quit painting.").method == "fuzzy"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("I'm tired. I can't sleep! Why?", ["I'm tired.", "I can't sleep!", "Why?"]),
        ("Dr. Smith said no. Fine.", ["Dr. Smith said no.", "Fine."]),
        ("first line\nsecond line\n\nthird", ["first line", "second line", "third"]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("  ...  ", []),
    ],
)
def test_segment(text, expected):
    assert [text[s:e] for s, e in segment(text)] == expected


def test_segment_keeps_annotated_span_whole():
    text = "I feel sad. Really sad. OK then."
    span = (0, text.index(" OK"))
    pieces = [text[s:e] for s, e in segment(text, [span])]
    assert pieces == ["I feel sad. Really sad.", "OK then."]
    assert [text[s:e] for s, e in segment(text, [(0, 6)])][:2] == ["I feel", "sad."]


def test_evidence_sentences_overlap_rule():
    from dsm5lab.data.prepare import evidence_sentences

    starts, ends = np.array([0, 20, 40]), np.array([18, 38, 60])
    assert evidence_sentences(starts, ends, 5, 25, natural=True).tolist() == [0]  # 13 of the span's 20
    assert evidence_sentences(starts, ends, 10, 30, natural=True).tolist() == [1]  # 10 of 20: half is enough
    assert evidence_sentences(starts, ends, 5, 25, natural=False).tolist() == [0, 1]  # cut around it: all touched
    assert evidence_sentences(np.array([0]), np.array([100]), 10, 20, natural=True).tolist() == [0]  # inside
    assert evidence_sentences(starts, ends, 0, 60, natural=True).tolist() == [0, 1, 2]  # whole sentences
    # neither sentence holds half the span or is half covered (a gap between them): the larger overlap wins
    assert evidence_sentences(np.array([0, 110]), np.array([100, 210]), 60, 150, natural=True).tolist() == [0]
    assert evidence_sentences(starts, ends, 18, 20, natural=True).tolist() == []  # only the gap: no sentence


def test_held_out_posts_are_segmented_without_their_spans():
    """The same post, natural (val/test) and cut around its span (train): only the boundaries differ."""
    text = "I can't sleep at night and I wake up at 4am every day. Food tastes like nothing."
    posts = pd.DataFrame({"post_id": ["p"], "text": [text]})
    ann = pd.DataFrame({"post_id": ["p"], "sentence_id": ["p_0"], "sentence_text": ["I wake up at 4am every day."],
                        "symptom": ["SLEEP_ISSUES"], "status": [1]})
    raw = RawBundle(posts, ann, "test", {})
    _, forced, _, crosses = align_and_segment(raw, fuzzy_threshold=90)
    _, natural, _, _ = align_and_segment(raw, fuzzy_threshold=90, natural={"p"})
    assert list(zip(natural["start"], natural["end"])) == segment(text) != list(zip(forced["start"], forced["end"]))
    assert natural["text"].tolist() == ["I can't sleep at night and I wake up at 4am every day.",
                                        "Food tastes like nothing."]
    assert natural["SLEEP_ISSUES"].tolist() == [1, 0]  # the span lies inside the first natural sentence
    assert forced.loc[forced["text"] == "I wake up at 4am every day.", "SLEEP_ISSUES"].tolist() == [1]
    assert crosses.tolist() == [False]
