"""Node-level holds on claiming, as state: pure (times are passed in, nothing is written).

A refused API key pauses claiming for ``agent_auth_pause_seconds``; an unavailable model
API backs off (reset by the next success); the spend ledger says whether the day's budget
allows one more run. ``engine.node`` applies these before claiming and after each run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime

from huskies_agent.backoff import Backoff
from huskies_agent.contract import NodeHold
from huskies_agent.engine.outcomes import DocAction, Outcome, escalate
from huskies_agent.spend import SpendLedger

#: Bounds of the backoff after a run found the model API unavailable (429/529/5xx).
UNAVAILABLE_MIN_SECONDS = 30.0
UNAVAILABLE_MAX_SECONDS = 900.0


class Pause(enum.StrEnum):
    """Why this node claims nothing now (the value is what presence says)."""

    AGENT_AUTH = "agent-auth"
    AGENT_UNAVAILABLE = "agent-unavailable"
    DAILY_BUDGET = "daily-budget"


@dataclass
class NodeState:
    ledger: SpendLedger = field(default_factory=SpendLedger)
    auth_pause_seconds: float = 900.0
    backoff: Backoff = field(default_factory=lambda: Backoff(UNAVAILABLE_MIN_SECONDS, UNAVAILABLE_MAX_SECONDS))
    #: Monotonic times until which claiming is held, by cause.
    held_until: dict[Pause, float] = field(default_factory=dict)
    #: Story id -> uncounted, node-holding endings in a row on this node.
    uncounted: dict[str, int] = field(default_factory=dict)
    budget_reached: bool = False
    budget_status: str = ""

    def hold(self, kind: NodeHold, now: float) -> float:
        """Hold claiming after such an ending; returns the seconds held."""
        if kind is NodeHold.CREDENTIALS:
            seconds = self.auth_pause_seconds
            self.held_until[Pause.AGENT_AUTH] = now + seconds
        elif kind is NodeHold.BACKOFF:
            seconds = self.backoff.next_delay()
            self.held_until[Pause.AGENT_UNAVAILABLE] = now + seconds
        else:
            return 0.0
        return seconds

    def succeeded(self) -> None:
        """A run got through to the model API: the key works and the API answers."""
        self.backoff.reset()
        self.held_until.clear()

    def paused(self, now: float) -> tuple[Pause, float] | None:
        """The time-based hold in force now and the seconds it still lasts, if any."""
        live = {k: until - now for k, until in self.held_until.items() if until > now}
        if not live:
            return None
        kind = max(live, key=lambda k: live[k])
        return kind, live[kind]

    def settle(self, story_id: str, outcome: Outcome, max_retries: int) -> Outcome:
        """``escalate`` with this story's streak, and the streak updated for this ending."""
        streak = self.uncounted.get(story_id, 0)
        if outcome.hold is not NodeHold.NONE:
            # Escalated or not, the streak goes on: once past max_retries, every further
            # such ending is counted until the story ends some other way.
            self.uncounted[story_id] = streak + 1
            return escalate(outcome, streak, max_retries)
        if outcome.counted or outcome.action is DocAction.ADVANCE:
            self.uncounted.pop(story_id, None)
        return outcome


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


