"""Plots people can read, rendered offline: the plot data evaluate and hpo write, the templates in .dvc/plots,
and `dsm5lab plots` (the page with the libraries inline, opened in headless Chromium, and static SVG/PNG)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

import browser
from conftest import ROOT
from dsm5lab import plots
from dsm5lab.data.labels import SYMPTOMS
from dsm5lab.errors import UserError
from dsm5lab.evaluation.stage import plot_frames
from dsm5lab.hpo.report import history_csv
from dsm5lab.metrics import auroc, average_precision

TEMPLATES = ROOT / ".dvc" / "plots"
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def fake_test(n: int = 60, seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    gold = (rng.random((n, 9)) < 0.3).astype(int)
    gold[:, 4] = 0  # a criterion with no positive on test: its AUC/AP is n/a, not a crash
    prob = np.clip(0.6 * gold + 0.5 * rng.random((n, 9)), 0, 1)
    return SimpleNamespace(gold=gold, prob=prob)


def test_every_custom_template_is_valid_vega_lite_with_the_data_anchor():
    names = {p.stem for p in TEMPLATES.glob("*.json")}
    used = {d[next(iter(d))].get("template") for d in DVC_YAML["plots"]} - {None}
    builtin = {"linear", "simple", "scatter", "scatter_jitter", "smooth", "confusion", "confusion_normalized",
               "bar_horizontal", "bar_horizontal_sorted"}
    assert used - builtin <= names, f"dvc.yaml names templates .dvc/plots lacks: {used - builtin - names}"
    assert names <= used, f"unused templates in .dvc/plots: {names - used}"
    for p in TEMPLATES.glob("*.json"):
        spec = json.loads(p.read_text())
        assert spec["$schema"].endswith("/vega-lite/v5.json"), p.name
        assert "<DVC_METRIC_DATA>" in p.read_text(), p.name


def test_confusion_counts_are_per_criterion_at_the_thresholds():
    test = fake_test()
    thresholds = [0.5] * 9
    conf = plot_frames(test, thresholds, 10)["confusion.csv"]
    assert len(conf) == 9 * 4 and set(conf["outcome"]) == {"TP", "FP", "FN", "TN"}
    pred = test.prob >= 0.5
    for c, name in enumerate(SYMPTOMS):
        rows = conf[conf["criterion"].str.endswith(f" {name}")].set_index("outcome")["count"]
        assert rows.sum() == len(test.gold)
        assert rows["TP"] == int((pred[:, c] & (test.gold[:, c] == 1)).sum())
        assert rows["FP"] == int((pred[:, c] & (test.gold[:, c] == 0)).sum())
        assert rows["FN"] == int((~pred[:, c] & (test.gold[:, c] == 1)).sum())
    # the DSM-5 number leads each name, so an alphabetical sort keeps A.1..A.9 in order
    assert sorted(conf["criterion"].unique()) == [f"A.{i + 1} {s}" for i, s in enumerate(SYMPTOMS)]


def test_roc_and_pr_are_one_file_each_with_the_area_in_each_curve_name():
    test = fake_test()
    frames = plot_frames(test, [0.5] * 9, 10)
    for file, what, area in (("roc.csv", "AUC", auroc), ("pr.csv", "AP", average_precision)):
        df = frames[file]
        names = df.groupby("criterion")["curve"].unique()
        # no positive on test: the curve is undefined (rates over zero positives), so it has no rows
        assert "PSYCHOMOTOR" not in names and len(names) == 8 and all(len(v) == 1 for v in names)
        for c, name in enumerate(SYMPTOMS):
            if name == "PSYCHOMOTOR":
                continue
            value = area(test.gold[:, c], test.prob[:, c])
            assert names[name][0] == f"A.{c + 1} {name} ({what} {value:.2f})"
            # `point` runs 0..n-1 along each curve, so the line follows the curve, not the x order
            points = df[df["criterion"] == name]["point"].tolist()
            assert points == sorted(points) and points[0] == 0


def test_hpo_history_keeps_pruned_trials_at_their_last_report():
    study = optuna.create_study(direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    T = optuna.trial.TrialState
    study.add_trial(optuna.trial.create_trial(state=T.PRUNED, params={"x": 0.1}, distributions=dist,
                                              intermediate_values={0: 0.2, 1: 0.25}))
    study.add_trial(optuna.trial.create_trial(value=0.5, params={"x": 0.2}, distributions=dist,
                                              intermediate_values={0: 0.4, 1: 0.5}))
    study.add_trial(optuna.trial.create_trial(state=T.FAIL, params={"x": 0.3}, distributions=dist))
    study.add_trial(optuna.trial.create_trial(value=0.4, params={"x": 0.4}, distributions=dist))
    study.add_trial(optuna.trial.create_trial(state=T.PRUNED, params={"x": 0.5}, distributions=dist))
    df = pd.read_csv(StringIO(history_csv(study)), dtype=str, keep_default_na=False)
    assert df.to_dict("records") == [
        {"trial": "0", "state": "PRUNED", "value": "0.25", "best_value": ""},
        {"trial": "1", "state": "COMPLETE", "value": "0.5", "best_value": "0.5"},
        {"trial": "2", "state": "FAIL", "value": "", "best_value": "0.5"},
        {"trial": "3", "state": "COMPLETE", "value": "0.4", "best_value": "0.5"},
        {"trial": "4", "state": "PRUNED", "value": "", "best_value": "0.5"},  # pruned before its first report
    ]


def write_plot_data(repo: Path) -> None:
    """The data files the pipeline's plots read, written by the same functions the stages use."""
    ev = repo / "reports/evaluate/plots"
    ev.mkdir(parents=True)
    for name, frame in plot_frames(fake_test(), [0.5] * 9, 10).items():
        frame.to_csv(ev / name, index=False)
    study = optuna.create_study(direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for i, v in enumerate((0.3, 0.5, 0.45)):
        study.add_trial(optuna.trial.create_trial(value=v, params={"x": i / 3}, distributions=dist))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={"x": 0.9},
                                              distributions=dist, intermediate_values={0: 0.1}))
    (repo / "reports/hpo").mkdir(parents=True)
    (repo / "reports/hpo/history.csv").write_text(history_csv(study))
    (repo / "reports/hpo/importance.csv").write_text("param,importance\nx,1.0\n")
    dist = repo / "reports/prepare/label_distribution"
    dist.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (dist / f"{split}.csv").write_text("criterion,posts,share\n" + "".join(
            f"{name},{i + 1},{(i + 1) / 45:.4f}\n" for i, name in enumerate(SYMPTOMS)))
    live = repo / "reports/train/live/plots/metrics"
    for rel, field in (("train/loss.tsv", "loss"), ("train/loss_mean.tsv", "loss_mean"), ("train/lr.tsv", "lr"),
                       ("val/macro_f1.tsv", "macro_f1"), ("val/sentence_macro_f1.tsv", "sentence_macro_f1"),
                       ("val/score.tsv", "score")):
        (live / rel).parent.mkdir(parents=True, exist_ok=True)
        (live / rel).write_text(f"step\t{field}\n" + "".join(f"{s}\t{1 / (s + 1):.4f}\n" for s in range(0, 50, 10)))


