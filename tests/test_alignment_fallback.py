"""The last alignment resort: a paraphrased sentence_text is aligned to the sentence its sentence_id numbers,
when that sentence reads like it (alignment.INDEX_FLOOR) and more than any other sentence of the post does
(alignment.INDEX_MARGIN); anything else stays unaligned and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from rapidfuzz import fuzz, utils

from dsm5lab.data.alignment import INDEX_FLOOR, METHODS, Aligner, sentence_index
from dsm5lab.data.prepare import align_and_segment
from dsm5lab.data.raw import read_csv_dir
from dsm5lab.data.segment import segment

# Posts and annotations in the style of ReDSM5's public sample: every sentence_text is a paraphrase of the
# post's sentence <index> (0-based), too far from it for the exact, normalised and fuzzy (90) matches.
POSTS = [
    ("q1", "I haven't enjoyed anything in months. Even playing guitar feels like a chore now. My friends keep "
           "inviting me out but I always say no."),
    ("q2", "I wake up at 4am every night and can't get back to sleep. By the afternoon I'm so exhausted I can "
           "barely move. Coffee doesn't help at all."),
    ("q3", "Honestly I think my family would be better off without me. I feel like a failure at everything I try. "
           "Work is okay I guess."),
    ("q4", "I've lost about ten pounds since summer because I forget to eat. Food just doesn't appeal to me "
           "anymore. My mom is worried."),
    ("q5", "I can't concentrate in class anymore. I read the same page five times and nothing sticks. My grades "
           "are slipping."),
    ("q6", "Everything feels gray and heavy lately. I cry in my car most days. I don't even know why I'm posting "
           "this."),
    ("q7", "My roommate says I move and talk really slowly now. It takes me forever to get out of bed. Sorry for "
           "the long post."),
    ("q8", "I keep replaying every mistake I've ever made. I feel guilty all the time, even for small things. Any "
           "advice would be appreciated."),
]
PARAPHRASES = [
    ("q1", "q1_0", "For months nothing has been enjoyable to me.", "ANHEDONIA"),
    ("q1", "q1_1", "Even guitar, which I used to love, now feels like a chore.", "ANHEDONIA"),
    ("q2", "q2_0", "Every night I'm awake at 4am and unable to fall back asleep.", "SLEEP_ISSUES"),
    ("q2", "q2_1", "I'm so worn out by the afternoon that I can hardly move.", "FATIGUE"),
    ("q3", "q3_0", "I honestly believe my family would be better without me around.", "SUICIDAL_THOUGHTS"),
    ("q3", "q3_1", "Whatever I try, I feel like I fail at it.", "WORTHLESSNESS"),
    ("q4", "q4_0", "Since the summer I've dropped roughly ten pounds from forgetting to eat.", "APPETITE_CHANGE"),
    ("q4", "q4_1", "Food no longer appeals to me.", "APPETITE_CHANGE"),
    ("q5", "q5_0", "Concentrating in class has become impossible for me.", "COGNITIVE_ISSUES"),
    ("q5", "q5_1", "I reread one page five times and none of it sticks.", "COGNITIVE_ISSUES"),
    ("q6", "q6_0", "Lately everything seems heavy and gray.", "DEPRESSED_MOOD"),
    ("q6", "q6_1", "Most days I end up crying in my car.", "DEPRESSED_MOOD"),
    ("q7", "q7_0", "According to my roommate I now talk and move very slowly.", "PSYCHOMOTOR"),
    ("q7", "q7_1", "Getting out of bed takes me forever.", "FATIGUE"),
    ("q8", "q8_0", "Every mistake I have ever made keeps replaying in my head.", "WORTHLESSNESS"),
    ("q8", "q8_1", "Even small things make me feel guilty constantly.", "WORTHLESSNESS"),
]
# sentence_ids that name no plausible sentence: the row stays unaligned
UNRELATED = ("q2", "q2_2", "I sleep fourteen hours a day and still wake up tired.", "SLEEP_ISSUES")  # "Coffee ..."
MISPLACED = ("q5", "q5_2", "I reread one page five times and none of it sticks.", "COGNITIVE_ISSUES")  # "My grades"
MALFORMED = [
    ("q1", "q1_99", "For months nothing has been enjoyable to me.", "ANHEDONIA"),  # past the last sentence
    ("q1", "q1_x", "For months nothing has been enjoyable to me.", "DEPRESSED_MOOD"),
    ("q1", "q1", "For months nothing has been enjoyable to me.", "FATIGUE"),
    ("q1", "q1_-1", "For months nothing has been enjoyable to me.", "SLEEP_ISSUES"),
    ("q1", "q2_0", "For months nothing has been enjoyable to me.", "WORTHLESSNESS"),  # another post's id
    ("q1", "q1_0.0", "For months nothing has been enjoyable to me.", "PSYCHOMOTOR"),
]


def rows(annotations) -> list[tuple]:
    return [(p, sid, text, symptom, "1", "A paraphrase.") for p, sid, text, symptom in annotations]


@pytest.fixture
def paraphrased(tmp_path):
    from conftest import write_bundle

    return read_csv_dir(write_bundle(tmp_path / "redsm5", POSTS, rows(PARAPHRASES + [UNRELATED, MISPLACED]
                                                                      + MALFORMED)))


def by_id(ann: pd.DataFrame) -> dict:
    return {(r.sentence_id, r.symptom): r for r in ann.itertuples()}


def test_paraphrases_are_found_by_their_sentence_index_only(paraphrased):
    posts = dict(POSTS)
    found = by_id(align_and_segment(paraphrased, fuzzy_threshold=90)[0])
    for pid, sid, text, symptom in PARAPHRASES:
        assert Aligner(posts[pid], 90).align(text).method == "unaligned", text  # a paraphrase, not a drift
        row = found[(sid, symptom)]
        start, end = segment(posts[pid])[int(sid.rsplit("_", 1)[1])]
        assert row.align_method == "sentence_index" and (row.start, row.end) == (start, end), text
        assert INDEX_FLOOR <= row.align_score < 100


def test_an_indexed_sentence_unlike_the_annotation_stays_unaligned(paraphrased):
    found = by_id(align_and_segment(paraphrased, fuzzy_threshold=90)[0])
    for _, sid, _, symptom in (UNRELATED, MISPLACED, *MALFORMED):
        row = found[(sid, symptom)]
        assert row.align_method == "unaligned" and row.start == -1 and row.align_score == 0, sid


# A first-person post whose sentences read alike: the paraphrase of sentence 1 scores above INDEX_FLOOR against
# sentence 0 too, so an id off by one (another splitter's numbering) must not put its label on sentence 0.
ALIKE = ("q9", "I have been feeling really tired and I sleep all day. I have been feeling really down and empty "
               "lately. My sister thinks I should see someone.")
ALIKE_TEXT = "Recently I have felt really down and empty."


def test_an_indexed_sentence_another_sentence_of_the_post_beats_stays_unaligned(tmp_path):
    from conftest import write_bundle

    pid, post = ALIKE
    scores = [fuzz.token_sort_ratio(utils.default_process(ALIKE_TEXT), utils.default_process(post[a:b]))
              for a, b in segment(post)]
    assert INDEX_FLOOR <= scores[0] < scores[1]  # the premise: the wrong sentence alone would pass the floor
    bundle = read_csv_dir(write_bundle(tmp_path / "redsm5", [ALIKE], rows([
        (pid, "q9_0", ALIKE_TEXT, "DEPRESSED_MOOD"), (pid, "q9_1", ALIKE_TEXT, "ANHEDONIA")])))
    ann, sentences, _, _ = align_and_segment(bundle, fuzzy_threshold=90)
    found = by_id(ann)
    wrong, right = found[("q9_0", "DEPRESSED_MOOD")], found[("q9_1", "ANHEDONIA")]
    assert wrong.align_method == "unaligned" and wrong.start == -1, wrong
    assert (sentences["DEPRESSED_MOOD"] == 0).all()  # no sentence carries the misplaced label
    assert right.align_method == "sentence_index" and (right.start, right.end) == segment(post)[1]


@pytest.mark.parametrize(
    "post_id,sentence_id,index",
    [("q1", "q1_0", 0), ("q1", "q1_12", 12), ("s_100_5", "s_100_5_3", 3), ("q1", "q1_x", None), ("q1", "q1", None),
     ("q1", "q1_", None), ("q1", "q1_-1", None), ("q1", "q10_1", None), ("q1", "q1_1_2", None),
     ("q1", "q1_٣", None), ("q1", "q1_ 2", None)],
)
def test_sentence_index_reads_only_post_id_underscore_digits(post_id, sentence_id, index):
    assert sentence_index(post_id, sentence_id) == index


def test_the_new_method_is_counted_in_stats_and_in_the_aligned_share(workdir, cli):
    """A small synthetic bundle plus the paraphrased posts, prepared through the CLI from CSV."""
    from conftest import write_bundle

    assert cli("synth", "--out", "bundle", "--set", "data.synthetic.n_posts=80").exit_code == 0
    posts = pd.concat([pd.read_csv("bundle/redsm5_posts.csv"), pd.DataFrame(POSTS, columns=["post_id", "text"])])
    ann = pd.read_csv("bundle/redsm5_annotations.csv", dtype=str)
    extra = rows(PARAPHRASES + [UNRELATED] + MALFORMED)
    write_bundle(Path("bundle"), list(posts.itertuples(index=False, name=None)),
                 list(ann.itertuples(index=False, name=None)) + extra)
    result = cli("prepare", "--set", "data.source=csv", "--set", "data.csv_dir=bundle")
    assert result.exit_code == 0, result.output
    stats = json.loads(Path("reports/prepare/stats.json").read_text())["alignment"]
    metrics = json.loads(Path("metrics/prepare.json").read_text())
    assert stats["sentence_index"] == len(PARAPHRASES)
    assert stats["unaligned"] >= 1 + len(MALFORMED)
    total = len(ann) + len(extra)
    assert sum(stats[m] for m in METHODS) == total
    assert metrics["aligned_share"] == stats["aligned_share"] == round(1 - stats["unaligned"] / total, 4)
    assert "sentence_index" not in metrics  # per-method counts stay in stats.json

