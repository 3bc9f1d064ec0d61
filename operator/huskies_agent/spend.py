"""The per-node daily spend guard: a ledger of what finished runs cost, and whether to claim more.

Pure: no clock, no I/O. The engine records each finished run's ``cost_usd`` (from the
runner's result) at the time it finished, and asks :meth:`SpendLedger.may_claim` before
claiming. A day is a UTC calendar day; the limit applies to runs that *finished* that
day. Runs in flight are not stopped when the limit is reached: they are bounded by the
per-run budget (``build.max_budget_usd``), and the engine passes what they may still
spend as ``committed_usd`` so that starting one more run cannot overshoot the day's
limit by more than what is already running. ``daily_limit_usd`` 0 means no daily limit.

After a restart the ledger is empty; the engine rebuilds it from the finished StoryJobs
it adopts (their result's ``cost_usd`` and ``finishedAt``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

#: Days of totals kept (today and yesterday: enough across a UTC midnight).
_KEEP_DAYS = 2


class SpendError(ValueError):
    """A cost or time that cannot be recorded (negative, not finite, naive datetime)."""


def _day(at: datetime) -> date:
    if at.tzinfo is None:
        raise SpendError(f"time {at.isoformat()} has no timezone; use an aware datetime")
    return at.astimezone(UTC).date()


def day_end(at: datetime) -> datetime:
    """When the UTC day of ``at`` ends (when spending resets)."""
    start = datetime.combine(_day(at), datetime.min.time(), tzinfo=UTC)
    return start + timedelta(days=1)


@dataclass
class SpendLedger:
    daily_limit_usd: float = 0.0
    _totals: dict[date, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.daily_limit_usd) or self.daily_limit_usd < 0:
            raise SpendError(f"daily limit must be a finite number >= 0, got {self.daily_limit_usd!r}")

    @property
    def limited(self) -> bool:
        return self.daily_limit_usd > 0

    def record(self, cost_usd: float | None, at: datetime) -> None:
        """Add what one run cost; ``None`` (the run printed no cost) adds nothing."""
        day = _day(at)
        if cost_usd is None:
            return
        if isinstance(cost_usd, bool) or not math.isfinite(cost_usd) or cost_usd < 0:
            raise SpendError(f"cost must be a finite number >= 0, got {cost_usd!r}")
        self._totals[day] = self._totals.get(day, 0.0) + float(cost_usd)
        for old in sorted(self._totals)[:-_KEEP_DAYS]:
            if old < day:
                del self._totals[old]

    def spent_today(self, now: datetime) -> float:
        return self._totals.get(_day(now), 0.0)

    def remaining(self, now: datetime) -> float | None:
        """What is left of today's limit (never below 0); ``None`` without a limit."""
        if not self.limited:
            return None
        return max(0.0, self.daily_limit_usd - self.spent_today(now))

    def may_claim(self, now: datetime, committed_usd: float = 0.0) -> bool:
        """Whether a new run may start: today's spend plus what runs in flight may spend is under the limit."""
        if not self.limited:
            return True
        if not math.isfinite(committed_usd) or committed_usd < 0:
            raise SpendError(f"committed spend must be a finite number >= 0, got {committed_usd!r}")
        return self.spent_today(now) + committed_usd < self.daily_limit_usd

    def status(self, now: datetime, committed_usd: float = 0.0) -> str:
        """One line for presence and logs: "" while claiming is allowed."""
        if self.may_claim(now, committed_usd):
            return ""
        return (f"daily budget reached: ${self.spent_today(now):.2f} of ${self.daily_limit_usd:g} spent today"
                + (f" (+${committed_usd:.2f} in flight)" if committed_usd else "")
                + f"; claiming resumes at {day_end(now).strftime('%Y-%m-%dT%H:%M:%SZ')}")
