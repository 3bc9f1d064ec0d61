"""The runner's inputs: command-line options, ``HUSKIES_*`` env vars, and their validation.

Options win over env vars. Everything that ends up in a git argument, a path or a
commit message is checked here, before anything runs.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from huskies_agent import contract
from huskies_agent.pipeline import stages
from huskies_agent.pipeline.model import branch_for, story_id_problem
from huskies_agent.runner.result import ExitCode, RunnerError

DEFAULT_WORKDIR = contract.WORKDIR
DEFAULT_TERMINATION_LOG = contract.TERMINATION_LOG
DEFAULT_SSH_KEY_FILE = f"{contract.GIT_SECRET_DIR}/{contract.GIT_SSH_KEY_KEY}"
DEFAULT_KNOWN_HOSTS_FILE = f"{contract.GIT_SECRET_DIR}/{contract.GIT_KNOWN_HOSTS_KEY}"
#: The private state directory when HUSKIES_STATE_DIR is not set (all phases in one process).
DEFAULT_STATE_SUBDIR = ".runner"
DEFAULT_CLAUDE_BIN = "claude"
DEFAULT_AGENT_TIMEOUT_SECONDS = 2 * 3600.0
DEFAULT_GIT_TIMEOUT_SECONDS = 600.0
DEFAULT_CLONE_DEPTH = 50
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 120.0
DEFAULT_AUTHOR_NAME = "huskies-agent"
DEFAULT_AUTHOR_EMAIL = "huskies-agent@users.noreply.localhost"

#: option name -> env var (options win).
OPTION_ENV: dict[str, str] = {dest: env for _flag, dest, env in contract.OPTIONS}

_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_SCP_LIKE = re.compile(r"^(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+:(?!//)[^\s]+$")
_URL_SCHEMES = frozenset({"https", "http", "ssh", "git", "file"})
_MAX_TEXT = 2048


@dataclass(frozen=True)
class RunnerConfig:
    story_id: str
    stage: str
    repo_url: str
    base_branch: str
    epoch: int
    node: str
    workdir: Path
    #: Private to the git uid: credentials helper, the publisher's repository, its records.
    state_dir: Path
    termination_log: str
    claude_bin: str
    model: str
    max_turns: int | None
    max_budget_usd: float | None
    agent_timeout_seconds: float
    git_timeout_seconds: float
    clone_depth: int
    git_token: str
    #: A file holding the token (the Secret volume); read by git's credential helper only.
    git_token_file: str
    git_username: str
    ssh_key_file: str
    known_hosts_file: str
    author_name: str
    author_email: str
    #: How often the work in progress is pushed (fenced) while the agent runs.
    checkpoint_interval_seconds: float
    #: The publisher takes the agent's container as gone after this long without a heartbeat.
    heartbeat_timeout_seconds: float

    @property
    def branch(self) -> str:
        return branch_for(self.story_id)

    @property
    def identity(self) -> dict[str, str]:
        """Author and committer of the runner's commits, as git env vars."""
        return {
            "GIT_AUTHOR_NAME": self.author_name, "GIT_AUTHOR_EMAIL": self.author_email,
            "GIT_COMMITTER_NAME": self.author_name, "GIT_COMMITTER_EMAIL": self.author_email,
        }

    @property
    def role(self) -> str:
        return stages.ROLE_FOR_STAGE[self.stage]


def raw_inputs(options: Mapping[str, object], environ: Mapping[str, str]) -> dict[str, str]:
    """The six contract inputs as strings: the option when given, else the env var, else ""."""
    out: dict[str, str] = {}
    for name, env_name in OPTION_ENV.items():
        value = options.get(name)
        if value is None or value == "":
            value = environ.get(env_name, "")
        out[name] = str(value)
    return out


def _bad(message: str) -> RunnerError:
    return RunnerError(ExitCode.INVALID_INPUT, message)


def _shown(value: str) -> str:
    """A value quoted for an error message, cut to a sane length."""
    return repr(value if len(value) <= 80 else value[:77] + "...")


def check_repo_url(url: str) -> None:
    if not url:
        raise _bad("repo URL is missing (--repo-url or HUSKIES_REPO_URL)")
    if len(url) > _MAX_TEXT or not url.isprintable() or any(c.isspace() for c in url):
        raise _bad("repo URL must be one printable word of at most 2048 characters")
    if url.startswith("-"):
        raise _bad(f"repo URL may not start with '-': {_shown(url)}")
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme.lower() not in _URL_SCHEMES:
            raise _bad(f"repo URL scheme {parts.scheme!r} is not one of {', '.join(sorted(_URL_SCHEMES))}")
        if parts.password is not None:
            raise _bad("repo URL may not carry a password; supply HUSKIES_GIT_TOKEN instead")
        if parts.scheme.lower() != "file" and not parts.hostname:
            raise _bad(f"repo URL has no host: {_shown(url)}")
        return
    if _SCP_LIKE.match(url):
        return
    raise _bad(f"repo URL is neither scheme://host/path nor user@host:path: {_shown(url)}")


