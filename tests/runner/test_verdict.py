"""Pure tables: the CLI's result event -> the runner's verdict -> the operator's disposition.

The result events below carry the fields Claude Code 2.1.332 printed in the real-CLI
tests (tests/runner/test_real_cli_*.py), trimmed to what the runner reads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from huskies_agent.runner.agent import AgentOutcome, _apply_result
from huskies_agent.runner.dispositions import TABLE, UNKNOWN, Action, NodeHold, disposition
from huskies_agent.runner.redact import Redactor
from huskies_agent.runner.result import ExitCode
from huskies_agent.runner.verdict import AgentEnd, end_of, verdict_of

DOC = Path(__file__).resolve().parents[2] / "docs" / "runner.md"


def _event(**fields: Any) -> dict[str, Any]:
    base = {"type": "result", "subtype": "success", "is_error": False, "num_turns": 2, "total_cost_usd": 0.0016,
            "api_error_status": None, "terminal_reason": "completed", "result": "Done."}
    return {**base, **fields}


def _api_error(status: int | None, text: str) -> dict[str, Any]:
    return _event(is_error=True, num_turns=1, total_cost_usd=0, api_error_status=status,
                  terminal_reason="api_error", result=text)


CASES: list[tuple[str, int | None, dict[str, Any] | None, AgentEnd, ExitCode, str]] = [
    ("success", 0, _event(), AgentEnd.COMPLETED, ExitCode.OK, ""),
    ("401", 1, _api_error(401, "Failed to authenticate. API Error: 401 invalid x-api-key"),
     AgentEnd.AUTH, ExitCode.AGENT_AUTH, "refused the credentials (HTTP 401)"),
    ("403", 1, _api_error(403, "Failed to authenticate. API Error: 403 forbidden"),
     AgentEnd.AUTH, ExitCode.AGENT_AUTH, "not the story's failure"),
    ("429", 1, _api_error(429, "API Error: Request rejected (429)"),
     AgentEnd.UNAVAILABLE, ExitCode.AGENT_UNAVAILABLE, "(HTTP 429)"),
    ("529", 1, _api_error(529, "API Error: 529 overloaded"),
     AgentEnd.UNAVAILABLE, ExitCode.AGENT_UNAVAILABLE, "retry later"),
    ("500", 1, _api_error(500, "API Error: 500"), AgentEnd.UNAVAILABLE, ExitCode.AGENT_UNAVAILABLE, "HTTP 500"),
    ("stream-cut", 1, _api_error(None, "API Error: API returned an empty or malformed response (HTTP 200)"),
     AgentEnd.UNAVAILABLE, ExitCode.AGENT_UNAVAILABLE, "no HTTP status"),
    ("400", 1, _api_error(400, "API Error: 400 prompt is too long"),
     AgentEnd.FAILED, ExitCode.AGENT_FAILED, "exited with status 1"),
    ("max-turns", 1, _event(is_error=True, subtype="error_max_turns", terminal_reason="max_turns", num_turns=3,
                            errors=["Reached maximum number of turns (2)"]),
     AgentEnd.MAX_TURNS, ExitCode.AGENT_FAILED, "turn limit (2)"),
    ("budget", 1, _event(is_error=True, subtype="error_max_budget_usd", terminal_reason="budget_exhausted",
                         total_cost_usd=6, num_turns=1, errors=["Reached maximum budget ($0.5)"]),
     AgentEnd.BUDGET, ExitCode.AGENT_BUDGET, "spent $6.0000 of $0.5 in 1 turns"),
    ("is-error-exit-0", 0, _event(is_error=True, subtype="error_during_execution", terminal_reason=""),
     AgentEnd.FAILED, ExitCode.AGENT_FAILED, "reported an error (error_during_execution)"),
    ("crash-no-result", 3, None, AgentEnd.FAILED, ExitCode.AGENT_FAILED, "exited with status 3"),
    ("killed-by-sigterm", -15, None, AgentEnd.FAILED, ExitCode.AGENT_FAILED, "status -15"),
]


@pytest.mark.parametrize(("exit_status", "event", "end", "code", "fragment"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_verdict(exit_status: int | None, event: dict[str, Any] | None, end: AgentEnd, code: ExitCode,
                 fragment: str) -> None:
    outcome = AgentOutcome(exit_status=exit_status, started=True)
    _apply_result(outcome, event, Redactor([]))
    verdict = verdict_of(outcome, max_budget_usd=0.5, max_turns=2)
    assert end_of(outcome) is end
    assert verdict.exit_code is code
    assert verdict.failed is (end is not AgentEnd.COMPLETED)
    assert fragment in verdict.reason
    assert len(verdict.reason) < 600


def test_not_started_and_timeout() -> None:
    missing = AgentOutcome(start_error="No such file or directory: 'claude'")
    assert verdict_of(missing).exit_code is ExitCode.AGENT_FAILED
    assert "could not be started" in verdict_of(missing).reason
    # A timeout wins over whatever the (killed) agent printed last.
    late = AgentOutcome(exit_status=-15, started=True, timed_out=True, duration_seconds=12)
    _apply_result(late, _api_error(529, "overloaded"), Redactor([]))
    assert verdict_of(late).exit_code is ExitCode.AGENT_TIMEOUT
    assert verdict_of(late).outcome_word == "agent-timeout"


def test_result_fields_are_redacted_and_bounded() -> None:
    outcome = AgentOutcome(exit_status=1, started=True)
    _apply_result(outcome, _event(is_error=True, api_error_status="401", errors=["key sk-secret-value leaked"] * 9,
                                  terminal_reason="x" * 500), Redactor(["sk-secret-value"]))
    assert outcome.api_error_status is None  # not a number: ignored
    assert outcome.errors == ("key <redacted> leaked",) * 5
    assert len(outcome.terminal_reason) == 100


# ------------------------------------------------------------------ operator dispositions

def test_every_exit_code_has_a_disposition() -> None:
    assert set(TABLE) == set(ExitCode)
    assert disposition(None) is UNKNOWN and disposition(99) is UNKNOWN and disposition(137) is UNKNOWN


@pytest.mark.parametrize(
    ("code", "action", "hold"),
    [
        (ExitCode.OK, Action.ADVANCE, NodeHold.NONE),
        (ExitCode.AGENT_AUTH, Action.RELEASE, NodeHold.CREDENTIALS),
        (ExitCode.AGENT_UNAVAILABLE, Action.RELEASE, NodeHold.BACKOFF),
        (ExitCode.AGENT_BUDGET, Action.COUNT, NodeHold.NONE),
        (ExitCode.AGENT_FAILED, Action.COUNT, NodeHold.NONE),
        (ExitCode.AGENT_TIMEOUT, Action.COUNT, NodeHold.NONE),
        (ExitCode.FENCED, Action.RELEASE, NodeHold.NONE),
        (ExitCode.TERMINATED, Action.RELEASE, NodeHold.NONE),
        (ExitCode.NO_CHANGES, Action.COUNT, NodeHold.NONE),
    ],
)
def test_disposition(code: ExitCode, action: Action, hold: NodeHold) -> None:
    got = disposition(int(code))
    assert (got.action, got.hold) == (action, hold)


def test_docs_outcome_table_matches_the_code() -> None:
    """docs/runner.md's "Agent outcomes" table names each exit code with its action."""
    text = DOC.read_text()
    section = text.split("## Agent outcomes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `?(\d+)`? `(\w+)` \|[^|]*\| (advance|count|release)[^|]*\|", section, re.M)
    documented = {int(code): (name, action) for code, name, action in rows}
    expected = {int(code): (code.name, TABLE[code].action.value) for code in ExitCode}
    assert documented == expected
