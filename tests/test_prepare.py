"""The prepare stage end to end on the synthetic source: outputs, statistics, determinism, dry run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dsm5lab.data.labels import (
    REDSM5_MEAN_WORDS,
    REDSM5_POSTS,
    REDSM5_POSTS_PER_LABEL,
    REDSM5_SYMPTOM_FREE_POSTS,
    SYMPTOMS,
)
from dsm5lab.data.schema import COLUMNS, read_table

OUTPUTS = ("stages/prepare", "metrics/prepare.json", "reports/prepare")


def output_bytes(root: Path) -> dict[str, bytes]:
    files = {}
    for top in OUTPUTS:
        p = root / top
        for f in [p] if p.is_file() else sorted(p.rglob("*")):
            if f.is_file():
                files[str(f.relative_to(root))] = f.read_bytes()
    return files


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One prepare run at the default (ReDSM5-sized) synthetic settings, shared by the tests below."""
    from conftest import new_project

    root = tmp_path_factory.mktemp("default")
    return root, new_project(root, "prepare")


def test_writes_every_output(default_run):
    root, result = default_run
    out = root / "stages/prepare"
    for name in COLUMNS:
        table = read_table(out, name)
        assert list(table.columns) == list(COLUMNS[name])
    assert json.loads((out / "criteria.json").read_text())["criteria"][0]["id"] == "A.1"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["origin"].startswith("synthetic:") and len(manifest["fingerprint"]) == 64
    for split in ("train", "val", "test"):
        plot = pd.read_csv(root / f"reports/prepare/label_distribution/{split}.csv")
        assert list(plot.columns) == ["criterion", "posts", "share"] and len(plot) == 11
    assert "alignment: exact" in result.stdout and "DEPRESSED_MOOD" in result.stdout


def test_metrics_are_consistent_with_tables(default_run):
    root, _ = default_run
    m = json.loads((root / "reports/prepare/stats.json").read_text())
    posts = read_table(root / "stages/prepare", "posts")
    ann = read_table(root / "stages/prepare", "annotations")
    assert m["posts"]["total"] == len(posts) == sum(m["posts"][s] for s in ("train", "val", "test"))
    from dsm5lab.data.alignment import METHODS

    assert sum(m["alignment"][k] for k in METHODS) == len(ann)
    assert m["alignment"]["normalized"] > 0 and m["alignment"]["fuzzy"] > 0 and m["alignment"]["unaligned"] > 0
    assert m["alignment"]["aligned_share"] > 0.97
    assert set(m["rejected"]) >= {"duplicate_annotation", "empty_sentence_text"}
    assert m["folds"]["k"] == 5 and m["folds"]["criteria_missing"] == 0


def test_metrics_file_holds_the_headline_few_and_stats_hold_every_count(default_run):
    """metrics/prepare.json is what `dvc exp show` lists: a handful of numbers, all derived from stats.json."""
    root, _ = default_run
    stats = json.loads((root / "reports/prepare/stats.json").read_text())
    m = json.loads((root / "metrics/prepare.json").read_text())
    leaves = [v for v in m.values() if not isinstance(v, dict)] + [v for d in m.values() if isinstance(d, dict)
                                                                   for v in d.values()]
    assert len(leaves) <= 7, m
    cross = stats["segmentation"]["spans_crossing_natural_boundaries"]
    assert m["held_out_spans_crossing_sentences"] == cross["val"] + cross["test"]
    assert m["posts"] == {s: stats["posts"][s] for s in ("train", "val", "test")}
    assert m["aligned_share"] == stats["alignment"]["aligned_share"]
    w = stats["windows"]["train"]
    assert m["evidence_unread_share"] == round(w["evidence_unread"] / w["evidence"], 4)
    assert m["warnings"] == len(stats["warnings"]) == 0  # the default data is not weak


