"""Static checks of every docker/*.Dockerfile (no Docker engine here): each COPY source exists in
the build context (the repository root) and survives .dockerignore, the ENTRYPOINT module imports,
builds are multi-stage with wheels made in a builder stage, and the final stage runs as non-root
without compilers or model weights."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
WEIGHTS = (".onnx", ".plan", ".engine", ".pt", ".pt2", ".safetensors")
WHEEL_BUILD = re.compile(r"\bpip3? wheel\b|-m pip wheel\b|-m build\b|\buv build\b")
COMPILERS = re.compile(
    r"\b(build-essential|gcc|g\+\+|clang|cmake|make|python3-dev|cuda-nvcc[\w.-]*)\b"
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, rest)


def parse(path: Path) -> list[Stage]:
    """Stages of a Dockerfile: line continuations joined, comments dropped, ARGs before FROM kept."""
    logical, buf = [], ""
    for raw in path.read_text().splitlines():
        if raw.strip().startswith("#") and not buf:
            continue
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        logical.append(buf + raw)
        buf = ""
    args, stages = {}, []
    for line in filter(str.strip, logical):
        instr, _, rest = line.strip().partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "ARG" and not stages:
            key, _, value = rest.partition("=")
            args[key] = value
        elif instr == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            assert stages, f"{path.name}: {instr} before FROM"
            stages[-1].instructions.append((instr, rest))
    return stages


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "(?:/.*)?$")


def ignored(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    result = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        if _glob_regex(pattern.lstrip("!").strip("/")).match(rel):
            result = not negate
    return result


def _copy_sources(rest: str) -> tuple[list[str], str | None]:
    flags = [t for t in rest.split() if t.startswith("--")]
    tokens = [t for t in rest.split() if not t.startswith("--")]
    from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
    if tokens and tokens[0].startswith("["):
        tokens = json.loads(rest[rest.index("[") :])
    return tokens[:-1], from_stage


def test_there_are_dockerfiles_for_each_container():
    names = {p.name for p in DOCKERFILES}
    assert {
        "predictor-cpu.Dockerfile",
        "predictor-gpu.Dockerfile",
        "transformer.Dockerfile",
    } <= names


def test_dockerignore_keeps_weights_and_venvs_out():
    for rel in (
        "models/digits/v1/model.onnx",
        "x/model.plan",
        ".venv/bin/python",
        "tests/procs.py",
        ".git/HEAD",
    ):
        assert ignored(rel), rel
    assert not ignored("src/kbundle/cli.py") and not ignored("pyproject.toml")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_in_the_build_context(dockerfile):
    stages = parse(dockerfile)
    names = [s.name for s in stages]
    for index, stage in enumerate(stages):
        for instr, rest in stage.instructions:
            if instr not in ("COPY", "ADD"):
                continue
            sources, from_stage = _copy_sources(rest)
            if from_stage is not None:
                assert from_stage in names[:index], (
                    f"{dockerfile.name}: --from={from_stage} is not an earlier stage"
                )
                continue
            for src in sources:
                assert not src.endswith(WEIGHTS), f"{dockerfile.name}: copies model weights {src}"
                assert (REPO / src).exists(), (
                    f"{dockerfile.name}: COPY source {src} missing from the repo root"
                )
                assert not ignored(src.rstrip("/")), (
                    f"{dockerfile.name}: COPY source {src} is in .dockerignore"
                )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_with_wheels_from_a_builder(dockerfile):
    stages = parse(dockerfile)
    assert len(stages) >= 2, f"{dockerfile.name}: not multi-stage"
    builders = " ".join(
        rest for s in stages[:-1] for instr, rest in s.instructions if instr == "RUN"
    )
    assert WHEEL_BUILD.search(builders), f"{dockerfile.name}: no wheels built in a builder stage"
    final = stages[-1]
    # Build output arrives by `COPY --from=builder` or a `RUN --mount=...,from=builder` bind.
    assert any(
        (i == "COPY" and "--from=" in r) or (i == "RUN" and re.search(r"--mount=\S*from=", r))
        for i, r in final.instructions
    ), "final stage takes no build output"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_is_non_root_without_compilers(dockerfile):
    final = parse(dockerfile)[-1]
    users = [rest for instr, rest in final.instructions if instr == "USER"]
    assert users, f"{dockerfile.name}: final stage has no USER (runs as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{dockerfile.name}: final USER is {users[-1]}"
    for instr, rest in final.instructions:
        if instr == "RUN" and (
            "apt-get install" in rest or "apk add" in rest or "yum install" in rest
        ):
            found = COMPILERS.search(rest)
            assert not found, (
                f"{dockerfile.name}: final stage installs a compiler ({found.group(0)})"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_names_a_kbundle_module_with_a_main(dockerfile):
    """The ENTRYPOINT's `python -m MODULE` exists in this package and has a `__main__` that imports
    (checked in the dev environment: whether the image itself has the module's dependencies is a
    container test, which needs a built image)."""
    entry = [rest for instr, rest in parse(dockerfile)[-1].instructions if instr == "ENTRYPOINT"]
    assert entry, f"{dockerfile.name}: no ENTRYPOINT in the final stage"
    argv = json.loads(entry[-1])  # exec form: signals reach python, no shell in between
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("kbundle."), argv
    module = argv[2]
    code = (
        "import importlib, importlib.util, sys\n"
        f"if importlib.util.find_spec({module!r} + '.__main__') is None:\n"
        f"    sys.exit('no ' + {module!r} + '.__main__: python -m cannot run it')\n"
        f"importlib.import_module({module!r} + '.__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, f"{module}: {result.stderr[-2000:]}"
