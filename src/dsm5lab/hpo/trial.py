"""One Optuna trial = suggest -> the same `build_run()` and `fit()` as the train stage -> report and prune.

A trial reports once per validation (or, in cross-validation, once per fold with the aggregate
so far); the pruner may stop it there, and a trial whose every report is NaN is pruned. Per-fold
metrics, epochs run and why a trial stopped are stored as trial user attributes.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dsm5lab import layout
from dsm5lab.concurrency import resolve_threads
from dsm5lab.config import Params
from dsm5lab.hpo.space import InvalidTrialParams, base_values, resolved_values, suggest, trial_params
from dsm5lab.hpo.storage import WORKER_ATTR, worker_tag

AGGREGATE: dict[str, Callable[[list[float]], float]] = {
    "mean": statistics.fmean, "median": statistics.median, "min": min, "max": max,
}


@dataclass
class StudyContext:
    params: Params  # the study's params: params.yaml as the study was created with it
    root: Path
    study_name: str
    parent_run_id: str | None  # MLflow run of the study; trials nest under it


def fold_plan(params: Params, prepared: Path) -> list[tuple[str, list[str] | None, list[str] | None]]:
    """(name, train ids, val ids) per fit: the prepare split, or the first hpo.cv.folds folds."""
    if not params.hpo.cv.enabled:
        return [("split", None, None)]
    from dsm5lab.data.schema import read_table
    from dsm5lab.errors import UserError

    posts = read_table(prepared, "posts")
    pool = posts[posts["fold"] >= 0]
    k = int(pool["fold"].max()) + 1 if len(pool) else 0
    n = params.hpo.cv.folds or k
    if k < 2 or n > k:
        raise UserError(f"hpo.cv.folds: {n} folds asked, prepare made {k} (set prepare.n_folds >= {max(n, 2)})")
    plan = []
    for f in range(n):
        val = pool.loc[pool["fold"] == f, "post_id"].tolist()
        train = pool.loc[pool["fold"] != f, "post_id"].tolist()
        plan.append((f"fold-{f}", train, val))
    return plan


def nan_pruned(trial, reported: list[float], where: str):
    """TrialPruned when every value the trial reported is NaN, else None.

    No pruner ranks such a trial before its startup trials and warm-up (median) or at all (none), and
    its NaN value would fail it without a stop_reason, so it would not count towards n_trials: a study
    whose every trial is NaN would never end. Pruned, it counts and shows at its last report."""
    import optuna

    if not reported or not all(math.isnan(v) for v in reported):
        return None
    trial.set_user_attr("stop_reason", "nan reports")
    return optuna.TrialPruned(f"every report NaN ({where})")


class Reporter:
    """fit()'s on_validation hook: report the metric, prune, and stop at the per-trial deadline."""

    def __init__(self, trial, metric: str, report: bool, deadline: float | None, last_fit: bool = True):
        self.trial, self.metric, self.report, self.deadline = trial, metric, report, deadline
        self.last_fit = last_fit  # False for a cross-validation fold with folds after it
        self.n, self.epochs = 0, 0.0
        self.reported: list[float] = []

    def __call__(self, step: int, metrics: dict[str, float], final: bool) -> None:
        import optuna

        self.epochs = metrics.get("train/epoch", self.epochs)
        if self.report:
            self.reported.append(float(metrics[self.metric]))
            self.trial.report(self.reported[-1], self.n)
        self.n += 1
        done = final and self.last_fit  # the trial's last validation: past the deadline or not, it is finished
        if self.deadline is not None and not done and time.monotonic() > self.deadline:
            self.trial.set_user_attr("stop_reason", "trial_timeout")
            raise optuna.TrialPruned(f"per-trial timeout after {self.n} reports")
        nan = nan_pruned(self.trial, self.reported, f"report {self.n - 1}")
        if nan is not None:
            raise nan
        # the fit's final validation (its last epoch, or patience stopping it) has no compute left to save:
        # pruning there would only throw away a finished trial's value (cross-validation skips its last fold alike)
        if self.report and not final and self.trial.should_prune():
            self.trial.set_user_attr("stop_reason", "pruned")
            raise optuna.TrialPruned(f"pruned at report {self.n - 1}")


def trial_values(result, objectives) -> list[float]:
    """The trial's score(s) from a finished fit: the best checkpoint's validation metrics, or a cost."""
    out = []
    for o in objectives:
        if o.metric == "model/n_parameters":
            out.append(float(result.n_parameters))
        elif o.metric == "train/seconds":
            out.append(float(result.throughput["train_seconds"]))
        else:
            out.append(float(result.best.get(o.metric, float("nan"))))
    return out


