"""What an agent run amounts to: a pure mapping from :class:`AgentOutcome` to an exit code.

The Claude Code CLI retries failed Messages API calls itself (``CLAUDE_CODE_MAX_RETRIES``,
10 by default, with backoff and ``retry-after``). When it gives up, its ``result`` event
says why: ``api_error_status`` (the HTTP status), ``terminal_reason`` (``api_error``,
``max_turns``, ``budget_exhausted``...), ``subtype`` (``error_max_turns``,
``error_max_budget_usd``). The runner turns that into one of its exit codes, so that the
operator can tell the story's failures (counted towards blocking it) from the
environment's (a revoked key, an overloaded API: not counted). The table is in
``docs/runner.md`` ("Agent outcomes").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from huskies_agent.runner.agent import AgentOutcome
from huskies_agent.runner.result import ExitCode


class AgentEnd(enum.Enum):
    """How the agent's run ended, as far as the runner can tell."""

    COMPLETED = "completed"
    NOT_STARTED = "not-started"
    TIMEOUT = "timeout"
    AUTH = "auth"
    UNAVAILABLE = "unavailable"
    BUDGET = "budget"
    MAX_TURNS = "max-turns"
    FAILED = "failed"


#: HTTP statuses of the Messages API that say the credentials, not the story, are the problem.
AUTH_STATUSES = frozenset({401, 403})
#: Statuses that say "not now": rate limited, overloaded, the API's own failures.
UNAVAILABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})

#: The ``Huskies-Outcome`` trailer of a commit that keeps the agent's (partial) work.
OUTCOME_WORD: dict[AgentEnd, str] = {
    AgentEnd.COMPLETED: "completed",
    AgentEnd.NOT_STARTED: "agent-failed",
    AgentEnd.TIMEOUT: "agent-timeout",
    AgentEnd.AUTH: "agent-auth-failed",
    AgentEnd.UNAVAILABLE: "agent-api-unavailable",
    AgentEnd.BUDGET: "agent-budget-reached",
    AgentEnd.MAX_TURNS: "agent-max-turns",
    AgentEnd.FAILED: "agent-failed",
}

EXIT_CODE: dict[AgentEnd, ExitCode] = {
    AgentEnd.COMPLETED: ExitCode.OK,
    AgentEnd.NOT_STARTED: ExitCode.AGENT_FAILED,
    AgentEnd.TIMEOUT: ExitCode.AGENT_TIMEOUT,
    AgentEnd.AUTH: ExitCode.AGENT_AUTH,
    AgentEnd.UNAVAILABLE: ExitCode.AGENT_UNAVAILABLE,
    AgentEnd.BUDGET: ExitCode.AGENT_BUDGET,
    AgentEnd.MAX_TURNS: ExitCode.AGENT_FAILED,
    AgentEnd.FAILED: ExitCode.AGENT_FAILED,
}


@dataclass(frozen=True)
class Verdict:
    end: AgentEnd
    #: Why the run counts as failed ("" when it completed).
    reason: str

    @property
    def failed(self) -> bool:
        return self.end is not AgentEnd.COMPLETED

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODE[self.end]

    @property
    def outcome_word(self) -> str:
        return OUTCOME_WORD[self.end]


def end_of(outcome: AgentOutcome) -> AgentEnd:
    """Classify the agent's run (pure)."""
    if not outcome.started:
        return AgentEnd.NOT_STARTED
    if outcome.timed_out:
        return AgentEnd.TIMEOUT
    if outcome.subtype == "error_max_budget_usd" or outcome.terminal_reason == "budget_exhausted":
        return AgentEnd.BUDGET
    if outcome.subtype == "error_max_turns" or outcome.terminal_reason == "max_turns":
        return AgentEnd.MAX_TURNS
    status = outcome.api_error_status
    if status in AUTH_STATUSES:
        return AgentEnd.AUTH
    if status in UNAVAILABLE_STATUSES:
        return AgentEnd.UNAVAILABLE
    if status is None and outcome.terminal_reason == "api_error":
        # No HTTP status: the connection failed or the stream was cut, after the CLI's retries.
        return AgentEnd.UNAVAILABLE
    if outcome.succeeded:
        return AgentEnd.COMPLETED
    return AgentEnd.FAILED


def _money(value: float | None) -> str:
    return "an unknown amount" if value is None else f"${value:.4f}"


def _detail(outcome: AgentOutcome) -> str:
    if outcome.errors:
        return outcome.errors[0][:300]
    lines = outcome.summary.strip().splitlines()
    return lines[0][:300] if lines else ""


def verdict_of(outcome: AgentOutcome, max_budget_usd: float | None = None, max_turns: int | None = None) -> Verdict:
    """The verdict with a one-line reason for the StoryJob and the result (pure)."""
    end = end_of(outcome)
    first = _detail(outcome)
    if end is AgentEnd.COMPLETED:
        return Verdict(end, "")
    if end is AgentEnd.BUDGET:
        limit = f" of ${max_budget_usd:g}" if max_budget_usd else ""
        return Verdict(end, f"the agent reached its budget: spent {_money(outcome.cost_usd)}{limit} "
                            f"in {outcome.turns if outcome.turns is not None else '?'} turns")
    if end is AgentEnd.MAX_TURNS:
        limit = f" ({max_turns})" if max_turns else ""
        return Verdict(end, f"the agent reached its turn limit{limit} before finishing")
    if end is AgentEnd.AUTH:
        return Verdict(end, f"the model API refused the credentials (HTTP {outcome.api_error_status}); "
                            f"not the story's failure: {first}")
    if end is AgentEnd.UNAVAILABLE:
        status = f"HTTP {outcome.api_error_status}" if outcome.api_error_status else "no HTTP status"
        return Verdict(end, f"the model API stayed unavailable ({status}) after the agent's retries; "
                            f"retry later: {first}")
    return Verdict(end, outcome.failure() or f"the agent failed: {first}")
