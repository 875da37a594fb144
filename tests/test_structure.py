"""Structure guards: dvc.yaml deps match what each stage imports; schema choices match their registries."""

from __future__ import annotations

import ast
import importlib
import types
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = "dsm5lab"
DVC_YAML = ROOT / "dvc.yaml"  # a module constant so a throwaway check can point it at a broken copy
CLI = SRC / PKG / "cli.py"

# Files a stage imports that must NOT be deps: changing them does not change any stage's outputs.
NOT_DEPS = {
    "src/dsm5lab/cli.py": "argument parsing and printing only; each command hands off to its domain module",
    "src/dsm5lab/__init__.py": "package marker (docstring and __version__)",
    "src/dsm5lab/__main__.py": "`python -m dsm5lab` entry point, calls cli.main",
}


# ---------------------------------------------------------------- A: dvc.yaml deps vs. static imports

def _module_files() -> dict[str, Path]:
    """Module name -> file, for every .py under src/dsm5lab (a package is its __init__.py)."""
    found = {}
    for path in (SRC / PKG).rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _module_files()


def _resolve(name: str) -> str | None:
    """The longest prefix of a dotted name that is a module of the project (None for other packages)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts) or None


def _imports(node: ast.AST, module: str) -> list[str]:
    """Project modules imported anywhere under `node` (function bodies too: a lazy import still runs)."""
    out = []
    for n in ast.walk(node):
        names = []
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:  # relative: climb from the importing module's package
                pkg = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - n.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in n.names]
        for name in names:
            if (found := _resolve(name)) is None:
                continue
            parts = found.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ first
            out += [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES]
    return list(dict.fromkeys(out))


def _data_files(tree: ast.AST) -> list[Path]:
    """Package data read as `resources.files("pkg").joinpath("name")` (the only pattern src/ uses)."""
    def const(call):
        return call.args[0].value if call.args and isinstance(call.args[0], ast.Constant) else None

    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "joinpath" and const(n):
            inner = n.func.value  # resources.files("pkg") or a bare files("pkg")
            func = getattr(inner, "func", None)
            if isinstance(inner, ast.Call) and "files" in (getattr(func, "attr", 0), getattr(func, "id", 0)) \
                    and const(inner) in MODULES:
                out.append(MODULES[const(inner)].parent / const(n))
    return out


def _cli_commands() -> dict[tuple[str, ...], list[str]]:
    """CLI words (("train",), ("hpo", "run")) -> the project modules that command imports directly."""
    tree = ast.parse(CLI.read_text(encoding="utf-8"))
    groups = {"app": ()}  # Typer object -> its words; sub-apps come from app.add_typer(x, name="...")
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "add_typer":
            name = next(k.value.value for k in n.keywords if k.arg == "name")
            groups[n.args[0].id] = (name,)
    top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    commands = {}
    for fn in funcs.values():
        for dec in fn.decorator_list:
            kind = getattr(dec.func, "attr", "") if isinstance(dec, ast.Call) else ""
            if kind in ("command", "callback"):  # a group's callback runs as the group's own command
                word = () if kind == "callback" else (
                    dec.args[0].value if dec.args else fn.name.replace("_", "-"),)  # Typer's own naming
                # the command plus the cli helpers it calls or is wrapped by (_load, user_errors)
                seen, todo = [], [fn.name]
                while todo:
                    seen.append(name := todo.pop())
                    todo += [n.id for n in ast.walk(funcs[name]) if isinstance(n, ast.Name)
                             and n.id in funcs and n.id not in seen + todo]
                mods = [m for node in [funcs[f] for f in seen] + top for m in _imports(node, f"{PKG}.cli")]
                commands[groups[dec.func.value.id] + word] = list(dict.fromkeys(mods))
    return commands


def _closure(roots: list[str], label: str) -> dict[Path, list[str]]:
    """File -> import chain that reaches it, over modules and the package data they read."""
    chains = {m: [label, m] for m in roots}
    todo, files = list(roots), {}
    while todo:
        mod = todo.pop(0)  # breadth first: the chain shown is a shortest one
        tree = ast.parse(MODULES[mod].read_text(encoding="utf-8"))
        files[MODULES[mod]] = chains[mod]
        for data in _data_files(tree):
            files.setdefault(data, chains[mod] + [f"reads {data.name}"])
        for dep in _imports(tree, mod):
            if dep not in chains:
                chains[dep] = chains[mod] + [dep]
                todo.append(dep)
    files[CLI] = [label]
    return files


def _stages() -> dict[str, dict]:
    return yaml.safe_load(DVC_YAML.read_text(encoding="utf-8"))["stages"]


def _outs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]


def _resolved(dep: str) -> str:
    """A dep as DVC resolves it: `${a.b}` from params.yaml (dvc.yaml templating)."""
    import re

    from dsm5lab import dotted

    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    return re.sub(r"\$\{([\w.]+)\}", lambda m: str(dotted.get(params, m.group(1))), dep)


def _covered(path: str, dep: str) -> bool:
    return path == dep or path.startswith(dep.rstrip("/") + "/")


@pytest.mark.parametrize("name", list(_stages()))
def test_stage_deps_match_imports(name):
    """A stage's src/ deps are exactly the files its CLI command can import (plus data they read)."""
    stage = (stages := _stages())[name]
    words = stage["cmd"].split()
    assert words[0] == PKG, f"{name}: cmd does not call the {PKG} CLI: {stage['cmd']}"
    words = tuple(w for w in words[1:3] if not w.startswith("-"))
    commands = _cli_commands()
    key = next((k for k in (words, words[:1]) if k in commands), None)
    assert key, f"{name}: `{PKG} {' '.join(words)}` is not a command in {CLI.relative_to(ROOT)}"
    files = _closure(commands[key], f"cli.{' '.join(key)}")
    deps = stage.get("deps", [])
    used = {str(p.relative_to(ROOT)): chain for p, chain in files.items()}
    problems = []
    for path, chain in sorted(used.items()):
        if path not in NOT_DEPS and not any(_covered(path, d) for d in deps):
            problems.append(f"{name}: {path} is imported ({' -> '.join(chain)}) but not a dep")
    for dep in deps:
        if dep.startswith("src/") and not any(_covered(p, dep) for p in used):
            problems.append(f"{name}: dep {dep} holds nothing `{PKG} {' '.join(key)}` imports")
    # outs of another stage appear when that stage runs; everything else must be in the checkout
    produced = {o for s in stages.values() for o in _outs(s)}
    for dep in map(_resolved, deps):
        if dep not in produced and not (ROOT / dep).exists() and not (ROOT / f"{dep}.dvc").exists():
            problems.append(f"{name}: dep {dep} does not exist (and no stage produces it)")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# ---------------------------------------------------------------- B: Literal choices vs. registries

