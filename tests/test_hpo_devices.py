"""hpo.devices: which CUDA_VISIBLE_DEVICES each local HPO process gets (the processes themselves: test_hpo_workers)."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from conftest import default_params
from dsm5lab.config import validate
from dsm5lab.errors import UserError
from dsm5lab.hpo import devices

JOURNAL = "journal:stages/hpo/journal.log"


def hpo(**keys):
    raw = default_params()
    raw["hpo"].update(keys)
    return validate(raw, source="test").hpo


def never_counted():
    raise AssertionError("devices were counted although the config names them")


@pytest.mark.parametrize("keys, expected", [
    ({"devices": "cpu"}, [""]),  # cpu hides every GPU
    ({"devices": "cpu", "workers": 2, "storage": JOURNAL}, ["", ""]),
    ({"devices": [0, 1], "storage": JOURNAL}, ["0", "1"]),  # workers: auto = one per device
    ({"devices": [0, 1, 2, 3], "workers": 2, "storage": JOURNAL}, ["0", "1"]),
    ({"devices": [0, 1], "workers": 3, "storage": JOURNAL}, ["0", "1", "0"]),  # in turn
    ({"devices": ["GPU-5b0c", 3], "storage": JOURNAL}, ["GPU-5b0c", "3"]),
    ({"devices": [2]}, ["2"]),  # one device, one process: SQLite is fine
])
def test_each_local_process_gets_a_device_in_turn(keys, expected):
    assert devices.plan(hpo(**keys), environ={}, count=never_counted) == expected


def test_auto_uses_every_visible_gpu_and_keeps_to_the_ones_this_process_may_use():
    four = hpo(devices="auto", storage=JOURNAL)
    assert devices.plan(four, environ={}, count=lambda: 4) == ["0", "1", "2", "3"]
    # CUDA_VISIBLE_DEVICES=5,7 for `hpo run`: its processes get 5 and 7, not 0 and 1
    assert devices.plan(four, environ={"CUDA_VISIBLE_DEVICES": "5,7"}, count=lambda: 2) == ["5", "7"]
    # no GPU: one process, its environment left as it is (None), and hpo.workers still counts when set
    assert devices.plan(four, environ={}, count=lambda: 0) == [None]
    assert devices.plan(hpo(devices="auto", workers=2, storage=JOURNAL), environ={}, count=lambda: 0) == [None, None]


def test_the_default_on_several_gpus_uses_one_on_sqlite_and_says_how_to_use_all():
    """devices: auto, workers: auto and the default SQLite storage: `dvc repro` must still run on a 4-GPU box."""
    said = []
    assert devices.plan(hpo(), environ={}, count=lambda: 4, echo=said.append) == ["0"]
    assert said == ["hpo: 4 GPUs, but the SQLite storage serves one process: trials run on CUDA_VISIBLE_DEVICES=0 "
                    "only; hpo.storage: journal:stages/hpo/storage/journal.log runs one per GPU"]


def test_several_processes_on_sqlite_asked_for_are_refused_naming_the_storages_that_work():
    with pytest.raises(UserError, match=r"SQLite storage serves one worker only.*journal.*postgresql"):
        hpo(devices=[0, 1])  # known when the config is read
    with pytest.raises(UserError, match=r"^hpo.workers: SQLite storage serves one worker only.*journal.*postgresql"):
        devices.plan(hpo(devices="auto", workers=1).model_copy(update={"workers": 3}), environ={}, count=lambda: 2)


@pytest.mark.parametrize("value, fragment", [
    ([0, 0], "devices repeat an entry"), ("gpu", "devices"), ([], "devices"), ([-1], "devices"),
    (["cuda:0"], "devices"),
])
def test_bad_devices_are_refused(value, fragment):
    with pytest.raises(UserError, match=fragment):
        hpo(devices=value, storage=JOURNAL)


def test_gpus_are_counted_in_a_child_process_and_not_at_all_on_a_cpu_torch(monkeypatch):
    import torch

    def no_child(*a, **kw):
        raise AssertionError("a CPU-only torch needs no child process to count GPUs")

    monkeypatch.setattr(subprocess, "run", no_child)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert devices.count_gpus() == 0
    calls = []
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or types.SimpleNamespace(
        returncode=0, stdout="3\n"))
    assert devices.count_gpus() == 3 and calls[0][0] == sys.executable  # counted in another process
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: types.SimpleNamespace(
        returncode=1, stdout="", stderr="Traceback ...\nRuntimeError: CUDA driver initialization failed"))
    with pytest.raises(UserError, match=r"^hpo.devices: auto: counting the GPUs failed \(RuntimeError: CUDA driver "
                                        r"initialization failed\); list them instead"):
        devices.count_gpus()  # never a silent fall-back to the CPU


def test_a_process_whose_cuda_already_started_cannot_be_moved(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake)
    with pytest.raises(RuntimeError, match="CUDA started in this process"):
        devices.use("1")
    devices.use(None)  # nothing asked, nothing to refuse


@pytest.mark.parametrize("option, env", [("cpu", ""), ("0", "0"), ("12", "12"), ("MIG-4f2a/1/0", "MIG-4f2a/1/0")])
def test_worker_device_option(option, env):
    assert devices.parse(option) == env


def test_a_bad_worker_device_is_one_line(workdir, cli):
    result = cli("hpo", "worker", "--storage", "journal:x.log", "--study", "s", "--device", "cuda:1")
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "error: --device: 'cuda:1' is not a device (allowed: cpu, an index such as 0, or a GPU-/MIG- UUID as "
        "nvidia-smi -L prints)"]
