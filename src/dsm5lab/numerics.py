"""Pinned CPU kernel dispatch: the same bits from a CPU run on any x86-64 machine.

torch's vectorised ATen kernels, MKL (BLAS) and oneDNN each pick kernels for the CPU they find:
AVX-512 on one machine, AVX2 on another. The float sums then differ in their last bits, and over a
training run those differences grow into other metrics. `numerics.cpu_isa: avx2` holds all three
libraries to AVX2 (every x86-64 server CPU since about 2015 has it) through their environment
variables, which they read once, so `pin()` must run before torch computes anything.
"""

from __future__ import annotations

import logging
import os
import platform
import sys

log = logging.getLogger("dsm5lab.numerics")

# numerics.cpu_isa -> the environment each library reads at start-up; "native" pins nothing
LEVELS: dict[str, dict[str, str]] = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "native": {},
}
VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def pin(cpu_isa: str) -> dict[str, str]:
    """Set the dispatch variables for `cpu_isa` in this process (and so in the processes it starts).

    Overrides what the environment had: a pin that a stray variable could undo would not be one.
    Returns what was set; nothing on a CPU that is not x86-64, where the levels do not exist.
    """
    wanted = LEVELS[cpu_isa] if is_x86() else {}
    if wanted and "torch" in sys.modules and any(os.environ.get(k) != v for k, v in wanted.items()):
        # torch reads ATEN_CPU_CAPABILITY when it first dispatches: too late to be sure it applies
        log.warning("numerics: torch was imported before the CPU dispatch pin; the pin may not apply")
    os.environ.update(wanted)
    return dict(wanted)


def effective(cpu_isa: str) -> dict[str, str | bool | None]:
    """What this process computes with: the pin asked for, the variables, and the ATen kernel level in use.

    Identical on every x86-64 machine when pinned, so it can go into DVC outs without making them
    machine-specific; unpinned, `aten_capability` names the machine's own level.
    """
    import torch

    return {"cpu_isa": cpu_isa, "pinned": bool(LEVELS[cpu_isa]) and is_x86(),
            "aten_capability": torch.backends.cpu.get_cpu_capability(),
            **{k: os.environ.get(k) for k in VARIABLES}}


def native_level() -> str | None:
    """The best level this CPU has (AVX512, AVX2 or DEFAULT) from /proc/cpuinfo, whatever the pin says; None off Linux."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    if not flags:
        return None
    return "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "DEFAULT"