# Schema field (dotted; `[]` a list item, `*` a dict value) -> registries ("module:NAME") that dispatch
# on its value and must hold exactly its choices (a dict: its keys; a tuple/list/set: its items).
REGISTRIES = {
    "data.source": ["dsm5lab.data.sources:SOURCES"],
    "model.pooling": ["dsm5lab.models.pooling:POOLINGS"],
    "model.criteria_head": ["dsm5lab.models.heads:CRITERIA_HEADS"],
    "model.evidence_head": ["dsm5lab.models.heads:EVIDENCE_HEADS"],
    "train.loss": ["dsm5lab.training.losses:CRITERIA_LOSSES"],
    # the trainer uses optim's decay functions, `dsm5lab bench` maps the same names to HF scheduler names
    "train.scheduler": ["dsm5lab.training.optim:SCHEDULERS", "dsm5lab.bench:SCHEDULES"],
    "hpo.sampler.type": ["dsm5lab.hpo.study:SAMPLERS"],
    "hpo.pruner.type": ["dsm5lab.hpo.study:PRUNERS"],
    "hpo.cv.aggregate": ["dsm5lab.hpo.trial:AGGREGATE"],
    "numerics.cpu_isa": ["dsm5lab.numerics:LEVELS"],
    "evaluate.threshold_objective": ["dsm5lab.evaluation.operating:OBJECTIVES"],
    "train.augment.methods[]": ["dsm5lab.training.augment:METHODS"],
}

