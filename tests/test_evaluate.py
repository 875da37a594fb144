"""The evaluate stage and `dsm5lab predict` on a tiny trained model."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TRAINED, copy_project, run_in
from dsm5lab.config import load_params
from dsm5lab.data import coverage
from dsm5lab.errors import UserError
from test_train import TINY, sets

EVAL = TRAINED + ["evaluate.bootstrap_resamples=50"]


@pytest.fixture(scope="module")
def trained(tiny_trained, tmp_path_factory):
    """The session's trained tiny model plus evaluate, once; tests copy the folder."""
    root = tmp_path_factory.mktemp("trained") / "p"
    shutil.copytree(tiny_trained, root)
    run_in(root, "evaluate", *sets(EVAL))
    return root


@pytest.fixture
def project(trained, tmp_path, monkeypatch):
    return copy_project(trained, tmp_path, monkeypatch)


def test_report_validates_and_every_output_exists(project):
    from dsm5lab.evaluation.stage import validate_report

    report = json.loads(Path("reports/evaluate/evaluation_report.json").read_text())
    validate_report(report)
    assert report["criteria"]["thresholds"]["tuned_on"] == "val"
    assert report["paper_view"]["classes"][-1] == "NO_SYMPTOMS" and report["paper_view"]["threshold"] == 0.5
    assert set(report["evidence"]["ranking"]) >= {"recall@k", "ndcg@k", "mrr"}
    ci = report["paper_view"]["ci"]["macro_f1"]
    assert ci["low"] <= report["paper_view"]["macro_f1"] <= ci["high"]
    metrics = json.loads(Path("metrics/evaluate.json").read_text())
    assert set(metrics) == {"test", "paper", "evidence"}
    errors = pd.read_csv("reports/evaluate/errors.csv")
    assert list(errors.columns) == ["post_id", "criterion", "error", "gold", "predicted", "score", "threshold",
                                    "confidence", "top_sentence", "text"]
    assert errors["confidence"].is_monotonic_decreasing
    assert set(errors["error"]) <= {"false_positive", "false_negative"}
    assert "| criterion | threshold |" in Path("reports/evaluate/summary.md").read_text()
    plots = Path("reports/evaluate/plots")
    assert sorted(p.name for p in plots.iterdir()) == ["calibration.csv", "confusion.csv", "paper_labels.csv", "pr.csv",
                                                        "roc.csv"]
    conf = pd.read_csv(plots / "confusion.csv")  # a 2x2 per criterion over every test post
    assert (conf.groupby("criterion")["count"].sum() == report["splits"]["test"]).all() and len(conf) == 36
    paper = pd.read_csv(plots / "paper_labels.csv")  # the paper view's per-label F1, as in the report
    f1 = paper[paper["metric"] == "f1"].set_index("label")["value"].to_dict()
    assert f1 == pytest.approx(report["paper_view"]["per_class_f1"])
    config = json.loads(Path("stages/evaluate/model/config.json").read_text())
    assert config["thresholds"] == report["criteria"]["thresholds"]["values"]
    assert json.loads(Path("stages/train/model/config.json").read_text())["thresholds"]["FATIGUE"] == 0.5


def test_test_decisions_reproduce_every_headline_they_determine(project):
    """The gate's paired check recomputes these metrics from the committed decisions: they must agree."""
    from dsm5lab import paired
    from dsm5lab.gate import lookup

    preds = paired.read(Path("reports/evaluate/predictions"))
    metrics = json.loads(Path("metrics/evaluate.json").read_text())
    posts = pd.read_parquet("stages/prepare/posts.parquet")
    assert set(preds.post_ids) == set(posts.loc[posts["split"] == "test", "post_id"])
    assert set(paired.STATISTICS) <= {k for k in paired.STATISTICS if paired.supports(preds, k)}
    for key in paired.STATISTICS:
        assert paired.statistic(preds, key) == pytest.approx(lookup(metrics, key), abs=1e-6), key


