"""Which stages DVC's run-cache restores: `dvc repro` after deleting every out and dvc.lock, in a scratch
clone shrunk to the tiny configuration, against the set dvc.yaml implies and the README states."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from conftest import ROOT, TINY
from dsm5lab.yaml_edit import set_values
from test_dvc_pipeline import clone, sh  # noqa: F401  (clone is a fixture)

# Stages `dvc repro` always re-runs, and why (DVC 3: Stage.run in dvc/stage/__init__.py, _can_hash in
# dvc/stage/cache.py).
OPTS_OUT = {
    "prepare": "a cache: false out (reports/prepare/stats.json)",
    "hpo": "a persist out (stages/hpo/storage)",
    "evaluate": "a cache: false out (reports/evaluate/predictions)",
}


def run_cache_opt_outs(dvc_yaml: dict) -> dict[str, list[str]]:
    """Stage -> the reasons DVC neither saves nor restores its runs: a persist out, always_changed, no deps,
    or an out with `cache: false` that is not a metric or plot (those DVC copies into the run-cache)."""
    found: dict[str, list[str]] = {}
    for name, stage in dvc_yaml["stages"].items():
        reasons = []
        if stage.get("always_changed"):
            reasons.append("always_changed")
        if not stage.get("deps") or not stage.get("outs"):
            reasons.append("no deps or no outs")
        for out in stage.get("outs", []):
            path, opts = next(iter(out.items())) if isinstance(out, dict) else (out, {})
            if opts.get("persist"):
                reasons.append(f"a persist out ({path})")
            if opts.get("cache") is False:
                reasons.append(f"a cache: false out ({path})")
        for kind in ("metrics", "plots"):
            for out in stage.get(kind, []):
                path, opts = next(iter(out.items())) if isinstance(out, dict) else (out, {})
                if opts.get("persist"):
                    reasons.append(f"a persist {kind[:-1]} ({path})")
        if reasons:
            found[name] = reasons
    return found


def test_the_stages_that_opt_out_of_the_run_cache_are_the_documented_ones():
    found = run_cache_opt_outs(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    assert {name: reasons[0] for name, reasons in found.items()} == OPTS_OUT, found
    readme = " ".join((ROOT / "README.md").read_text().split())
    said = re.search(r"restores from DVC's run-cache: ([^.]*)\.", readme)
    assert said, "README: no sentence naming the stages the run-cache restores"
    restored = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]) - set(OPTS_OUT)
    assert set(re.findall(r"`(\w+)`", said.group(1))) == restored, said.group(0)
    for name in OPTS_OUT:
        assert f"`{name}`" in readme.split(said.group(0), 1)[1], name


def delete_outs(repo) -> None:
    for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values():
        for out in (*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])):
            path = repo / (next(iter(out)) if isinstance(out, dict) else out)
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


@pytest.mark.slow
def test_repro_after_deleting_every_out_restores_all_stages_but_the_opted_out_ones(clone):
    """Without dvc.lock only the run-cache can skip a stage; with it (CI's `make run` after the tests, in a
    fresh clone) DVC restores from the lock's entry, which holds the same rule."""
    repo, env = clone
    tiny = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in TINY)}
    set_values(repo / "params.yaml", tiny, "test", "set")
    sh("dvc", "repro", cwd=repo, env=env)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    kept = {p: (repo / p).read_bytes() for p in ("metrics/train.json", "stages/study/definition.json")}
    for drop_lock in (True, False):
        delete_outs(repo)
        if drop_lock:
            (repo / "dvc.lock").unlink()
        said = sh("dvc", "repro", cwd=repo, env=env)
        cached = set(re.findall(r"Stage '(\w+)' is cached - skipping run", said))
        assert set(re.findall(r"Running stage '(\w+)'", said)) == set(OPTS_OUT), said
        assert cached == set(lock) - set(OPTS_OUT), said
        assert {p: (repo / p).read_bytes() for p in kept} == kept  # restored, not recomputed differently
        after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
        assert {s: after[s]["outs"] for s in cached} == {s: lock[s]["outs"] for s in cached}
        assert "up to date" in sh("dvc", "status", cwd=repo, env=env)
