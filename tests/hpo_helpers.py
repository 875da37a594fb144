"""A tiny HPO project for tests: the real params.yaml shrunk by TINY, with a fast study configuration."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT, default_params, run_in
from dsm5lab.config import apply_overrides
from test_train import TINY, sets


def tiny_params(**hpo) -> dict:
    raw = apply_overrides(default_params(), TINY + ["data.synthetic.n_posts=100", "train.log_every_steps=1000"])
    raw["hpo"] = {**copy.deepcopy(raw["hpo"]), **{
        "enabled": True,
        "n_trials": 3,
        "trial_overrides": {"train.epochs": 2},
        "sampler": {"type": "random", "n_startup_trials": 0},
        "pruner": {**raw["hpo"]["pruner"], "type": "none"},
        "spaces": {"default": {
            "train.learning_rate": {"type": "float", "low": 0.001, "high": 0.006, "log": True},
            "model.pooling": {"type": "categorical", "choices": ["attention", "mean"]},
        }},
        "space": "default",
    }, **hpo}
    return raw


def make_project(root: Path, **hpo) -> Path:
    """params.yaml (tiny, with the given hpo keys) plus stages/prepare under root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(**hpo), sort_keys=False))
    run_in(root, "prepare")
    return root


def dsm5lab(root: Path, *args: str, **kw) -> subprocess.Popen:
    """`dsm5lab ARGS` as a separate process in root (quiet, default MLflow store)."""
    env = {**os.environ, "CI": "true", "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "dsm5lab.cli", *args], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def load_study(root: Path, url: str | None = None):
    import optuna

    url = url or f"sqlite:///{root / 'stages/hpo/storage/study.db'}"
    names = optuna.study.get_all_study_names(storage=url)
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=url)


__all__ = ["ROOT", "TINY", "sets", "tiny_params", "make_project", "dsm5lab", "load_study"]
