"""The `evaluate` stage: predictions on val and test, the report, plots, errors, metrics, a thresholded model."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from dsm5lab import atomic, layout, paired
from dsm5lab.config import Params
from dsm5lab.data.labels import SYMPTOMS
from dsm5lab.data.segment import EVIDENCE_RULE
from dsm5lab.errors import UserError

@dataclass(frozen=True)
class Settings:
    seed: int
    bootstrap_resamples: int
    ci_level: float
    ranking_k: int
    calibration_bins: int
    max_errors: int
    batch_size: int
    max_chunks: int | None = None
    threshold_objective: str = "f1"
    threshold_target: float = 0.8
    threshold_targets: dict | None = None
    temperature_scaling: bool = False

    def targets(self) -> list[float]:
        """The operating-point target per criterion in SYMPTOMS order."""
        return [(self.threshold_targets or {}).get(name, self.threshold_target) for name in SYMPTOMS]

    @classmethod
    def of(cls, params: Params) -> Settings:
        """The evaluation settings of params."""
        return cls(seed=params.seed, **params.evaluate.model_dump())


def validate_report(report: dict) -> None:
    """Check the report against the packaged JSON Schema; an invalid report fails the stage."""
    import jsonschema

    schema = json.loads(resources.files("dsm5lab.evaluation").joinpath("report.schema.json").read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(report), key=lambda e: list(e.path))
    if errors:
        where = "/".join(map(str, errors[0].path)) or "<root>"
        raise UserError(f"evaluation report invalid at {where}: {errors[0].message}")


def training_record(config: dict) -> dict:
    """What the scored model was trained with and where it stopped: its hyperparameters (train and model
    sections), the checkpoint's step and 1-based epoch, and its validation scores (from the model's config)."""
    best = config.get("validation") or {}
    return {"params": config.get("training_params"),
            "checkpoint": {"step": best.get("step"), "epoch": best["epoch"] + 1 if "epoch" in best else None},
            "validation": {k.split("/", 1)[1]: v for k, v in best.items() if k.startswith("val/")}}


def build_report(params: Params, model_dir: Path, config: dict, manifest: dict, val, test, settings) -> dict:
    import torch

    from dsm5lab.evaluation import views as ev
    from dsm5lab.numerics import effective

    spec = config["spec"]
    report = {
        "schema_version": 1,
        "model": {"path": str(model_dir), "sha256": atomic.sha256_file(model_dir / "model.safetensors"),
                  "backbone": config.get("backbone"), "task": spec["task"],
                  "input_format": config["encode"]["input_format"], "level": config["encode"]["level"]},
        "training": training_record(config),
        "dataset": {"fingerprint": manifest["fingerprint"], "origin": manifest["origin"]},
        "config": {"evaluate": params.evaluate.model_dump(), "seed": params.seed},
        # pinned, the same on every x86-64 machine; native, it names this machine's kernel level
        "numerics": {**effective(params.numerics.cpu_isa), "torch": str(torch.__version__)},
        "splits": {"val": len(val.posts), "test": len(test.posts)},
        "windows": {"trained_max_chunks": config["encode"]["max_chunks"], "read_max_chunks": settings.max_chunks,
                    "val_posts_beyond_training_cap": val.beyond_cap, "test_posts_beyond_training_cap": test.beyond_cap},
        "notes": [
            "All metrics are on the test split; thresholds are tuned on the validation split only.",
            "macro = unweighted mean over criteria with at least one positive in the split; "
            "weighted = support-weighted mean over the same; micro = pooled decisions.",
            f"Confidence intervals: {settings.ci_level:.0%} percentile bootstrap over test posts "
            f"({settings.bootstrap_resamples} resamples, seed {settings.seed}).",
            f"Posts are read in windows of {config['encode']['max_length']} tokens: "
            + ("every window of each post" if settings.max_chunks is None else f"at most {settings.max_chunks}")
            + f" here, at most {config['encode']['max_chunks']} in training "
            f"({val.beyond_cap} val and {test.beyond_cap} test posts are longer than that).",
        ],
    }
    if val.prob is not None:
        report["criteria"] = ev.criteria_section(val, test, settings)
        report["paper_view"] = ev.paper_section(test, config["encode"]["level"], settings, manifest["origin"])
        if config["encode"]["level"] == "sentence":
            report["notes"].append("The model works at sentence level: post predictions are the max over sentences.")
    if test.spans is not None:
        report["evidence"] = ev.evidence_section(test, settings, val)
        report["notes"].append(
            "Val and test posts are segmented naturally, as `dsm5lab predict` segments any text (training posts "
            f"are cut around their annotations); sentence labels: {EVIDENCE_RULE}. Span exact match and token F1 "
            "compare with the annotators' aligned character spans.")
    return report


def headline(report: dict) -> dict:
    """metrics/evaluate.json: the numbers CI and `dvc exp show` compare (all on the test split)."""
    out: dict = {}
    if "criteria" in report:
        c = report["criteria"]
        out["test"] = {"macro_f1": c["test_at_tuned"]["macro_f1"], "micro_f1": c["test_at_tuned"]["micro_f1"],
                       "macro_f1_at_0.5": c["test_at_0.5"]["macro_f1"], "ece": c["calibration"]["ece"],
                       "brier": c["calibration"]["brier"]}
        p = report["paper_view"]
        out["paper"] = {"micro_f1": p["micro_f1"], "macro_f1": p["macro_f1"], "exact_match": p["exact_match"]}
    if "evidence" in report:
        e = report["evidence"]
        out["evidence"] = {"sentence_macro_f1": e["sentence"]["macro_f1"],
                           **({"sentence_macro_f1_at_tuned": e["sentence"]["tuned"]["macro_f1"]}
                              if "tuned" in e["sentence"] else {}),
                           "mrr": e["ranking"]["mrr"],
                           "ndcg_at_k": e["ranking"]["ndcg@k"], "span_token_f1": e["span"]["token_f1"]}
    return json.loads(json.dumps(out), parse_float=lambda x: round(float(x), 6))


def plot_frames(test, thresholds: list[float], bins: int) -> dict[str, pd.DataFrame]:
    """Data for the DVC plots (templates in .dvc/plots): per-criterion confusion counts, ROC and PR curves in
    one file each (a `curve` column names the criterion with its AUC or AP, so every criterion gets its own
    colour and legend entry), the pooled calibration table and the paper view's per-label P/R/F1."""
    from dsm5lab.data.criteria import EXPECTED_IDS
    from dsm5lab.evaluation.views import PAPER_CLASSES, paper_matrices
    from dsm5lab.metrics import (auroc, average_precision, calibration_bins, classification_report, pr_curve,
                                 roc_curve)

    def named(c: int, what: str, value: float | None) -> str:  # "A.1 DEPRESSED_MOOD (AUC 0.91)": DSM-5 order
        return f"{EXPECTED_IDS[c]} {SYMPTOMS[c]} ({what} {'n/a' if value is None else f'{value:.2f}'})"

    frames: dict[str, pd.DataFrame] = {}
    pred = test.prob >= np.asarray(thresholds)
    gold = test.gold.astype(bool)
    rows = []
    for c, name in enumerate(SYMPTOMS):
        g, p = gold[:, c], pred[:, c]
        for actual, predicted, outcome, hit in (("yes", "yes", "TP", g & p), ("no", "yes", "FP", ~g & p),
                                                ("yes", "no", "FN", g & ~p), ("no", "no", "TN", ~g & ~p)):
            rows.append({"criterion": f"{EXPECTED_IDS[c]} {name}", "actual": actual, "predicted": predicted,
                         "outcome": outcome, "count": int(hit.sum())})
    frames["confusion.csv"] = pd.DataFrame(rows)
    roc_parts, pr_parts = [], []
    for c, name in enumerate(SYMPTOMS):
        y, score = test.gold[:, c], test.prob[:, c]
        roc, pr = roc_curve(y, score), pr_curve(y, score)
        # `point`: the order along the curve (a line sorted by x alone can run a vertical step backwards)
        roc_parts.append(pd.DataFrame({"criterion": name, "curve": named(c, "AUC", auroc(y, score)),
                                       "point": range(len(roc["fpr"])), "fpr": roc["fpr"], "tpr": roc["tpr"]}))
        pr_parts.append(pd.DataFrame({"criterion": name, "curve": named(c, "AP", average_precision(y, score)),
                                      "point": range(len(pr["recall"])), "recall": pr["recall"],
                                      "precision": pr["precision"]}))
    frames["roc.csv"] = pd.concat(roc_parts, ignore_index=True).dropna()
    frames["pr.csv"] = pd.concat(pr_parts, ignore_index=True).dropna()
    frames["calibration.csv"] = pd.DataFrame(calibration_bins(test.gold, test.prob, bins))
    # the paper view (ReDSM5's baselines): ten post-level labels, NO_SYMPTOMS included, at threshold 0.5
    gold10, pred10 = paper_matrices(test.gold, test.prob)
    per_class = classification_report(gold10, pred10.astype(float), 0.5, list(PAPER_CLASSES))["per_class"]
    frames["paper_labels.csv"] = pd.DataFrame([
        {"label": name, "metric": metric, "value": per_class[name][metric], "support": per_class[name]["support"]}
        for name in PAPER_CLASSES for metric in ("precision", "recall", "f1")])
    return frames