def run_trial(trial, ctx: StudyContext) -> float | list[float]:
    """The Optuna objective."""
    import optuna

    from dsm5lab.tracking import PARENT_TAG, Tracker, TrackingSettings
    from dsm5lab.training.loop import DivergedError, fit
    from dsm5lab.training.run import RunPaths, build_run

    hpo = ctx.params.hpo
    started = time.monotonic()
    trial.set_user_attr(WORKER_ATTR, worker_tag())
    trial.set_user_attr("stop_reason", None)  # a retried trial inherits its failed copy's attributes
    values = resolved_values(ctx.params, suggest(trial, hpo.search_space, base_values(ctx.params)))
    try:
        tp = trial_params(ctx.params, values)
    except InvalidTrialParams:
        trial.set_user_attr("stop_reason", "invalid params")
        raise
    trial.set_user_attr("values", values)
    threads, rule = resolve_threads(tp.train.threads)
    trial.set_user_attr("threads", {"n": threads, "rule": rule})  # build_run applies the same rule
    prepared = ctx.root / layout.PREPARED
    plan = fold_plan(tp, prepared)
    trial.set_user_attr("epochs_planned", tp.train.epochs * len(plan))
    run_dir = ctx.root / tp.train.checkpoint.dir / layout.trial_run(ctx.study_name, trial.number)
    tags = {"optuna.study": ctx.study_name, "optuna.trial": str(trial.number)}
    if ctx.parent_run_id:
        tags[PARENT_TAG] = ctx.parent_run_id
    settings = TrackingSettings(mlflow_uri=tp.tracking.mlflow_uri, experiment=tp.tracking.experiment,
                                run_name=f"{ctx.study_name}/trial-{trial.number}", live_dir=None,
                                run_dir=run_dir, tags=tags)
    deadline = started + hpo.trial_timeout_s if hpo.trial_timeout_s else None
    cv, metric = hpo.cv.enabled, hpo.objectives[0].metric
    report = not hpo.multi_objective and metric.startswith("val/")  # costs exist only at the end
    folds: list[dict[str, Any]] = []
    reported: list[float] = []  # the cross-validation aggregates reported so far
    epochs_run, stopped = 0.0, None
    with Tracker(settings) as tracker:
        tracker.log_params({**values, "optuna.trial": trial.number})
        for k, (name, train_ids, val_ids) in enumerate(plan):
            reporter = Reporter(trial, metric, report=report and not cv, deadline=deadline,
                                last_fit=k == len(plan) - 1)
            child = tracker.child(f"{settings.run_name}/{name}") if cv else None
            paths = RunPaths(prepared=prepared, checkpoints=run_dir / name if cv else run_dir)
            try:
                label = f"hpo: trial {trial.number}" + (f" {name}" if cv else "")
                if child is None:
                    result = fit(build_run(tp, paths, train_ids=train_ids, val_ids=val_ids), tracker,
                                 on_validation=reporter, label=label)
                else:
                    with child:  # a fold that fails to build still gets its MLflow run and run_end event
                        result = fit(build_run(tp, paths, train_ids=train_ids, val_ids=val_ids), child,
                                     on_validation=reporter, label=label)
            except optuna.TrialPruned as exc:
                epochs_run += reporter.epochs
                stopped = exc
                break
            except DivergedError:
                trial.set_user_attr("stop_reason", "diverged")
                raise
            epochs_run += reporter.epochs
            scores = trial_values(result, hpo.objectives)
            folds.append({"fold": name, "values": scores, "best": result.best, "epochs_run": result.epochs_run})
            if cv:
                trial.set_user_attr("fold_metrics", folds)
                if report:
                    reported.append(AGGREGATE[hpo.cv.aggregate]([f["values"][0] for f in folds]))
                    trial.report(reported[-1], k)
                    stopped = nan_pruned(trial, reported, f"fold {k}")
                    if stopped is not None:
                        break
                    if k + 1 < len(plan) and trial.should_prune():
                        trial.set_user_attr("stop_reason", "pruned")
                        stopped = optuna.TrialPruned(f"pruned after fold {k}")
                        break
        seconds = time.monotonic() - started
        trial.set_user_attr("seconds", round(seconds, 3))
        trial.set_user_attr("epochs_run", round(epochs_run, 4))
        tracker.log_summary({"trial/pruned": float(stopped is not None), "trial/epochs_run": epochs_run})
        if stopped is None:
            final = [AGGREGATE[hpo.cv.aggregate]([f["values"][i] for f in folds]) for i in range(len(hpo.objectives))]
            tracker.log_summary({f"objective/{o.metric}": v for o, v in zip(hpo.objectives, final)})
    if stopped is not None:
        raise stopped
    return final if hpo.multi_objective else final[0]
