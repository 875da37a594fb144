"""Shared fixtures: the real params.yaml, a CLI runner, one prepared and one trained tiny project for the
whole session, and a hand-written ReDSM5 bundle with every quirk."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dsm5lab.cli import app

ROOT = Path(__file__).resolve().parents[1]

# A tiny, fast configuration for tests: one small layer, short windows, few posts.
TINY = [
    "data.synthetic.n_posts=120", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
    "model.tiny.intermediate_size=64", "model.max_length=64", "model.stride=16", "model.max_chunks=2",
    "model.hidden_dim=16", "train.epochs=2", "train.eval_batch_size=32",
    "hpo.enabled=false",  # `dsm5lab train` trains these values, not a study's best (hpo_helpers turns it back on)
]
# The session's trained model: TINY keeping both epochs' checkpoints (the ensemble tests average them);
# prepare and evaluate read none of these keys.
TRAINED = TINY + ["train.checkpoint.keep_best_k=2", "train.checkpoint.keep_last_n=2"]


def sets(overrides: list[str]) -> list[str]:
    """["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"]."""
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A scratch project folder holding a copy of the real params.yaml; the cwd during the test."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CI", "true")
    return tmp_path


@pytest.fixture
def cli():
    """Run `dsm5lab ARGS...` in-process; returns click's Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


def run_in(root: Path, *args: str):
    """Run `dsm5lab ARGS` with `root` as the cwd (for module-scoped fixtures, where monkeypatch is not available)."""
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return result


def new_project(root: Path, *args: str):
    """Copy params.yaml into `root` and run `dsm5lab ARGS` there."""
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    return run_in(root, *args)


def copy_project(src: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of a fixture project as the cwd, quiet (CI=true) and with the default MLflow store."""
    root = tmp_path / "p"
    shutil.copytree(src, root)
    monkeypatch.chdir(root)
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (what a read-only fixture must keep)."""
    return {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def shared_project(root: Path):
    """Yield root to the whole session, then fail naming the files any test changed (copy it first)."""
    before = tree_digest(root)
    yield root
    after = tree_digest(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"tests wrote into the shared project {root} (copy it first): {changed[:10]}"


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """stages/prepare of 120 synthetic posts (TINY), prepared once per session. Read-only: copy before writing."""
    root = tmp_path_factory.mktemp("tiny-prepared")
    new_project(root, "prepare", *sets(TINY))
    yield from shared_project(root)


@pytest.fixture(scope="session")
def tiny_trained(tiny_prepared, tmp_path_factory):
    """tiny_prepared plus `dsm5lab train` (TRAINED: two checkpoints kept), once per session. Read-only."""
    root = tmp_path_factory.mktemp("tiny-trained") / "p"
    shutil.copytree(tiny_prepared, root)
    run_in(root, "train", *sets(TRAINED))
    # MLflow's store records its artifact folder as an absolute path: a copy of this store would log into
    # this folder. Copies start a store of their own instead.
    (root / "mlflow.db").unlink()
    shutil.rmtree(root / "mlruns", ignore_errors=True)
    yield from shared_project(root)


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


# Posts with the quirks real ReDSM5 has: quoted multi-line text, curly quotes, emoji,
# an em dash, CRLF line ends, and a UTF-8 BOM at the start of each file.
QUIRKY_POSTS = [
    ("p1", "I don’t enjoy anything anymore.\r\nEven gaming feels pointless — I just stare at the screen.\r\nAnyway, thanks for reading 😔"),
    ("p2", 'My mom says "you look tired" every day. I sleep maybe three hours a night. I\'m not sad though, just worn out.'),
    ("p3", "Work is fine. I have tons of energy lately, honestly. Dr. Smith changed my meds last week."),
    ("p4", "I feel like a burden to everyone around me. Sometimes I think everyone would be better off without me."),
    ("p5", "Just a quick question about the subreddit rules."),
    ("p6", "Can't focus on anything at school. My grades are dropping and I can’t decide what to do."),
    ("p7", "Long day. Nothing else to say really."),
]
QUIRKY_ANNOTATIONS = [
    # exact match
    ("p1", "p1_0", "I don’t enjoy anything anymore.", "ANHEDONIA", "1", "Loss of pleasure (A.2)."),
    # straight quote in the annotation, curly in the post -> normalised match
    ("p1", "p1_1", "Even gaming feels pointless - I just stare at the screen.", "ANHEDONIA", "1", "Loss of interest."),
    # whitespace and case drift -> normalised match
    ("p2", "p2_1", "i  sleep maybe three hours\na night.", "SLEEP_ISSUES", "1", "Insomnia (A.4)."),
    # hard negative (status 0)
    ("p2", "p2_2", "I'm not sad though, just worn out.", "DEPRESSED_MOOD", "0", "Denies low mood."),
    # one sentence, two symptoms
    ("p2", "p2_2", "I'm not sad though, just worn out.", "FATIGUE", "1", "Reports exhaustion (A.6)."),
    ("p3", "p3_1", "I have tons of energy lately, honestly.", "FATIGUE", "0", "Opposite of fatigue."),
    ("p3", "p3_2", "Dr. Smith changed my meds last week.", "SPECIAL_CASE", "1", "Medication change."),
    # a word swapped -> fuzzy match
    ("p4", "p4_0", "I feel like such a burden to everyone around me.", "WORTHLESSNESS", "1", "Feels a burden (A.7)."),
    ("p4", "p4_1", "Sometimes I think everyone would be better off without me.", "SUICIDAL_THOUGHTS", "1", "Passive ideation (A.9)."),
    # exact duplicate row -> rejected and counted
    ("p4", "p4_1", "Sometimes I think everyone would be better off without me.", "SUICIDAL_THOUGHTS", "1", "Passive ideation (A.9)."),
    # paraphrased beyond recognition -> unaligned, still counts for the post label
    ("p6", "p6_0", "Concentration has completely collapsed recently.", "COGNITIVE_ISSUES", "1", "Poor concentration (A.8)."),
    ("p6", "p6_1", "I can’t decide what to do.", "COGNITIVE_ISSUES", "1", "Indecisiveness (A.8)."),
    # the post's only annotation cannot be aligned: the post label must still count
    ("p7", "p7_0", "I have been sleeping fourteen hours every single day.", "SLEEP_ISSUES", "1", "Hypersomnia (A.4)."),
]


def write_bundle(directory: Path, posts=QUIRKY_POSTS, annotations=QUIRKY_ANNOTATIONS, bom: bool = True) -> Path:
    """Write a ReDSM5-style CSV pair with csv-module quoting (multi-line fields quoted)."""
    import csv
    import io

    directory.mkdir(parents=True, exist_ok=True)
    for name, header, rows in (
        ("redsm5_posts.csv", ["post_id", "text"], posts),
        ("redsm5_annotations.csv", ["post_id", "sentence_id", "sentence_text", "DSM5_symptom", "status", "explanation"], annotations),
    ):
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerow(header)
        writer.writerows(rows)
        (directory / name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8"))
    return directory


@pytest.fixture
def quirky_dir(tmp_path) -> Path:
    return write_bundle(tmp_path / "redsm5")
