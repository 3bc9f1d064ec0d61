"""Running ``huskies-agent run-story`` with the real Claude Code CLI against the scripted model server.

The CLI is the version the Dockerfile pins, installed by ``tools/claude-cli/install.sh``
into ``~/.cache`` (``make test`` does it first; the fixture calls the script too, which
is cheap when cached and fails loudly otherwise). Claude Code refuses to bypass
permission prompts as root, so when the tests run as root (CI) the runner and the CLI
run as an unprivileged uid (:data:`TEST_UID`, like the image's 10001) through
``setpriv``, in a sandbox directory that uid owns, with a private HOME. The runner
itself is the real code path: the same subprocess the pod runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from runner_helpers import RunnerRun, base_env, runner_command

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "tools" / "claude-cli" / "install.sh"
#: The uid the runner and the CLI run as when the tests run as root.
TEST_UID = int(os.environ.get("HUSKIES_TEST_UID", "10001"))
#: The CLI's own retries of failed API calls (default 10 with backoff, minutes): one keeps tests fast.
TEST_MAX_RETRIES = "1"


def install_cli() -> Path:
    """The pinned CLI binary (installed on first use); raises with the script's output on failure."""
    done = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{INSTALL_SCRIPT.name} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    path = Path(done.stdout.strip().splitlines()[-1])
    if not path.is_file():
        raise RuntimeError(f"{INSTALL_SCRIPT.name} printed {path}, which is not a file")
    return path


def check_test_uid_can_run_the_runner() -> None:
    """The runner must import as the test uid (its Python and the package must be readable)."""
    done = subprocess.run(_as_user() + [sys.executable, "-c", "import huskies_agent.runner.run"],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"uid {TEST_UID} cannot run {sys.executable} -m huskies_agent (make the venv and the "
                           f"checkout readable to it, or set HUSKIES_TEST_UID): {done.stderr.strip()[-500:]}")


def _as_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={TEST_UID}", f"--regid={TEST_UID}", "--clear-groups", "--"]


@dataclass
class Sandbox:
    """A directory the test uid owns: the CLI binary, work dirs, termination logs."""

    root: Path
    claude: Path
    runs: int = 0

    def own(self, path: Path) -> Path:
        if os.geteuid() == 0:
            os.chown(path, TEST_UID, TEST_UID)
        return path

    def new_dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(mode=0o755)
        return self.own(path)

    def own_tree(self, path: Path) -> Path:
        for item in [path, *path.rglob("*")]:
            self.own(item)
        return path


@contextlib.contextmanager
def reachable_cli(cli: Path) -> Iterator[Path]:
    """The CLI where the test uid can run it (the cache under /root is private): once per session."""
    root = Path(tempfile.mkdtemp(prefix="huskies-claude-cli-"))
    root.chmod(0o755)
    try:
        claude = root / "claude"
        try:
            os.link(cli, claude)  # cheap on the same filesystem
        except OSError:
            shutil.copy2(cli, claude)
        claude.chmod(0o755)
        yield claude
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def sandbox(claude: Path) -> Iterator[Sandbox]:
    root = Path(tempfile.mkdtemp(prefix="huskies-real-cli-"))
    root.chmod(0o755)
    try:
        box = Sandbox(root, claude)
        box.own(root)
        yield box
    finally:
        shutil.rmtree(root, ignore_errors=True)


def cli_env(
    box: Sandbox, model_url: str, extra: Mapping[str, str] | None = None, workdir: Path | None = None,
) -> tuple[dict[str, str], Path]:
    """The runner's environment for one run and its workdir (inside the sandbox unless given)."""
    box.runs += 1
    workdir = workdir or box.new_dir(f"work{box.runs}")
    env = base_env(workdir)
    env.update({
        "HUSKIES_CLAUDE_BIN": str(box.claude),
        "HUSKIES_WORKDIR": str(workdir),
        "HOME": str(workdir / "home"),
        "HUSKIES_TERMINATION_LOG": str(workdir / "termination.log"),
        "ANTHROPIC_BASE_URL": model_url,
        "ANTHROPIC_API_KEY": "sk-ant-test-key-for-the-scripted-server",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": TEST_MAX_RETRIES,
        "HUSKIES_AGENT_TIMEOUT_SECONDS": "120",
    })
    env.update(extra or {})
    return env, workdir


def real_command(*, story_id: str, stage: str, repo_url: str, epoch: int = 1, node: str = "node-a") -> list[str]:
    return _as_user() + runner_command(story_id=story_id, stage=stage, repo_url=repo_url, epoch=epoch, node=node)


def finish(done_stdout: str, done_stderr: str, returncode: int, env: Mapping[str, str], workdir: Path) -> RunnerRun:
    term = Path(env["HUSKIES_TERMINATION_LOG"])
    termination = term.read_text() if term.exists() else ""
    run = RunnerRun(returncode, done_stdout, done_stderr, termination, workdir)
    lines = [line for line in done_stdout.splitlines() if line.strip()]
    if lines:
        with contextlib.suppress(ValueError):
            run.result = json.loads(lines[-1])
    return run


def run_real(
    box: Sandbox, model_url: str, *, story_id: str, repo_url: str, stage: str = "2_current", epoch: int = 1,
    node: str = "node-a", env: Mapping[str, str] | None = None, timeout: float = 180,
    workdir: Path | None = None, options: bool = True,
) -> RunnerRun:
    """One ``run-story`` process; ``options=False`` passes the story id only (the rest from env)."""
    full_env, workdir = cli_env(box, model_url, env, workdir)
    cmd = real_command(story_id=story_id, stage=stage, repo_url=repo_url, epoch=epoch, node=node)
    if not options:
        cmd = _as_user() + runner_command(story_id=story_id, stage=None, repo_url=None, base_branch=None,
                                          epoch=None, node=None)
    done = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    return finish(done.stdout, done.stderr, done.returncode, full_env, workdir)


def agent_events(run: RunnerRun) -> list[dict[str, object]]:
    """The CLI's stream-json events the runner copied to its stdout."""
    events = []
    for line in run.stdout.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and "type" in event and "exit_code" not in event:
                events.append(event)
    return events
