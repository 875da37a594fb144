"""The bounded pool of a running HPO study (pool.study, policy.plan_study_pool, hpo.study.bound_pool).

Unit tests build a study folder with the real CheckpointManager around a small module; the study test
runs a real tiny HPO study with a pool budget and checks the pool after every trial.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsm5lab.errors import UserError
from dsm5lab.pool.policy import plan_study_pool
from dsm5lab.pool.registry import STATE_FILE, WEIGHT_FILES
from dsm5lab.pool.study import enforce
from dsm5lab.training.checkpoint import CheckpointManager

METRIC = "val/macro_f1"


def rec(run: str, step: int, score, size: int = 300, weights: int = 100) -> dict:
    return {"run": run, "step": step, "score": score, "metric": METRIC, "path": f"step-{step:08d}",
            "bytes": size, "weights_bytes": weights}


def actions(plan) -> dict[tuple[str, int], tuple[str, str]]:
    return {(d.record["run"], d.record["step"]): (d.action, d.reason) for d in plan.decisions}


def test_a_finished_trial_keeps_only_its_best_and_only_inside_the_best_k():
    records = [rec("trial-0000", 1, 0.5), rec("trial-0000", 2, 0.7),  # finished: best 0.7 (rank 1)
               rec("trial-0001", 1, 0.9),  # running: best so far 0.9 (rank 0)
               rec("trial-0002", 1, 0.6), rec("trial-0002", 2, None),  # finished: best 0.6 (rank 2)
               rec("trial-0003/fold-0", 1, 0.99),  # a finished fold: scored on its own fold
               rec("trial-0004", 1, None)]  # finished, diverged
    plan = plan_study_pool(records, {"trial-0000", "trial-0002", "trial-0003", "trial-0004"}, keep_best_k=2)
    assert actions(plan) == {
        ("trial-0000", 1): ("delete", "not_run_best"), ("trial-0000", 2): ("keep", "candidate"),
        ("trial-0001", 1): ("leave", "running"),
        ("trial-0002", 1): ("delete", "outside_best_k"), ("trial-0002", 2): ("delete", "not_run_best"),
        ("trial-0003/fold-0", 1): ("delete", "fold"), ("trial-0004", 1): ("delete", "unscored")}
    assert plan.bytes_before == 7 * 300 and plan.bytes_after == 100 + 300  # kept stripped; running untouched
    assert plan.over_budget == 0


def test_the_budget_drops_the_lowest_ranked_never_the_best_nor_a_running_trial():
    records = [rec(f"trial-{i:04d}", 1, s) for i, s in enumerate([0.9, 0.8, 0.7, 0.6])] + [rec("trial-0009", 1, 0.1)]
    finished = {f"trial-{i:04d}" for i in range(4)}
    plan = plan_study_pool(records, finished, keep_best_k=4, max_bytes=300 + 2 * 100)  # running 300 + two bests
    got = actions(plan)
    assert [got[(f"trial-{i:04d}", 1)] for i in range(4)] == [
        ("keep", "candidate"), ("keep", "candidate"), ("delete", "budget"), ("delete", "budget")]
    assert got[("trial-0009", 1)] == ("leave", "running") and plan.bytes_after == 500 and plan.over_budget == 0
    # a budget below the best and the running trial: both stay, the excess is reported
    plan = plan_study_pool(records, finished, keep_best_k=4, max_bytes=1)
    assert [d.action for d in plan.decisions] == ["keep", "delete", "delete", "delete", "leave"]
    assert plan.over_budget == 400 - 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 5), st.one_of(st.none(), st.floats(0, 1)), st.integers(1, 500)),
                min_size=1, max_size=20),
       st.sets(st.integers(0, 5)), st.integers(1, 4), st.sampled_from(["max", "min"]),
       st.one_of(st.none(), st.integers(0, 3000)))
def test_the_plan_never_touches_running_trials_nor_drops_the_best_and_meets_the_budget(items, finished_ids, k,
                                                                                       mode, budget):
    records = [rec(f"trial-{t:04d}", step, score, size=size, weights=max(1, size // 3))
               for step, (t, score, size) in enumerate(items, 1)]
    finished = {f"trial-{t:04d}" for t in finished_ids}
    plan = plan_study_pool(records, finished, k, mode, max_bytes=budget)
    sign = 1 if mode == "max" else -1
    scored = [r for r in records if r["score"] is not None]
    best = max(scored, key=lambda r: (sign * r["score"], r["step"], r["run"])) if scored else None
    kept_finished = set()
    for d in plan.decisions:
        if d.record["run"] not in finished:
            assert d.action == "leave"
        if best is not None and d.record is best:
            assert d.action != "delete"
        if d.action == "keep":
            assert d.record["run"] not in kept_finished  # at most one checkpoint per finished trial
            kept_finished.add(d.record["run"])
    assert len(kept_finished) <= k
    if budget is not None:
        protected = sum(d.record["bytes"] for d in plan.decisions if d.action == "leave") + sum(
            d.record["weights_bytes"] for d in plan.decisions if d.action == "keep" and d.rank == 0)
        assert plan.bytes_after <= max(budget, protected)


# --- on disk ------------------------------------------------------------------------------------------

def fill(study: Path, runs: dict[str, list]) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(40, 40)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 40)).sum().backward()
    optimizer.step()  # so the saved optimizer state has its two moments, as in a real run
    for run, scores in runs.items():
        manager = CheckpointManager(study / run, keep_last_n=len(scores), keep_best_k=1, run=Path(run).name)
        for step, score in enumerate(scores, 1):
            manager.save(model, step=step, epoch=step - 1, score=score, metric=METRIC, optimizer=optimizer,
                         state={}, config={})


def steps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("step-*"))


def test_enforce_strips_the_kept_best_deletes_the_rest_and_leaves_a_running_trial_alone(tmp_path):
    study = tmp_path / "hpo" / "dsm5lab-test"
    fill(study, {"trial-0000": [0.5, 0.8, 0.6], "trial-0001": [0.4], "trial-0002": [0.3, 0.95]})
    # trial 2 is running: mid-save temp folder and all; its last checkpoint is its resume point
    (study / "trial-0002" / ".step-00000003.tmp-x").mkdir()
    running_files = sorted(p.relative_to(study).as_posix() for p in (study / "trial-0002").rglob("*"))
    done = enforce(study, {"trial-0000", "trial-0001"}, keep_best_k=2, mode="max", metric=METRIC)
    assert steps(study / "trial-0000") == ["step-00000002"]  # its best, rank 1 behind the running trial's
    assert not (study / "trial-0000/step-00000002" / STATE_FILE).exists()
    assert all((study / "trial-0000/step-00000002" / f).is_file() for f in WEIGHT_FILES)
    assert steps(study / "trial-0001") == []  # rank 2 of best-2
    assert sorted(p.relative_to(study).as_posix() for p in (study / "trial-0002").rglob("*")) == running_files
    registry = [json.loads(x) for x in (study / "trial-0000/registry.jsonl").read_text().splitlines()]
    assert [(r["path"], r["weights_only"]) for r in registry] == [("step-00000002", True)]
    on_disk = sum(f.stat().st_size for f in study.rglob("step-*/*"))
    assert done["after"] == on_disk and done["deleted"] == 3 and done["kept"] == 1 and done["before"] > on_disk
    # a second pass is a no-op
    again = enforce(study, {"trial-0000", "trial-0001"}, keep_best_k=2, mode="max", metric=METRIC)
    assert again["deleted"] == 0 and again["stripped_bytes"] == 0 and again["after"] == on_disk


def test_bound_pool_reads_running_trials_from_the_study_storage(tmp_path):
    import optuna

    from conftest import default_params
    from dsm5lab.config import validate
    from dsm5lab.hpo.study import bound_pool
    from dsm5lab.hpo.trial import StudyContext

    raw = default_params()
    raw["retention"]["max_pool_gb"] = 1e-9  # below anything: only protected checkpoints survive
    params = validate(raw)
    study = optuna.create_study(direction="maximize")
    for value in (0.5, 0.7):
        t = study.ask()
        study.tell(t, value)
    study.ask()  # trial 2: RUNNING (a live worker, or one killed before the stale sweep)
    folder = tmp_path / params.train.checkpoint.dir / "hpo" / "s"
    fill(folder, {"trial-0000": [0.5], "trial-0001": [0.7], "trial-0002": [0.2, 0.3]})
    messages: list[str] = []
    done = bound_pool(study, StudyContext(params, tmp_path, "s", None), messages.append)
    assert steps(folder / "trial-0000") == [] and steps(folder / "trial-0001") == ["step-00000001"]  # the best
    assert steps(folder / "trial-0002") == ["step-00000001", "step-00000002"]  # running: untouched
    assert (folder / "trial-0002/step-00000002" / STATE_FILE).is_file()
    assert done["over_budget"] > 0 and any("over retention.max_pool_gb" in m for m in messages)


# --- a real study --------------------------------------------------------------------------------------

def test_a_study_pool_stays_within_its_budget_after_every_trial_and_keeps_the_best(tmp_path, monkeypatch):
    from conftest import run_in
    from dsm5lab.config import validate
    from dsm5lab.hpo import study as hpo_study
    from dsm5lab.training.checkpoint import estimate_checkpoint_bytes
    from dsm5lab.training.run import RunPaths, build_run
    from hpo_helpers import load_study, make_project

    root = make_project(tmp_path / "p", n_trials=4, trial_overrides={"train.epochs": 2})
    raw = yaml.safe_load((root / "params.yaml").read_text())
    params = validate(raw)
    scratch = build_run(params, RunPaths(prepared=root / "stages/prepare", checkpoints=tmp_path / "scratch"))
    weights = estimate_checkpoint_bytes(scratch.model, with_optimizer=False)
    shutil.rmtree(tmp_path / "scratch")
    budget = int(2.5 * weights)  # room for two finished trials' bests (weights only) and a little
    raw["retention"] = {**raw["retention"], "keep_best_k": 3, "max_pool_gb": budget / 1e9}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    sizes: list[tuple[int, int]] = []
    real = hpo_study.bound_pool

    def checked(study, ctx, echo):
        done = real(study, ctx, echo)
        folder = root / "checkpoints" / "hpo" / ctx.study_name
        sizes.append((sum(f.stat().st_size for f in folder.rglob("step-*/*")), done["over_budget"]))
        return done

    monkeypatch.setattr(hpo_study, "bound_pool", checked)
    run_in(root, "hpo", "run")
    assert len(sizes) == 5  # once before the first trial, then after each of the four
    assert all(size <= budget for size, _ in sizes) and all(over == 0 for _, over in sizes)
    study = load_study(root)
    folder = root / "checkpoints" / "hpo" / study.study_name
    kept = {p.parent.name: p for p in folder.glob("trial-*/step-*")}
    assert 1 <= len(kept) <= 2
    best = study.best_trial
    assert f"trial-{best.number:04d}" in kept  # the study's best is never deleted
    assert all(not (p / STATE_FILE).exists() for p in kept.values())  # finished: weights only

    # retention tracks them; the tracked checkpoints hold no optimizer state and predict loads them
    run_in(root, "retention")
    index = json.loads((root / "stages/retention/index.json").read_text())
    assert index[0]["run"].endswith(f"trial-{best.number:04d}")
    tracked = root / "stages/retention" / index[0]["path"]
    assert not (tracked / STATE_FILE).exists()
    from dsm5lab.predict import predict_texts

    out = list(predict_texts(tracked, [("a", "I can't sleep and I feel worthless.")], 8))
    assert len(out) == 1 and {"SLEEP_ISSUES", "WORTHLESSNESS"} <= set(out[0]["probabilities"])


def test_a_run_refuses_to_start_when_one_checkpoint_would_not_fit(tmp_path, monkeypatch, cli):
    from hpo_helpers import make_project

    root = make_project(tmp_path / "p")
    monkeypatch.chdir(root)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(UserError, match=r"0\.00 GB free at checkpoints/train, but one checkpoint of this model "
                                        r"takes about 0\.\d\d GB"):
        from dsm5lab.config import load_params
        from dsm5lab.training.run import RunPaths, build_run

        build_run(load_params(root / "params.yaml"), RunPaths(prepared=root / "stages/prepare",
                                                             checkpoints=Path("checkpoints/train")))
    result = cli("hpo", "run")  # the first trial fails before it trains: one line, no checkpoint
    assert result.exit_code == 2 and "but one checkpoint of this model takes about" in result.output
    assert not list((root / "checkpoints").rglob("step-*"))


# --- the simulation --------------------------------------------------------------------------------------

def test_the_simulation_bounds_the_pool_with_the_real_policies():
    from dsm5lab.pool.simulate import Setup, run, table

    s = Setup(trials=40, epochs=4, workers=2, keep_best_k=3, budget_gb=1.0)
    unbounded, bounded, budget = table(s)
    assert unbounded["written_bytes"] == bounded["written_bytes"] == budget["written_bytes"]  # the same trials
    # unbounded: every trial keeps best + last in full until retention runs after the study
    assert unbounded["end_checkpoints"] > 40 and unbounded["end_bytes"] == unbounded["peak_bytes"]
    assert bounded["end_checkpoints"] == 3 and bounded["end_bytes"] == 3 * s.weights_bytes
    assert budget["end_bytes"] <= 1e9 and budget["end_checkpoints"] == 2
    # the peak: the running trials' best, last and the checkpoint being written, plus the finished bests
    assert bounded["peak_bytes"] <= s.workers * 3 * s.full_bytes + 3 * s.weights_bytes < unbounded["peak_bytes"] / 5
    with pytest.raises(ValueError, match="policy"):
        run(s, "lru")


def test_cli_simulate_writes_its_table_and_refuses_bad_options(tmp_path, cli):
    out = tmp_path / "sim.json"
    result = cli("retention", "simulate", "--trials", "10", "--workers", "1,2", "--out", out)
    assert result.exit_code == 0 and "peak GB" in result.output
    rows = json.loads(out.read_text())["rows"]
    assert [(r["workers"], r["policy"]) for r in rows] == [(w, p) for w in (1, 2) for p in ("unbounded", "bounded",
                                                                                          "budget")]
    for args, needle in ((["--model", "gpt-9"], "--model: 'gpt-9' is not one of bert-base"),
                         (["--workers", "0"], "--workers: '0' is not a comma-separated list")):
        result = cli("retention", "simulate", *args)
        assert result.exit_code == 2 and needle in result.output


def test_the_committed_simulation_table_is_what_the_simulation_gives_today():
    """README's table comes from reports/bench/pool_simulation.json: it must not go stale."""
    from conftest import ROOT
    from dsm5lab.pool.simulate import BASE_PARAMS, Setup, table

    committed = json.loads((ROOT / "reports/bench/pool_simulation.json").read_text())
    rows = []
    for w in sorted({r["workers"] for r in committed["rows"]}):
        s = Setup(params=BASE_PARAMS[committed["model"]], trials=committed["trials"], epochs=committed["epochs"],
                  workers=w, prune_share=committed["prune_share"], keep_best_k=committed["keep_best_k"],
                  budget_gb=next(r["budget_gb"] for r in committed["rows"] if r["budget_gb"] is not None),
                  seed=committed["seed"])
        rows += [{"workers": w, **r} for r in table(s)]
    assert rows == committed["rows"]
    readme = (ROOT / "README.md").read_text()
    for r in committed["rows"]:
        assert f"| {r['workers']} | {r['policy']}" in readme and f"| {r['peak_bytes'] / 1e9:.1f} |" in readme