def test_an_invalid_report_fails(project):
    from dsm5lab.evaluation.stage import validate_report

    report = json.loads(Path("reports/evaluate/evaluation_report.json").read_text())
    report["criteria"]["thresholds"]["tuned_on"] = "test"
    with pytest.raises(UserError, match="criteria/thresholds/tuned_on"):
        validate_report(report)


def test_thresholds_only_ever_see_validation(project, monkeypatch):
    """Criteria and evidence-sentence thresholds are tuned on exactly the validation predictions, and test
    changes cannot move them."""
    from dsm5lab.evaluation import operating, stage
    from dsm5lab.evaluation import views as ev

    seen, seen_sentences = [], []
    real = ev.tune_thresholds

    def spy(into):
        def fn(y, p, grid=None):
            into.append((np.array(y), np.array(p)))
            return real(y, p, grid)

        return fn

    monkeypatch.setattr(operating, "tune_thresholds", spy(seen))  # criteria (objective f1)
    monkeypatch.setattr(ev, "tune_thresholds", spy(seen_sentences))  # evidence sentences
    params = load_params("params.yaml", EVAL)
    report = stage.run(params, Path("."), out_dir=Path("spy"))
    posts = pd.read_parquet("stages/prepare/posts.parquet")
    val = posts[posts["split"] == "val"]
    _, _, sentences = ev.load_splits_for_eval(Path("stages/prepare"))
    from dsm5lab.data.labels import SYMPTOMS

    assert len(seen_sentences) == 1
    assert seen_sentences[0][0].shape[0] == sentences["post_id"].isin(set(val["post_id"])).sum()
    assert report["evidence"]["sentence"]["tuned"]["thresholds"] == dict(zip(SYMPTOMS, real(*seen_sentences[0])))
    assert len(seen) == 1 and seen[0][0].shape[0] == len(val)
    assert (seen[0][0] == val[list(SYMPTOMS)].to_numpy()).all()
    # the same val predictions with scrambled test predictions give the same thresholds
    val_pred = ev.SplitPredictions("val", val, seen[0][0], seen[0][1], [], None)
    rng = np.random.default_rng(0)
    test_a = ev.SplitPredictions("test", val, seen[0][0], rng.random(seen[0][1].shape), [], None)
    settings = stage.Settings(seed=0, bootstrap_resamples=5, ci_level=0.95, ranking_k=3, calibration_bins=10,
                              max_errors=10, batch_size=8)
    a = ev.criteria_section(val_pred, test_a, settings)["thresholds"]
    b = ev.criteria_section(val_pred, ev.SplitPredictions("test", val, 1 - seen[0][0], rng.random(seen[0][1].shape),
                                                           [], None), settings)["thresholds"]
    assert a == b == report["criteria"]["thresholds"]


def test_evaluate_a_checkpoint_outside_the_pipeline(project, cli):
    before = Path("metrics/evaluate.json").read_bytes()
    checkpoint = sorted(Path("checkpoints/train").glob("step-*"))[-1]
    result = cli("evaluate", "--model", str(checkpoint), "--out", "external", *sets(EVAL))
    assert result.exit_code == 0, result.output
    assert json.loads(Path("external/evaluation_report.json").read_text())["model"]["path"] == str(checkpoint)
    assert Path("external/metrics.json").is_file()
    assert Path("metrics/evaluate.json").read_bytes() == before


