"""The `hpo` stage and `hpo worker`: create or resume a study, run trials until it has n_trials, report.

The study name carries a fingerprint of what defines its objective (hpo.space.fingerprint), so
re-running the stage with the same data and params resumes the same study, and a changed space
or base config starts a new one in the same storage. The study stores the params it was created
with; a worker on another machine runs trials from those, not from its own params.yaml.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

from dsm5lab import layout
from dsm5lab.concurrency import sharing
from dsm5lab.config import Params, validate
from dsm5lab.config.hpo import sqlite_workers_message
from dsm5lab.errors import UserError
from dsm5lab.hpo import storage as st
from dsm5lab.hpo.space import InvalidTrialParams, data_hash, study_identity
from dsm5lab.hpo.trial import StudyContext, run_trial

PARAMS_ATTR, FP_ATTR, DATA_ATTR, PARENT_ATTR = "dsm5lab:params", "dsm5lab:fingerprint", "dsm5lab:data", "dsm5lab:mlflow_run"
# set for the workers `hpo run` starts: "<pid>:<start time>" of that process, whose death ends them
PARENT_ENV = "DSM5LAB_HPO_PARENT"
STOP_GRACE_S = 10.0  # a worker's SIGTERM fails its trial and ends its MLflow run; past this it is killed
# a worker whose `hpo run` died unwinds for at most this long: a journal lock the dead process held would
# keep it waiting 30 s (Optuna's grace period), and its trial is failed by the next run's pid sweep anyway
ORPHAN_GRACE_S = 5

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# hpo.sampler.type -> factory(optuna.samplers, sampler section, seed)
SAMPLERS = {
    # conditional params are expected; TPE (optuna >= 4.9) no longer warns when it samples them independently
    "tpe": lambda lib, s, seed: lib.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True),
    "random": lambda lib, s, seed: lib.RandomSampler(seed=seed),
    # CMA-ES handles float/int; categorical params fall back to independent sampling
    "cmaes": lambda lib, s, seed: lib.CmaEsSampler(seed=seed, n_startup_trials=s.n_startup_trials,
                                                   warn_independent_sampling=False),
    "nsga2": lambda lib, s, seed: lib.NSGAIISampler(seed=seed),
}


def make_sampler(params: Params, seed: int):
    import optuna

    return SAMPLERS[params.hpo.sampler.type](optuna.samplers, params.hpo.sampler, seed)


def _hyperband(lib, p, params: Params):
    # resource = reports: one per epoch (or one per fold in cross-validation)
    units = (params.hpo.cv.folds or params.prepare.n_folds) if params.hpo.cv.enabled else _trial_epochs(params)
    top = p.max_resource if p.max_resource is not None else max(units, p.min_resource)
    return lib.HyperbandPruner(min_resource=p.min_resource, max_resource=top, reduction_factor=p.reduction_factor,
                               bootstrap_count=p.bootstrap_count)


# hpo.pruner.type -> factory(optuna.pruners, pruner section, params) of the pruner under an optional PatientPruner
PRUNERS = {
    "median": lambda lib, p, params: lib.MedianPruner(n_startup_trials=p.n_startup_trials,
                                                      n_warmup_steps=p.n_warmup_steps),
    "hyperband": _hyperband,
    "none": lambda lib, p, params: None,
}


def make_pruner(params: Params):
    import optuna

    p = params.hpo.pruner
    inner = PRUNERS[p.type](optuna.pruners, p, params)
    if p.patience is not None:  # PatientPruner is marked experimental; its interface is one call here
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return optuna.pruners.PatientPruner(inner, patience=p.patience, min_delta=p.min_delta)
    return inner or optuna.pruners.NopPruner()


def _trial_epochs(params: Params) -> int:
    space = params.hpo.search_space.get("train.epochs")
    if space is not None:
        return int(space.high)
    return int(params.hpo.trial_overrides.get("train.epochs", params.train.epochs))


def _check_backbones(params: Params) -> None:
    """Every backbone a trial can draw must load offline here: one missing would stop the study mid-way."""
    from dsm5lab.models import catalog

    dist = params.hpo.search_space.get("model.backbone")
    names = dist.choices if dist is not None else [params.hpo.trial_overrides.get("model.backbone",
                                                                                  params.model.backbone)]
    missing = []
    for name in names:
        known = catalog.entries().get(str(name))
        if known is not None:
            where = catalog.availability(known)
            if not where.offline:
                missing.append(f"{name} ({where.where})")
        elif not Path(str(name)).is_dir() and not catalog.cached(str(name), "config.json"):
            missing.append(f"{name} (not a directory nor in the Hugging Face cache)")
    if missing:
        raise UserError(f"hpo.spaces.{params.hpo.space}: model.backbone choice(s) not available offline here: "
                        f"{', '.join(missing)}; fetch them or drop them from the choices (`dsm5lab models`)")


def _check_objectives(params: Params) -> None:
    from dsm5lab.training.inference import VAL_METRICS

    every = params.hpo.trial_overrides.get("train.eval_every_steps", params.train.eval_every_steps)
    if params.hpo.pruner.type != "none" and every and not params.hpo.cv.enabled:
        raise UserError("hpo.pruner: pruning compares trials report by report, one per epoch; set "
                        "train.eval_every_steps: 0 for the study (hpo.trial_overrides) or hpo.pruner.type: none")
    task_dist = params.hpo.search_space.get("train.task")
    tasks = task_dist.choices if task_dist is not None else [params.hpo.trial_overrides.get("train.task", params.train.task)]
    for o in params.hpo.objectives:
        for task in tasks:
            if o.metric.startswith("val/") and o.metric not in VAL_METRICS[task]:
                raise UserError(f"hpo.objectives: {o.metric} is not computed for task {task!r} "
                                f"(allowed: {', '.join(VAL_METRICS[task])}, model/n_parameters, train/seconds)")


def storage_url(params: Params, root: Path) -> str:
    """hpo.storage with a relative SQLite or journal path made absolute under root."""
    url = st.resolve(params.hpo.storage)
    for prefix in ("sqlite:///", st.JOURNAL):
        rest = url[len(prefix):] if url.startswith(prefix) else None
        if rest and not rest.startswith("/") and not rest.startswith(":memory:"):
            return f"{prefix}{(Path(root) / rest).resolve()}"
    return url


def bound_pool(study, ctx: StudyContext, echo: Echo = _quiet) -> dict:
    """Shrink the study's checkpoint folder to what can still enter the best K (pool.study), within
    retention.max_pool_gb; say so when the budget cannot be met without the best or a running trial."""
    from dsm5lab.pool.policy import mode_for
    from dsm5lab.pool.study import enforce

    p, over = ctx.params, ctx.params.hpo.trial_overrides
    pool = over.get("train.checkpoint.dir", p.train.checkpoint.dir)
    metric = over.get("train.early_stopping.metric", p.train.early_stopping.metric)
    finished = {Path(layout.trial_run(ctx.study_name, t.number)).name
                for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    budget = p.retention.max_pool_gb
    try:
        done = enforce(ctx.root / pool / layout.HPO_POOL_DIR / ctx.study_name, finished, p.retention.keep_best_k,
                       mode_for(metric), metric=metric, max_bytes=None if budget is None else int(budget * 1e9))
    except (OSError, UserError) as exc:  # a pass that loses a race with a live trial must not end the study
        echo(f"hpo: warning: the pool pass failed ({exc}); the next trial's pass tries again")
        return {"before": 0, "after": 0, "deleted": 0, "stripped_bytes": 0, "kept": 0, "over_budget": 0}
    if done["deleted"] or done["stripped_bytes"]:
        echo(f"hpo: pool {done['before'] / 1e6:.1f} MB -> {done['after'] / 1e6:.1f} MB ({done['deleted']} "
             f"checkpoint(s) deleted, {done['kept']} best(s) kept as weights only)")
    if done["over_budget"]:
        echo(f"hpo: warning: the study's pool is {done['over_budget'] / 1e6:.1f} MB over retention.max_pool_gb="
             f"{budget:g}, held by the study's best and running trials")
    return done


def trial_line(trial, pruned_state) -> str:
    """`hpo: trial 3 PRUNED at report 1: value 0.4123 | train.learning_rate=0.0021, model.pooling=mean | 41.2 s`."""
    values = ", ".join(f"{v:.4f}" for v in trial.values) if trial.values else "none"
    step = max(trial.intermediate_values) if trial.intermediate_values else None
    extra = f" at report {step}" if trial.state == pruned_state and step is not None else ""
    if trial.state == pruned_state and not trial.values and step is not None:
        values = f"{trial.intermediate_values[step]:.4f} (last report)"
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    seconds = trial.duration.total_seconds() if trial.duration is not None else trial.user_attrs.get("seconds")
    return (f"hpo: trial {trial.number} {trial.state.name}{extra}: value {values} | {shown or 'no params'}"
            + (f" | {seconds:.1f} s" if seconds is not None else ""))


def optimize(study, ctx: StudyContext, echo: Echo = _quiet, orphaned: Callable[[], bool] = lambda: False) -> int:
    """Run trials in this process until the study has hpo.n_trials finished ones (or the timeout, or `orphaned()`
    turns true at a trial boundary); returns how many trials this process finished."""
    import optuna

    from dsm5lab.hpo.interrupt import TrialBoundaries
    from dsm5lab.training.loop import DivergedError

    hpo = ctx.params.hpo
    bound_pool(study, ctx, echo)  # trials an interrupted run or another worker finished
    if st.finished_count(study) >= hpo.n_trials:
        echo(f"hpo: study {ctx.study_name} already has {hpo.n_trials} finished trials")
        return 0
    ran = 0
    gate = TrialBoundaries()  # a stop in ask or before a tell would leave a trial RUNNING for good

    def after_trial(study, trial) -> None:
        nonlocal ran
        ran += 1
        echo(trial_line(trial, optuna.trial.TrialState.PRUNED))
        gate.open()  # the trial is told: a stop that waited acts here, one during the pool pass at once
        bound_pool(study, ctx, echo)
        if st.finished_count(study) >= hpo.n_trials or orphaned():
            study.stop()

    with gate:
        study.optimize(gate.objective(lambda trial: run_trial(trial, ctx)), n_trials=None, timeout=hpo.timeout_s,
                       callbacks=[after_trial, gate.close], catch=(DivergedError, InvalidTrialParams),
                       gc_after_trial=True)
    return ran


def _study(storage, name: str, params: Params, seed: int, create: bool):
    import optuna

    directions = [o.direction for o in params.hpo.objectives]
    kwargs = dict(storage=storage, study_name=name, sampler=make_sampler(params, seed), pruner=make_pruner(params))
    if create:
        return optuna.create_study(directions=directions, load_if_exists=True, **kwargs)
    try:
        return optuna.load_study(**kwargs)
    except KeyError:
        raise _no_study(storage, name) from None


def _no_study(storage, name: str) -> UserError:
    """The one-line error for a study name the storage does not hold, listing the ones it does."""
    import optuna

    names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
    return UserError(f"--study: no study {name!r} in this storage (studies there: {names})")


def run(params: Params, root: Path = Path("."), echo: Echo = _quiet, create_only: bool = False) -> dict:
    """The `hpo` stage: resume or create the study, run it with hpo.workers processes, write the outputs.
    `create_only`: create (or refresh) the study and enqueue its warm start, for `hpo worker`s elsewhere to run;
    no trial here, no output written."""
    from contextlib import nullcontext

    from dsm5lab.hpo import report
    from dsm5lab.lock import project_lock

    root = Path(root)
    if not params.hpo.enabled:
        if create_only:
            raise UserError("hpo.enabled: false: there is no study to create (--create-only)")
        return report.write_disabled(root)
    _check_objectives(params)
    _check_backbones(params)
    from dsm5lab.hpo import devices, warm

    plan = devices.plan(params.hpo, echo=echo)  # before anything here starts CUDA
    url = storage_url(params, root)
    name, fp, data = study_identity(params, root / layout.PREPARED)
    earlier = warm.earlier_best(params, url, name)
    # one `hpo run` per file-backed study: a second would fail the first's live trial as stale (SQLite) and write
    # the same outputs; a PostgreSQL study is meant for many processes (`hpo worker` joins a file-backed one)
    one = st.is_sqlite(url) or url.startswith(st.JOURNAL)
    with project_lock(root, f"hpo-{name}", f"dsm5lab hpo run (study {name})") if one else nullcontext():
        return _run_study(params, root, url, (name, fp, data), (plan, earlier), echo, create_only)


def _run_study(params: Params, root: Path, url: str, identity: tuple[str, str, str], start: tuple[list, list],
               echo: Echo, create_only: bool = False) -> dict:
    """`start`: CUDA_VISIBLE_DEVICES per local process (devices.plan), the earlier trials to run first (warm)."""
    from dsm5lab.hpo import devices, report, warm
    from dsm5lab.tracking import Tracker, TrackingSettings

    name, fp, data = identity
    plan, earlier = start
    storage = st.open_storage(url, params.hpo.stale)
    study = _study(storage, name, params, params.seed, create=True)
    # workers run from the study's stored params: refresh them so n_trials, timeouts and the pruner
    # of this run (outside the fingerprint) reach the workers too
    study.set_user_attr(PARAMS_ATTR, params.model_dump(mode="json"))
    study.set_user_attr(FP_ATTR, fp)
    study.set_user_attr(DATA_ATTR, data)
    # a resumed study must not replay the random proposals of its first run: seed by trials so far
    study.sampler = make_sampler(params, params.seed + len(study.get_trials(deepcopy=False)))
    swept = st.sweep_stale(study, params.hpo.stale.max_retry, single_worker=st.is_sqlite(url))
    if swept:
        echo(f"hpo: failed stale trial(s) {swept} left RUNNING by a dead worker")
    echo(f"hpo: study {name} in {st.redact(url)}")
    warm.enqueue(study, earlier, params, echo)
    if create_only:
        return {"study": name, "finished": st.finished_count(study), "n_trials": params.hpo.n_trials}
    if any(d is not None for d in plan):
        echo(f"hpo: {len(plan)} local process(es), {devices.ENV}: " + ", ".join(repr(d) for d in plan))
    devices.use(plan[0])
    run_dir = root / params.train.checkpoint.dir / layout.HPO_POOL_DIR / name
    settings = TrackingSettings(mlflow_uri=params.tracking.mlflow_uri, experiment=params.tracking.experiment,
                                run_name=f"hpo/{name}", live_dir=None, run_dir=run_dir, resume=True,
                                tags={"optuna.study": name})
    started = time.monotonic()
    with Tracker(settings) as tracker:
        if tracker.mlflow_run_id:
            study.set_user_attr(PARENT_ATTR, tracker.mlflow_run_id)
        ctx = StudyContext(params, root, name, tracker.mlflow_run_id)
        # the local processes share the cores: train.threads: auto gives each its share (dsm5lab.concurrency)
        with sharing(len(plan)):
            procs: list[subprocess.Popen] = []
            try:
                for device in plan[1:]:
                    procs.append(_spawn_worker(url, name, root, device))
                here = optimize(study, ctx, echo)
                codes = [p.wait() for p in procs]
            except BaseException:  # Ctrl-C, SIGTERM (cli.main) or a crash: no worker outlives this run
                _stop(procs)
                raise
        theirs = _ran_by(study, {p.pid for p in procs})
        echo(f"hpo: this run finished {here + theirs} trial(s): {here} in this process"
             + (f", {theirs} in its {len(procs)} worker process(es)" if procs else ""))
        if any(codes):
            raise UserError(f"hpo: {sum(1 for c in codes if c)} of {len(codes)} extra worker(s) failed "
                            f"(exit codes {codes}); see their output above")
        # reports name the storage as configured (relative paths stay relative: outputs do not depend on the clone)
        outcome = report.write_all(study, params, root, st.resolve(params.hpo.storage), time.monotonic() - started)
        tracker.log_summary({f"hpo/{k}": v for k, v in outcome.items() if isinstance(v, (int, float))})
        tracker.log_artifacts(root / report.REPORTS, "hpo")
    return outcome


def worker(url: str, name: str, root: Path = Path("."), echo: Echo = _quiet, device: str | None = None) -> int:
    """Join an existing study (another process or machine) and run trials until it has n_trials; returns how many
    trials this process finished. `device`: its CUDA_VISIBLE_DEVICES (`hpo worker --device`); None = as it is."""
    from dsm5lab.hpo import devices

    devices.use(device)
    root = Path(root)
    orphaned = _watch_parent()
    if orphaned():
        echo("hpo worker: the `hpo run` that started this worker is gone; stopping before any trial")
        return 0
    if st.is_sqlite(url):
        raise UserError(f"--storage: {sqlite_workers_message('several')}")
    probe, params = load_from_storage(url, name)
    if params is None:
        raise UserError(f"--study: {name!r} was not created by `dsm5lab hpo run` (no stored params)")
    from dsm5lab.numerics import pin

    pin(params.numerics.cpu_isa)  # the study's numerics, before this worker's first trial computes anything
    attrs = probe.user_attrs
    local = data_hash(root / layout.PREPARED)
    if local != attrs.get(DATA_ATTR):
        raise UserError(f"{root / layout.PREPARED}: differs from the data study {name} was created on; check out the "
                        "same commit and `dvc pull` / `dvc repro prepare` before joining")
    storage = st.open_storage(url, params.hpo.stale)
    # every worker needs its own sampler seed, or parallel workers propose the same random trials
    study = _study(storage, name, params, params.seed + os.getpid(), create=False)
    swept = st.sweep_stale(study, params.hpo.stale.max_retry, single_worker=False)
    if swept:
        echo(f"hpo: failed stale trial(s) {swept} left RUNNING by a dead worker")
    try:
        ran = optimize(study, StudyContext(params, root, name, attrs.get(PARENT_ATTR)), echo, orphaned)
    except KeyboardInterrupt:  # SIGHUP from the kernel as `hpo run` died (_watch_parent), or its SIGTERM (_stop)
        if orphaned():
            echo("hpo worker: the `hpo run` that started this worker is gone; stopping mid-trial")
        raise
    if orphaned():
        echo(f"hpo worker: the `hpo run` that started this worker is gone; stopped after {ran} trial(s)")
    return ran


def _watch_parent() -> Callable[[], bool]:
    """A worker `hpo run` started (PARENT_ENV) dies with it: on Linux the kernel sends it SIGHUP when that
    process dies (PR_SET_PDEATHSIG, so even a SIGKILLed `hpo run` leaves no worker), which unwinds like Ctrl-C
    within ORPHAN_GRACE_S; everywhere the returned check, true once it is gone, stops it at its next trial
    boundary. A worker started by hand watches nothing."""
    from dsm5lab.lock import process_alive

    try:
        pid, started = os.environ[PARENT_ENV].split(":")
        parent = (int(pid), float(started))
    except (KeyError, ValueError):
        return lambda: False
    died = []

    def on_parent_death(signum, frame) -> None:
        # the kernel signals once per thread of the dying parent as it hands the child on: act on the first
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(ORPHAN_GRACE_S)
        died.append(True)
        raise KeyboardInterrupt("the hpo run that started this worker died")

    if sys.platform.startswith("linux"):
        import ctypes

        signal.signal(signal.SIGHUP, on_parent_death)
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGHUP))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    return lambda: bool(died) or not process_alive(*parent)


def worker_env(environ: dict[str, str]) -> dict[str, str]:
    """A local worker's environment: OpenMP threads that sleep instead of spinning when they wait, unless the
    user chose. Measured (`dsm5lab bench --under-load`, 2 cores, a second job on both): 0.25x of the alone
    speed spinning, 0.66x passive; alone, passive costs 43%, so only processes that share cores get it."""
    return {**environ, "OMP_WAIT_POLICY": environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def _spawn_worker(url: str, name: str, root: Path, device: str | None) -> subprocess.Popen:
    from dsm5lab.hpo.devices import ENV
    from dsm5lab.lock import this_process

    me = this_process()
    cmd = [sys.executable, "-m", "dsm5lab.cli", "hpo", "worker", "--storage", url, "--study", name]
    env = {**worker_env(dict(os.environ)), PARENT_ENV: f"{me['pid']}:{me['create_time']!r}"}
    if device is not None:  # in its environment from the start, before its first import
        env[ENV] = device
    # a session (so a process group) of its own: a terminal's Ctrl-C reaches `hpo run` alone, which then stops
    # each worker with its DataLoader processes (_stop), instead of every process unwinding at once
    return subprocess.Popen(cmd, cwd=root, env=env, start_new_session=True)


def _stop(procs: list[subprocess.Popen], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM each worker's process group, SIGKILL the groups still there after `grace` seconds; reap all."""
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    if p.poll() is None:  # once reaped, its pid (the group's id) may name another process
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:  # no group of its own: the process alone
            p.send_signal(sig)