def test_weak_data_gets_one_warning_line_each_in_the_summary_and_the_metrics(workdir, cli):
    import pandas as pd

    assert cli("synth", "--out", "bundle", "--set", "data.synthetic.n_posts=60").exit_code == 0
    ann = pd.read_csv("bundle/redsm5_annotations.csv")
    ann.loc[ann.index[: int(len(ann) * 0.9)], "sentence_text"] = "words that appear in no post at all"
    ann.to_csv("bundle/redsm5_annotations.csv", index=False)
    result = cli("prepare", "--set", "data.source=csv", "--set", "data.csv_dir=bundle")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("warning: prepare: ")]
    assert len(lines) == 1 and "aligned share" in lines[0] and "is under 90%" in lines[0], result.output
    stats = json.loads(Path("reports/prepare/stats.json").read_text())
    assert json.loads(Path("metrics/prepare.json").read_text())["warnings"] == 1
    assert stats["warnings"] == [lines[0].removeprefix("warning: prepare: ")]
    # 20 posts cannot keep every criterion in every split at 0.7 / 0.1 / 0.2
    result = cli("prepare", "--set", "data.synthetic.n_posts=20")
    assert result.exit_code == 0, result.output
    assert "warning: prepare: split ratios had to change: asked train 0.70 / val 0.10 / test 0.20, got " \
        in result.output


def test_synthetic_statistics_match_redsm5_through_the_loader(default_run):
    root, _ = default_run
    posts = read_table(root / "stages/prepare", "posts")
    assert len(posts) == REDSM5_POSTS
    for label, expected in REDSM5_POSTS_PER_LABEL.items():
        got = int(posts[label].sum())
        assert abs(got - expected) <= 0.1 * expected, (label, got, expected)
    free = int(posts["NO_SYMPTOMS"].sum())
    assert abs(free - REDSM5_SYMPTOM_FREE_POSTS) <= 0.1 * REDSM5_SYMPTOM_FREE_POSTS
    assert abs(posts["n_words"].mean() - REDSM5_MEAN_WORDS) <= 0.1 * REDSM5_MEAN_WORDS


def test_splits_are_disjoint_and_cover_every_criterion(default_run):
    root, _ = default_run
    posts = read_table(root / "stages/prepare", "posts")
    sentences = read_table(root / "stages/prepare", "sentences")
    groups = {s: set(posts.loc[posts["split"] == s, "post_id"]) for s in ("train", "val", "test")}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
    for label in SYMPTOMS:
        for split, ids in groups.items():
            assert posts.loc[posts["post_id"].isin(ids), label].sum() > 0, (label, split)
        for fold in range(5):
            assert posts.loc[posts["fold"] == fold, label].sum() > 0, (label, fold)
    # sentence and annotation tables inherit the post's split
    split_of = posts.set_index("post_id")["split"]
    assert (sentences["split"] == sentences["post_id"].map(split_of)).all()


def test_test_evidence_is_mostly_unseen_phrasing(default_run):
    root, _ = default_run
    s = read_table(root / "stages/prepare", "sentences")
    evidence = s[(s[list(SYMPTOMS)] == 1).any(axis=1)]
    train = set(evidence.loc[evidence["split"] == "train", "text"].str.lower())
    test = evidence.loc[evidence["split"] == "test", "text"].str.lower().drop_duplicates()
    unseen = (~test.isin(train)).mean()
    assert unseen >= 0.7, unseen


def test_no_val_or_test_sentence_boundary_comes_from_an_annotation(default_run):
    """Held-out posts are cut exactly as `predict` cuts any text; training posts keep their span-forced cuts."""
    from dsm5lab.data.segment import segment

    root, _ = default_run
    posts = read_table(root / "stages/prepare", "posts").set_index("post_id")
    sentences = read_table(root / "stages/prepare", "sentences")
    forced = 0
    for pid, rows in sentences.groupby("post_id", sort=False):
        got = list(zip(rows["start"], rows["end"]))
        natural = segment(posts.at[pid, "text"])
        if posts.at[pid, "split"] in ("val", "test"):
            assert got == natural, pid
        else:
            forced += got != natural
    assert forced > 100, forced  # training posts still have their spans as sentences of their own


