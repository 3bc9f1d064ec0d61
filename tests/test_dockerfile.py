"""Invariants of the Dockerfile, checked without a Docker engine.

Pinned bases, both targets, non-root numeric users, entrypoints naming real
subcommands, a pinned Claude Code CLI, no secrets, a whitelisting .dockerignore.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from huskies_agent.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|PRIVATE|CREDENTIAL|(^|_)KEY($|_)", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"sk-ant-|ghp_|github_pat_|glpat-|AKIA[0-9A-Z]{16}|-----BEGIN")


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            match = re.match(r"^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", args, re.IGNORECASE)
            assert match, f"unparsable FROM: {line}"
            stages.append(Stage(match.group(1), match.group(2) or ""))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM: {line}"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def _stage(stages: list[Stage], name: str) -> Stage:
    found = [s for s in stages if s.name == name]
    assert len(found) == 1, f"expected exactly one stage named {name!r}"
    return found[0]


def _env_and_arg_names(stage: Stage) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for instr in stage.instructions:
        if instr.keyword == "ARG":
            name, _, value = instr.args.partition("=")
            pairs.append((name.strip(), value.strip()))
        elif instr.keyword == "ENV":
            for match in re.finditer(r"(\w+)=(\"[^\"]*\"|\S*)", instr.args):
                pairs.append((match.group(1), match.group(2)))
    return pairs


def resolve_from(image: str, global_args: dict[str, str]) -> str:
    """A FROM's image with a global ``ARG`` (``${NAME}`` or ``$NAME``) replaced by its default."""
    var = re.fullmatch(r"\$\{?(\w+)\}?", image)
    if not var:
        assert "$" not in image, f"FROM {image}: use a whole global ARG or a literal image"
        return image
    assert var.group(1) in global_args, f"FROM {image}: {var.group(1)} is not a global ARG with a default"
    return global_args[var.group(1)]


def test_every_base_image_is_pinned_by_tag_and_digest(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    global_args, stages = dockerfile
    names: set[str] = set()
    for stage in stages:
        if stage.image in names:
            names.add(stage.name)
            continue  # built on an earlier stage
        names.add(stage.name)
        image = resolve_from(stage.image, global_args)
        name, _, digest = image.partition("@")
        # A digest names the exact image; the tag says which version it is to a reader.
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"FROM {image}: not pinned by digest"
        repo, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "")
        assert tag, f"FROM {image}: no tag"
        assert tag != "latest", f"FROM {image}: 'latest' is not a pin"
        # Debian's images are pinned by point release (12.15-slim); others by full version.
        assert re.match(r"^\d+\.\d+(\.\d+)?(-|$)", tag), f"FROM {image}: tag {tag!r} is not a full version"
        assert repo


def test_resolve_from() -> None:
    args = {"BASE": "docker.io/library/debian:12.15-slim@sha256:" + "0" * 64}
    assert resolve_from("${BASE}", args) == args["BASE"] and resolve_from("$BASE", args) == args["BASE"]
    assert resolve_from("base", args) == "base"
    with pytest.raises(AssertionError):
        resolve_from("${NOPE}", args)
    with pytest.raises(AssertionError):
        resolve_from("debian:${TAG}", args)


def test_both_targets_exist(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _args, stages = dockerfile
    _stage(stages, "operator")
    _stage(stages, "runner")


@pytest.mark.parametrize(("target", "subcommand"), [("operator", "operator"), ("runner", "run-story")])
def test_targets_run_as_numeric_non_root_users(
    dockerfile: tuple[dict[str, str], list[Stage]], target: str, subcommand: str,
) -> None:
    _args, stages = dockerfile
    stage = _stage(stages, target)
    users = stage.all("USER")
    assert users, f"stage {target} sets no USER"
    user = users[-1].args
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user!r} is not numeric"
    assert all(int(part) != 0 for part in user.split(":")), "USER must not be root"
    # USER comes after every RUN, so nothing runs as root at container start.
    last_user = max(i for i, instr in enumerate(stage.instructions) if instr.keyword == "USER")
    assert not any(instr.keyword == "RUN" for instr in stage.instructions[last_user:])


@pytest.mark.parametrize(("target", "subcommand"), [("operator", "operator"), ("runner", "run-story")])
def test_entrypoints_name_existing_subcommands(
    dockerfile: tuple[dict[str, str], list[Stage]], target: str, subcommand: str,
) -> None:
    _args, stages = dockerfile
    stage = _stage(stages, target)
    entrypoints, cmds = stage.all("ENTRYPOINT"), stage.all("CMD")
    assert entrypoints and cmds, f"stage {target} needs an ENTRYPOINT and a CMD"
    entrypoint = json.loads(entrypoints[-1].args)  # exec form, so signals reach the process
    cmd = json.loads(cmds[-1].args)
    # An init (tini) as PID 1, then the CLI; the subcommand is the CMD, so a pod's `args` replace it.
    assert entrypoint == ["/usr/bin/tini", "--", "huskies-agent"]
    assert cmd == [subcommand]
    assert subcommand in COMMANDS
    runs = " ".join(i.args for s in stages for i in s.all("RUN"))
    assert re.search(r"apt-get install[^&]*\btini\b", runs), "tini is not installed"


