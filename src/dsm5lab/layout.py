"""Where everything lives in a dsm5lab project, relative to its root: the one place that names stage folders.

dvc.yaml declares these same paths as stage outs, metrics and plots; a test checks that the two agree.
"""

from __future__ import annotations

from pathlib import Path

# prepare
PREPARED = Path("stages/prepare")
PREPARE_METRICS = Path("metrics/prepare.json")
PREPARE_REPORTS = Path("reports/prepare")
PREPARE_STATS = PREPARE_REPORTS / "stats.json"  # every dataset count; metrics/prepare.json holds the headline few

# study: what HPO trials can see (the hpo stage depends on it instead of the model/train params)
STUDY_DEFINITION = Path("stages/study/definition.json")

# hpo
HPO_STAGE = Path("stages/hpo")
HPO_BEST = HPO_STAGE / "best_params.yaml"
HPO_STORAGE_DIR = HPO_STAGE / "storage"  # persisted across re-runs, so a re-run resumes the study
HPO_STORAGE_INFO = HPO_STORAGE_DIR / "storage.json"
HPO_DEFAULT_STORAGE = f"sqlite:///{(HPO_STORAGE_DIR / 'study.db').as_posix()}"
HPO_REPORTS = Path("reports/hpo")
HPO_METRICS = Path("metrics/hpo.json")
HPO_PRUNING_BENCH = Path("reports/bench/hpo_pruning.json")

# train
TRAINED_MODEL = Path("stages/train/model")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_LIVE = Path("reports/train/live")

# evaluate
EVALUATED_MODEL = Path("stages/evaluate/model")
EVALUATE_REPORTS = Path("reports/evaluate")
EVALUATE_METRICS = Path("metrics/evaluate.json")
EVALUATE_PREDICTIONS = EVALUATE_REPORTS / "predictions"  # per-post test decisions, committed for the paired gate

# spread (seeds and cross-validation of the final config)
SPREAD_REPORTS = Path("reports/spread")
SPREAD_METRICS = Path("metrics/spread.json")

# retention
RETAINED = Path("stages/retention")
RETENTION_METRICS = Path("metrics/retention.json")
RETENTION_MANIFEST = Path("reports/retention/manifest.json")

# the checkpoint pool (params train.checkpoint.dir, scratch outside DVC): one folder per run
TRAIN_RUN = "train"  # the train stage's run
HPO_POOL_DIR = "hpo"  # trials at hpo/<study>/trial-NNNN[/fold-k]


def trial_run(study: str, number: int) -> str:
    """A trial's run folder inside the pool."""
    return f"{HPO_POOL_DIR}/{study}/trial-{number:04d}"