def test_evaluate_a_folder_that_is_not_a_model(project, cli):
    result = cli("evaluate", "--model", "stages/prepare", *sets(EVAL))
    assert result.exit_code == 2 and "not a dsm5lab model or checkpoint directory" in result.stderr


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_predict_arguments(project, cli):
    result = cli("predict", "I can't sleep and I feel worthless.", "Nice weather today.")
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert [x["id"] for x in lines] == ["0", "1"]
    first = lines[0]
    assert set(first["probabilities"]) == set(first["decisions"]) == set(first["thresholds"])
    config = json.loads(Path("stages/evaluate/model/config.json").read_text())
    assert first["thresholds"] == config["thresholds"]  # the tuned ones
    text = "I can't sleep and I feel worthless."
    assert set(first["evidence"]) == set(first["probabilities"]) == set(config["evidence_thresholds"])
    for name, ev in first["evidence"].items():
        for s in ev["sentences"]:  # evidence at the sentence thresholds evaluate tuned on val
            assert text[s["start"]: s["end"]] == s["text"] and s["score"] >= config["evidence_thresholds"][name] - 1e-4
        if "span" in ev:
            assert text[ev["span"]["start"]: ev["span"]["end"]] == ev["span"]["text"]


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_predict_file(project, cli, suffix):
    texts = ["I am exhausted all the time.", "Work was fine today."]
    path = Path(f"inputs{suffix}")
    if suffix == ".txt":
        path.write_text("\n".join(texts) + "\n")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps({"id": f"x{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    else:
        pd.DataFrame({"id": ["x0", "x1"], "text": texts}).to_csv(path, index=False)
    result = cli("predict", "--file", str(path), "--out", "preds.jsonl")
    assert result.exit_code == 0, result.output
    lines = _lines(Path("preds.jsonl").read_text())
    assert len(lines) == 2
    if suffix != ".txt":
        assert [x["id"] for x in lines] == ["x0", "x1"]


def test_predict_stdin(project):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "dsm5lab", "predict"], input="I feel empty.\nAll good here.\n",
                          capture_output=True, text=True, env={**__import__("os").environ, "CI": "true"})
    assert proc.returncode == 0, proc.stderr
    assert len(_lines(proc.stdout)) == 2


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--file", "nope.txt"], "file not found: nope.txt"),
        (["--file", "params.yaml"], "unknown extension '.yaml'"),
        (["--model", "nowhere", "hello"], "not a dsm5lab model or checkpoint directory"),
    ],
)
def test_predict_bad_input(project, cli, args, fragment):
    result = cli("predict", *args)
    assert result.exit_code == 2 and fragment in result.stderr


@pytest.mark.parametrize("name,content,fragment", [
    ("in.jsonl", '{"text": "fine"}\n{"text": "cut off\n', "in.jsonl line 2 is not valid JSON"),
    ("in.jsonl", '{"body": "no text field"}\n', "in.jsonl line 1 has no string field 'text'"),
    # a ragged CSV row used to be scored with its missing text read as ""; a header-only file blamed the column
    ("in.csv", "id,text\n1,hello\n2,one,two\n", "in.csv: data row 2 has 3 fields, the header 2 (id, text)"),
    ("in.csv", "id,text\n1\n", "in.csv: data row 1 has 1 fields, the header 2"),
    ("in.csv", "id,text\n", "in.csv has a header but no rows"),
    ("in.csv", "", "in.csv is empty (expected a header with a 'text' column)"),
])
def test_predict_bad_file_is_one_line(project, cli, name, content, fragment):
    Path(name).write_text(content)
    result = cli("predict", "--file", name)
    assert result.exit_code == 2 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_predict_csv_without_text_column(project, cli):
    Path("in.csv").write_text("body\nhello\n")
    result = cli("predict", "--file", "in.csv")
    assert result.exit_code == 2 and "has no column 'text'" in result.stderr


def test_evidence_only_model_writes_every_declared_output(project, cli):
    over = EVAL + ["train.task=evidence", "train.early_stopping.metric=val/score"]
    assert cli("train", *sets(over)).exit_code == 0
    result = cli("evaluate", *sets(over))
    assert result.exit_code == 0, result.output
    report = json.loads(Path("reports/evaluate/evaluation_report.json").read_text())
    assert "criteria" not in report and "evidence" in report
    assert Path("reports/evaluate/errors.csv").read_text().startswith("post_id,criterion,error")
    assert Path("reports/evaluate/plots").is_dir()
    assert "positive_pairs_without_evidence" in report["evidence"]["span"]


