"""The pipeline as users drive it: `dvc repro`, `dvc status`, `dvc exp run -S`, `dvc exp show` in a scratch clone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import browser
from conftest import ROOT
from dsm5lab.concurrency import cores

pytestmark = pytest.mark.slow


def sh(*args: str, cwd: Path, env: dict) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def dicts(node):
    """Every mapping inside a JSON document (as `dvc exp show --json` nests them), depth first."""
    if isinstance(node, dict):
        yield node
        children = node.values()
    else:
        children = node if isinstance(node, list) else []
    for child in children:
        yield from dicts(child)


def find_metric(node, path: str, key: tuple[str, ...]) -> list:
    """Every value at `key` inside any metrics entry for `path` in `dvc exp show --json` output."""
    found = []
    for d in dicts(node):
        entry = d.get(path)
        if isinstance(entry, dict) and isinstance(entry.get("data"), dict):
            value = entry["data"]
            for k in key:
                value = value.get(k, {}) if isinstance(value, dict) else {}
            found.append(value)
    return found


def exp_params(node, section: str, key: str) -> dict[str, object]:
    """Experiment name -> params.yaml value of section.key, for every named experiment in `dvc exp show --json`."""
    found: dict[str, object] = {}
    for d in dicts(node):
        params = (d.get("data") or {}).get("params", {}).get("params.yaml", {}).get("data", {})
        if d.get("name") and section in params:
            found[d["name"]] = params[section].get(key)
    return found


@pytest.fixture
def clone(tmp_path):
    """The working tree (tracked and untracked-but-not-ignored files) committed into a fresh git repo."""
    repo = tmp_path / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "DVC_NO_ANALYTICS": "1", "CI": "true",
    }
    sh("git", "init", "-q", "-b", "main", cwd=repo, env=env)
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-q", "-m", "snapshot", cwd=repo, env=env)
    return repo, env


def check_retention(repo: Path, env: dict, study: str) -> None:
    """After `dvc repro`: train + HPO trials left several checkpoints; retention kept the best K, tracked."""
    from dsm5lab.models.saved import load_model

    manifest = json.loads((repo / "reports/retention/manifest.json").read_text())
    k = manifest["policy"]["keep_best_k"]
    everything = manifest["kept"] + manifest["deleted"]
    runs = {e["run"] for e in everything}
    assert "train" in runs and any(r.startswith(f"hpo/{study}/trial-") for r in runs), runs
    assert len(everything) > k and manifest["deleted"]
    sign = -1 if manifest["policy"]["mode"] == "max" else 1
    ranked = sorted((e for e in everything if e["score"] is not None), key=lambda e: sign * e["score"])
    index = json.loads((repo / "stages/retention/index.json").read_text())
    assert [(e["run"], e["step"]) for e in index] == [(e["run"], e["step"]) for e in ranked[:k]]
    pool = {(p.parent.relative_to(repo / "checkpoints").as_posix(), p.name)
            for p in (repo / "checkpoints").rglob("step-*")}
    assert pool == {(e["run"], f"step-{e['step']:08d}") for e in manifest["kept"]}
    metrics = json.loads((repo / "metrics/retention.json").read_text())
    # of every checkpoint byte the runs wrote, at least 80% is gone from the pool, the tracked set and the cache
    # (the stage's own before/after is near zero here: the study's bounded pool freed the bulk while it ran, and
    # with DVC's default copy cache the tracked set exists twice more, in the workspace and in the cache)
    assert metrics["freed_pct"] >= 80 and metrics["bytes"]["written"] > 5 * metrics["bytes"]["after"]
    assert not list((repo / "stages/retention").rglob("trainer_state.pt"))  # weights only
    # and the bytes are what is on disk once DVC has committed the out (each file once)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    md5 = next(o["md5"] for o in lock["stages"]["retention"]["outs"] if o["path"] == "stages/retention")
    cache = Path(sh("dvc", "cache", "dir", cwd=repo, env=env).strip()) / "files/md5"
    listing = json.loads((cache / md5[:2] / md5[2:]).read_text())
    files = [*(repo / "checkpoints").rglob("step-*/*"),
             *(f for a in (repo / "checkpoints").rglob("assets") for f in a.rglob("*") if f.is_file()),
             *(f for f in (repo / "stages/retention").rglob("*") if f.is_file()),
             *(cache / e["md5"][:2] / e["md5"][2:] for e in listing)]
    on_disk = {(f.stat().st_dev, f.stat().st_ino): f.stat().st_size for f in files}
    assert sum(on_disk.values()) == metrics["bytes"]["after"]
    model, *_ = load_model(repo / "stages/retention" / index[0]["path"])  # the best one loads
    # tracked by DVC: a deleted out comes back with `dvc checkout`
    shutil.rmtree(repo / "stages/retention")
    sh("dvc", "checkout", "retention", cwd=repo, env=env)
    assert json.loads((repo / "stages/retention/index.json").read_text()) == index
    # a second run deletes nothing and tracks the same set; the pipeline stays up to date
    sh("dvc", "repro", "-f", "-s", "retention", cwd=repo, env=env)  # -s: retention alone, not its upstream
    again = json.loads((repo / "reports/retention/manifest.json").read_text())
    assert again["deleted"] == [] and again["kept"] == manifest["kept"]
    assert "up to date" in sh("dvc", "status", cwd=repo, env=env)


def _untrained_copy(model_dir: Path, dest: Path) -> Path:
    """The same model with every weight redrawn (seeded): what it would score before any training."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, dest)
    gen = np.random.default_rng(0)
    weights = {k: v.new_tensor(gen.normal(0, 0.02, tuple(v.shape))) if v.is_floating_point() else v
               for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    save_file(weights, str(dest / "model.safetensors"))
    return dest


def check_compare_finds_training(repo: Path, env: dict) -> None:
    """`dsm5lab compare`: the trained model against the same weights redrawn finds a real difference."""
    model = _untrained_copy(repo / "stages/train/model", repo.parent / "untrained-model")
    sh("dsm5lab", "evaluate", "--model", str(model), "--out", str(repo.parent / "untrained"), cwd=repo, env=env)
    sh("dsm5lab", "compare", str(repo.parent / "untrained/predictions"), "workspace", "--json",
       str(repo.parent / "compare.json"), cwd=repo, env=env)
    out = json.loads((repo.parent / "compare.json").read_text())
    gain = out["metrics"]["test.macro_f1"]
    assert gain["delta"] > 0 and gain["low"] > 0 and gain["significant"], gain
    assert out["mcnemar"]["only_b_right"] > out["mcnemar"]["only_a_right"] and out["mcnemar"]["p_value"] < 0.05


def test_repro_then_status_is_clean_and_reproduces_the_lock(clone):
    repo, env = clone
    had_lock = (repo / "dvc.lock").exists()
    # the project's own cache: what this run computes (outputs and DVC's run-cache) is there afterwards, so a
    # `dvc repro` of the same commit in the project restores those stages instead of recomputing them (CI's
    # `make run` after `make test`: prepare, hpo and evaluate run again, see tests/test_runcache.py)
    sh("dvc", "cache", "dir", "--local", str(ROOT / ".dvc" / "cache"), cwd=repo, env=env)
    # --no-run-cache: every stage runs here, as on CI's fresh clone (and still saves to the run-cache). Restored
    # from an entry the project's own `dvc repro` left, retention would not run in this clone's pool at all (its
    # manifest would be the one made from the project's pool: after `make run` twice, nothing left to delete)
    sh("dvc", "repro", "--no-run-cache", cwd=repo, env=env)
    status = sh("dvc", "status", cwd=repo, env=env)
    assert "up to date" in status, status
    assert json.loads((repo / "reports/prepare/stats.json").read_text())["posts"]["total"] == 1484
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["val"]["macro_f1"] > train["val_chance_macro_f1"]
    assert (repo / "stages/train/model/model.safetensors").is_file()
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert evaluation["paper"]["macro_f1"] > train["val_chance_macro_f1"]
    # the pipeline's own plots: the offline page, drawn in a real browser with no network, and static files
    said = sh("dsm5lab", "plots", cwd=repo, env=env)
    assert "13 plots" in said, said
    html = (repo / "reports/plots/index.html").read_text()
    for plot_id in ("hpo_history", "confusion", "roc", "precision_recall", "calibration", "paper_labels", "train_loss",
                    "validation"):
        assert f"vegaEmbed('#{plot_id}'" in html, plot_id
        assert (repo / "reports/plots/static" / f"{plot_id}.svg").stat().st_size > 1000, plot_id
    states = browser.rendered_divs(browser.dump_dom(repo / "reports/plots/index.html", repo.parent / "profile"))
    assert len(states) == 13 and set(states.values()) == {"yes"}, states
    browser.screenshot(repo / "reports/plots/index.html", ROOT / "reports/ui/plots-pipeline.png",
                       repo.parent / "profile2")
    hpo = json.loads((repo / "metrics/hpo.json").read_text())
    assert hpo["trials"]["complete"] >= 1 and (repo / "stages/hpo/best_params.yaml").is_file()
    check_retention(repo, env, hpo["study"])
    if had_lock:  # the committed lock and metrics are what this code produces, byte for byte
        # except reports/hpo and retention: they record wall-clock times (trial durations; checkpoint meta.json,
        # whose size moves the byte counts); metrics/hpo.json keeps none, so it must come out the same
        diff = sh("git", "status", "--porcelain", "--", "metrics", "reports",
                  ":!reports/hpo", ":!metrics/retention.json", ":!reports/retention", cwd=repo, env=env)
        assert diff == "", f"dvc repro changed committed results:\n{diff}"
        committed = yaml.safe_load(sh("git", "show", "HEAD:dvc.lock", cwd=repo, env=env))["stages"]
        produced = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
        for stage in ("prepare", "train", "evaluate"):
            assert produced[stage] == committed[stage], f"dvc.lock differs for stage {stage}"
        assert produced["hpo"]["deps"] == committed["hpo"]["deps"]
        assert produced["hpo"]["params"] == committed["hpo"]["params"]
    check_compare_finds_training(repo, env)


def test_exp_run_with_override_shows_in_exp_show_and_mlflow(clone):
    repo, env = clone
    # a sweep of a searched key trains params.yaml's values: hpo.enabled=false (else the study's best wins)
    sh("dvc", "exp", "run", "-S", "data.synthetic.n_posts=300", "-S", "train.learning_rate=0.002",
       "-S", "hpo.enabled=false", cwd=repo, env=env)
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=repo, env=env))
    splits = [find_metric(shown, "metrics/prepare.json", ("posts", s)) for s in ("train", "val", "test")]
    assert 300 in [sum(n) for n in zip(*splits)]
    steps = [v for v in find_metric(shown, "metrics/train.json", ("steps",)) if isinstance(v, int)]
    assert steps, "train metrics missing from dvc exp show"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dsm5lab").experiment_id])
    assert runs and runs[0].data.params["train.learning_rate"] == "0.002"
    assert runs[0].data.tags.get("dvc_exp_name"), runs[0].data.tags

    # a queued grid, two workers: each experiment runs in a temp copy under .dvc/tmp/exps, and with
    # train.threads=auto takes half the cores
    sh("dvc", "exp", "run", "--queue", "-S", "train.learning_rate=1e-5,3e-5", "-S", "hpo.enabled=false",
       "-S", "train.epochs=2", "-S", "data.synthetic.n_posts=300", "-S", "train.threads=auto", cwd=repo, env=env)
    sh("dvc", "queue", "start", "-j", "2", cwd=repo, env=env)
    try:
        wait_for_queue(repo, env)
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env, capture_output=True)
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=repo, env=env))
    queued = {name: lr for name, lr in exp_params(shown, "train", "learning_rate").items() if lr in (1e-5, 3e-5)}
    assert sorted(queued.values()) == [1e-5, 3e-5], exp_params(shown, "train", "learning_rate")
    # two experiments compared by name: the same prepared data, so the same test posts, paired
    slow, fast = sorted(queued, key=queued.get)
    said = sh("dsm5lab", "compare", slow, fast, "--set", "evaluate.bootstrap_resamples=200", cwd=repo, env=env)
    assert f"A = {slow}, B = {fast}" in said and "McNemar" in said, said
    # MLflow runs of queued experiments land in the project's store, tagged with the experiment name
    runs = client.search_runs([client.get_experiment_by_name("dsm5lab").experiment_id])
    trained = {r.data.tags.get("dvc_exp_name"): r.data.tags for r in runs if r.data.tags.get("mlflow.runName") == "train"}
    assert set(queued) <= set(trained), (queued, trained)
    for name in queued:
        tags = trained[name]
        assert tags["dsm5lab.threads"] == str(max(1, cores() // 2)), tags
        assert "2 dvc queue workers" in tags["dsm5lab.threads_rule"], tags

    # the curated table: key params and headline metrics, no dependency-hash columns
    table = sh("make", "-s", "exps", "EXP_ARGS=--csv", cwd=repo, env=env)
    header = table.splitlines()[0].split(",")
    for column in ("Experiment", "train.learning_rate", "val.macro_f1", "paper.macro_f1", "reduction_pct"):
        assert column in header, header
    assert not [c for c in header if c.startswith("src/") or c.startswith("stages/")], header

    # applying a finished experiment restores its results: `dvc repro` has nothing to do
    name = min(queued, key=queued.get)
    sh("dvc", "exp", "apply", name, cwd=repo, env=env)
    # (DVC writes `1e-05`, which YAML 1.1 readers see as a string; the params schema reads it as a float)
    assert float(yaml.safe_load((repo / "params.yaml").read_text())["train"]["learning_rate"]) == 1e-5
    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=repo, env=env)
    sh("dvc", "exp", "branch", name, "lr-1e-5", cwd=repo, env=env)
    sh("git", "checkout", "-q", "-f", "lr-1e-5", cwd=repo, env=env)
    sh("dvc", "checkout", cwd=repo, env=env)
    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=repo, env=env)

    # promote round trip (on this small branch, HPO back on): the best trial's values go into params.yaml,
    # and `dvc repro` trains exactly them
    sh("dvc", "exp", "run", "-S", "hpo.enabled=true", "-S", "hpo.n_trials=2", cwd=repo, env=env)
    study = json.loads((repo / "metrics/hpo.json").read_text())
    assert study["trials"]["complete"] + study["trials"]["pruned"] == 2, study
    best = yaml.safe_load((repo / "stages/hpo/best_params.yaml").read_text())
    sh("dsm5lab", "hpo", "promote", cwd=repo, env=env)
    diff = json.loads(sh("dvc", "params", "diff", "--json", cwd=repo, env=env))["params.yaml"]
    expected = {f"{section}.{key}": value for section, values in best.items() for key, value in values.items()}
    changed = {k: v["new"] for k, v in diff.items() if not k.startswith("hpo.")}  # hpo.* came from the -S above
    assert changed and {k: v for k, v in expected.items() if k in changed} == changed
    sh("dvc", "repro", "train", cwd=repo, env=env)
    trained = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]["params"]["params.yaml"]
    for key, value in expected.items():
        section, key_name = key.split(".", 1)
        assert trained[section][key_name] == value, key
    assert "Data and pipelines are up to date" in sh("dvc", "repro", "train", cwd=repo, env=env)


def wait_for_queue(repo: Path, env: dict, timeout_s: float = 900) -> None:
    """Poll `dvc queue status` until nothing is queued or running; show a failed run's log."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = sh("dvc", "queue", "status", cwd=repo, env=env)
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(5)
    else:
        raise AssertionError(f"queue still busy after {timeout_s} s:\n{status}")
    failed = [line.split()[0] for line in status.splitlines() if "Failed" in line]
    logs = "".join(sh("dvc", "queue", "logs", task, cwd=repo, env=env) for task in failed)
    assert not failed, f"queued experiments failed:\n{status}\n{logs}"