def test_claude_code_cli_is_pinned(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    global_args, stages = dockerfile
    text = DOCKERFILE.read_text()
    specs = re.findall(r"@anthropic-ai/claude-code@([^\s\"']+)", text)
    assert specs, "the Claude Code CLI is not installed"
    for spec in specs:
        var = re.fullmatch(r"\$\{?(\w+)\}?", spec)
        version = global_args.get(var.group(1), "") if var else spec
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"claude-code version {spec!r} -> {version!r} is not pinned"


def test_runner_has_git_ssh_and_claude_but_no_node(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _args, stages = dockerfile
    runner = _stage(stages, "runner")
    runs = " ".join(i.args for i in runner.all("RUN"))
    for package in ("git", "openssh-client", "ca-certificates"):
        assert re.search(rf"\b{re.escape(package)}\b", runs), f"runner does not install {package}"
    copies = " ".join(i.args for i in runner.all("COPY"))
    assert "/usr/local/bin/claude" in copies
    # The CLI is a native binary (glibc only): Node.js only runs its installer in the claude stage.
    assert "node" not in copies and not re.search(r"\bnodejs\b|\bnpm\b", runs)


def test_every_stage_builds_on_the_one_debian_base(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    global_args, stages = dockerfile
    external = [s for s in stages if s.image not in {t.name for t in stages}]
    assert [s.name for s in external] == ["base"], "one external base image, made locally by the tests"
    # tools/images/build.sh passes the locally made base's own digest through this ARG.
    assert external[0].image == "${DEBIAN_BASE}"
    assert re.fullmatch(r"docker\.io/library/debian:\d+\.\d+-slim@sha256:[0-9a-f]{64}", global_args["DEBIAN_BASE"])


def test_python_dependencies_come_only_from_the_hash_pinned_locks(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    """Nothing is resolved at build time: the locks with --require-hashes, the package with --no-deps."""
    _args, stages = dockerfile
    runs = " ".join(i.args for s in stages for i in s.all("RUN"))
    installs = re.findall(r"pip install ([^&]*)", runs)
    assert installs, "no pip install in the Dockerfile"
    for install in installs:
        assert "--no-deps" in install, f"pip install {install}: resolves dependencies"
        if "-r " in install:
            assert "--require-hashes" in install, f"pip install {install}: hashes not required"
            locks = set(re.findall(r"-r (\S+)", install))
            assert locks == {"requirements/build.lock", "requirements/runtime.lock"}, locks
        else:
            assert install.split()[-1] == "." and "--no-index" in install, f"pip install {install}"
    assert "pip check" in runs, "the venv is not checked for missing dependencies"
    # What the build stage uninstalls afterwards is build tooling, never a runtime dependency.
    from tests.test_lockfiles import LOCKS, parse_lock

    runtime = set(parse_lock(LOCKS["runtime"].read_text()))
    removed = re.search(r"pip uninstall --yes --quiet ([^&]*)", runs)
    assert removed, "the build tools stay in the venv"
    assert not set(removed.group(1).split()) & runtime
    patterns = dockerignore_patterns()
    for lock in LOCKS.values():
        assert in_context(lock.relative_to(ROOT).as_posix(), patterns), f"{lock.name} is not in the build context"


def test_no_secrets_in_env_or_args(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    global_args, stages = dockerfile
    pairs = list(global_args.items())
    for stage in stages:
        pairs += _env_and_arg_names(stage)
    assert pairs, "parser found no ENV/ARG at all"
    for name, value in pairs:
        assert not _SECRET_NAME.search(name), f"{name} looks like a secret; pass secrets at run time"
        assert not _SECRET_VALUE.search(value), f"{name} holds what looks like a credential"
    assert not _SECRET_VALUE.search(DOCKERFILE.read_text())


def test_no_downloads_outside_package_managers(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _args, stages = dockerfile
    for stage in stages:
        assert not stage.all("ADD"), "use COPY; ADD can fetch URLs"
        for run in stage.all("RUN"):
            assert not re.search(r"\b(curl|wget)\b", run.args), f"download in RUN: {run.args[:80]}"


def test_dockerignore_whitelists_the_context() -> None:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", ".dockerignore should exclude everything first"
    assert "!operator" in lines and "!pyproject.toml" in lines
    assert not any(line.startswith("!") and (".git" in line or ".venv" in line or "test" in line) for line in lines)


def test_parser_handles_continuations() -> None:
    global_args, stages = parse(
        "ARG V=1.2.3\n# c\nFROM a:1.0.0 AS x\nRUN one \\\n  # inner comment\n  two\nUSER 5\n"
    )
    assert global_args == {"V": "1.2.3"}
    assert [(i.keyword, i.args) for i in stages[0].instructions] == [("RUN", "one two"), ("USER", "5")]


# ------------------------------------------------------------------ the development package stays out

DEV_PACKAGE = "huskies_agent_dev"


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def in_context(relative: str, patterns: list[str]) -> bool:
    """Whether Docker sends ``relative`` (a file path) in the build context: the last matching pattern
    wins, ``!`` re-includes, and a pattern naming a directory covers everything below it."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        if any(fnmatch.fnmatchcase(p, body) or fnmatch.fnmatchcase(p, body.removeprefix("**/")) for p in prefixes):
            included = negate
    return included


def build_context(dest: Path) -> Path:
    """Copy the repository files Docker would send (tracked and untracked, no .git) into ``dest``."""
    patterns = dockerignore_patterns()
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT).as_posix()
        if path.is_file() and not rel.startswith((".git/", ".venv/")) and in_context(rel, patterns):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return dest


def test_dockerignore_matcher() -> None:
    patterns = ["*", "!operator", "operator/dev", "**/__pycache__"]
    assert in_context("operator/huskies_agent/cli.py", patterns)
    assert not in_context("operator/dev/x.py", patterns)
    assert not in_context("tests/test_dockerfile.py", patterns)
    assert not in_context("operator/pkg/__pycache__/a.pyc", patterns)


def test_build_context_leaves_out_the_development_package() -> None:
    patterns = dockerignore_patterns()
    assert not in_context(f"operator/{DEV_PACKAGE}/__init__.py", patterns)
    assert not in_context(f"operator/{DEV_PACKAGE}/devcluster/controlplane.py", patterns)
    assert in_context("operator/huskies_agent/cli.py", patterns)
    assert (ROOT / "operator" / DEV_PACKAGE / "__init__.py").is_file(), "the development package moved?"


def test_build_stage_checks_the_development_package_is_absent(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _args, stages = dockerfile
    runs = " ".join(i.args for i in _stage(stages, "build").all("RUN"))
    assert re.search(rf'!\s+/opt/venv/bin/python -c "import {DEV_PACKAGE}"', runs)
    for target in ("operator", "runner"):
        copies = " ".join(i.args for i in _stage(stages, target).all("COPY"))
        assert "operator/" not in copies, f"{target} copies sources past the build stage"


SETUP_BUILD_PY = [sys.executable, "-c", "import setuptools; setuptools.setup()", "--quiet", "build_py", "--build-lib"]


def test_the_image_build_holds_only_the_runtime_package(tmp_path: Path) -> None:
    """Run setuptools' build over exactly the files Docker would send, as ``pip install .`` in the
    build stage does, and look at what would be installed."""
    context = build_context(tmp_path / "context")
    out = tmp_path / "lib"
    proc = subprocess.run(
        [*SETUP_BUILD_PY, str(out)],
        cwd=context, capture_output=True, text=True, check=False, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    tops = {p.name for p in out.iterdir()}
    assert "huskies_agent" in tops
    assert DEV_PACKAGE not in tops, f"the image would carry {DEV_PACKAGE}"
    assert (out / "huskies_agent" / "crds" / "storyjobs.yaml").is_file()
    assert (out / "huskies_agent" / "cli.py").is_file()
    # Control: from the whole checkout the same build does include it (so the check above can fail).
    full = tmp_path / "full"
    proc = subprocess.run(
        [*SETUP_BUILD_PY, str(full)],
        cwd=build_context_all(tmp_path / "all"), capture_output=True, text=True, check=False, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert (full / DEV_PACKAGE / "devcluster" / "kwok-stages.yaml").is_file()


def build_context_all(dest: Path) -> Path:
    """The packaging inputs without the .dockerignore filter."""
    dest.mkdir(parents=True)
    for rel in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / rel, dest / rel)
    shutil.copytree(ROOT / "operator", dest / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest

def test_runner_knows_both_uids_of_the_story_pod(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    """The agent and git uids of the pod layout exist in the image (ssh refuses a uid without a passwd entry)."""
    from huskies_agent import contract

    _args, stages = dockerfile
    runs = " ".join(i.args for i in _stage(stages, "runner").all("RUN"))
    for uid in (contract.AGENT_UID, contract.GIT_UID):
        assert re.search(rf"useradd --uid {uid}\b", runs), f"runner image has no user {uid}"