def test_predict_text_without_sentences(project, cli):
    result = cli("predict", "...", "   ", "!!! ???")
    assert result.exit_code == 0, result.output
    assert len(_lines(result.stdout)) == 3


# --- long posts: what training's max_chunks windows cut, and evaluate/predict reading every window ---------


def _load(root: Path, *overrides: str):
    posts = pd.read_parquet(root / "stages/prepare/posts.parquet")
    sentences = pd.read_parquet(root / "stages/prepare/sentences.parquet")
    descriptions = [c["description"] for c in json.loads((root / "stages/prepare/criteria.json").read_text())["criteria"]]
    params = load_params(root / "params.yaml", [*EVAL, *overrides])
    return params, posts, sentences, descriptions


def test_prepare_counts_posts_and_evidence_past_the_training_windows(project):
    w = json.loads(Path("reports/prepare/stats.json").read_text())["windows"]
    assert (w["backbone"], w["max_chunks"], w["max_length"]) == ("tiny", 2, 64)
    for split in ("train", "val", "test"):
        s = w[split]
        assert 0 < s["posts_cut"] <= s["posts"] and 0 < s["evidence_unread"] <= s["evidence"]
    # the same posts are cut by hand: more text tokens than 2 windows of 64 (minus [CLS]/[SEP]) reach
    params, posts, sentences, descriptions = _load(Path("."))
    from dsm5lab.models.backbone import build_wordpiece

    train = posts.loc[posts["split"] == "train"]
    tok = build_wordpiece(train["text"].tolist(), params.model.tiny.vocab_size, descriptions)
    room = 64 - 2
    n_tokens = np.array([len(tok(t, add_special_tokens=False)["input_ids"]) for t in train["text"]])
    reach = room + (room - 16)  # two windows sharing stride=16 tokens
    assert w["train"]["posts_cut"] == int((n_tokens > reach).sum())


def test_enough_windows_cut_nothing(project):
    params, posts, sentences, descriptions = _load(Path("."), "model.max_chunks=512")
    w = coverage.count(params, posts, sentences, descriptions)
    assert all(w[s]["posts_cut"] == 0 and w[s]["evidence_unread"] == 0 for s in ("train", "val", "test"))


def test_pairs_leave_less_room_and_cut_more(project):
    params, posts, sentences, descriptions = _load(Path("."))
    multi = coverage.count(params, posts, sentences, descriptions)
    pairs = coverage.count(load_params(Path("params.yaml"), [*EVAL, "train.input_format=binary_pairs"]),
                           posts, sentences, descriptions)
    assert pairs["train"]["evidence_unread"] > multi["train"]["evidence_unread"]


def test_sentence_level_counts_sentences_longer_than_one_window(project):
    params, posts, sentences, descriptions = _load(Path("."), "train.level=sentence", "train.task=criteria")
    w = coverage.count(params, posts, sentences, descriptions)
    assert "posts_cut" not in w["train"] and w["train"]["sentences"] == int((sentences["split"] == "train").sum())
    assert 0 <= w["train"]["sentences_cut"] < w["train"]["sentences"]
    short = coverage.count(load_params(Path("params.yaml"), [*EVAL, "train.level=sentence", "train.task=criteria",
                                                             "model.max_length=16", "model.stride=4"]),
                            posts, sentences, descriptions)
    assert short["train"]["sentences_cut"] > w["train"]["sentences_cut"]  # a 16-token window cuts more


def test_a_tokenizer_missing_offline_skips_the_counts_with_the_reason(project, tmp_path):
    params, posts, sentences, descriptions = _load(Path("."), f"model.backbone={tmp_path}")
    w = coverage.count(params, posts, sentences, descriptions)
    assert w["skipped"].startswith("tokenizer not available offline")
    assert "train" not in w


