"""Staged search: enqueue the best trials of an earlier study so that they run first in a new one.

Coarse-then-fine is `hpo.warm_start.study: <coarse study>` (or `dsm5lab hpo run --warm-start NAME`)
with a narrower space or a bigger budget. Each of the earlier study's best complete trials is
enqueued with the values the new space can take: a value outside its new range, or a key whose
condition (`when`) is not settled, is left to the sampler, and a key it does not search is fixed by
params.yaml as usual. The warm start is part of the study's definition, so
naming one starts a new study, and it is enqueued once, when that study is created.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from dsm5lab.config import Params
from dsm5lab.config.hpo import Dist
from dsm5lab.errors import UserError
from dsm5lab.hpo import storage as st

WARM_ATTR = "dsm5lab:warm_start"  # study user attr: what was enqueued, so a resumed run does not enqueue again


def contains(dist: Dist, value: Any) -> bool:
    """True when the space's distribution can produce `value` (Optuna would otherwise warn and use it anyway)."""
    if dist.type == "categorical":
        return any(value == c and type(value) is type(c) for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not dist.low <= value <= dist.high:
        return False
    if dist.type == "int" and value != int(value):
        return False
    if dist.step:
        k = (value - dist.low) / dist.step
        return math.isclose(k, round(k), abs_tol=1e-8)
    return True


def best_trials(study, n: int) -> list:
    """The study's n best complete trials: by value (its direction), or its Pareto front for several objectives."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.values and not any(math.isnan(v) for v in t.values)]
    if len(study.directions) > 1:
        front = {t.number for t in study.best_trials}
        done = [t for t in done if t.number in front]
        return sorted(done, key=lambda t: t.number)[:n]
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(done, key=lambda t: (sign * t.values[0], t.number))[:n]


def fitted(params_of_trial: dict[str, Any], space: dict[str, Dist],
           base: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The values of an earlier trial the new space can take, in the space's order, and the keys not carried over.

    A conditional key (`when`) is carried only when its conditions are settled and hold: by a value carried before
    it, or by the fixed params (`base`) for a key the new space does not search. A condition on a searched key
    left to the sampler is unknown here, so the key that depends on it is left to the sampler too."""
    from dsm5lab.hpo.space import active

    kept: dict[str, Any] = {}
    for key, dist in space.items():
        if key not in params_of_trial or not contains(dist, params_of_trial[key]):
            continue
        if any(c in space and c not in kept for c in dist.when or {}) or not active(dist, kept, base):
            continue
        kept[key] = params_of_trial[key]
    return kept, sorted(set(params_of_trial) - set(kept))


def earlier_best(params: Params, url: str, own_name: str) -> list:
    """hpo.warm_start's best trials, checked before the new study exists (an error must leave no empty study)."""
    import optuna

    ws = params.hpo.warm_start
    if ws.study is None:
        return []
    source_url = st.resolve(ws.storage) if ws.storage else url
    storage = st.open_storage(source_url, params.hpo.stale)
    try:
        source = optuna.load_study(study_name=ws.study, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise UserError(f"hpo.warm_start.study: no study {ws.study!r} in {st.redact(source_url)} "
                        f"(studies there: {names})") from None
    if ws.study == own_name:
        raise UserError(f"hpo.warm_start.study: {ws.study!r} is the study itself; name an earlier study")
    picked = best_trials(source, ws.n_best)
    if not picked:
        raise UserError(f"hpo.warm_start.study: {ws.study!r} has no complete trial to start from")
    return picked


def enqueue(study, picked: list, params: Params, echo: Callable[[str], None]) -> int:
    """Enqueue the earlier trials into a new `study` (once: a resumed run finds them done); returns how many."""
    ws = params.hpo.warm_start
    if not picked or study.user_attrs.get(WARM_ATTR) is not None:
        return 0
    from dsm5lab.hpo.space import base_values

    base = base_values(params)
    enqueued, seen = [], []
    for t in picked:
        values, dropped = fitted(t.params, params.hpo.search_space, base)
        if not values or values in seen:  # nothing the new space takes, or the same as a better trial's
            continue
        seen.append(values)
        # skip_if_exists: a run stopped part-way through (before WARM_ATTR is set) must not enqueue twice
        study.enqueue_trial(values, user_attrs={"warm_start": {"study": ws.study, "trial": t.number,
                                                                "values": list(t.values)}}, skip_if_exists=True)
        enqueued.append(t.number)
        left = f"; not carried over: {', '.join(dropped)}" if dropped else ""
        echo(f"hpo: warm start: enqueued trial {t.number} of {ws.study} (value "
             f"{', '.join(f'{v:.4f}' for v in t.values)}){left}")
    study.set_user_attr(WARM_ATTR, {"study": ws.study, "trials": enqueued})
    return len(enqueued)