def summary_markdown(report: dict) -> str:
    """A short human-readable summary: tables, no decoration."""
    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    from dsm5lab.evaluation.views import PUBLISHED_NAMES, is_real

    origin = report["dataset"]["origin"]
    lines = [f"# Evaluation: {report['model']['path']}", "",
             f"Data: `{origin}`" + ("" if is_real(origin) else " (synthetic: these numbers say the pipeline works, "
                                     "not how well a model reads real posts)") + ".",
             f"Test posts: {report['splits']['test']}; validation posts (thresholds): {report['splits']['val']}.", ""]
    if "criteria" in report:
        c = report["criteria"]
        lines += ["## Criteria (test split, post level)", "",
                  "| criterion | threshold | precision | recall | F1 | support | AUROC | PR-AUC |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, m in c["test_at_tuned"]["per_class"].items():
            lines.append(f"| {name} | {m['threshold']:.2f} | {f(m['precision'])} | {f(m['recall'])} | {f(m['f1'])} "
                         f"| {m['support']} | {f(m['auroc'])} | {f(m['pr_auc'])} |")
        lines += ["", "| average | at 0.5 | at tuned thresholds | 95% CI (tuned) |", "|---|---|---|---|"]
        for k in ("macro_f1", "micro_f1"):
            ci = c["ci"][f"{k}@tuned"]
            lines.append(f"| {k} | {f(c['test_at_0.5'][k])} | {f(c['test_at_tuned'][k])} | "
                         f"{f(ci['low'])}-{f(ci['high'])} |")
        cal = c["calibration"]
        lines += ["", f"Thresholds tuned on val for `{c['thresholds']['objective']}`."
                  + ("" if "operating_points" not in c["thresholds"] else " Target not reached on val for: "
                     + (", ".join(k for k, v in c["thresholds"]["operating_points"].items() if not v["reached"])
                        or "none") + "."),
                  f"Calibration (test, mean over criteria): ECE {f(cal['ece'])}, Brier {f(cal['brier'])}"
                  + ("" if "temperature_scaled" not in cal else
                     f"; after temperature scaling fitted on val: ECE {f(cal['temperature_scaled']['ece'])}, "
                     f"Brier {f(cal['temperature_scaled']['brier'])}") + "."]
        p = report["paper_view"]
        lines += ["", "## Paper view (test, 9 symptoms + NO_SYMPTOMS, threshold 0.5)", "",
                  "| micro F1 | macro F1 | weighted F1 | exact match |", "|---|---|---|---|",
                  f"| {f(p['micro_f1'])} ({f(p['ci']['micro_f1']['low'])}-{f(p['ci']['micro_f1']['high'])}) "
                  f"| {f(p['macro_f1'])} ({f(p['ci']['macro_f1']['low'])}-{f(p['ci']['macro_f1']['high'])}) "
                  f"| {f(p['weighted_f1'])} | {f(p['exact_match'])} |", ""]
        if "baselines" in p:
            lines.append("Published on ReDSM5: " + ", ".join(f"{PUBLISHED_NAMES[k]} {v[0]}/{v[1]}"
                                                            for k, v in p["baselines"].items())
                         + " (micro/macro, their 80/20 split).")
        else:
            lines.append("The published ReDSM5 baselines are not shown: they were measured on the real posts, and "
                         "this data is synthetic.")
    if "evidence" in report:
        e = report["evidence"]
        lines += ["", "## Evidence (test split)", "", "| measure | value |", "|---|---|",
                  f"| sentence macro F1 (threshold 0.5) | {f(e['sentence']['macro_f1'])} |",
                  *([f"| sentence macro F1 (thresholds tuned on val) | {f(e['sentence']['tuned']['macro_f1'])} |"]
                    if "tuned" in e["sentence"] else []),
                  f"| sentence micro F1 | {f(e['sentence']['micro_f1'])} |",
                  f"| Recall@{e['ranking']['k']} | {f(e['ranking']['recall@k'])} |",
                  f"| nDCG@{e['ranking']['k']} | {f(e['ranking']['ndcg@k'])} |",
                  f"| MRR | {f(e['ranking']['mrr'])} |",
                  f"| span exact match | {f(e['span']['exact_match'])} |",
                  f"| span token F1 | {f(e['span']['token_f1'])} |"]
    lines += ["", *[f"- {n}" for n in report["notes"]], ""]
    return "\n".join(lines)


def prediction_frames(test, thresholds: dict[str, float] | None) -> dict[str, pd.DataFrame]:
    """The test decisions `dsm5lab gate` pairs against a baseline's (see dsm5lab.paired)."""
    ids = test.posts["post_id"].tolist()
    tuned = half = None
    if thresholds is not None:
        tuned, half = test.prob >= np.asarray(list(thresholds.values())), test.prob >= 0.5
    sentences = [(g, p >= 0.5) for g, p, _ in test.sentences] if test.spans is not None else None
    return paired.frames(ids, test.gold, tuned, half, sentences)


def export_thresholded(model_dir: Path, out: Path, thresholds: dict[str, float] | None,
                       evidence_thresholds: dict[str, float] | None = None, objective: str = "f1") -> None:
    """A copy of the trained model whose config carries the tuned thresholds (the train stage's out stays as is):
    criteria decisions at `thresholds` (chosen for `objective`), evidence sentences at `evidence_thresholds`."""
    with atomic.staged_dir(out) as tmp:
        for item in model_dir.iterdir():
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        if thresholds is not None or evidence_thresholds is not None:
            config = json.loads((tmp / "config.json").read_text())
            if thresholds is not None:
                config["thresholds"] = thresholds
                config["thresholds_tuned_on"] = "val"
                if objective != "f1":  # configs from before operating points carry no objective: F1
                    config["thresholds_objective"] = objective
            if evidence_thresholds is not None:
                config["evidence_thresholds"] = evidence_thresholds
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def predict_val_test(root: Path, model_dir: Path, settings: Settings):
    """(config, manifest, val, test): a saved model's predictions on the prepared val and test splits."""
    from dsm5lab.evaluation import views as ev
    from dsm5lab.training.inference import load_for_inference

    model, windower, config, _ = load_for_inference(model_dir, settings.max_chunks)
    prepared = Path(root) / layout.PREPARED
    if not (prepared / "manifest.json").is_file():
        raise UserError(f"{prepared}: no prepared data (manifest.json missing); run `dvc repro prepare` first")
    manifest = json.loads((prepared / "manifest.json").read_text())
    device = next(model.parameters()).device
    val_posts, test_posts, sentences = ev.load_splits_for_eval(prepared)
    budget = int(config["encode"]["max_chunks"])
    val = ev.predict_split("val", model, windower, val_posts, sentences, settings.batch_size, device, budget)
    test = ev.predict_split("test", model, windower, test_posts, sentences, settings.batch_size, device, budget)
    test.gold_spans = ev.annotation_spans(prepared, test_posts)
    return config, manifest, val, test


def run(params: Params, root: Path = Path("."), model_dir: Path | None = None, out_dir: Path | None = None) -> dict:
    """Evaluate a model on the prepared val/test splits and write every output.

    Pipeline mode (no out_dir): the trained model -> reports/evaluate/, metrics/evaluate.json and
    stages/evaluate/model (the model with its tuned thresholds). With out_dir, any saved model or
    checkpoint is evaluated and everything goes under out_dir, leaving pipeline outputs alone.
    """
    from dsm5lab.evaluation import views as ev

    root = Path(root)
    model_dir = Path(model_dir) if model_dir is not None else root / layout.TRAINED_MODEL
    settings = Settings.of(params)
    config, manifest, val, test = predict_val_test(root, model_dir, settings)
    report = build_report(params, model_dir, config, manifest, val, test, settings)
    validate_report(report)
    report_dir = root / layout.EVALUATE_REPORTS if out_dir is None else Path(out_dir)
    thresholds = report["criteria"]["thresholds"]["values"] if "criteria" in report else None
    # both are declared outs of the stage: an evidence-only model still writes them (header / a note)
    with atomic.staged_dir(report_dir / "plots") as plots:
        if thresholds is None:
            (plots / "README.txt").write_text("This model has no criteria head: no criteria plots.\n")
        else:
            for name, frame in plot_frames(test, list(thresholds.values()), settings.calibration_bins).items():
                (plots / name).parent.mkdir(parents=True, exist_ok=True)
                frame.to_csv(plots / name, index=False, lineterminator="\n")
    paired.write(report_dir / "predictions", prediction_frames(test, thresholds))
    errors = ev.error_rows(test, list(thresholds.values()) if thresholds else None, settings.max_errors)
    atomic.write_text(report_dir / "errors.csv", errors.to_csv(index=False, lineterminator="\n"))
    atomic.write_json(report_dir / "evaluation_report.json", report)
    atomic.write_text(report_dir / "summary.md", summary_markdown(report))
    log_to_mlflow(params, root, report, report_dir)
    if out_dir is None:
        tuned = report.get("evidence", {}).get("sentence", {}).get("tuned")
        export_thresholded(model_dir, root / layout.EVALUATED_MODEL, thresholds,
                           tuned["thresholds"] if tuned else None, settings.threshold_objective)
        atomic.write_json(root / layout.EVALUATE_METRICS, headline(report))
    else:
        atomic.write_json(report_dir / "metrics.json", headline(report))
    return report


def log_to_mlflow(params: Params, root: Path, report: dict, report_dir: Path) -> str | None:
    """Headline metrics, thresholds, the report and plots into the MLflow run that trained the scored model
    (found by its weights' sha256, which the train stage tags) when that run belongs to this experiment and
    commit. Otherwise (the same weights trained for another experiment, restored from DVC's run-cache; a model
    trained elsewhere; MLflow unreachable, where records buffer as usual) a run of its own, tagged with the
    training run it scores, so no other experiment's run is ever rewritten. Returns the run id."""
    from dsm5lab import dotted
    from dsm5lab.tracking import MODEL_TAG, RUN_ID_FILE, Tracker, TrackingSettings, default_tags, find_run

    sha = report["model"]["sha256"]
    found = find_run(params.tracking.mlflow_uri, params.tracking.experiment, MODEL_TAG, sha)
    here = default_tags()
    ours = found is not None and all(found[1].get(k) == here.get(k) for k in ("dvc_exp_name", "git_commit"))
    run_dir = root / params.train.checkpoint.dir / "evaluate"  # the pool's scratch space, outside DVC
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_ID_FILE).unlink(missing_ok=True)
    if ours:  # the tracker continues a run whose id it finds in its run folder
        atomic.write_text(run_dir / RUN_ID_FILE, found[0] + "\n")
    tags = {MODEL_TAG: sha, **({"dsm5lab.trained_by": found[0]} if found is not None and not ours else {})}
    settings = TrackingSettings(mlflow_uri=params.tracking.mlflow_uri, experiment=params.tracking.experiment,
                                run_name="evaluate", live_dir=None, run_dir=run_dir, resume=ours, tags=tags)
    metrics = dotted.flatten(headline(report))
    thresholds = report.get("criteria", {}).get("thresholds", {})
    with Tracker(settings) as tracker:
        tracker.set_tags({**tags, "dsm5lab.evaluated": "true",
                          "dsm5lab.threshold_objective": thresholds.get("objective", "f1")})
        tracker.log_summary({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        tracker.log_summary({f"eval/threshold/{k}": v for k, v in thresholds.get("values", {}).items()})
        tracker.log_artifacts(report_dir, "evaluation")
    return tracker.mlflow_run_id