@pytest.fixture(scope="module")
def plot_repo(tmp_path_factory):
    """A DVC project with this repo's dvc.yaml, params.yaml and templates, and plot data (no stage run)."""
    repo = tmp_path_factory.mktemp("plots") / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
    shutil.copytree(TEMPLATES, repo / ".dvc/plots")
    write_plot_data(repo)
    return repo


@pytest.fixture(scope="module")
def rendered(plot_repo):
    return plots.render(plot_repo, Path("reports/plots"))


EXPECTED = {"hpo_history", "hpo_importance", "train_loss", "learning_rate", "validation", "confusion", "roc",
            "precision_recall", "calibration", "paper_labels", *(f"reports/prepare/label_distribution/{s}.csv"
                                                  for s in ("train", "val", "test"))}


def test_plots_writes_an_offline_page_and_static_files_for_every_plot(plot_repo, rendered):
    assert set(rendered["plots"]) == EXPECTED
    page = (plot_repo / "reports/plots/index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page), "a script is loaded from elsewhere: the page needs a network"
    assert "cdn.jsdelivr" not in page
    divs = re.findall(r"vegaEmbed\('#([^']+)'", page)
    assert len(divs) == len(EXPECTED) and {pid for pid in EXPECTED if "/" not in pid} <= set(divs), divs
    for pid in EXPECTED:
        stem = plots.file_stem(pid)
        svg = (plot_repo / "reports/plots/static" / f"{stem}.svg").read_text()
        assert svg.startswith("<svg") and "<path" in svg, pid
        assert (plot_repo / "reports/plots/static" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    roc = (plot_repo / "reports/plots/static/roc.svg").read_text()
    assert "A.1 DEPRESSED_MOOD (AUC" in roc and "A.9 SUICIDAL_THOUGHTS (AUC" in roc  # the legend names each curve
    # a colour per criterion (eight have positives here), not one colour and a dash pattern each
    strokes = set(re.findall(r'stroke="(#[0-9a-fA-F]{6})"', roc))
    assert len(strokes - {"#999999", "#888888", "#dddddd", "#ddd", "#000000"}) >= 8, strokes
    confusion = (plot_repo / "reports/plots/static/confusion.svg").read_text()
    assert all(f"A.{i} " in confusion for i in range(1, 10)) and "TP " in confusion and "TN " in confusion
    history = (plot_repo / "reports/plots/static/hpo_history.svg").read_text()
    assert "PRUNED" in history  # the pruned trial is drawn, and named in the legend
    loss = (plot_repo / "reports/plots/static/train_loss.svg").read_text()
    assert ">loss_mean<" in loss and "::" not in loss  # the legend says the field, not file::field


def test_the_page_renders_every_plot_in_a_real_browser_with_no_network(plot_repo, rendered, tmp_path):
    dom = browser.dump_dom(plot_repo / "reports/plots/index.html", tmp_path / "profile")
    states = browser.rendered_divs(dom)
    assert len(states) == len(EXPECTED) and set(states.values()) == {"yes"}, states
    assert {pid for pid in EXPECTED if "/" not in pid} <= set(states)
    assert dom.count("<svg") >= len(EXPECTED)
    assert "A.1 DEPRESSED_MOOD (AUC" in dom and "TP " in dom  # data, not an empty frame
    shot = browser.screenshot(plot_repo / "reports/plots/index.html", ROOT / "reports/ui/plots-test.png",
                              tmp_path / "profile2")
    assert shot.stat().st_size > 50_000  # a blank page is a few kB


def test_without_plot_data_it_says_so_and_leaves_the_old_page(plot_repo, rendered, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(ROOT / "dvc.yaml", empty / "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", empty / "params.yaml")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=empty, check=True)
    with pytest.raises(UserError, match="no plot data .* run `dvc repro`"):
        plots.render(empty, Path("reports/plots"))
    assert not (empty / "reports/plots").exists()
    # a spec that cannot be rendered halfway through: the previous folder stays as it was
    before = {p.name: p.read_bytes() for p in (plot_repo / "reports/plots/static").iterdir()}
    import vl_convert

    calls = iter(range(1000))

    def svg_then_fail(spec, **kw):
        if next(calls) == 3:
            raise ValueError("bad spec\nmore")
        return "<svg></svg>"

    monkeypatch.setattr(vl_convert, "vegalite_to_svg", svg_then_fail)
    with pytest.raises(UserError, match="could not be rendered: bad spec$"):
        plots.render(plot_repo, Path("reports/plots"))
    after = {p.name: p.read_bytes() for p in (plot_repo / "reports/plots/static").iterdir()}
    assert after == before
    assert not [p for p in (plot_repo / "reports").iterdir() if p.name.startswith(".plots")]


def test_outside_a_project_or_with_a_broken_dvc_yaml_it_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"no dvc.yaml in .*: run `dsm5lab plots` in the project's root folder"):
        plots.specs(tmp_path, [])
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text("plots:\n  - roc: [unclosed\n")
    with pytest.raises(UserError, match=r"^DVC could not load the plots in .* \(workspace\): unable to read: 'dvc.yaml'") as err:
        plots.specs(tmp_path, [])
    assert "\n" not in str(err.value)


def test_out_must_be_a_folder_plots_wrote_before_it_is_replaced(plot_repo, rendered):
    """The output folder is swapped in whole: naming the project, or any folder plots did not write, is refused
    before anything moves."""
    before = sorted(p.name for p in plot_repo.iterdir())
    for out in (Path("."), Path("reports"), plot_repo, plot_repo.parent):
        with pytest.raises(UserError, match=r"exists and was not written by `dsm5lab plots`"):
            plots.render(plot_repo, out)
    assert sorted(p.name for p in plot_repo.iterdir()) == before
    assert (plot_repo / "reports/hpo/history.csv").is_file()
    assert (plot_repo / "reports/plots" / plots.MARKER).is_file()  # the folder it wrote is marked, and replaced
