"""Every bad input named in the foundation issue: exit code 2, one clear line, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import QUIRKY_ANNOTATIONS, QUIRKY_POSTS, write_bundle

CSV = ("--set", "data.source=csv", "--set", "prepare.require_all_criteria=false")
# Six posts need wide splits and two folds to give every split a post.
TINY = ("--set", "prepare.split.train=0.5", "--set", "prepare.split.val=0.25", "--set", "prepare.split.test=0.25",
        "--set", "prepare.n_folds=2")


def run_prepare(cli, csv_dir: Path, *extra: str):
    return cli("prepare", *CSV, "--set", f"data.csv_dir={csv_dir}", *extra)


def assert_clean_failure(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not Path("stages/prepare").exists()
    assert not Path("metrics/prepare.json").exists()
    assert not Path("reports/prepare").exists()


def test_missing_directory(workdir, cli):
    assert_clean_failure(run_prepare(cli, workdir / "nope"), "data.csv_dir", "directory not found", "redsm5_posts.csv")


def test_missing_file(workdir, cli, quirky_dir):
    (quirky_dir / "redsm5_annotations.csv").unlink()
    assert_clean_failure(run_prepare(cli, quirky_dir), "redsm5_annotations.csv", "file not found")


def test_misspelt_column(workdir, cli, quirky_dir):
    path = quirky_dir / "redsm5_posts.csv"
    path.write_bytes(path.read_bytes().replace(b"post_id,text", b"post_id,txt", 1))
    assert_clean_failure(run_prepare(cli, quirky_dir), "redsm5_posts.csv", "missing column 'text'", "did you mean")


def test_missing_column(workdir, cli, quirky_dir):
    import pandas as pd

    path = quirky_dir / "redsm5_annotations.csv"
    pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns="explanation").to_csv(path, index=False)
    assert_clean_failure(run_prepare(cli, quirky_dir), "missing column 'explanation'")


@pytest.mark.parametrize("where", ["trailing", "leading"])
def test_rows_with_a_field_more_than_the_header_are_refused_not_shifted(workdir, cli, quirky_dir, where):
    """Every row one field longer: pandas would read the first column as an index and shift the rest."""
    import csv
    import io

    path = quirky_dir / "redsm5_posts.csv"
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(rows[0])
    for row in rows[1:]:
        writer.writerow([*row, "x"] if where == "trailing" else ["x", *row])
    path.write_text(out.getvalue(), encoding="utf-8")
    assert_clean_failure(run_prepare(cli, quirky_dir), "redsm5_posts.csv: data row 1 has 3 fields, the header 2 "
                                                       "(post_id, text)")


def test_a_short_row_names_its_row(workdir, cli, quirky_dir):
    path = quirky_dir / "redsm5_annotations.csv"
    text = path.read_text(encoding="utf-8-sig")
    head, first, *rest = text.split("\n")
    path.write_text("\n".join([head, first, first.rsplit(",", 1)[0], *rest]), encoding="utf-8")
    assert_clean_failure(run_prepare(cli, quirky_dir), "redsm5_annotations.csv: data row 2 has 5 fields, the "
                                                       "header 6")


def test_empty_file(workdir, cli, quirky_dir):
    (quirky_dir / "redsm5_posts.csv").write_bytes(b"")
    assert_clean_failure(run_prepare(cli, quirky_dir), "redsm5_posts.csv", "file is empty")


def test_header_only(workdir, cli, quirky_dir):
    write_bundle(quirky_dir, posts=[])
    assert_clean_failure(run_prepare(cli, quirky_dir), "redsm5_posts.csv", "no rows")


def test_duplicate_post_id(workdir, cli, tmp_path):
    d = write_bundle(tmp_path / "b", posts=[*QUIRKY_POSTS, ("p2", "again")])
    assert_clean_failure(run_prepare(cli, d), f"row {len(QUIRKY_POSTS) + 1}, column post_id", "duplicate post_id 'p2'", "row 2")


def test_annotation_for_unknown_post(workdir, cli, tmp_path):
    ann = [*QUIRKY_ANNOTATIONS, ("p99", "p99_0", "Hello.", "FATIGUE", "1", "x")]
    d = write_bundle(tmp_path / "b", annotations=ann)
    assert_clean_failure(run_prepare(cli, d), f"row {len(ann)}, column post_id", "'p99' is not a post_id")


def test_unknown_symptom(workdir, cli, tmp_path):
    ann = [("p1", "p1_0", "I don’t enjoy anything anymore.", "ANHEDONA", "1", "x")]
    d = write_bundle(tmp_path / "b", annotations=ann)
    assert_clean_failure(run_prepare(cli, d), "row 1, column DSM5_symptom", "unknown label 'ANHEDONA'", "'ANHEDONIA'")


@pytest.mark.parametrize("status", ["2", "yes", ""])
def test_status_not_binary(workdir, cli, tmp_path, status):
    ann = [("p1", "p1_0", "I don’t enjoy anything anymore.", "ANHEDONIA", status, "x")]
    d = write_bundle(tmp_path / "b", annotations=ann)
    assert_clean_failure(run_prepare(cli, d), "row 1, column status", "expected 0 or 1")


def test_unreadable_encoding(workdir, cli, quirky_dir):
    path = quirky_dir / "redsm5_posts.csv"
    path.write_bytes("post_id,text\np1,caf\u00e9 ol\u00e9\n".encode("latin-1"))
    assert_clean_failure(run_prepare(cli, quirky_dir), "redsm5_posts.csv", "not valid UTF-8", "offset")


def test_empty_split(workdir, cli, quirky_dir):
    result = run_prepare(
        cli, quirky_dir, "--set", "prepare.split.train=0.9", "--set", "prepare.split.val=0.05",
        "--set", "prepare.split.test=0.05", "--set", "prepare.n_folds=2",
    )
    assert_clean_failure(result, "is empty", "prepare.split.")


def test_split_missing_criterion(workdir, cli, quirky_dir):
    result = cli("prepare", "--set", "data.source=csv", "--set", f"data.csv_dir={quirky_dir}", *TINY)
    assert_clean_failure(result, "prepare.require_all_criteria", "has no post with")


def test_ratios_do_not_sum_to_one(workdir, cli):
    result = cli("prepare", "--set", "prepare.split.train=0.8")
    assert_clean_failure(result, "prepare.split", "must sum to 1", "1.1")


def test_unknown_param_key(workdir, cli):
    result = cli("prepare", "--set", "data.synthetic.n_post=300")
    assert_clean_failure(result, "unknown key 'data.synthetic.n_post'", "did you mean 'n_posts'")


def test_wrong_type_and_range(workdir, cli):
    assert_clean_failure(cli("prepare", "--set", "prepare.n_folds=many"), "prepare.n_folds", "integer")
    assert_clean_failure(cli("prepare", "--set", "prepare.n_folds=1"), "prepare.n_folds", "greater than or equal to 2")
    assert_clean_failure(cli("prepare", "--set", "data.source=s3"), "data.source", "'synthetic', 'csv' or 'hf'")


def test_missing_params_file(workdir, cli):
    assert_clean_failure(cli("prepare", "--params", "other.yaml"), "params file not found: other.yaml")


def test_bad_override_syntax(workdir, cli):
    assert_clean_failure(cli("prepare", "--set", "seed"), "--set 'seed'", "expected key=value")


def test_bad_criteria_file(workdir, cli, tmp_path):
    bad = tmp_path / "criteria.json"
    bad.write_text('{"criteria": [{"id": "A.1", "symptom": "DEPRESSED_MOOD", "name": "x", "description": "y"}]}')
    assert_clean_failure(cli("prepare", "--set", f"data.criteria_file={bad}"), "needs each of the nine symptoms", "ANHEDONIA")


def _outputs() -> dict[Path, bytes]:
    return {p: p.read_bytes() for top in ("stages", "metrics", "reports") for p in Path(top).rglob("*") if p.is_file()}


def test_failure_keeps_previous_outputs(workdir, cli, quirky_dir):
    ok = run_prepare(cli, quirky_dir, *TINY)
    assert ok.exit_code == 0, ok.output
    before = _outputs()
    (quirky_dir / "redsm5_posts.csv").write_bytes(b"")
    bad = run_prepare(cli, quirky_dir, *TINY)
    assert bad.exit_code == 2
    assert _outputs() == before


def test_crash_while_writing_leaves_previous_outputs(workdir, cli, quirky_dir, monkeypatch):
    from dsm5lab.data import prepare as stage

    assert run_prepare(cli, quirky_dir, *TINY).exit_code == 0
    before = Path("stages/prepare/posts.parquet").read_bytes()
    calls = {"n": 0}
    real = stage._write_parquet

    def flaky(frame, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        real(frame, path)

    monkeypatch.setattr(stage, "_write_parquet", flaky)
    with pytest.raises(OSError):
        run_prepare(cli, quirky_dir, *TINY, "--set", "seed=7")
    assert Path("stages/prepare/posts.parquet").read_bytes() == before
    assert sorted(p.name for p in Path("stages").iterdir()) == ["prepare"]


def test_blank_lines_before_the_header_and_between_rows_are_skipped(workdir, cli, quirky_dir):
    """As pandas reads them: a blank line is no record, so it neither breaks the header nor a row count."""
    path = quirky_dir / "redsm5_posts.csv"
    text = path.read_text(encoding="utf-8-sig")
    head, rest = text.split("\n", 1)
    path.write_text("\n" + head + "\n\n" + rest, encoding="utf-8")
    result = run_prepare(cli, quirky_dir, *TINY)
    assert result.exit_code == 0 and "fields, the header" not in result.output, result.output
