"""The contract between the operator (which builds the story Job) and the runner (which runs in it).

Both sides import these names; nothing else defines them. ``docs/runner.md`` describes
the same contract for people.

Pod layout (see ``docs/runner.md``, "Isolation"): the init container ``clone`` and the
container ``publish`` run as :data:`GIT_UID` and alone see the git Secret; the
container ``agent`` runs Claude Code as :data:`AGENT_UID` and sees only the shared
workspace and the Anthropic key. The run's result is the termination message of
:data:`RESULT_CONTAINER`.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any


class ExitCode(enum.IntEnum):
    """Exit status of ``huskies-agent run-story`` (the table is in ``runner/result.py`` and the docs)."""

    OK = 0
    INTERNAL = 1
    INVALID_INPUT = 10
    STORY_NOT_FOUND = 11
    REMOTE_FAILED = 12
    PUSH_REJECTED = 13
    FENCED = 14
    AGENT_TIMEOUT = 15
    AGENT_FAILED = 16
    NO_CHANGES = 17
    GIT_FAILED = 18
    TERMINATED = 19
    #: The model API refused the key (401/403): not the story's failure.
    AGENT_AUTH = 20
    #: The model API stayed unavailable after the CLI's own retries: retry later, not counted.
    AGENT_UNAVAILABLE = 21
    #: The agent reached its budget (--max-budget-usd): counted like a failure.
    AGENT_BUDGET = 22


class Action(enum.Enum):
    """What a finished run means for its story."""

    #: The stage is done: move the story on.
    ADVANCE = "advance"
    #: The story's failure: count it (``max_retries`` of them block the story).
    COUNT = "count"
    #: Not the story's failure: release the claim without counting; any node may retry.
    RELEASE = "release"


class NodeHold(enum.Enum):
    """Whether the node that ran it stops claiming for a while after such a run."""

    NONE = "none"
    #: The model API is rate limited or overloaded: claim again after a backoff.
    BACKOFF = "backoff"
    #: The API key is refused: every story would fail the same way; pause claiming
    #: (``agent_auth_pause_seconds``) and say so in presence.
    CREDENTIALS = "credentials"


@dataclass(frozen=True)
class Disposition:
    action: Action
    hold: NodeHold
    #: Short reason for the StoryJob status and Event (the runner's error adds the details).
    reason: str
    #: The StoryJob phase this maps to.
    phase: str


_COUNTED = "Failed"

#: What the operator does with a run that ended with each exit code. The same table is in
#: ``docs/runner.md`` ("Agent outcomes"); a test keeps them in step.
DISPOSITIONS: dict[ExitCode, Disposition] = {
    ExitCode.OK: Disposition(Action.ADVANCE, NodeHold.NONE, "completed", "Succeeded"),
    ExitCode.INTERNAL: Disposition(Action.COUNT, NodeHold.NONE, "runner error", _COUNTED),
    ExitCode.INVALID_INPUT: Disposition(Action.COUNT, NodeHold.NONE, "invalid input", _COUNTED),
    ExitCode.STORY_NOT_FOUND: Disposition(Action.COUNT, NodeHold.NONE, "story file not found", _COUNTED),
    ExitCode.REMOTE_FAILED: Disposition(Action.COUNT, NodeHold.NONE, "git remote failed", _COUNTED),
    ExitCode.PUSH_REJECTED: Disposition(Action.COUNT, NodeHold.NONE, "push rejected", _COUNTED),
    ExitCode.FENCED: Disposition(Action.RELEASE, NodeHold.NONE, "push fenced by a newer claim", "Lost"),
    ExitCode.AGENT_TIMEOUT: Disposition(Action.COUNT, NodeHold.NONE, "agent timed out", _COUNTED),
    ExitCode.AGENT_FAILED: Disposition(Action.COUNT, NodeHold.NONE, "agent failed", _COUNTED),
    ExitCode.NO_CHANGES: Disposition(Action.COUNT, NodeHold.NONE, "no changes", _COUNTED),
    ExitCode.GIT_FAILED: Disposition(Action.COUNT, NodeHold.NONE, "local git failed", _COUNTED),
    ExitCode.TERMINATED: Disposition(Action.RELEASE, NodeHold.NONE, "runner terminated", "Released"),
    ExitCode.AGENT_AUTH: Disposition(Action.RELEASE, NodeHold.CREDENTIALS, "model API refused the key", "Released"),
    ExitCode.AGENT_UNAVAILABLE: Disposition(Action.RELEASE, NodeHold.BACKOFF, "model API unavailable", "Released"),
    ExitCode.AGENT_BUDGET: Disposition(Action.COUNT, NodeHold.NONE, "budget reached", _COUNTED),
}

#: No termination message (OOM kill, SIGKILL after the grace period) or a code the table lacks.
UNKNOWN_DISPOSITION = Disposition(Action.COUNT, NodeHold.NONE, "runner ended without a result", _COUNTED)


def disposition(exit_code: int | None) -> Disposition:
    """What to do with a run that ended with ``exit_code`` (pure)."""
    if exit_code is None:
        return UNKNOWN_DISPOSITION
    try:
        return DISPOSITIONS[ExitCode(exit_code)]
    except ValueError:
        return UNKNOWN_DISPOSITION


class Phase(enum.Enum):
    """``huskies-agent run-story <phase>``: one step of a run, each in its own container."""

    #: All three in one process, one uid: local use and tests only, no credential isolation.
    ALL = "all"
    CLONE = "clone"
    AGENT = "agent"
    PUBLISH = "publish"


# ---------------------------------------------------------------------- containers and users
CLONE_CONTAINER = "clone"
AGENT_CONTAINER = "agent"
PUBLISH_CONTAINER = "publish"
#: The container whose termination message and exit code are the run's result ...
RESULT_CONTAINER = PUBLISH_CONTAINER
#: ... or, when the run ended in the init container (bad input, remote down, fenced at
#: the start), that one. Never the agent's container: the agent writes what it likes there.
RESULT_INIT_CONTAINER = CLONE_CONTAINER
#: Runs Claude Code; never sees git credentials.
AGENT_UID = 10001
#: Runs clone and publish; holds the git credentials.
GIT_UID = 10002

COMMAND = ("huskies-agent", "run-story")

# ---------------------------------------------------------------------- paths in the pod
#: The workspace shared by all three containers (an emptyDir).
WORKDIR = "/work"
#: The publisher's private state (an emptyDir mounted only in clone and publish).
STATE_DIR = "/var/run/huskies/publisher"
#: Where the git Secret is mounted (clone and publish only).
GIT_SECRET_DIR = "/var/run/secrets/huskies/git"
GIT_TOKEN_KEY = "token"
GIT_SSH_KEY_KEY = "ssh-privatekey"
GIT_KNOWN_HOSTS_KEY = "known_hosts"
ANTHROPIC_KEY_KEY = "api-key"
TERMINATION_LOG = "/dev/termination-log"

# ---------------------------------------------------------------------- env names
ENV_WORKDIR = "HUSKIES_WORKDIR"
ENV_STATE_DIR = "HUSKIES_STATE_DIR"
ENV_TERMINATION_LOG = "HUSKIES_TERMINATION_LOG"
ENV_GIT_TOKEN = "HUSKIES_GIT_TOKEN"
ENV_GIT_TOKEN_FILE = "HUSKIES_GIT_TOKEN_FILE"
ENV_GIT_SSH_KEY_FILE = "HUSKIES_GIT_SSH_KEY_FILE"
ENV_GIT_KNOWN_HOSTS_FILE = "HUSKIES_GIT_KNOWN_HOSTS_FILE"
ENV_CHECKPOINT_INTERVAL = "HUSKIES_CHECKPOINT_INTERVAL_SECONDS"
#: Without a heartbeat from the agent's container for this long, the publisher takes it as gone.
ENV_AGENT_HEARTBEAT_TIMEOUT = "HUSKIES_AGENT_HEARTBEAT_TIMEOUT_SECONDS"
ENV_MAX_TURNS = "HUSKIES_MAX_TURNS"
ENV_MODEL = "HUSKIES_MODEL"
ENV_MAX_BUDGET_USD = "HUSKIES_MAX_BUDGET_USD"
ENV_AGENT_TIMEOUT = "HUSKIES_AGENT_TIMEOUT_SECONDS"
ENV_ANTHROPIC_KEY = "ANTHROPIC_API_KEY"

DEFAULT_CHECKPOINT_INTERVAL_SECONDS = 600.0
#: Time the pod gets after SIGTERM: the agent is stopped, its work handed over and pushed.
TERMINATION_GRACE_SECONDS = 120

#: ``(option, dest, env var)`` of the run's inputs; options win over env vars.
OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("--story-id", "story_id", "HUSKIES_STORY_ID"),
    ("--stage", "stage", "HUSKIES_STAGE"),
    ("--repo-url", "repo_url", "HUSKIES_REPO_URL"),
    ("--base-branch", "base_branch", "HUSKIES_BASE_BRANCH"),
    ("--epoch", "epoch", "HUSKIES_EPOCH"),
    ("--node", "node", "HUSKIES_NODE_ID"),
)

# ---------------------------------------------------------------------- the result message
#: Kubernetes keeps at most 4096 bytes of a termination message; stay clearly below.
MAX_MESSAGE_BYTES = 4000
RESULT_FIELDS = (
    "story_id", "stage", "branch", "commit", "base_commit", "pushed", "exit_code", "error",
    "agent_exit_status", "turns", "cost_usd", "epoch",
)


def parse_result(message: str) -> dict[str, Any]:
    """The runner's one-line JSON result (the last JSON object line); ``{}`` when there is none."""
    for line in reversed(message.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(data, dict):
                return data
    return {}
