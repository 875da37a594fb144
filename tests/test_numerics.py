"""numerics.cpu_isa pins CPU kernel dispatch: bit-identical training whatever level the machine would pick."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsm5lab import numerics
from test_train import TINY, sets


def _best_isa() -> str:
    """AVX-512 where this CPU has it, else AVX2: ATen does not clamp the level it is told to use, and an
    AVX-512 kernel on a CPU without it dies of SIGILL (as on the AMD EPYC runners without avx512f)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "avx2"
    return "avx512" if " avx512f" in flags else "avx2"


# Two "machines" as the libraries see them: torch's ATen kernels at the best SIMD level this CPU has with
# MKL's own pick, and ATen without SIMD with MKL's most compatible path.
MACHINES = {
    "simd": {"ATEN_CPU_CAPABILITY": _best_isa(), "MKL_CBWR": "AUTO"},
    "plain": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"},
}

# slow: four trainings, each in a fresh process (the pinning must happen before MKL's first use)
pytestmark = [pytest.mark.skipif(not numerics.is_x86(), reason="dispatch levels exist on x86-64 only"),
              pytest.mark.slow]


@pytest.fixture(scope="module")
def prepared(tiny_prepared, tmp_path_factory):
    """A private copy of the session's prepared project: each run writes stages/train and metrics into it."""
    root = tmp_path_factory.mktemp("numerics") / "p"
    shutil.copytree(tiny_prepared, root)
    return root


def train_as(root: Path, machine: str, cpu_isa: str) -> tuple[str, dict, dict]:
    """`dsm5lab train` in a fresh process that sees `machine`'s environment: model hash, metrics, numerics."""
    env = {k: v for k, v in os.environ.items() if k not in numerics.VARIABLES}
    env.update(MACHINES[machine], CI="true")
    mlflow = f"tracking.mlflow_uri=sqlite:///{root / f'{machine}-{cpu_isa}.db'}"
    proc = subprocess.run([sys.executable, "-m", "dsm5lab", "train", *sets([*TINY, f"numerics.cpu_isa={cpu_isa}", mlflow])],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = hashlib.sha256((root / "stages/train/model/model.safetensors").read_bytes()).hexdigest()
    metrics = json.loads((root / "metrics/train.json").read_text())
    events = [json.loads(line) for line in (root / "checkpoints/train/events.jsonl").read_text().splitlines()]
    system = [e for e in events if e["kind"] == "system"][-1]
    return weights, metrics, system["numerics"]


def test_pinned_runs_are_bit_identical_across_dispatch_levels(prepared):
    (a, metrics_a, num_a), (b, metrics_b, num_b) = (train_as(prepared, m, "avx2") for m in MACHINES)
    assert a == b and metrics_a == metrics_b
    for num in (num_a, num_b):  # what the run really computed with, recorded in its system event
        assert num["pinned"] and num["aten_capability"] == "AVX2"
        assert {k: num[k] for k in numerics.VARIABLES} == numerics.LEVELS["avx2"]


def test_unpinned_runs_follow_the_machine(prepared):
    (a, _, num_a), (b, _, num_b) = (train_as(prepared, m, "native") for m in MACHINES)
    assert a != b  # the guard above is needed: without it the weights differ
    assert num_a["aten_capability"] != num_b["aten_capability"] == "DEFAULT"
    assert not num_a["pinned"] and not num_b["pinned"]


def test_pin_overrides_the_environment_and_native_pins_nothing(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    monkeypatch.delenv("MKL_CBWR", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert numerics.pin("native") == {} and os.environ["ATEN_CPU_CAPABILITY"] == "avx512"
    assert numerics.pin("avx2") == numerics.LEVELS["avx2"]
    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx2" and os.environ["MKL_CBWR"] == "AVX2,STRICT"
