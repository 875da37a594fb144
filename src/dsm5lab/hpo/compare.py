"""A benchmark of pruning: re-run a study's finished trials with the same params and no pruner.

It measures what pruning saved (trial-seconds and trial-epochs) and whether a pruned trial would
have beaten the best one, on the machine at hand. Results go to reports/bench/hpo_pruning.json.
"""

from __future__ import annotations

from pathlib import Path

from dsm5lab import atomic, layout
from dsm5lab.config import Params, validate
from dsm5lab.errors import UserError
from dsm5lab.hpo import storage as st
from dsm5lab.hpo.space import study_identity
from dsm5lab.hpo.trial import StudyContext, run_trial

OUT = layout.HPO_PRUNING_BENCH


def _totals(trials) -> dict:
    return {"trial_seconds": round(sum(t.duration.total_seconds() for t in trials), 1),
            "trial_epochs": round(sum(t.user_attrs.get("epochs_run", 0) for t in trials), 2)}


def compare_pruning(params: Params, root: Path = Path(".")) -> dict:
    """Replay the hpo stage's study without pruning; returns (and writes) the comparison."""
    import optuna

    from dsm5lab.hpo.study import storage_url

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
    atomic.write_json(root / OUT, result)
    return result