def _ran_by(study, pids: set[int]) -> int:
    """Finished trials that these local worker processes (started by this process) ran."""
    from dsm5lab.lock import this_process

    me = this_process()
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state.is_finished() and isinstance(tag := t.user_attrs.get(st.WORKER_ATTR), dict)
               and tag.get("host") == me["host"] and tag.get("pid") in pids
               and tag.get("started", 0) >= me["create_time"] - 1)  # not an earlier run's process with that pid


def load_from_storage(url: str, name: str):
    """A study and its stored params, for `hpo export` and reports."""
    import optuna

    from dsm5lab.config.hpo import StaleConfig

    storage = st.open_storage(url, StaleConfig(heartbeat_interval_s=60, grace_period_s=120, max_retry=0))
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise _no_study(storage, name) from None
    raw = study.user_attrs.get(PARAMS_ATTR)
    return study, (validate(stored_params(raw), source=f"study {name} params") if raw else None)


# keys added to the hpo section after studies were already stored (params of a study created by an older commit
# lack them), with the value that keeps such a study running as it was
ADDED_KEYS = {"hpo.devices": "auto", "hpo.warm_start": {"study": None, "storage": None, "n_best": 5},
              "hpo.pruner.max_resource": None, "hpo.pruner.bootstrap_count": 0}


def stored_params(raw: dict) -> dict:
    """A study's stored params with the keys added since it was stored filled in (ADDED_KEYS)."""
    import copy

    from dsm5lab import dotted

    raw = copy.deepcopy(raw)
    for key, value in ADDED_KEYS.items():
        try:
            dotted.get(raw, key)
        except KeyError:
            dotted.put(raw, key, copy.deepcopy(value))
    return raw
