"""The command line as documented: every `dsm5lab ...` command and `make` target README.md shows exists: each command runs with --help,
each `--option` it is shown with is one the command takes, and each make target is in the Makefile.

So a documented command cannot disappear silently (as `dsm5lab bench` once did).
"""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from conftest import ROOT
from dsm5lab.cli import app

README = (ROOT / "README.md").read_text(encoding="utf-8")
ROOT_CMD = typer.main.get_command(app)


def code_spans(text: str) -> list[str]:
    """Lines of fenced code blocks and inline `code` spans (prose is not a command)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            out.append(line)
        else:
            out += re.findall(r"`([^`]+)`", line)
    return out


def invocations(prog: str) -> list[list[str]]:
    """The words after each `prog` in README code, up to a comment, pipe or shell separator."""
    found = []
    for span in code_spans(README):
        if span.lstrip().startswith("docker"):  # `dsm5lab` there is the image name
            continue
        for m in re.finditer(rf"(?<![\w./-]){prog}(?![\w./-])((?:\s+[^\s#|;&`]+)*)", span):
            found.append(m.group(1).split())
    return found


def resolve(words: list[str]):
    """The subcommand path the words name, and that command (typer's own click, so duck-typed)."""
    cmd, path = ROOT_CMD, []
    for w in words:
        if w in getattr(cmd, "commands", {}):
            cmd, path = cmd.commands[w], [*path, w]
        else:
            break
    return path, cmd


DSM5LAB = [w for w in invocations("dsm5lab") if w]  # a bare `dsm5lab` names the CLI itself
COMMANDS = sorted({" ".join(resolve(w)[0]) for w in DSM5LAB})


def test_readme_shows_commands():
    assert len(DSM5LAB) > 30 and {"prepare", "train", "evaluate", "retention", "hpo run", "gate", "bench"} <= set(
        COMMANDS)


@pytest.mark.parametrize("words", DSM5LAB, ids=[" ".join(w)[:60] for w in DSM5LAB])
def test_every_readme_command_exists_with_its_options(words):
    path, cmd = resolve(words)
    assert path, f"`dsm5lab {' '.join(words)}`: {words[0]!r} is not a dsm5lab command"
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    for w in (w.strip("[]()") for w in words[len(path):]):  # `[--top-k 3]`: an optional part
        if re.fullmatch(r"--[a-z][a-z0-9-]*(=.*)?", w):
            assert w.split("=")[0] in known, f"`dsm5lab {' '.join(words)}`: {w} is not an option of " \
                                             f"`dsm5lab {' '.join(path)}` ({', '.join(sorted(known))})"


def test_every_make_target_in_the_readme_exists():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z][\w-]*)\s*:", makefile, flags=re.M))
    shown = {w[0] for w in invocations("make") if w and not w[0].startswith("-") and "=" not in w[0]}
    assert {"run", "test"} <= shown
    assert shown <= targets, f"README shows make {sorted(shown - targets)}, not in the Makefile"


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"dsm5lab {version('dsm5lab')}\n"


def test_our_optuna_calls_raise_no_deprecation_warnings():
    """Every `hpo run` printed a FutureWarning from our own TPESampler arguments (optuna 4.9)."""
    import warnings
    from types import SimpleNamespace

    import optuna

    from dsm5lab.hpo.study import SAMPLERS

    for kind, factory in SAMPLERS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            factory(optuna.samplers, SimpleNamespace(n_startup_trials=3), 0)


def test_flags_show_no_value_placeholder_in_any_help():
    """Boolean flags take no value; typer 0.29 rendered `<bool>` beside each (cli._flag_type hides it)."""
    import click
    import typer

    def walk(cmd: click.Command, path: list[str]):
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    seen = 0
    for path in walk(typer.main.get_command(app), []):
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, path
        assert "<bool>" not in result.output, (path, result.output)
        seen += "--help" in result.output
    assert seen > 20  # every command and group (23 when written)
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert "<path>" in result.output  # options with a value keep their type


def readme_overrides() -> list[tuple[str, str]]:
    """(key, value) of every `-S key=value` / `--set key=value` in README code; a DVC grid (a,b) gives each value."""
    found = []
    for span in code_spans(README):
        for m in re.finditer(r"(?:-S|--set)\s+'?([a-z_][\w.]*)=([^\s')]+)'?", span):
            key, value = m.groups()
            if value.startswith("$") or key == "key":  # a shell variable or `key=value` stands for the user's own
                continue
            values = [value] if value.startswith("[") else value.split(",")
            found += [(key, v) for v in values]
    return found


OVERRIDES = readme_overrides()


def test_readme_shows_overrides():
    assert len(OVERRIDES) > 20 and ("hpo.devices", "[0,1,2,3]") in OVERRIDES


@pytest.mark.parametrize("key, value", OVERRIDES, ids=[f"{k}={v}"[:60] for k, v in OVERRIDES])
def test_every_readme_override_names_a_param_and_a_valid_value(key, value):
    """`dvc exp run -S hpo.devices=[0,1,2,3]` as the README shows it: the key exists and the value validates."""
    from conftest import default_params
    from dsm5lab.config import apply_overrides, validate

    raw = apply_overrides(default_params(), [f"{key}={value}"])
    if key == "hpo.workers" or key == "hpo.devices":  # several processes need a storage that serves them
        raw["hpo"]["storage"] = "journal:stages/hpo/storage/journal.log"
    validate(raw, source="README")