def test_held_out_evidence_labels_follow_the_overlap_rule(default_run):
    """Each aligned val/test span marks the sentences it overlaps by half of itself or half of the sentence."""
    root, _ = default_run
    ann = read_table(root / "stages/prepare", "annotations")
    sentences = read_table(root / "stages/prepare", "sentences")
    stats = json.loads((root / "reports/prepare/stats.json").read_text())["segmentation"]
    held = ann[ann["split"].isin(["val", "test"]) & (ann["start"] >= 0)]
    by_post = dict(tuple(sentences.groupby("post_id", sort=False)))
    expected = {pid: rows[list(SYMPTOMS)].copy() * 0 for pid, rows in by_post.items()
                if rows["split"].iloc[0] in ("val", "test")}
    crossing = {"val": 0, "test": 0}
    for a in held.itertuples():
        rows = by_post[a.post_id]
        overlap = (rows["end"].clip(upper=a.end) - rows["start"].clip(lower=a.start)).clip(lower=0)
        meets = (overlap > 0) & ((2 * overlap >= a.end - a.start) | (2 * overlap >= rows["end"] - rows["start"]))
        marked = rows.index[meets] if meets.any() else [overlap.idxmax()]
        if a.symptom in SYMPTOMS:
            want = expected[a.post_id]
            was = want.loc[marked, a.symptom]
            want.loc[marked, a.symptom] = 1 if a.status == 1 else was.where(was == 1, -1)  # a positive wins
        crossing[a.split] += int((overlap > 0).sum() > 1)
    for pid, want in expected.items():  # every label of every held-out sentence, rebuilt from the rule alone
        got = by_post[pid][list(SYMPTOMS)].to_numpy()
        assert (got == want.to_numpy()).all(), (pid, got.tolist(), want.to_numpy().tolist())
    assert 0 < sum(crossing.values())
    # a span overlapping two natural sentences crosses a boundary (hard negatives are counted there too)
    assert all(stats["spans_crossing_natural_boundaries"][s] >= crossing[s] for s in crossing), (stats, crossing)


@pytest.mark.slow  # a second prepare at the full default size
def test_two_runs_are_byte_identical(default_run, tmp_path, monkeypatch, cli):
    root, _ = default_run
    import shutil

    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert cli("prepare").exit_code == 0
    assert output_bytes(tmp_path) == output_bytes(root)


def test_other_seed_changes_the_split(workdir, cli):
    assert cli("prepare", "--set", "data.synthetic.n_posts=200").exit_code == 0
    first = read_table(workdir / "stages/prepare", "posts")["split"].tolist()
    assert cli("prepare", "--set", "data.synthetic.n_posts=200", "--set", "seed=43").exit_code == 0
    second = read_table(workdir / "stages/prepare", "posts")["split"].tolist()
    assert first != second


def test_dry_run_writes_nothing(workdir, cli):
    result = cli("prepare", "--dry-run", "--set", "data.synthetic.n_posts=200")
    assert result.exit_code == 0, result.output
    assert "dry run: nothing written" in result.stdout and "posts" in result.stdout
    assert sorted(p.name for p in workdir.iterdir()) == ["params.yaml"]


def test_synth_command_writes_the_bundle(workdir, cli):
    result = cli("synth", "--out", "bundle", "--set", "data.synthetic.n_posts=50")
    assert result.exit_code == 0, result.output
    posts = pd.read_csv(workdir / "bundle/redsm5_posts.csv")
    assert len(posts) == 50 and list(posts.columns) == ["post_id", "text"]


def test_python_dash_m_entry_point(workdir):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "dsm5lab", "--help"], capture_output=True, text=True, check=True)
    assert "prepare" in out.stdout
