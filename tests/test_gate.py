"""`dsm5lab gate`: workspace metrics against a committed baseline, in a tiny git repo built per test."""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import pytest
import yaml

from dsm5lab import gate

ROOT = Path(__file__).resolve().parents[1]

GATE = """\
metrics:
  metrics/train.json:
    val.macro_f1: {direction: higher, tolerance: 0.002}
  metrics/evaluate.json:
    test.macro_f1_at_0.5: {direction: higher, tolerance: 0.01}
    test.loss: {direction: lower, tolerance: 0.01}
"""


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def write_metrics(root: Path, f1: float = 0.70, f1_at_half: float = 0.65, loss: float = 0.50) -> None:
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics/train.json").write_text(json.dumps({"val": {"macro_f1": f1}, "steps": 100}))
    evaluate = {"test": {"macro_f1_at_0.5": f1_at_half, "loss": loss}}
    (root / "metrics/evaluate.json").write_text(json.dumps(evaluate))


def commit(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repo (the cwd) with gate.yaml and both metrics files committed; user git config ignored."""
    for var, value in {
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }.items():
        monkeypatch.setenv(var, value)
    git(tmp_path, "init", "-q")
    (tmp_path / "gate.yaml").write_text(GATE)
    write_metrics(tmp_path)
    commit(tmp_path, "baseline")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_unchanged_passes(repo, cli):
    result = cli("gate")
    assert result.exit_code == 0, result.output
    assert "gate: passed" in result.stdout
    assert "val.macro_f1" in result.stdout and "REGRESSED" not in result.stdout


def test_drop_beyond_tolerance_fails_and_names_the_metric(repo, cli):
    write_metrics(repo, f1=0.75)
    commit(repo, "a better baseline")
    write_metrics(repo, f1=0.70)  # the workspace keeps the lower value
    result = cli("gate")
    assert result.exit_code == 1, result.output
    line = next(line for line in result.stdout.splitlines() if "val.macro_f1" in line)
    assert "REGRESSED" in line and "-0.050000" in line
    assert "1 metric(s) regressed" in result.stderr


@pytest.mark.parametrize(
    ("current", "passes"),
    [
        ({"f1": 0.699}, True),  # dropped 0.001, tolerance 0.002
        ({"f1": 0.698}, True),  # dropped exactly the tolerance: not more than it
        ({"f1": 0.6979}, False),
        ({"f1": 0.90}, True),  # improved
        ({"loss": 0.505}, True),  # lower is better: rose 0.005, tolerance 0.01
        ({"loss": 0.52}, False),
        ({"loss": 0.10}, True),
        ({"f1_at_half": 0.60}, False),  # a key with a dot in its name ('macro_f1_at_0.5')
    ],
)
def test_tolerance_and_direction(repo, cli, current, passes):
    write_metrics(repo, **current)
    result = cli("gate")
    assert result.exit_code == (0 if passes else 1), result.output


def test_rev_picks_an_earlier_commit(repo, cli):
    first = git(repo, "rev-parse", "HEAD")
    write_metrics(repo, f1=0.60)
    commit(repo, "a regression got committed")
    assert cli("gate").exit_code == 0  # HEAD already holds 0.60
    result = cli("gate", "--rev", first)
    assert result.exit_code == 1 and "REGRESSED" in result.stdout
    assert cli("gate", "--rev", "HEAD~1").exit_code == 1


def test_key_missing_from_baseline_is_new_and_passes(repo):
    (repo / "gate.yaml").write_text(GATE + "    test.extra: {direction: higher, tolerance: 0}\n")
    data = json.loads((repo / "metrics/evaluate.json").read_text())
    data["test"]["extra"] = 0.3
    (repo / "metrics/evaluate.json").write_text(json.dumps(data))
    result = gate.check(repo, Path("gate.yaml"), "HEAD")
    assert result.passed and [r.status for r in result.rows][-1] == "new"


@pytest.mark.parametrize(
    ("gate_text", "args", "expected"),
    [
        (None, ("--gate-file", "nope.yaml"), "gate file not found: nope.yaml"),
        ("metrics: [unclosed\n", (), "gate.yaml:2:1: not valid YAML: expected ',' or ']'"),
        ("metric: {}\n", (), "unknown key 'metric' (allowed: metrics, calibration, paired)"),
        (GATE.replace("tolerance: 0.002", "tolerence: 0.002"), (), "val.macro_f1: unknown key 'tolerence'"),
        (
            GATE.replace("higher, tolerance: 0.002", "up, tolerance: 0.002"),
            (),
            "direction: Input should be 'higher' or 'lower' (got 'up')",
        ),
        (GATE.replace("0.002", "-0.1"), (), "tolerance: Input should be greater than or equal to 0"),
        (GATE, ("--rev", "no-such-branch"), "unknown git revision 'no-such-branch'"),
        (
            GATE.replace("val.macro_f1", "val.macro_f2"),
            (),
            "metrics/train.json has no key 'val.macro_f2' (did you mean 'val.macro_f1'?)",
        ),
        (
            GATE.replace("metrics/train.json", "metrics/other.json"),
            (),
            "metrics/other.json not found in the workspace",
        ),
    ],
)
def test_user_errors_are_one_line(repo, cli, gate_text, args, expected):
    if gate_text is not None:
        (repo / "gate.yaml").write_text(gate_text)
    result = cli("gate", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr


def test_metrics_file_not_committed_at_rev(repo, cli):
    (repo / "metrics/new.json").write_text('{"x": 1}')
    (repo / "gate.yaml").write_text(GATE + "  metrics/new.json:\n    x: {direction: higher, tolerance: 0}\n")
    result = cli("gate")
    assert result.exit_code == 2
    assert "error: metrics/new.json is not committed at revision 'HEAD'" in result.stderr


def test_shipped_gate_file_matches_committed_metrics():
    """The repo's gate.yaml is valid and every key it names exists, as a number, in the committed metrics."""
    spec = gate.load_gate(ROOT / "gate.yaml")
    assert spec.metrics
    for file, keys in spec.metrics.items():
        data = json.loads(git(ROOT, "show", f"HEAD:./{file}"))
        for key in keys:
            value = gate.lookup(data, key)
            assert isinstance(value, float), f"{file}: {key} -> {value!r}"


# --- tolerances from measured noise: which one applies, and what the gate says about the machine ---------

SYSTEM = {"cpu_isa": "avx2", "pinned": True, "device": "cpu", "torch": "2.13.0", "threads": 2,
          "native_capability": "AVX512", "machine": "x86_64", "cpu_vendor": "GenuineIntel"}
CALIBRATED = GATE.replace("val.macro_f1: {direction: higher, tolerance: 0.002}",
                          "val.macro_f1: {direction: higher, tolerance: 0.002, seed_tolerance: 0.05}") + f"""\
calibration:
  command: dsm5lab gate calibrate --seeds 2
  seeds: [7, 8]
  numerics: {json.dumps(SYSTEM)}
"""


@pytest.mark.parametrize(("system", "mode", "passes"), [
    (SYSTEM, "tolerance", False),  # bit-identical numerics: a 0.01 drop is a change
    ({**SYSTEM, "native_capability": "AVX2"}, "tolerance", False),  # another CPU, same pinned kernels
    ({**SYSTEM, "torch": "2.14.1"}, "seed_tolerance", True),  # another torch: within the seed spread
    # same pins, another vendor: measured not bit-identical (AMD EPYC vs the Intel calibration machine)
    ({**SYSTEM, "cpu_vendor": "AuthenticAMD"}, "seed_tolerance", True),
    ({**SYSTEM, "cpu_isa": "native", "pinned": False}, "seed_tolerance", True),
    ({**SYSTEM, "device": "cuda", "pinned": False}, "seed_tolerance", True),
    (None, "seed_tolerance", True),  # unknown numerics: the honest (seed) tolerance
])
def test_the_tolerance_follows_the_numerics(repo, system, mode, passes):
    (repo / "gate.yaml").write_text(CALIBRATED)
    write_metrics(repo, f1=0.69)
    result = gate.check(repo, Path("gate.yaml"), "HEAD", system=system)
    assert result.mode == mode and result.passed is passes
    row = next(r for r in result.rows if r.key == "val.macro_f1")
    assert row.tolerance == (0.05 if mode == "seed_tolerance" else 0.002)


def test_a_failing_gate_names_how_the_machine_differs(repo, cli, monkeypatch):
    (repo / "gate.yaml").write_text(CALIBRATED)
    write_metrics(repo, f1=0.60)  # beyond both tolerances
    monkeypatch.setattr(gate, "current_system", lambda root: {**SYSTEM, "torch": "2.14.1", "threads": 4})
    result = cli("gate")
    assert result.exit_code == 1
    assert "torch 2.14.1 (calibration: 2.13.0)" in result.stderr and "threads 4 (calibration: 2)" in result.stderr
    assert "seed_tolerance" in result.stdout


def test_an_uncalibrated_gate_keeps_the_plain_tolerance(repo):
    write_metrics(repo, f1=0.69)
    result = gate.check(repo, Path("gate.yaml"), "HEAD")
    assert result.mode == "tolerance" and not result.passed


def test_calibrate_writes_the_seed_spread_and_touches_nothing_else(tmp_path, monkeypatch, cli):
    from conftest import new_project
    from test_train import TINY
    from test_train import sets as set_args

    sets = set_args([*TINY, "evaluate.bootstrap_resamples=20"])
    new_project(tmp_path, "prepare", *sets)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CI", "true")
    (tmp_path / "gate.yaml").write_text((ROOT / "gate.yaml").read_text())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = cli("gate", "calibrate", "--seeds", "2", *sets)
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # only gate.yaml rewritten
    spec = gate.load_gate(tmp_path / "gate.yaml")
    seed = yaml.safe_load((tmp_path / "params.yaml").read_text())["seed"]
    assert spec.calibration.seeds == [seed, seed + 1] and spec.calibration.numerics["cpu_isa"] == "avx2"
    shipped = gate.load_gate(ROOT / "gate.yaml")
    for file, keys in shipped.metrics.items():
        for key, tol in keys.items():
            got = spec.metrics[file][key]
            assert got.tolerance == tol.tolerance and len(got.seed_spread.values) == 2
            assert got.seed_spread.std == pytest.approx(statistics.stdev(got.seed_spread.values), abs=2e-6)
            assert got.seed_tolerance == pytest.approx(max(0.002, 3 * got.seed_spread.std), abs=1e-4)


def test_unpinned_numerics_never_get_the_bit_identical_tolerance(repo):
    native = {**SYSTEM, "cpu_isa": "native", "pinned": False}
    (repo / "gate.yaml").write_text(CALIBRATED.replace(json.dumps(SYSTEM), json.dumps(native)))
    write_metrics(repo, f1=0.69)
    # same settings as the calibration, but another CPU: native kernels differ, so only the seed spread holds
    result = gate.check(repo, Path("gate.yaml"), "HEAD", system={**native, "native_capability": "AVX2"})
    assert result.mode == "seed_tolerance" and result.passed
    assert result.differences == ("native_capability AVX2 (calibration: AVX512)",)