def check_branch_name(name: str, what: str) -> None:
    if not name:
        raise _bad(f"{what} is missing")
    if len(name) > 255 or name.startswith("-") or not name.isprintable():
        raise _bad(f"{what} is not a valid branch name: {_shown(name)}")
    try:
        proc = subprocess.run(
            ["git", "check-ref-format", f"refs/heads/{name}"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunnerError(ExitCode.GIT_FAILED, f"git check-ref-format could not run: {exc}") from exc
    if proc.returncode != 0:
        raise _bad(f"{what} is not a valid branch name: {_shown(name)}")


def _optional_int(environ: Mapping[str, str], name: str, minimum: int) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise _bad(f"{name} must be a whole number, got {_shown(raw)}") from None
    if value < minimum:
        raise _bad(f"{name} must be at least {minimum}, got {value}")
    return value


def _optional_float(environ: Mapping[str, str], name: str, *, zero_is_unset: bool = False) -> float | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    if zero_is_unset and raw in ("0", "0.0"):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _bad(f"{name} must be a number, got {_shown(raw)}") from None
    if not value > 0 or value == float("inf"):
        raise _bad(f"{name} must be a positive number, got {_shown(raw)}")
    return value


def load_config(options: Mapping[str, object], environ: Mapping[str, str] | None = None) -> RunnerConfig:
    """Validated inputs; raises :class:`RunnerError` (INVALID_INPUT) naming the first problem."""
    environ = os.environ if environ is None else environ
    raw = raw_inputs(options, environ)

    problem = story_id_problem(raw["story_id"]) if raw["story_id"] else "story id is missing"
    if problem:
        raise _bad(f"invalid story id {_shown(raw['story_id'])}: {problem}")
    story_id = raw["story_id"]

    stage = raw["stage"]
    if stage not in stages.ACTIVE_STAGES:
        raise _bad(
            f"invalid stage {_shown(stage)}: expected one of {', '.join(sorted(stages.ACTIVE_STAGES))}"
        )

    epoch_text = raw["epoch"].strip()
    if not epoch_text:
        raise _bad("claim epoch is missing (--epoch or HUSKIES_EPOCH)")
    try:
        epoch = int(epoch_text)
    except ValueError:
        raise _bad(f"claim epoch must be a whole number, got {_shown(epoch_text)}") from None
    if epoch < 0:
        raise _bad(f"claim epoch must be 0 or more, got {epoch}")

    node = raw["node"]
    if not _NODE_ID.match(node):
        raise _bad(
            f"invalid node id {_shown(node)}: 1-128 letters, digits, '.', '_', ':', '@' or '-'"
        )

    check_repo_url(raw["repo_url"])
    base_branch = raw["base_branch"] or "main"
    check_branch_name(base_branch, "base branch")
    check_branch_name(branch_for(story_id), "story branch")

    max_turns = _optional_int(environ, "HUSKIES_MAX_TURNS", 1)
    timeout = _optional_float(environ, "HUSKIES_AGENT_TIMEOUT_SECONDS") or DEFAULT_AGENT_TIMEOUT_SECONDS
    git_timeout = _optional_float(environ, "HUSKIES_GIT_TIMEOUT_SECONDS") or DEFAULT_GIT_TIMEOUT_SECONDS
    depth = _optional_int(environ, "HUSKIES_CLONE_DEPTH", 0)

    ssh_key = environ.get("HUSKIES_GIT_SSH_KEY_FILE", "")
    if not ssh_key and Path(DEFAULT_SSH_KEY_FILE).is_file():
        ssh_key = DEFAULT_SSH_KEY_FILE
    known_hosts = environ.get("HUSKIES_GIT_KNOWN_HOSTS_FILE", "")
    if not known_hosts and Path(DEFAULT_KNOWN_HOSTS_FILE).is_file():
        known_hosts = DEFAULT_KNOWN_HOSTS_FILE

    workdir = Path(environ.get(contract.ENV_WORKDIR) or DEFAULT_WORKDIR)
    state_dir = Path(environ.get(contract.ENV_STATE_DIR) or workdir / DEFAULT_STATE_SUBDIR)
    checkpoint = _optional_float(environ, contract.ENV_CHECKPOINT_INTERVAL)
    return RunnerConfig(
        story_id=story_id,
        stage=stage,
        repo_url=raw["repo_url"],
        base_branch=base_branch,
        epoch=epoch,
        node=node,
        workdir=workdir,
        state_dir=state_dir,
        termination_log=environ.get(contract.ENV_TERMINATION_LOG, DEFAULT_TERMINATION_LOG),
        claude_bin=environ.get("HUSKIES_CLAUDE_BIN") or DEFAULT_CLAUDE_BIN,
        model=environ.get("HUSKIES_MODEL", "").strip(),
        max_turns=max_turns,
        max_budget_usd=_optional_float(environ, "HUSKIES_MAX_BUDGET_USD", zero_is_unset=True),
        agent_timeout_seconds=timeout,
        git_timeout_seconds=git_timeout,
        clone_depth=DEFAULT_CLONE_DEPTH if depth is None else depth,
        git_token=environ.get(contract.ENV_GIT_TOKEN, "").strip(),
        git_token_file=environ.get(contract.ENV_GIT_TOKEN_FILE, "").strip(),
        git_username=environ.get("HUSKIES_GIT_USERNAME", "").strip() or "x-access-token",
        ssh_key_file=ssh_key,
        known_hosts_file=known_hosts,
        author_name=_one_line(environ.get("HUSKIES_GIT_AUTHOR_NAME", "")) or DEFAULT_AUTHOR_NAME,
        author_email=_one_line(environ.get("HUSKIES_GIT_AUTHOR_EMAIL", "")) or DEFAULT_AUTHOR_EMAIL,
        checkpoint_interval_seconds=checkpoint or contract.DEFAULT_CHECKPOINT_INTERVAL_SECONDS,
        heartbeat_timeout_seconds=_optional_float(environ, contract.ENV_AGENT_HEARTBEAT_TIMEOUT)
        or DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
    )


def _one_line(value: str) -> str:
    return " ".join(value.split())[:200]
