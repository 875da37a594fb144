"""What a study leaves behind: best params, the trials table, importances, history, summary, metrics."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from dsm5lab import atomic, layout
from dsm5lab.config import Params
from dsm5lab.dotted import nested
from dsm5lab.errors import UserError
from dsm5lab.hpo import storage as st

BEST, STORAGE_INFO = layout.HPO_BEST, layout.HPO_STORAGE_INFO
REPORTS, METRICS = layout.HPO_REPORTS, layout.HPO_METRICS


def _num(x: Any) -> Any:
    return round(float(x), 6) if isinstance(x, (int, float)) and math.isfinite(float(x)) else x


def trial_rows(study) -> list[dict[str, Any]]:
    """One row per trial: number, state, values, params, duration, prune step, epochs, why it stopped."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    keys = sorted({k for t in trials for k in t.params})
    n_values = len(study.directions)
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        for i in range(n_values):
            name = "value" if n_values == 1 else f"value_{i}"
            row[name] = _num(t.values[i]) if t.values else ""
        row.update({f"params.{k}": t.params.get(k, "") for k in keys})
        duration = t.duration.total_seconds() if t.duration is not None else ""
        row["duration_s"] = _num(duration) if duration != "" else ""
        row["prune_step"] = max(t.intermediate_values) if t.state.name == "PRUNED" and t.intermediate_values else ""
        row["epochs_run"] = t.user_attrs.get("epochs_run", "")
        row["epochs_planned"] = t.user_attrs.get("epochs_planned", "")
        row["stop_reason"] = t.user_attrs.get("stop_reason") or ""
        row["retry_of"] = t.system_attrs.get("failed_trial", "")
        folds = t.user_attrs.get("fold_metrics")
        row["fold_values"] = json.dumps([_num(f["values"][0]) for f in folds]) if folds else ""
        rows.append(row)
    return rows


def write_trials_csv(study, path: Path) -> int:
    rows = trial_rows(study)
    buf = io.StringIO()
    header = list(rows[0]) if rows else ["number", "state", "value"]
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buf.getvalue())
    return len(rows)


