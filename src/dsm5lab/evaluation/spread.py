"""The `spread` stage: how far the headline numbers move with the training seed and with the split.

- Seeds (`spread.seeds`): the final config (params.yaml, the prepared data fixed) is trained and evaluated
  once per seed. Per headline metric: mean, sample standard deviation, min and max over seeds, beside the
  mean width of a single run's bootstrap interval over test posts: when the seed spread is as wide as that
  interval, one run cannot rank two configurations.
- Cross-validation (`spread.cv`): for each of prepare's k folds (train + val posts; test is never read)
  the config is trained on k - 2 folds, early-stopped and thresholded on the next fold
  (`evaluate.threshold_objective`), and scores the held-out fold. Out-of-fold micro/macro-F1 pool every
  held-out post once; the per-fold values give their spread. Post-level criteria only: training posts are
  segmented around their annotations, so sentence-level numbers would flatter the held-out folds.

Each run happens in a scratch copy of the prepared data (under $TMPDIR: point it at a disk with room for one
run's checkpoints) with its own checkpoint folder and MLflow store (no model artifacts pile up in the project's
store); its weights are deleted once it is scored, so disk holds one run's checkpoints at a time.
With neither switch on, the stage writes that it measured nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from dsm5lab import atomic, layout
from dsm5lab.config import Params, apply_overrides, validate
from dsm5lab.data.labels import SYMPTOMS
from dsm5lab.errors import UserError
from dsm5lab.metrics import multilabel_f1
from dsm5lab.progress import progress, say

SCRATCH_CHECKPOINTS = "checkpoints"  # inside the scratch project, whatever train.checkpoint.dir says

# metric -> where a single run's bootstrap interval sits in its evaluation report (None: no interval)
HEADLINE = {
    "train": {"val.macro_f1": None},
    "evaluate": {"test.macro_f1": ("criteria", "ci", "macro_f1@tuned"),
                 "test.micro_f1": ("criteria", "ci", "micro_f1@tuned"),
                 "paper.micro_f1": ("paper_view", "ci", "micro_f1"),
                 "paper.macro_f1": ("paper_view", "ci", "macro_f1"),
                 "evidence.sentence_macro_f1": ("evidence", "sentence", "ci", "macro_f1")},
}


@contextmanager
def scratch_project(root: Path, what: str) -> Iterator[Path]:
    """A temp project holding a copy of the prepared data, as DVC_ROOT while it lives (MLflow keeps artifacts
    under DVC_ROOT), removed afterwards."""
    prepared = Path(root) / layout.PREPARED
    if not (prepared / "manifest.json").is_file():
        raise UserError(f"{prepared}: no prepared data; run `dvc repro prepare` first")
    before = os.environ.get("DVC_ROOT")
    with tempfile.TemporaryDirectory(prefix=f"dsm5lab-{what}-") as tmp:
        scratch = Path(tmp)
        shutil.copytree(prepared, scratch / layout.PREPARED)
        os.environ["DVC_ROOT"] = str(scratch)
        try:
            yield scratch
        finally:
            if before is None:
                os.environ.pop("DVC_ROOT", None)
            else:
                os.environ["DVC_ROOT"] = before


def scratch_params(params: Params, scratch: Path, *overrides: str) -> Params:
    """params with overrides, checkpointing and logging inside the scratch project (an absolute
    train.checkpoint.dir would otherwise send them, and the clean-up after each run, to the user's pool)."""
    raw = apply_overrides(params.model_dump(mode="json"),
                          [*overrides, f"tracking.mlflow_uri=sqlite:///{scratch / 'mlflow.db'}",
                           f"train.checkpoint.dir={scratch / SCRATCH_CHECKPOINTS}"])
    return validate(raw, source="spread params")


def _dig(data: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _get(data: dict, dotted: str):
    head, _, rest = dotted.partition(".")
    return _dig(data, (head, rest))


def describe(values: list[float]) -> dict:
    """Mean, sample standard deviation (None for one value), min and max, rounded for a metrics file."""
    return {"mean": round(statistics.fmean(values), 6),
            "std": round(statistics.stdev(values), 6) if len(values) > 1 else None,
            "min": round(min(values), 6), "max": round(max(values), 6)}


def seed_runs(params: Params, root: Path, seeds: list[int]) -> list[dict]:
    """Train + evaluate the config once per seed; per seed its headline values and interval widths."""
    from dsm5lab.evaluation import stage as evaluate
    from dsm5lab.training import stage as train

    runs = []
    with scratch_project(root, "seeds") as scratch:
        for seed in progress(seeds, desc="spread: seeds"):
            p = scratch_params(params, scratch, f"seed={seed}")
            train.run(p, scratch)
            report = evaluate.run(p, scratch)
            files = {"train": json.loads((scratch / layout.TRAIN_METRICS).read_text()),
                     "evaluate": json.loads((scratch / layout.EVALUATE_METRICS).read_text())}
            values, widths = {}, {}
            for file, keys in HEADLINE.items():
                for key, ci_path in keys.items():
                    value = _get(files[file], key)
                    if isinstance(value, (int, float)):
                        values[key] = float(value)
                        ci = _dig(report, ci_path) if ci_path else None
                        if ci and ci.get("low") is not None:
                            widths[key] = ci["high"] - ci["low"]
            runs.append({"seed": seed, "values": values, "ci_width": widths})
            say(f"spread: seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
            for folder in (SCRATCH_CHECKPOINTS, layout.TRAINED_MODEL, layout.EVALUATED_MODEL):
                shutil.rmtree(scratch / folder, ignore_errors=True)  # one run's weights on disk at a time
    return runs


def seed_summary(runs: list[dict]) -> dict:
    """Per metric: mean/std/min/max over seeds and the mean single-run interval width."""
    out = {"n": len(runs), "seeds": [r["seed"] for r in runs], "metrics": {}}
    for key in runs[0]["values"]:
        entry = describe([r["values"][key] for r in runs])
        widths = [r["ci_width"][key] for r in runs if key in r["ci_width"]]
        entry["single_run_ci_width"] = round(statistics.fmean(widths), 6) if widths else None
        out["metrics"][key] = entry
    return out


def fold_plan(posts) -> list[tuple[int, list[str], list[str], list[str]]]:
    """(held-out fold, train ids, early-stopping/threshold ids, held-out ids) for every fold the prepared data
    has; test posts (fold -1) are never used."""
    pool = posts[posts["fold"] >= 0]
    folds = sorted(int(f) for f in pool["fold"].unique())
    if len(folds) < 3:
        raise UserError(f"spread.cv needs prepare.n_folds >= 3 (one fold held out, one to stop and tune on, "
                        f"the rest to train; prepare made {len(folds)})")
    plan = []
    for i, held in enumerate(folds):
        tune = folds[(i + 1) % len(folds)]
        ids = {f: pool.loc[pool["fold"] == f, "post_id"].tolist() for f in folds}
        train = [pid for f in folds if f not in (held, tune) for pid in ids[f]]
        plan.append((held, train, ids[tune], ids[held]))
    return plan


def cross_validate(params: Params, root: Path) -> dict:
    """Out-of-fold criteria micro/macro-F1 over prepare's folds, thresholds tuned inside each fold's training part."""
    from dsm5lab.data.schema import read_table
    from dsm5lab.evaluation.operating import operating_points
    from dsm5lab.evaluation.stage import Settings
    from dsm5lab.evaluation.views import predict_split
    from dsm5lab.tracking import Tracker, TrackingSettings
    from dsm5lab.training.inference import load_for_inference
    from dsm5lab.training.loop import export_best, fit
    from dsm5lab.training.run import RunPaths, build_run

    if params.train.task == "evidence":
        raise UserError("spread.cv scores the criteria head; train.task is evidence (use criteria or joint)")
    if params.train.level == "sentence":  # held-out folds hold training posts, cut around their annotations
        raise UserError("spread.cv scores post-level models; train.level is sentence (allowed: post), whose "
                        "held-out folds would be segmented around their own annotations")
    gold, pred, per_fold = [], [], []
    with scratch_project(root, "cv") as scratch:
        posts = read_table(scratch / layout.PREPARED, "posts")
        sentences = read_table(scratch / layout.PREPARED, "sentences")
        plan = fold_plan(posts)
        p = scratch_params(params, scratch)
        for held, train_ids, tune_ids, held_ids in progress(plan, desc="spread: cv folds"):
            run_dir = scratch / SCRATCH_CHECKPOINTS / f"fold-{held}"
            settings = TrackingSettings(mlflow_uri=p.tracking.mlflow_uri, experiment=p.tracking.experiment,
                                        run_name=f"cv/fold-{held}", live_dir=None, run_dir=run_dir)
            with Tracker(settings) as tracker:
                run = build_run(p, RunPaths(prepared=scratch / layout.PREPARED, checkpoints=run_dir),
                                train_ids=train_ids, val_ids=tune_ids)
                result = fit(run, tracker, label=f"cv fold {held}")
                export_best(run, result, scratch / "model")
            model, windower, config, _ = load_for_inference(scratch / "model", p.evaluate.max_chunks)
            device = next(model.parameters()).device
            budget = int(config["encode"]["max_chunks"])

            def scored(ids: list[str], name: str):
                part = posts[posts["post_id"].isin(ids)].reset_index(drop=True)
                return predict_split(name, model, windower, part, sentences[sentences["post_id"].isin(ids)],
                                     p.evaluate.batch_size, device, budget)

            tune, out = scored(tune_ids, "tune"), scored(held_ids, "held")
            thresholds, _ = operating_points(tune.gold, tune.prob, p.evaluate.threshold_objective,
                                             Settings.of(p).targets())
            decided = out.prob >= np.asarray(thresholds)
            f1 = multilabel_f1(out.gold, decided)
            per_fold.append({"fold": held, "posts": len(held_ids), "macro_f1": round(f1["macro"], 6),
                             "micro_f1": round(f1["micro"], 6), "thresholds": dict(zip(SYMPTOMS, thresholds))})
            say(f"spread: cv fold {held}: macro-F1 {f1['macro']:.4f}, micro-F1 {f1['micro']:.4f}")
            gold.append(out.gold)
            pred.append(decided)
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(scratch / "model", ignore_errors=True)
    pooled = multilabel_f1(np.concatenate(gold), np.concatenate(pred))
    return {"enabled": True, "folds": len(per_fold), "posts": int(sum(f["posts"] for f in per_fold)),
            "out_of_fold": {"macro_f1": round(pooled["macro"], 6), "micro_f1": round(pooled["micro"], 6)},
            "per_fold_macro_f1": describe([f["macro_f1"] for f in per_fold]),
            "per_fold_micro_f1": describe([f["micro_f1"] for f in per_fold]),
            "threshold_objective": params.evaluate.threshold_objective, "per_fold": per_fold}


def headline(result: dict) -> dict:
    """metrics/spread.json: seed mean/std/min/max per metric and the out-of-fold estimate (no per-fold detail)."""
    out: dict = {"seeds": {"n": result["seeds"]["n"]}}
    if result["seeds"]["n"]:
        out["seeds"].update({k: {s: v[s] for s in ("mean", "std", "min", "max")}
                             for k, v in result["seeds"]["metrics"].items()})
    cv = result["cv"]
    out["cv"] = {"enabled": cv["enabled"], **({"folds": cv["folds"], **cv["out_of_fold"]} if cv["enabled"] else {})}
    return out


def summary_markdown(result: dict) -> str:
    def f(x):
        return "n/a" if x is None else f"{x:.4f}"

    seeds, cv = result["seeds"], result["cv"]
    lines = ["# Spread over seeds and folds", ""]
    if seeds["n"]:
        lines += [f"Seeds {', '.join(map(str, seeds['seeds']))}: the config trained and evaluated once each "
                  "(prepared data fixed).", "",
                  "| metric | mean | std | min | max | single-run 95% CI width (mean) |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {f(v['mean'])} | {f(v['std'])} | {f(v['min'])} | {f(v['max'])} | "
                  f"{f(v['single_run_ci_width'])} |" for k, v in seeds["metrics"].items()]
    else:
        lines.append("No seed study (spread.seeds is empty).")
    lines.append("")
    if cv["enabled"]:
        lines += [f"Cross-validation over {cv['folds']} folds ({cv['posts']} train+val posts, each scored once, "
                  f"thresholds for `{cv['threshold_objective']}` tuned on a fold of its own training part):", "",
                  "| | out-of-fold | fold mean | fold std |", "|---|---|---|---|",
                  f"| macro-F1 | {f(cv['out_of_fold']['macro_f1'])} | {f(cv['per_fold_macro_f1']['mean'])} | "
                  f"{f(cv['per_fold_macro_f1']['std'])} |",
                  f"| micro-F1 | {f(cv['out_of_fold']['micro_f1'])} | {f(cv['per_fold_micro_f1']['mean'])} | "
                  f"{f(cv['per_fold_micro_f1']['std'])} |"]
    else:
        lines.append("No cross-validation (spread.cv is false).")
    return "\n".join([*lines, ""])


def run(params: Params, root: Path = Path(".")) -> dict:
    """Measure what is switched on and write metrics/spread.json and reports/spread/."""
    root = Path(root)
    seeds = params.spread.seeds
    runs = seed_runs(params, root, seeds) if seeds else []
    result = {"seeds": seed_summary(runs) if runs else {"n": 0},
              "cv": cross_validate(params, root) if params.spread.cv else {"enabled": False}}
    with atomic.staged_dir(root / layout.SPREAD_REPORTS) as tmp:
        atomic.write_json(tmp / "spread.json", {**result, "runs": runs})
        atomic.write_text(tmp / "summary.md", summary_markdown(result))
    atomic.write_json(root / layout.SPREAD_METRICS, headline(result))
    return result
