"""A benchmark of pruning: re-run a study's finished trials with the same params and no pruner.

It measures what pruning saved (trial-seconds and trial-epochs) and whether a pruned trial would
have beaten the best one, on the machine at hand. The replay leaves every trial's full learning
curve, so other pruner settings are then played over the same trials in the same order (`what_if`):
exact for that sequence of trials, though a real study's sampler would have proposed others after
different prunings. Results go to reports/bench/hpo_pruning.json.
"""

from __future__ import annotations

from pathlib import Path

from dsm5lab import atomic, dotted, layout
from dsm5lab.config import Params, validate
from dsm5lab.errors import UserError
from dsm5lab.hpo import storage as st
from dsm5lab.hpo.space import study_identity
from dsm5lab.hpo.trial import StudyContext, run_trial

OUT = layout.HPO_PRUNING_BENCH


def _totals(trials) -> dict:
    return {"trial_seconds": round(sum(t.duration.total_seconds() for t in trials), 1),
            "trial_epochs": round(sum(t.user_attrs.get("epochs_run", 0) for t in trials), 2)}


# pruner settings what_if plays over the replayed curves (hpo.pruner keys over the study's own)
CANDIDATES: dict[str, dict] = {
    "median startup 2 warmup 2": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 2},
    "median startup 2 warmup 1": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
    "median startup 2 warmup 0": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
    "median startup 5 warmup 1": {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 1},
    "median startup 5 warmup 0": {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 0},
    "hyperband rf 3": {"type": "hyperband", "min_resource": 1, "reduction_factor": 3},
    "hyperband rf 3 bootstrap 3": {"type": "hyperband", "min_resource": 1, "reduction_factor": 3, "bootstrap_count": 3},
    "hyperband rf 2": {"type": "hyperband", "min_resource": 1, "reduction_factor": 2},
    "hyperband rf 2 bootstrap 2": {"type": "hyperband", "min_resource": 1, "reduction_factor": 2, "bootstrap_count": 2},
    "hyperband rf 4 min 2": {"type": "hyperband", "min_resource": 2, "reduction_factor": 4},
    "median startup 2 warmup 1 + patience 1": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1,
                                               "patience": 1},
}


def what_if(params: Params, curves: list[dict[int, float]], finals: list[float], study_name: str,
            candidates: dict[str, dict] = CANDIDATES, numbers: list[int] | None = None) -> list[dict]:
    """Play each pruner setting over the trials' full curves, in study order: reports (epochs) it would run, the
    share it saves against running every report, and the best value among the trials it lets finish.

    A curve's last report is its fit's final validation (its last epoch, or patience stopping it), where a trial is
    never pruned, as in trial.Reporter. `numbers`: the trials' numbers in the study (default 0..n-1).
    Each play is an in-memory study named like the real one, its trials numbered as there (a gap, such as a failed
    trial, is a failed trial): Hyperband puts a trial in a bracket by a hash of the study's name and the trial's
    number, so another name or number would play other brackets."""
    import optuna

    from dsm5lab.hpo.study import make_pruner

    st.quiet_optuna()
    sign = 1 if params.hpo.objectives[0].direction == "maximize" else -1
    full = sum(len(c) for c in curves)
    best = max(finals, key=lambda v: sign * v)
    rows = []
    own = params.hpo.pruner.model_dump(mode="json")
    for label, keys in {"this study's pruner": own, **candidates}.items():
        raw = params.model_dump(mode="json")
        settings = {**own, "patience": None, "max_resource": None, "bootstrap_count": 0, **keys}
        for key, value in settings.items():
            dotted.put(raw, f"hpo.pruner.{key}", value)
        pruner = make_pruner(validate(raw, source=f"what_if {label}"))
        study = optuna.create_study(direction=params.hpo.objectives[0].direction, pruner=pruner,
                                    study_name=study_name, storage=optuna.storages.InMemoryStorage())
        ran, kept = 0, []
        for curve, final, number in zip(curves, finals, numbers or range(len(curves))):
            while len(study.trials) < number:
                study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
            trial = study.ask()
            pruned = False
            last = max(curve, default=None)  # none: a cost objective's trial reports nothing
            for step in sorted(curve):
                trial.report(curve[step], step)
                ran += 1
                if step != last and trial.should_prune():  # never at the fit's final report (trial.Reporter)
                    pruned = True
                    break
            if pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, final)
                kept.append(final)
        top = max(kept, key=lambda v: sign * v) if kept else None
        rows.append({"pruner": label, "settings": keys, "reports_run": ran, "reports_full": full,
                     "saved_share": round(1 - ran / full, 4) if full else 0.0,
                     "pruned": len(curves) - len(kept), "best_value": None if top is None else round(top, 6),
                     "keeps_best": top is not None and top == best})
    return rows


