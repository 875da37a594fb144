"""The `train` stage: params in, model + metrics + curves out, at fixed paths under the project root."""

from __future__ import annotations

import shutil
from pathlib import Path

from dsm5lab import atomic, layout, stopping
from dsm5lab.config import Params


def summary(result, epochs: int) -> dict:
    """metrics/train.json: the best validation numbers and how the run went (epochs counted from 1).

    Only deterministic values: the file is a DVC metric compared across commits, so wall-clock
    throughput goes to the run's event log and stdout instead. `stopped_early` means that early
    stopping saved epochs: patience running out at the last of `epochs` is not an early stop.
    """
    best = {k.split("/", 1)[1]: round(v, 6) for k, v in result.best.items() if k.startswith("val/")}
    out = {
        "val": best,
        "best_step": result.best.get("step"),
        "best_epoch": (result.best.get("epoch", -1) + 1) if result.best else None,
        "epochs_run": result.epochs_run,
        "steps": result.steps,
        "stopped_early": bool(result.stopped_early and result.epochs_run < epochs),
        "n_parameters": result.n_parameters,
    }
    if result.chance_macro_f1 is not None:
        out["val_chance_macro_f1"] = round(result.chance_macro_f1, 6)
    out["warnings"] = len(warnings(out))
    return out


def warnings(report: dict) -> list[str]:
    """One line per reason not to trust the model: its best validation macro-F1 at or below chance."""
    f1, chance = report["val"].get("macro_f1"), report.get("val_chance_macro_f1")
    if f1 is not None and chance is not None and f1 <= chance:
        return [f"the best validation macro_f1 {f1:.4f} is at or below chance ({chance:.4f}, marking every "
                "criterion present, the best label-blind guess): the model learned nothing usable; check the learning rate, the "
                "epochs and the data before reading its test numbers"]
    return []


def run(params: Params, root: Path = Path("."), resume: bool = False, run_name: str = layout.TRAIN_RUN):
    """Train from params alone; write the model, metrics/train.json and the dvclive curves.

    Holds the project's `train` lock: a second train on the same folders (a `dvc repro` after the first one's
    dvc was killed) stops with one line naming the first. HPO trials train through build_run/fit, not here,
    and so never take it."""
    from dsm5lab.lock import project_lock

    with project_lock(Path(root), "train", "dsm5lab train"):
        return _train(params, Path(root), resume, run_name)


def _train(params: Params, root: Path, resume: bool, run_name: str):
    from dsm5lab.tracking import MODEL_TAG, Tracker, TrackingSettings
    from dsm5lab.training.loop import export_best, fit
    from dsm5lab.training.run import RunPaths, build_run

    paths = RunPaths(prepared=root / layout.PREPARED, checkpoints=root / params.train.checkpoint.dir / run_name)
    model_out = root / layout.TRAINED_MODEL
    live = _working_live_dir(paths.checkpoints, root / layout.TRAIN_LIVE, resume)
    settings = TrackingSettings(
        mlflow_uri=params.tracking.mlflow_uri, experiment=params.tracking.experiment, run_name=run_name,
        live_dir=live, run_dir=paths.checkpoints, resume=resume,
    )
    with Tracker(settings) as tracker:
        run = build_run(params, paths, resume=resume)
        with stopping.deferred():  # a SIGTERM lets the current step finish (stopping.py)
            result = fit(run, tracker, label="train")
            stopping.check()  # one that came during the last validation: nothing is published either
        export_best(run, result, model_out)
        report = summary(result, params.train.epochs)
        tracker.log_summary({f"best/{k}": v for k, v in report["val"].items()})
        tracker.event("throughput", **result.throughput)
        if model_out.exists():  # evaluate finds this run by the weights it scores, and logs its results here
            tracker.set_tags({MODEL_TAG: atomic.sha256_file(model_out / "model.safetensors")})
            tracker.log_artifacts(model_out, "model")
    with atomic.staged_dir(root / layout.TRAIN_LIVE) as tmp:  # only a finished run replaces the curves
        shutil.copytree(live, tmp, dirs_exist_ok=True)
    atomic.write_json(root / layout.TRAIN_METRICS, report)
    return result, report


def _working_live_dir(run_dir: Path, published: Path, resume: bool) -> Path:
    """Where dvclive writes while the run goes: <run's checkpoint folder>/live, published to reports/train/live
    only when the run finished. A failed or interrupted run leaves the previous curves as they were (as it does
    the model and metrics/train.json), and its own stay beside its checkpoints for `--resume` to continue."""
    live = run_dir / "live"
    if not resume:
        shutil.rmtree(live, ignore_errors=True)
    elif not live.is_dir() and published.is_dir():  # a run interrupted before the folder moved here
        shutil.copytree(published, live)
    return live