def test_evaluate_reads_every_window_and_says_how_many_posts_are_longer(project):
    report = json.loads(Path("reports/evaluate/evaluation_report.json").read_text())
    w = report["windows"]
    assert w["trained_max_chunks"] == 2 and w["read_max_chunks"] is None
    prep = json.loads(Path("reports/prepare/stats.json").read_text())["windows"]
    assert w["test_posts_beyond_training_cap"] == prep["test"]["posts_cut"]
    assert any("every window of each post" in n for n in report["notes"])


def test_predict_reads_the_end_of_a_long_text(project, cli):
    long_text = " ".join(["I went to work and came home."] * 60 + ["I want to die and I can't sleep at all."])
    short_text = "I can't sleep at all."
    every = [json.loads(x) for x in cli("predict", long_text, short_text).stdout.splitlines()]
    def at(cap: str) -> list[dict]:
        return [json.loads(x) for x in cli("predict", "--max-chunks", cap, long_text, short_text).stdout.splitlines()]

    capped = at("2")  # the training cap
    assert every[0]["probabilities"] != capped[0]["probabilities"]
    assert every[1]["probabilities"] == capped[1]["probabilities"]
    assert at("1000")[0]["probabilities"] == every[0]["probabilities"]


def test_published_baselines_appear_only_beside_real_data(project):
    """Synthetic scores next to the paper's real-data numbers invite a comparison that means nothing."""
    from dsm5lab.evaluation.stage import summary_markdown
    from dsm5lab.evaluation.views import PUBLISHED, is_real

    report = json.loads(Path("reports/evaluate/evaluation_report.json").read_text())
    assert report["dataset"]["origin"].startswith("synthetic:") and "baselines" not in report["paper_view"]
    summary = Path("reports/evaluate/summary.md").read_text()
    assert f"Data: `{report['dataset']['origin']}` (synthetic" in summary
    assert "Published on ReDSM5" not in summary and "are not shown" in summary
    assert is_real("csv:data/redsm5") and is_real("hf:irlab-udc/redsm5@abc") and not is_real("synthetic:n=1")
    real = {**report, "dataset": {**report["dataset"], "origin": "csv:data/redsm5"},
            "paper_view": {**report["paper_view"], "baselines": PUBLISHED}}
    text = summary_markdown(real)
    assert "Data: `csv:data/redsm5`." in text
    assert "Published on ReDSM5: TF-IDF+LinearSVC 0.39/0.28, bert-base-uncased 0.51/0.36, Llama-3.2-1B 0.544/0.489" in text


def test_span_metrics_compare_with_the_annotators_spans_not_the_sentences():
    """Held-out sentences are natural, so a gold span can be part of one: span EM is against the span itself."""
    from conftest import default_params

    from dsm5lab.config import validate
    from dsm5lab.data.labels import SYMPTOMS
    from dsm5lab.evaluation import views as ev
    from dsm5lab.evaluation.stage import Settings

    text = "I feel low. It has been weeks and I cannot sleep well at all."
    span = (text.index("I cannot"), len(text))
    c = SYMPTOMS.index("SLEEP_ISSUES")
    posts = pd.DataFrame({"post_id": ["p"], "text": [text], **{s: [int(s == "SLEEP_ISSUES")] for s in SYMPTOMS}})
    gold_sent = np.zeros((2, len(SYMPTOMS)), np.int8)
    gold_sent[1, c] = 1
    prob_sent = np.where(gold_sent == 1, 0.9, 0.1)
    spans = np.tile(np.array([-1.0, -1.0, 0.0]), (1, len(SYMPTOMS), 1))
    spans[0, c] = (*span, 0.8)  # the model points at exactly the annotated words
    pred = ev.SplitPredictions("test", posts, posts[list(SYMPTOMS)].to_numpy(), None,
                               [(gold_sent, prob_sent, np.array([[0, 11], [12, len(text)]]))], spans)
    params = validate(default_params())
    settings = replace(Settings.of(params), seed=0, bootstrap_resamples=10)
    assert ev.evidence_section(pred, settings)["span"]["exact_match"] == 0.0  # against the whole sentence
    pred.gold_spans = [[[span] if k == c else [] for k in range(len(SYMPTOMS))]]
    scored = ev.evidence_section(pred, settings)
    assert scored["span"]["exact_match"] == 1.0 and scored["sentence"]["per_criterion"]["SLEEP_ISSUES"]["f1"] == 1.0