def compare_pruning(params: Params, root: Path = Path(".")) -> dict:
    """Replay the hpo stage's study without pruning; returns (and writes) the comparison."""
    import optuna

    from dsm5lab.hpo.study import _trial_epochs, storage_url

    root = Path(root)
    url = storage_url(params, root)
    name, _, _ = study_identity(params, root / layout.PREPARED)
    storage = st.open_storage(url, params.hpo.stale)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UserError(f"hpo: no study {name} in {st.redact(url)}; run the hpo stage first") from None
    done = sorted((t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")), key=lambda t: t.number)
    if not any(t.state.name == "PRUNED" for t in done):
        raise UserError(f"hpo: study {name} has no pruned trial; nothing to compare")
    raw = params.model_dump(mode="json")
    raw["hpo"]["pruner"]["type"], raw["hpo"]["pruner"]["patience"] = "none", None
    raw["hpo"]["trial_timeout_s"] = None  # a timeout would stop trials too
    unpruned = validate(raw, source="params without pruning")
    replay = optuna.create_study(directions=[o.direction for o in params.hpo.objectives],
                                 pruner=optuna.pruners.NopPruner())
    for t in done:
        replay.enqueue_trial(t.params)
    ctx = StudyContext(unpruned, root, f"{name}-nopruning", parent_run_id=None)
    from dsm5lab.hpo.space import InvalidTrialParams
    from dsm5lab.training.loop import DivergedError

    replay.optimize(lambda trial: run_trial(trial, ctx), n_trials=len(done),
                    catch=(DivergedError, InvalidTrialParams))
    if any(t.state.name != "COMPLETE" for t in replay.trials):
        raise UserError("hpo compare-pruning: some replayed trials did not complete "
                        f"({[t.number for t in replay.trials if t.state.name != 'COMPLETE']}); see the log")
    sign = 1 if params.hpo.objectives[0].direction == "maximize" else -1
    again = sorted(replay.trials, key=lambda t: t.number)
    best_with = max((t for t in done if t.state.name == "COMPLETE"), key=lambda t: sign * t.values[0])
    best_without = max(again, key=lambda t: sign * t.values[0])
    result = {
        "study": name,
        "trials": len(done),
        "pruned": [t.number for t in done if t.state.name == "PRUNED"],
        "with_pruning": _totals(done),
        "without_pruning": _totals(again),
        "pruned_trials_final_values": {t.number: round(r.values[0], 6) for t, r in zip(done, again)
                                       if t.state.name == "PRUNED"},
        "best_with_pruning": {"trial": best_with.number, "value": round(best_with.values[0], 6)},
        "best_without_pruning": {"trial": done[again.index(best_without)].number,
                                 "value": round(best_without.values[0], 6)},
    }
    w, wo = result["with_pruning"], result["without_pruning"]
    result["saved_seconds"] = round(wo["trial_seconds"] - w["trial_seconds"], 1)
    result["saved_share"] = round(1 - w["trial_seconds"] / wo["trial_seconds"], 4) if wo["trial_seconds"] else 0.0
    result["saved_epochs_share"] = round(1 - w["trial_epochs"] / wo["trial_epochs"], 4) if wo["trial_epochs"] else 0.0
    result["equal_best"] = result["best_with_pruning"]["value"] == result["best_without_pruning"]["value"]
    result["pruner"] = params.hpo.pruner.model_dump(mode="json")
    # what what_if needs to be played again from this file: the objective and a full trial's reports
    result["objective"] = params.hpo.objectives[0].model_dump(mode="json")
    result["trial_epochs"] = _trial_epochs(params)
    curves = [dict(t.intermediate_values) for t in again]
    result["what_if"] = what_if(params, curves, [t.values[0] for t in again], name, numbers=[t.number for t in done])
    # every trial's full curve and value, so other settings can be played later without training
    result["curves"] = {t.number: {"reports": [round(c[k], 6) for k in sorted(c)], "value": round(r.values[0], 6)}
                        for t, r, c in zip(done, again, curves)}
    atomic.write_json(root / OUT, result)
    return result


def play_inputs(r: dict, params: Params) -> dict:
    """what_if's arguments (less the candidates) from a written measurement `r`: its study's name, curves, values
    and trial numbers, and `params` with its pruner, objective and trial epochs."""
    raw = params.model_dump(mode="json")
    raw["hpo"]["pruner"], raw["hpo"]["objectives"] = r["pruner"], [r["objective"]]
    raw["hpo"]["trial_overrides"] = {"train.epochs": r["trial_epochs"]}
    trials = r["curves"]
    return {"params": validate(raw, source=f"measurement of {r['study']}"), "study_name": r["study"],
            "curves": [dict(enumerate(c["reports"])) for c in trials.values()],
            "finals": [c["value"] for c in trials.values()],
            "numbers": [int(n) for n in trials]}


def replay_file(path: Path, params: Params) -> dict:
    """Play the current pruner settings (CANDIDATES) again over a written measurement's curves, without training;
    rewrites its what_if rows (the study's own setting first) and returns the measurement. The measurement's
    pruner, objective and trial epochs replace those of `params`."""
    import json

    try:
        r = json.loads(Path(path).read_text())
        inputs = play_inputs(r, params)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"--replay: {path}: not a measurement written by `hpo compare-pruning` ({exc})") from None
    r["what_if"] = what_if(**inputs)
    atomic.write_json(Path(path), r)
    return r