def test_a_failed_pool_pass_warns_and_the_study_goes_on(tmp_path, monkeypatch):
    """A pass that loses a race with a live trial (a folder vanishing mid-read) must not end the study."""
    import optuna

    from conftest import default_params
    from dsm5lab.config import validate
    from dsm5lab.hpo import study as hpo_study
    from dsm5lab.hpo.trial import StudyContext
    from dsm5lab.pool import study as pool_study

    def vanished(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "trial-0003/step-00000009")

    monkeypatch.setattr(pool_study, "enforce", vanished)
    messages: list[str] = []
    done = hpo_study.bound_pool(optuna.create_study(), StudyContext(validate(default_params()), tmp_path, "s", None),
                                messages.append)
    assert done["deleted"] == 0 and len(messages) == 1 and "the pool pass failed" in messages[0]


def test_the_pass_reads_only_trial_folders_and_measures_old_records(tmp_path):
    from dsm5lab.pool.study import trial_dirs

    study = tmp_path / "s"
    fill(study, {"trial-0000": [0.5], "trial-0001/fold-0": [0.4]})
    (study / "trial-0000" / ".step-00000002.tmp-abc").mkdir()  # a live save: never walked into
    (study / "trial-0000" / ".step-00000002.tmp-abc" / "registry.jsonl").write_text("")
    assert trial_dirs(study) == ["trial-0000", "trial-0001/fold-0"]
    # a registry written before weights_bytes existed: measured from disk, not budgeted at full size
    reg = study / "trial-0000" / "registry.jsonl"
    rows = [json.loads(x) for x in reg.read_text().splitlines()]
    want = rows[0].pop("weights_bytes")
    reg.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from dsm5lab.pool.registry import Registry

    assert Registry(study / "trial-0000", read_only=True).records[0]["weights_bytes"] == want


def test_resuming_from_a_stripped_checkpoint_is_one_line(tmp_path):
    from dsm5lab.training.checkpoint import peek_state

    study = tmp_path / "s"
    fill(study, {"trial-0000": [0.5]})
    ckpt = study / "trial-0000" / "step-00000001"
    (ckpt / STATE_FILE).unlink()
    with pytest.raises(UserError, match="holds weights only .* retention.keep_last_n >= 1"):
        peek_state(ckpt)