def test_evaluate_scores_spans_against_the_prepared_annotations(project):
    from dsm5lab.data.labels import SYMPTOMS
    from dsm5lab.data.schema import read_table
    from dsm5lab.evaluation import views as ev
    from dsm5lab.evaluation.stage import Settings, predict_val_test

    params = load_params(Path("params.yaml"))
    settings = Settings.of(params)
    *_, test = predict_val_test(Path("."), Path("stages/train/model"), settings)
    ann = read_table(Path("stages/prepare"), "annotations")
    ann = ann[(ann["split"] == "test") & (ann["status"] == 1) & (ann["start"] >= 0) & ann["symptom"].isin(SYMPTOMS)]
    want = {(r.post_id, r.symptom, r.start, r.end) for r in ann.itertuples()}
    got = {(pid, SYMPTOMS[c], s, e) for pid, per in zip(test.posts["post_id"], test.gold_spans)
           for c, spans in enumerate(per) for s, e in spans}
    assert got == want and want
    report = json.loads(Path("reports/evaluate/evaluation_report.json").read_text())
    assert ev.evidence_section(test, settings)["span"] == report["evidence"]["span"]
    assert any("segmented naturally" in note for note in report["notes"])


def test_a_recall_target_is_met_on_val_and_calibration_is_reported(project, cli):
    """precision_at_recall with a per-criterion target: each criterion with val positives reaches its recall on
    val; test ECE/Brier per criterion, and after temperature scaling fitted on val."""
    overrides = ["evaluate.threshold_objective=precision_at_recall", "evaluate.threshold_target=0.6",
                 "evaluate.threshold_targets={SUICIDAL_THOUGHTS: 1.0}", "evaluate.temperature_scaling=true"]
    result = cli("evaluate", "--model", "stages/train/model", "--out", "op", *sets(EVAL + overrides))
    assert result.exit_code == 0, result.output
    report = json.loads(Path("op/evaluation_report.json").read_text())
    chosen = report["criteria"]["thresholds"]
    assert chosen["objective"] == "precision_at_recall"
    points = chosen["operating_points"]
    assert points["SUICIDAL_THOUGHTS"]["target"] == 1.0 and points["DEPRESSED_MOOD"]["target"] == 0.6
    for name, point in points.items():
        assert point["reached"] == (point["val_recall"] is not None)  # reachable wherever val has a positive
        if point["reached"]:
            assert point["val_recall"] >= point["target"] and chosen["values"][name] == point["threshold"]
    cal = report["criteria"]["calibration"]
    assert set(cal["per_criterion"]) == set(points) and 0 <= cal["ece"] <= 1 and 0 <= cal["brier"] <= 1
    assert all(v["temperature"] > 0 for v in cal["temperature_scaled"]["per_criterion"].values())
    headline = json.loads(Path("op/metrics.json").read_text())
    assert headline["test"]["ece"] == round(cal["ece"], 6)
    assert "precision_at_recall" in Path("op/summary.md").read_text()


@pytest.mark.parametrize("override,fragment", [
    ("evaluate.threshold_objective=recall", "evaluate.threshold_objective"),
    ("evaluate.threshold_targets={SUICIDE: 0.9}", "unknown criterion 'SUICIDE'"),
    ("evaluate.threshold_targets={FATIGUE: 1.5}", "FATIGUE: target 1.5 must be in (0, 1]"),
])
def test_bad_operating_point_params_are_one_line(project, cli, override, fragment):
    result = cli("evaluate", *sets([override]))
    assert result.exit_code == 2 and fragment in result.stderr, result.stderr


