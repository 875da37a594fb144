"""`dsm5lab gate calibrate`: the seed spread of every gated metric, written into gate.yaml beside its tolerance.

On another machine, GPU or torch build, float noise sends training down another path: the metrics
move like a new training seed. So the spread over training seeds (the prepared data fixed) is what
a run that is not bit-identical to the baseline may honestly differ by. Each seed re-runs the train
and evaluate stages in a scratch copy of the project; nothing of the project is touched but gate.yaml.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

from dsm5lab import atomic, layout
from dsm5lab.config import Params
from dsm5lab.errors import UserError
from dsm5lab.gate import GateFile, load_gate, lookup, system_key
from dsm5lab.progress import progress

K_STD = 3.0  # seed_tolerance = K_STD x the sample standard deviation over seeds ...
FLOOR = 0.002  # ... and never below the bit-identical tolerance floor
STAGE_METRICS = {layout.TRAIN_METRICS.as_posix(), layout.EVALUATE_METRICS.as_posix()}
HEADER = """\
# Tolerances for `dsm5lab gate`, the CI regression gate. Each key is a dotted path into a metrics
# file; the gate fails when the workspace value moved the bad way by MORE than the tolerance
# (absolute) against the same file committed at --rev (default HEAD).
#
# - tolerance: for a run whose numerics match `calibration.numerics` (CPU kernels pinned by
#   numerics.cpu_isa, same torch and thread count, no GPU). Such runs are bit-identical on any
#   x86-64 machine, so this only absorbs the 6-decimal rounding: any real change shows up.
# - seed_tolerance: for every other run (GPU, numerics.cpu_isa: native, another torch or thread
#   count). It is {k:g} x the standard deviation of the metric over the training seeds below
#   (prepared data fixed; floor {floor:g}), measured by `{command}`; seed_spread holds the values.
# - paired (optional): a metrics/evaluate.json key its per-post test decisions determine that moved
#   beyond its tolerance fails only if a paired bootstrap against the baseline's decisions (committed
#   in reports/evaluate/predictions) finds the drop significant (one-sided p < alpha); else `n.s.`.
#
# Written by `dsm5lab gate calibrate`; re-run it after a change to the model, data or defaults.
"""


def _stage_files(gate: GateFile) -> None:
    other = sorted(set(gate.metrics) - STAGE_METRICS)
    if other:
        raise UserError(f"gate calibrate: it re-runs train and evaluate only, so it cannot measure {', '.join(other)} "
                        f"(gate files allowed: {', '.join(sorted(STAGE_METRICS))})")


def measure(params: Params, root: Path, gate: GateFile, seeds: list[int]) -> dict[tuple[str, str], list[float]]:
    """Each gated metric over training seeds: train + evaluate per seed in a scratch copy of the prepared data."""
    from dsm5lab.evaluation.spread import scratch_project

    values: dict[tuple[str, str], list[float]] = {(f, k): [] for f, keys in gate.metrics.items() for k in keys}
    with scratch_project(root, "calibrate") as scratch:  # the prepared data copied; DVC_ROOT set while it lives
        _run_seeds(params, scratch, seeds, values)
    return values


def _run_seeds(params: Params, scratch: Path, seeds: list[int], values: dict) -> None:
    from dsm5lab.evaluation import stage as evaluate
    from dsm5lab.evaluation.spread import scratch_params
    from dsm5lab.training import stage as train

    for seed in progress(seeds, desc="gate calibrate: seeds"):
        p = scratch_params(params, scratch, f"seed={seed}")  # checkpoints and MLflow inside the scratch copy
        train.run(p, scratch)
        evaluate.run(p, scratch)
        for (file, key), got in values.items():
            got.append(float(lookup(json.loads((scratch / file).read_text(encoding="utf-8")), key)))


def spread(values: list[float]) -> dict:
    return {"values": [round(v, 6) for v in values], "mean": round(statistics.fmean(values), 6),
            "std": round(statistics.stdev(values), 6), "range": round(max(values) - min(values), 6)}


def calibrate(params: Params, root: Path, gate_file: Path, n_seeds: int) -> dict:
    """Measure, then rewrite gate_file with each metric's seed_tolerance and seed_spread; returns the new file."""
    if n_seeds < 2:
        raise UserError(f"--seeds: a spread needs at least 2 seeds (got {n_seeds}); 5 or more is better")
    root = Path(root)
    path = gate_file if gate_file.is_absolute() else root / gate_file
    gate = load_gate(path)
    _stage_files(gate)
    seeds = [params.seed + k for k in range(n_seeds)]
    values = measure(params, root, gate, seeds)
    command = f"dsm5lab gate calibrate --seeds {n_seeds}"
    out = {"calibration": {"command": command, "seeds": seeds,
                           "numerics": system_key(params.numerics.cpu_isa, params.train.threads)},
           **({"paired": gate.paired.model_dump()} if gate.paired is not None else {}), "metrics": {}}
    for file, keys in gate.metrics.items():
        out["metrics"][file] = {}
        for key, tol in keys.items():
            s = spread(values[(file, key)])
            out["metrics"][file][key] = {"direction": tol.direction, "tolerance": tol.tolerance,
                                         "seed_tolerance": round(max(FLOOR, K_STD * s["std"]), 4), "seed_spread": s}
    GateFile.model_validate(out)  # what is written must load
    text = HEADER.format(k=K_STD, floor=FLOOR, command=command) + yaml.safe_dump(out, sort_keys=False, width=110)
    atomic.write_text(path, text)
    return out
