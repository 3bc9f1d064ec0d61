"""What the operator does with a finished run: a pure table from the runner's exit code.

The runner's exit code says what happened (:class:`~huskies_agent.runner.result.ExitCode`);
this module says what it means for the story and the node: advance, count a failure
towards blocking the story, or release the claim without counting (the failure was the
environment's: a revoked API key, an overloaded API, a lost claim, a deleted pod). The
same table is in ``docs/runner.md`` ("Agent outcomes"); a test keeps them in step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from huskies_agent.runner.result import ExitCode


class Action(enum.Enum):
    #: The stage is done: move the story on.
    ADVANCE = "advance"
    #: The story's failure: count it (``max_retries`` of them block the story).
    COUNT = "count"
    #: Not the story's failure: release the claim without counting; any node may retry.
    RELEASE = "release"


class NodeHold(enum.Enum):
    """Whether this node should stop claiming for a while after such a run."""

    NONE = "none"
    #: The model API is rate limited or overloaded: claim again after a backoff.
    BACKOFF = "backoff"
    #: The API key is refused: every story would fail the same way; claim again only
    #: when the credentials change (or after a long backoff), and say so in presence.
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

TABLE: dict[ExitCode, Disposition] = {
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
    ExitCode.TERMINATED: Disposition(Action.RELEASE, NodeHold.NONE, "runner terminated", "Failed"),
    ExitCode.AGENT_AUTH: Disposition(Action.RELEASE, NodeHold.CREDENTIALS, "model API refused the key", "Failed"),
    ExitCode.AGENT_UNAVAILABLE: Disposition(Action.RELEASE, NodeHold.BACKOFF, "model API unavailable", "Failed"),
    ExitCode.AGENT_BUDGET: Disposition(Action.COUNT, NodeHold.NONE, "budget reached", _COUNTED),
}

#: No termination message (OOM kill, SIGKILL after the grace period) or a code this table lacks.
UNKNOWN = Disposition(Action.COUNT, NodeHold.NONE, "runner ended without a result", _COUNTED)


def disposition(exit_code: int | None) -> Disposition:
    """What to do with a run that ended with ``exit_code`` (pure)."""
    if exit_code is None:
        return UNKNOWN
    try:
        return TABLE[ExitCode(exit_code)]
    except ValueError:
        return UNKNOWN
