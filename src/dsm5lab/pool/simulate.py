"""Disk use of an HPO study's checkpoint pool, simulated without training: the real policies on records.

Each trial saves one checkpoint per epoch (full: weights plus AdamW's two moments) and is pruned
at a random epoch with probability `prune_share`; scores are random. Workers run trials side by side,
epoch by epoch. Three policies are compared on the same trials:
- `unbounded`: what dsm5lab did before the bounded pool: each trial's own retention (best + last,
  full) and nothing else until the retention stage runs after the study;
- `bounded`: plus `plan_study_pool` after every trial (finished trials keep at most their best,
  as weights, while it can enter the best K);
- `budget`: plus `retention.max_pool_gb`.
The peak counts the moment a new checkpoint is on disk before the trial's own pruning runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dsm5lab.pool.policy import plan_retention, plan_study_pool

BASE_PARAMS = {"bert-base": 110_000_000, "roberta-base": 125_000_000, "deberta-v3-base": 184_000_000,
               "bert-large": 335_000_000, "minilm": 22_700_000}


@dataclass(frozen=True)
class Setup:
    params: int = BASE_PARAMS["bert-base"]
    trials: int = 100
    epochs: int = 4
    workers: int = 1
    prune_share: float = 0.5
    keep_best_k: int = 3  # retention.keep_best_k
    trial_keep_best_k: int = 1  # train.checkpoint.* inside each trial
    trial_keep_last_n: int = 1
    budget_gb: float | None = 3.0
    seed: int = 0

    @property
    def weights_bytes(self) -> int:
        return 4 * self.params  # fp32 safetensors (config and meta are a few KB)

    @property
    def full_bytes(self) -> int:
        return 3 * self.weights_bytes  # + exp_avg and exp_avg_sq per parameter


def _trials(s: Setup) -> list[list[float]]:
    rng = random.Random(s.seed)
    out = []
    for _ in range(s.trials):
        quality = rng.random()
        epochs = rng.randint(1, max(1, s.epochs - 1)) if rng.random() < s.prune_share else s.epochs
        out.append([round(quality * (0.6 + 0.4 * (e + 1) / s.epochs) + rng.gauss(0, 0.02), 6) for e in range(epochs)])
    return out


def run(s: Setup, policy: str) -> dict:
    """Peak and final pool bytes of one policy ('unbounded', 'bounded', 'budget') on the setup's trials."""
    if policy not in ("unbounded", "bounded", "budget"):
        raise ValueError(f"policy must be unbounded, bounded or budget, got {policy!r}")
    trials = _trials(s)
    max_bytes = int(s.budget_gb * 1e9) if policy == "budget" and s.budget_gb is not None else None
    pool: list[dict] = []
    finished: set[str] = set()
    running: dict[str, list[float]] = {}
    queue = list(enumerate(trials))
    peak = written = saves = 0
    step = 0

    def size() -> int:
        return sum(r["bytes"] for r in pool)

    while queue or running:
        while queue and len(running) < s.workers:
            n, scores = queue.pop(0)
            running[f"trial-{n:04d}"] = list(scores)
        for run_name in list(running):
            step += 1
            score = running[run_name].pop(0)
            pool.append({"run": run_name, "step": step, "score": score, "metric": "val/macro_f1",
                         "path": f"step-{step:08d}", "bytes": s.full_bytes, "weights_bytes": s.weights_bytes})
            written += s.full_bytes
            saves += 1
            peak = max(peak, size())
            mine = [r for r in pool if r["run"] == run_name]
            _, drop = plan_retention(mine, s.trial_keep_best_k, s.trial_keep_last_n)
            gone = {id(r) for r in drop}
            pool = [r for r in pool if id(r) not in gone]
            if not running[run_name]:
                del running[run_name]
                finished.add(run_name)
                if policy != "unbounded":
                    plan = plan_study_pool(pool, finished, s.keep_best_k, max_bytes=max_bytes)
                    kept = []
                    for d in plan.decisions:
                        if d.action == "keep":
                            kept.append({**d.record, "bytes": d.record["weights_bytes"], "weights_only": True})
                        elif d.action == "leave":
                            kept.append(d.record)
                    pool = kept
                peak = max(peak, size())
    return {"policy": policy, "peak_bytes": peak, "end_bytes": size(), "end_checkpoints": len(pool),
            "written_bytes": written, "checkpoints_written": saves,
            "budget_gb": s.budget_gb if policy == "budget" else None}


def table(s: Setup) -> list[dict]:
    return [run(s, p) for p in ("unbounded", "bounded", "budget")]