# Literal fields with no registry: plain switches whose values are tested where they are used.
NO_REGISTRY = {
    "train.task": "dispatched in several places (models.multitask, training.run, config)",
    "train.input_format": "multi_label vs binary_pairs branches in training.encoding and training.run",
    "train.level": "post vs sentence branch in training.encoding and the TrainConfig validator",
    "train.task_coupling": "a flag models.multitask checks (`coupling == 'coupled'`)",
    "train.precision": "an if-chain in device.autocast_for, plus the fp16 GradScaler in training.run",
    "retention.scope": "current vs all branch in the retention stage",
    "train.threads": "an integer or 'auto', which concurrency.resolve_threads checks by equality",
    "hpo.workers": "an integer or 'auto', which HpoConfig.local_workers checks by equality",
    "hpo.devices": "auto, cpu or a list, which hpo.devices.resolve checks by equality",
    "hpo.objectives[].direction": "passed verbatim to optuna.create_study(directions=...)",
    "hpo.spaces.*.*.type": "Dist shape check in config.hpo and the if-chain in hpo.space",
}


def _literals(model: type[BaseModel], prefix: str = "") -> dict[str, set]:
    """Dotted path -> choices of every Literal reachable from `model` (through lists, dicts, unions)."""
    out = {}

    def walk(ann, path):
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        if origin is typing.Literal:
            out[path] = set(args)
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_literals(ann, path + "."))
        elif origin in (list, tuple, set, frozenset):
            for a in args:
                walk(a, path + "[]")
        elif origin is dict:
            walk(args[1], path + ".*")
        elif origin in (typing.Union, types.UnionType):
            for a in args:
                walk(a, path)

    for name, field in model.model_fields.items():
        walk(field.annotation, prefix + name)
    return out


def _schema_literals() -> dict[str, set]:
    from dsm5lab.config import Params  # the public path; the walk reaches config.hpo's classes through it

    return _literals(Params)


def test_every_literal_field_is_listed():
    """A new Literal field must go into REGISTRIES or NO_REGISTRY; a listed one must still exist."""
    found = set(_schema_literals())
    listed = set(REGISTRIES) | set(NO_REGISTRY)
    assert not set(REGISTRIES) & set(NO_REGISTRY), "a field is in both REGISTRIES and NO_REGISTRY"
    unlisted, stale = sorted(found - listed), sorted(listed - found)
    assert not unlisted, f"Literal fields in neither REGISTRIES nor NO_REGISTRY: {unlisted}"
    assert not stale, f"listed fields that are no Literal of the schema: {stale}"


@pytest.mark.parametrize("field", list(REGISTRIES))
def test_literal_matches_registry(field):
    """The schema's choices for a field are exactly the keys (or items) of each registry dispatching on it."""
    schema = _schema_literals()
    assert field in schema, f"{field} is not a Literal field of Params any more"
    problems = []
    for ref in REGISTRIES[field]:
        mod, attr = ref.split(":")
        try:
            registry = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{field}: registry {mod}.{attr} not found ({exc})")
            continue
        choices = set(registry)  # dict keys or sequence items; order does not matter
        if only := schema[field] - choices:
            problems.append(f"{field}: schema Literal has {sorted(only)} that {mod}.{attr} lacks")
        if only := choices - schema[field]:
            problems.append(f"{field}: {mod}.{attr} has {sorted(only)} that the schema Literal lacks")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# ---------------------------------------------------------------- C: layout.py vs. dvc.yaml outs

def test_layout_paths_are_declared_stage_outputs():
    """Every stage path in dsm5lab.layout is a dvc.yaml out, metric or plot, or lies inside one."""
    from dsm5lab import layout

    declared = [o for s in _stages().values() for o in _outs(s)]
    paths = {name: value.as_posix() for name, value in vars(layout).items()
             if isinstance(value, Path) and value.parts[0] in ("stages", "metrics", "reports")}
    assert paths, "layout.py names no stage paths"
    # the pruning benchmark is written by `dsm5lab hpo compare-pruning`, a command outside the pipeline
    outside = {"HPO_PRUNING_BENCH"}
    missing = [f"layout.{n} = {p}" for n, p in sorted(paths.items())
               if n not in outside and not any(p == o or p.startswith(o.rstrip("/") + "/") or
                                               o.startswith(p + "/") for o in declared)]
    assert not missing, "not declared in dvc.yaml: " + ", ".join(missing)