def importances(study, seed: int) -> list[tuple[str, float]]:
    """fANOVA importance of each parameter for the first objective; [] with fewer than 2 complete trials."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2 or not any(t.params for t in complete):
        return []
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    try:
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed), target=target)
    except (RuntimeError, ValueError):  # e.g. every trial had the same params
        return []
    return [(k, round(float(v), 6)) for k, v in found.items()]


def best_trial(study):
    """The best trial; with several objectives, the Pareto-front trial best on the first one."""
    import optuna

    if len(study.directions) == 1:
        try:
            return study.best_trial
        except ValueError:
            return None
    front = study.best_trials
    if not front:
        return None
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(front, key=lambda t: (sign * t.values[0], -t.number))


def summarise(study, params: Params, wall_s: float | None) -> dict[str, Any]:
    """Best value, trial counts, wall time and the compute pruning saved (metrics/hpo.json less WALL_CLOCK)."""
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(1 for t in trials if t.state.name == s.upper())
              for s in ("complete", "pruned", "fail", "running", "waiting")}
    best = best_trial(study)
    pruned = [t for t in trials if t.state.name == "PRUNED" and t.user_attrs.get("stop_reason") == "pruned"]
    saved = sum(max(0.0, t.user_attrs.get("epochs_planned", 0) - t.user_attrs.get("epochs_run", 0)) for t in pruned)
    timed = [t for t in trials if t.user_attrs.get("seconds") and t.user_attrs.get("epochs_run")]
    per_epoch = (sum(t.user_attrs["seconds"] for t in timed) / sum(t.user_attrs["epochs_run"] for t in timed)
                 if timed else None)
    run_epochs = sum(t.user_attrs.get("epochs_run", 0) for t in trials)
    out: dict[str, Any] = {
        "study": study.study_name,
        "objectives": {o.metric: o.direction for o in params.hpo.objectives},
        "best_trial": best.number if best else None,
        "best_value": _num(best.values[0]) if best else None,
        "trials": {"complete": counts["complete"], "pruned": counts["pruned"], "failed": counts["fail"],
                   "running": counts["running"], "waiting": counts["waiting"], "finished": st.finished_count(study)},
        "trial_epochs_run": round(run_epochs, 4),
        "trial_epochs_saved_by_pruning": round(saved, 4),
        "pruning_saved_share": round(saved / (saved + run_epochs), 4) if saved + run_epochs else 0.0,
        "seconds_saved_by_pruning_est": round(saved * per_epoch, 1) if per_epoch else 0.0,
        "wall_time_s": round(wall_s, 1) if wall_s is not None else None,
    }
    if len(study.directions) > 1:
        out["pareto_front"] = sorted(t.number for t in study.best_trials)
    return out


# wall-clock numbers: in summary.md (a cached out) and MLflow, not in the git-tracked metrics/hpo.json, so
# re-running the same study on another machine (or under another load) leaves git clean
WALL_CLOCK = ("seconds_saved_by_pruning_est", "wall_time_s")


# metrics/hpo.json keeps the headline few (what `dvc exp show` lists); every count, the objectives and the
# Pareto front are in reports/hpo/summary.json
HEADLINE = ("study", "best_trial", "best_value", "pruning_saved_share")
HEADLINE_TRIALS = ("complete", "pruned", "failed")


def tracked_metrics(metrics: dict) -> dict:
    """metrics/hpo.json: the headline keys of what summarise() gives (never a wall-clock field)."""
    out = {k: metrics[k] for k in HEADLINE}
    out["trials"] = {k: metrics["trials"][k] for k in HEADLINE_TRIALS}
    if "pareto_front" in metrics:
        out["pareto_front"] = metrics["pareto_front"]
    return out


def summary_json(metrics: dict) -> dict:
    """reports/hpo/summary.json: everything summarise() gives, less the wall-clock fields."""
    return {k: v for k, v in metrics.items() if k not in WALL_CLOCK}


def best_params_text(study, params: Params) -> str:
    import yaml

    best = best_trial(study)
    if best is None:
        raise UserError(f"hpo: study {study.study_name} has no completed trial yet "
                        "(all trials pruned or failed); raise hpo.n_trials or relax the pruner")
    values = best.user_attrs.get("values") or best.params
    score = ", ".join(f"{o.metric}={_num(v)}" for o, v in zip(params.hpo.objectives, best.values))
    head = (f"# best trial {best.number} of study {study.study_name}: {score}\n"
            "# apply with `dsm5lab hpo promote` (writes these values into params.yaml); trial budget keys\n"
            f"# (hpo.trial_overrides: {json.dumps(params.hpo.trial_overrides)}) are not part of it\n")
    return head + yaml.safe_dump(nested(values), sort_keys=True)


def summary_md(study, params: Params, metrics: dict, imp: list[tuple[str, float]], url: str) -> str:
    best = best_trial(study)
    lines = [f"# HPO study `{study.study_name}`", "",
             f"Storage: `{st.redact(url)}`; objectives: "
             + ", ".join(f"{o.metric} ({o.direction})" for o in params.hpo.objectives)
             + f"; sampler {params.hpo.sampler.type}, pruner {params.hpo.pruner.type}, space `{params.hpo.space}`"
             + (f", {params.hpo.cv.aggregate} over folds" if params.hpo.cv.enabled else "") + ".", ""]
    t = metrics["trials"]
    lines += [f"Trials: {t['complete']} complete, {t['pruned']} pruned, {t['failed']} failed "
              f"({t['finished']} of {params.hpo.n_trials} counted). Pruning skipped "
              f"{metrics['trial_epochs_saved_by_pruning']} of "
              f"{metrics['trial_epochs_saved_by_pruning'] + metrics['trial_epochs_run']:.4g} trial-epochs "
              f"(~{metrics['seconds_saved_by_pruning_est']} s)."
              + (f" Wall time of this run: {metrics['wall_time_s']} s." if metrics.get("wall_time_s") else ""), ""]
    if best is not None:
        lines += [f"## Best trial {best.number}", "", "| param | value |", "|---|---|"]
        lines += [f"| `{k}` | {v} |" for k, v in sorted((best.user_attrs.get('values') or best.params).items())]
        lines += ["", "Values: " + ", ".join(f"{o.metric} = {_num(v)}" for o, v in zip(params.hpo.objectives,
                                                                                       best.values)), ""]
    if "pareto_front" in metrics:
        lines += ["## Pareto front", "", "| trial | " + " | ".join(o.metric for o in params.hpo.objectives) + " |",
                  "|---|" + "---|" * len(params.hpo.objectives)]
        for tr in sorted(study.best_trials, key=lambda x: x.number):
            lines.append(f"| {tr.number} | " + " | ".join(str(_num(v)) for v in tr.values) + " |")
        lines.append("")
    lines += ["## Parameter importance (fANOVA, first objective)", ""]
    lines += (["| param | importance |", "|---|---|"] + [f"| `{k}` | {v} |" for k, v in imp]) if imp else \
        ["Not enough completed trials (or no variation) to estimate importances."]
    lines += ["", "Browse it live: `optuna-dashboard "
              f"{st.redact(url) if not url.startswith(st.JOURNAL) else url[len(st.JOURNAL):]}`", ""]
    return "\n".join(lines)


HISTORY_HEADER = "trial,state,value,best_value\n"


def history_csv(study) -> str:
    """Every finished trial in number order: completed ones at their objective, pruned ones at the last value
    they reported (where the pruner stopped them), failed ones with no value; best_value is the best completed
    value so far (empty before the first)."""
    rows = [HISTORY_HEADER]
    best_so_far = None
    sign = -1 if study.directions[0].name == "MINIMIZE" else 1
    for t in sorted(study.get_trials(deepcopy=False), key=lambda x: x.number):
        state = t.state.name
        if state == "COMPLETE":
            value = t.values[0]
            best_so_far = value if best_so_far is None or sign * value > sign * best_so_far else best_so_far
        elif state == "PRUNED":
            value = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        elif state == "FAIL":
            value = None
        else:  # RUNNING / WAITING: not finished, not history yet
            continue
        rows.append(f"{t.number},{state},{'' if value is None else _num(value)},"
                    f"{'' if best_so_far is None else _num(best_so_far)}\n")
    return "".join(rows)


def write_all(study, params: Params, root: Path, url: str, wall_s: float | None) -> dict:
    """Write every output of the hpo stage; returns metrics/hpo.json's content."""
    root = Path(root)
    best_text = best_params_text(study, params)  # fails before anything is written when nothing completed
    metrics = summarise(study, params, wall_s)
    imp = importances(study, params.seed)
    write_trials_csv(study, root / REPORTS / "trials.csv")
    atomic.write_text(root / REPORTS / "importance.csv",
                      "param,importance\n" + "".join(f"{k},{v}\n" for k, v in imp))
    atomic.write_text(root / REPORTS / "history.csv", history_csv(study))
    atomic.write_text(root / REPORTS / "summary.md", summary_md(study, params, metrics, imp, url))
    atomic.write_json(root / STORAGE_INFO, {"storage": st.redact(url), "study": study.study_name})
    atomic.write_text(root / BEST, best_text)
    atomic.write_json(root / REPORTS / "summary.json", summary_json(metrics))
    atomic.write_json(root / METRICS, tracked_metrics(metrics))
    return metrics


DISABLED_HEAD = "# hpo.enabled is false: no study ran, and train uses params.yaml's values as they are\n"


def write_disabled(root: Path) -> dict:
    """The hpo stage with hpo.enabled false: every declared output, empty, in no time (the study storage is
    left as it is, so enabling HPO again resumes the study it holds); returns metrics/hpo.json's content."""
    root = Path(root)
    (root / layout.HPO_STORAGE_DIR).mkdir(parents=True, exist_ok=True)
    atomic.write_text(root / REPORTS / "trials.csv", "number,state,value\n")
    atomic.write_text(root / REPORTS / "importance.csv", "param,importance\n")
    atomic.write_text(root / REPORTS / "history.csv", HISTORY_HEADER)
    atomic.write_text(root / REPORTS / "summary.md", "# HPO\n\nDisabled (`hpo.enabled: false`): no study ran; "
                      "train used params.yaml's values. `dvc exp run -S hpo.enabled=true` runs the study.\n")
    metrics = {"enabled": False}
    atomic.write_json(root / REPORTS / "summary.json", metrics)
    atomic.write_text(root / BEST, DISABLED_HEAD + "{}\n")
    atomic.write_json(root / METRICS, metrics)
    return metrics
