"""The CI regression gate: workspace metrics against the same files committed at a git revision.

`gate.yaml` names, per metrics file, dotted keys with the better direction and two absolute tolerances:
`tolerance` for a run whose numerics match the calibration's (pinned CPU kernels, same torch and
thread count: bit-identical, so any move is a change) and `seed_tolerance`, measured from the spread
over training seeds by `dsm5lab gate calibrate`, for any other run (GPU, unpinned CPU, other torch),
where float noise moves the numbers like a new seed. The baseline is `git show REV:path`: metrics
are committed (`cache: false`), so this is what `dvc metrics diff REV` compares.

With a `paired` section, a metric the evaluate stage's per-post test decisions determine (dsm5lab.paired)
and that moved beyond its tolerance fails only when a paired bootstrap of new against the baseline's
decisions at REV, on the same test posts, calls the drop significant; otherwise its status is `n.s.`.
"""

from __future__ import annotations

import difflib
import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from dsm5lab.config import read_yaml
from dsm5lab.config.base import Strict
from dsm5lab.errors import UserError

# file = stem, tolerance signed (-0.002: may drop 0.002): the table fits the CLI's 100 columns uncut.
HEADER = ("file", "key", "baseline", "current", "delta", "tolerance", "status")
EPS = 1e-9  # metrics are rounded to 6 decimals: this absorbs float noise only, so unchanged never fails
MISSING = object()
EXAMPLE = " like {direction: higher, tolerance: 0.002}"


class Spread(Strict):
    """One metric over the calibration's training seeds."""

    values: list[float] = Field(min_length=2)
    mean: float
    std: float = Field(ge=0.0)  # sample standard deviation (n - 1)
    range: float = Field(ge=0.0)


class Tolerance(Strict):
    """How one metric may move: `direction` is the better way, the tolerances the allowed move the other way."""

    direction: Literal["higher", "lower"]
    tolerance: float = Field(ge=0.0, allow_inf_nan=False)
    seed_tolerance: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    seed_spread: Spread | None = None


class Calibration(Strict):
    """Where the seed tolerances were measured, and the numerics under which runs reproduce bit for bit."""

    command: str
    seeds: list[int] = Field(min_length=2)
    numerics: dict[str, str | int | bool | None]  # system_key() of the calibrating machine


class Paired(Strict):
    """The paired check: where the decisions are, which metrics file they explain, and the bootstrap."""

    predictions: str = "reports/evaluate/predictions"
    file: str = "metrics/evaluate.json"
    resamples: int = Field(default=2000, ge=100)
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)  # one-sided: a drop is significant when p < alpha
    seed: int = 0


class GateFile(Strict):
    """gate.yaml: metrics file -> dotted key -> tolerance."""

    metrics: dict[str, dict[str, Tolerance]] = Field(min_length=1)
    calibration: Calibration | None = None
    paired: Paired | None = None


@dataclass(frozen=True)
class Row:
    """One gated metric: its baseline (None when the baseline lacks it), current value and verdict."""

    file: str
    key: str
    direction: str
    baseline: float | None
    current: float
    tolerance: float
    status: str  # ok | REGRESSED | new | n.s. (beyond tolerance, but the paired drop is not significant)
    paired: dict | None = None  # metrics.paired_bootstrap() of this key, when the paired check ran


@dataclass(frozen=True)
class GateResult:
    """All gated metrics; passed when none regressed. `mode` says which tolerance applied and `why`."""

    rows: list[Row]
    mode: str = "tolerance"  # tolerance (bit-identical numerics) | seed_tolerance
    why: str = ""
    differences: tuple[str, ...] = ()  # how this machine's numerics differ from the calibration's
    calibrated: bool = False  # gate.yaml has a calibration to compare numerics with
    paired_note: str = ""  # why the paired check did not run, or on what it ran

    @property
    def n_failed(self) -> int:
        return sum(r.status == "REGRESSED" for r in self.rows)

    @property
    def passed(self) -> bool:
        return self.n_failed == 0


