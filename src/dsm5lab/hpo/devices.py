"""hpo.devices: the GPU each local HPO process computes on, given as its CUDA_VISIBLE_DEVICES.

`hpo run` computes in itself and in hpo.workers - 1 worker processes it starts; process i gets
device i mod len(devices), so workers: auto (one per device) puts one trial on each GPU. A process's
CUDA_VISIBLE_DEVICES must be set before CUDA starts in it (CUDA reads it once), so the GPUs are
counted in a child process, never in `hpo run` itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable, Mapping

from dsm5lab.config.hpo import HpoConfig, check_workers_storage
from dsm5lab.errors import UserError
from dsm5lab.hpo import storage as st

ENV = "CUDA_VISIBLE_DEVICES"
COUNT_TIMEOUT_S = 120


def count_gpus() -> int:
    """CUDA devices a new process would see (0 with a CPU-only torch, without starting a process)."""
    import torch

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return 0
    probe = "import torch; print(torch.cuda.device_count())"
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=COUNT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"hpo.devices: auto: counting the GPUs took over {COUNT_TIMEOUT_S} s; "
                        "list them instead (e.g. hpo.devices: [0, 1])") from None
    try:
        if out.returncode == 0:
            return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        pass
    # not a silent CPU run: the trials themselves would then find CUDA, or fail the same way
    why = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
    raise UserError(f"hpo.devices: auto: counting the GPUs failed ({why}); list them instead "
                    "(e.g. hpo.devices: [0, 1]) or use hpo.devices: cpu")


def resolve(devices, environ: Mapping[str, str], count: Callable[[], int] = count_gpus) -> list[str] | None:
    """The CUDA_VISIBLE_DEVICES entry of each device, or None for the CPU. auto keeps to the GPUs this
    process may use: with CUDA_VISIBLE_DEVICES=2,3 set, its workers get 2 and 3."""
    if devices == "cpu":
        return None
    if isinstance(devices, list):
        return [str(d) for d in devices]
    n = count()
    if n <= 0:
        return None
    visible = [e.strip() for e in environ.get(ENV, "").split(",") if e.strip()]
    return visible[:n] if ENV in environ and visible else [str(i) for i in range(n)]


def plan(hpo: HpoConfig, environ: Mapping[str, str] = os.environ, count: Callable[[], int] = count_gpus,
         echo: Callable[[str], None] = lambda line: None) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES per local process (this one first): None leaves it as it is (no GPU found), "" hides
    every GPU (devices: cpu). devices: auto and workers: auto on SQLite (the default storage, one process) use
    the first GPU only, and say so: the default pipeline must run on a machine with several GPUs too."""
    devs = resolve(hpo.devices, environ, count)
    n = hpo.local_workers(len(devs) if devs else 0)
    if devs and n > 1 and st.is_sqlite(st.resolve(hpo.storage)) and hpo.devices == "auto" and hpo.workers == "auto":
        echo(f"hpo: {len(devs)} GPUs, but the SQLite storage serves one process: trials run on {ENV}={devs[0]} "
             "only; hpo.storage: journal:stages/hpo/storage/journal.log runs one per GPU")
        n = 1
    try:
        check_workers_storage(hpo.storage, n)
    except ValueError as exc:
        raise UserError(f"hpo.workers: {exc}") from None
    if devs is None:
        return ["" if hpo.devices == "cpu" else None] * n
    return [devs[i % len(devs)] for i in range(n)]


def use(device: str | None) -> None:
    """Make this process compute on `device` (a CUDA_VISIBLE_DEVICES value; None: as it is)."""
    if device is None:
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized() and os.environ.get(ENV) != device:
        raise RuntimeError(f"CUDA started in this process before {ENV}={device!r} could be set")
    os.environ[ENV] = device


def parse(option: str) -> str:
    """`hpo worker --device`: cpu, an index or a GPU/MIG UUID, as the CUDA_VISIBLE_DEVICES value it means."""
    from pydantic import TypeAdapter, ValidationError

    from dsm5lab.config.hpo import Device

    if option == "cpu":
        return ""
    try:
        return str(TypeAdapter(Device).validate_python(int(option) if option.isdigit() else option))
    except ValidationError:
        raise UserError(f"--device: {option!r} is not a device (allowed: cpu, an index such as 0, "
                        "or a GPU-/MIG- UUID as nvidia-smi -L prints)") from None