def test_evaluate_logs_into_the_mlflow_run_that_trained_the_model(tiny_prepared, tmp_path, monkeypatch, cli):
    """The train run is tagged with its weights' sha256; evaluate finds it by the weights it scores and adds
    its headline metrics, thresholds and report there; the report names the training params and checkpoint."""
    from mlflow.tracking import MlflowClient

    from dsm5lab.tracking import MODEL_TAG

    copy_project(tiny_prepared, tmp_path, monkeypatch)
    monkeypatch.setenv("DVC_EXP_NAME", "sunny-kite")
    one_epoch = TINY + ["train.epochs=1", "evaluate.bootstrap_resamples=20"]
    assert cli("train", *sets(one_epoch)).exit_code == 0
    result = cli("evaluate", *sets(one_epoch))
    assert result.exit_code == 0, result.output
    report = json.loads(Path("reports/evaluate/evaluation_report.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{Path('mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("dsm5lab")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{MODEL_TAG}` = '{report['model']['sha256']}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]  # the train run itself, not a second one
    run = runs[0]
    assert run.info.run_name == "train" and run.data.tags["dsm5lab.evaluated"] == "true"
    assert run.data.tags["dvc_exp_name"] == "sunny-kite" and run.info.status == "FINISHED"
    headline = json.loads(Path("metrics/evaluate.json").read_text())
    assert run.data.metrics["eval/test.macro_f1"] == pytest.approx(headline["test"]["macro_f1"])
    thresholds = report["criteria"]["thresholds"]["values"]
    assert run.data.metrics["eval/threshold/FATIGUE"] == pytest.approx(thresholds["FATIGUE"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/evaluation_report.json", "evaluation/summary.md", "evaluation/plots"} <= artifacts
    training = report["training"]
    assert training["params"]["train"]["epochs"] == 1 and training["checkpoint"]["epoch"] == 1
    assert round(training["validation"]["macro_f1"], 6) == json.loads(Path("metrics/train.json").read_text())["val"]["macro_f1"]


def test_another_experiment_never_rewrites_the_training_run(tiny_prepared, tmp_path, monkeypatch, cli):
    """The same weights scored for another experiment (train restored from DVC's run-cache): a run of its own,
    tagged with the training run, which keeps its experiment name and gets no eval metrics."""
    from mlflow.tracking import MlflowClient

    copy_project(tiny_prepared, tmp_path, monkeypatch)
    one_epoch = TINY + ["train.epochs=1", "evaluate.bootstrap_resamples=20"]
    monkeypatch.setenv("DVC_EXP_NAME", "baseline-exp")
    assert cli("train", *sets(one_epoch)).exit_code == 0
    monkeypatch.setenv("DVC_EXP_NAME", "threshold-exp")
    result = cli("evaluate", *sets(one_epoch + ["evaluate.threshold_objective=precision_at_recall"]))
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=f"sqlite:///{Path('mlflow.db').resolve()}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("dsm5lab").experiment_id])}
    train, evaluate = runs["train"], runs["evaluate"]
    assert train.data.tags["dvc_exp_name"] == "baseline-exp" and "dsm5lab.evaluated" not in train.data.tags
    assert not [k for k in train.data.metrics if k.startswith("eval/")]
    assert evaluate.data.tags["dvc_exp_name"] == "threshold-exp"
    assert evaluate.data.tags["dsm5lab.trained_by"] == train.info.run_id
    assert evaluate.data.tags["dsm5lab.threshold_objective"] == "precision_at_recall"


def test_a_model_trained_elsewhere_gets_an_evaluate_run_of_its_own(project, cli):
    from mlflow.tracking import MlflowClient

    result = cli("evaluate", "--model", "stages/train/model", "--out", "elsewhere", *sets(EVAL))
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=f"sqlite:///{Path('mlflow.db').resolve()}")
    runs = client.search_runs([client.get_experiment_by_name("dsm5lab").experiment_id])
    evaluated = [r for r in runs if r.data.tags.get("dsm5lab.evaluated") == "true"]
    assert [r.info.run_name for r in evaluated] == ["evaluate"] and "eval/test.macro_f1" in evaluated[0].data.metrics