def load_gate(path: Path) -> GateFile:
    """Read and validate a gate file; the first problem becomes one UserError line."""
    data = read_yaml(path, what="gate file", expect="a mapping with one key, 'metrics',")
    try:
        return GateFile.model_validate(data)
    except ValidationError as exc:
        # a misspelt key also shows up as a missing one: report the misspelling
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        *loc, last = (path, *err["loc"])
        kind, got = err["type"], err.get("input")
        if kind == "extra_forbidden":
            model = {1: GateFile, 4: Tolerance, 5: Spread}.get(len(loc), Tolerance)
            if len(loc) == 2:
                model = Paired if err["loc"][0] == "paired" else Calibration
            allowed = list(model.model_fields)
            msg = f"unknown key '{last}' (allowed: {', '.join(allowed)})"
        elif kind == "missing":
            msg = f"missing key '{last}'"
        elif kind in ("model_type", "dict_type"):
            msg = f"{last}: expected a mapping{EXAMPLE if len(loc) == 3 else ''} (got {got!r})"
        else:
            msg = f"{last}: {err['msg']} (got {got!r})"
        raise UserError(f"{': '.join(map(str, loc))}: {msg}") from None


def lookup(data: Any, key: str) -> Any:
    """Follow a dotted key, longest name first (so 'test.macro_f1_at_0.5' works); MISSING if absent."""
    parts, node, i = key.split("."), data, 0
    while i < len(parts):
        names = [".".join(parts[i:j]) for j in range(len(parts), i, -1)]
        name = next((n for n in names if isinstance(node, dict) and n in node), None)
        if name is None:
            return MISSING
        node, i = node[name], i + name.count(".") + 1
    return node


def _leaf_keys(data: Any, prefix: str = "") -> list[str]:
    if not isinstance(data, dict):
        return [prefix]
    return [k for name, v in data.items() for k in _leaf_keys(v, f"{prefix}.{name}" if prefix else str(name))]


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def _parse(text: str, source: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{source}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a JSON object of metrics")
    return data


def verify_rev(root: Path, rev: str) -> None:
    """Fail with one line unless `root` is in a git repository where `rev` names a commit."""
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if "not a git repository" in found.stderr:
        raise UserError(f"{root.resolve()} is not inside a git repository (the baseline is read from git)")
    if found.returncode != 0:
        raise UserError(f"unknown git revision '{rev}' (give a commit, branch or tag, e.g. --rev HEAD~1)")


def read_metrics(root: Path, file: str, rev: str | None = None) -> dict:
    """A metrics file as committed at `rev`, or as it is in the workspace when rev is None."""
    if rev is None:
        if not (root / file).is_file():
            raise UserError(f"{file} not found in the workspace (the pipeline writes it: run `dvc repro`)")
        return _parse((root / file).read_text(encoding="utf-8"), file)
    shown = _git(root, "show", f"{rev}:./{file}")  # ./ = relative to root, not the repository top
    if shown.returncode != 0:
        raise UserError(f"{file} is not committed at revision '{rev}' (commit it or pass another --rev)")
    return _parse(shown.stdout, f"{file} at {rev}")


def _number(value: Any, file: str, key: str, data: dict) -> float:
    if value is MISSING:
        keys = _leaf_keys(data)
        close = difflib.get_close_matches(key, keys, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"keys there: {', '.join(keys)}"
        raise UserError(f"{file} has no key '{key}' ({hint})")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{file}: '{key}' is not a number (got {value!r})")
    return float(value)


def judge(baseline: float | None, current: float, direction: str, tolerance: float) -> str:
    """ok, REGRESSED (moved the bad way by more than `tolerance`) or new (no baseline)."""
    if not math.isfinite(current):
        return "REGRESSED"
    if baseline is None or not math.isfinite(baseline):
        return "new"
    worse_by = baseline - current if direction == "higher" else current - baseline
    return "REGRESSED" if worse_by > tolerance + EPS else "ok"


# what must match the calibration for the bit-identical `tolerance` to apply
MATCH = ("cpu_isa", "pinned", "device", "torch", "threads", "cpu_vendor")


def cpu_vendor() -> str | None:
    """The CPU vendor (GenuineIntel, AuthenticAMD, ...) from /proc/cpuinfo; None off Linux.

    numerics.cpu_isa's pins do not make runs bit-identical across vendors: on an AMD EPYC (AVX-512) the same
    commit, prepared data and pins trained to val macro-F1 0.729216 where the calibration machine gave
    0.740864 (the cause is not pinned down; MKL's vendor-specific paths are the first suspect), so the gate
    compares vendors too."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("vendor_id")), None)


def system_key(cpu_isa: str, threads: int | str) -> dict:
    """The numerics a run on this machine computes with (numerics.cpu_isa, train.threads), plus the native level."""
    import os
    import platform

    import torch

    from dsm5lab.concurrency import resolve_threads
    from dsm5lab.numerics import LEVELS, is_x86, native_level

    cuda = torch.cuda.is_available()
    n_threads = resolve_threads(threads)[0] or os.cpu_count()
    return {"cpu_isa": cpu_isa, "pinned": bool(LEVELS[cpu_isa]) and is_x86() and not cuda,
            "device": "cuda" if cuda else "cpu", "torch": str(torch.__version__), "threads": n_threads,
            "native_capability": native_level(), "machine": platform.machine(), "cpu_vendor": cpu_vendor()}


def current_system(root: Path) -> dict | None:
    """system_key() for the project at root (its params.yaml), or None without one."""
    from dsm5lab.config import load_params

    if not (root / "params.yaml").is_file():
        return None
    params = load_params(root / "params.yaml")
    return system_key(params.numerics.cpu_isa, params.train.threads)


def choose_mode(gate: GateFile, system: dict | None) -> tuple[str, str, tuple[str, ...]]:
    """(mode, why, differences): the bit-identical tolerance only where numerics match the calibration's."""
    cal = gate.calibration
    if cal is None:
        return "tolerance", "gate.yaml has no calibration (no seed tolerances)", ()
    if system is None:
        return "seed_tolerance", "no params.yaml here: this run's numerics are unknown", ()
    base = cal.numerics
    diffs = tuple(f"{k} {system.get(k)} (calibration: {base.get(k)})" for k in (*MATCH, "native_capability")
                  if system.get(k) != base.get(k))
    if any(not d.startswith("native_capability") for d in diffs) or not system["pinned"]:
        return "seed_tolerance", "numerics differ from the calibration's: float noise moves metrics like a seed", diffs
    return "tolerance", "pinned numerics match the calibration's: runs are bit-identical", diffs


def _stale(preds, data: dict, keys) -> str | None:
    """A key whose number the decisions do not reproduce (the files come from another run), or None."""
    from dsm5lab import paired

    for key in keys:
        value = lookup(data, key)
        if paired.supports(preds, key) and isinstance(value, (int, float)):
            got = paired.statistic(preds, key)
            if got is None or abs(got - value) > 1e-6:
                return f"{key} {value} but the decisions give {got}"
    return None


def paired_checks(root: Path, gate: GateFile, rev: str, current: dict, baseline: dict) -> tuple[dict[str, dict], str]:
    """({key: paired_bootstrap result}, note): empty with the reason when the paired check cannot run.

    current / baseline: the contents of the metrics file the decisions explain (`paired.file`), here and at rev.
    """
    from dsm5lab import paired

    cfg = gate.paired
    keys = list(gate.metrics.get(cfg.file, {}))
    new = paired.read(root / cfg.predictions)
    if new is None:
        return {}, f"paired check off: no {cfg.predictions}/{paired.POSTS} in the workspace (run `dvc repro`)"
    base = paired.at_revision(root, rev, cfg.predictions)
    if base is None:
        return {}, f"paired check off: {cfg.predictions} is not committed at revision '{rev}'"
    if set(new.post_ids) != set(base.post_ids):
        return {}, (f"paired check off: the baseline at '{rev}' scored other test posts ({len(base.post_ids)} vs "
                    f"{len(new.post_ids)} here; the prepared data changed), so tolerances alone decide")
    for which, preds, data in (("workspace", new, current), (rev, base, baseline)):
        stale = _stale(preds, data, keys)
        if stale is not None:
            return {}, f"paired check off: {cfg.predictions} at {which} does not match {cfg.file} ({stale})"
    found = {k: paired.compare(new, base, k, cfg.resamples, cfg.seed, cfg.alpha)
             for k in keys if paired.supports(new, k) and paired.supports(base, k)}
    return found, (f"paired check on {len(new.post_ids)} test posts ({cfg.resamples} resamples, one-sided "
                   f"alpha {cfg.alpha}) for {', '.join(found) or 'no gated key'}")


def significant_drop(result: dict, direction: str) -> bool:
    """Whether a paired bootstrap result shows the metric moved the bad way significantly."""
    p = result["p_not_lower"] if direction == "higher" else result["p_not_higher"]
    return p is not None and p < result["alpha"]


def check(root: Path, gate_file: Path, rev: str = "HEAD", system: dict | None | str = "detect",
          paired: bool = True) -> GateResult:
    """Compare every metric gate_file names: workspace under `root` vs `git show rev:path`.

    `system` is this run's system_key() ("detect": from root's params.yaml and this machine).
    `paired` runs the paired check where gate_file has a `paired` section.
    """
    gate = load_gate(gate_file if gate_file.is_absolute() else root / gate_file)
    verify_rev(root, rev)
    if system == "detect":
        system = current_system(root) if gate.calibration is not None else None
    mode, why, diffs = choose_mode(gate, system)
    data = {file: (read_metrics(root, file), read_metrics(root, file, rev)) for file in gate.metrics}
    pairs, note = {}, ""
    if gate.paired is not None:
        here, there = data.get(gate.paired.file) or (read_metrics(root, gate.paired.file),
                                                     read_metrics(root, gate.paired.file, rev))
        pairs, note = paired_checks(root, gate, rev, here, there) if paired else ({}, "paired check off: --no-paired")
    found = []
    for file, keys in gate.metrics.items():
        current_data, baseline_data = data[file]
        for key, tol in keys.items():
            current = _number(lookup(current_data, key), file, key, current_data)
            raw = lookup(baseline_data, key)
            baseline = None if raw is MISSING else _number(raw, f"{file} at {rev}", key, baseline_data)
            allowed = tol.seed_tolerance if mode == "seed_tolerance" and tol.seed_tolerance is not None \
                else tol.tolerance
            status = judge(baseline, current, tol.direction, allowed)
            pair = pairs.get(key) if gate.paired is not None and file == gate.paired.file else None
            if status == "REGRESSED" and pair is not None and math.isfinite(current) \
                    and not significant_drop(pair, tol.direction):
                status = "n.s."
            found.append(Row(file, key, tol.direction, baseline, current, allowed, status, pair))
    return GateResult(found, mode, why, diffs, gate.calibration is not None, note)


PAIRED_HEADER = ("key", "delta", "one-sided bound", "p (drop)", "significant drop")


def paired_rows(result: GateResult) -> list[tuple[str, ...]]:
    """The paired check's results as table rows, in PAIRED_HEADER order."""
    out = []
    for r in result.rows:
        if r.paired is None or r.paired["low"] is None:
            continue
        higher = r.direction == "higher"
        bound = f"{r.paired['high' if higher else 'low']:+.4f}"
        p = r.paired["p_not_lower" if higher else "p_not_higher"]
        out.append((r.key, f"{r.paired['delta']:+.6f}", bound, f"{p:.3f}",
                    "yes" if significant_drop(r.paired, r.direction) else "no"))
    return out


def rows(result: GateResult) -> list[tuple[str, ...]]:
    """The result as table rows of strings, in HEADER order."""
    out = []
    for r in result.rows:
        base = "-" if r.baseline is None else f"{r.baseline:.6f}"
        delta = "-" if r.baseline is None else f"{r.current - r.baseline:+.6f}"
        allowed = f"{'-' if r.direction == 'higher' else '+'}{r.tolerance:g}"
        out.append((Path(r.file).stem, r.key, base, f"{r.current:.6f}", delta, allowed, r.status))
    return out
