"""The per-node daily spend ledger (huskies_agent.spend): tables of records and questions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from huskies_agent.settings import Settings, SettingsError
from huskies_agent.spend import SpendError, SpendLedger, day_end


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


DAY = "2026-12-02T"


@pytest.mark.parametrize(
    ("limit", "records", "now", "committed", "spent", "may_claim"),
    [
        # no limit: always claim, spending is still counted
        (0.0, [(3.0, DAY + "10:00Z")], DAY + "11:00Z", 0.0, 3.0, True),
        # under, at and over the limit
        (10.0, [(4.0, DAY + "01:00Z"), (5.0, DAY + "02:00Z")], DAY + "03:00Z", 0.0, 9.0, True),
        (10.0, [(4.0, DAY + "01:00Z"), (6.0, DAY + "02:00Z")], DAY + "03:00Z", 0.0, 10.0, False),
        (10.0, [(12.5, DAY + "01:00Z")], DAY + "03:00Z", 0.0, 12.5, False),
        # runs in flight count against the limit
        (10.0, [(4.0, DAY + "01:00Z")], DAY + "03:00Z", 5.0, 4.0, True),
        (10.0, [(4.0, DAY + "01:00Z")], DAY + "03:00Z", 6.0, 4.0, False),
        # a new UTC day starts from zero
        (10.0, [(12.0, "2026-12-01T23:59:59Z")], DAY + "00:00Z", 0.0, 0.0, True),
        (10.0, [(12.0, "2026-12-01T23:59:59Z")], "2026-12-01T23:59:59.5Z", 0.0, 12.0, False),
        # days are UTC days, whatever zone the times come in
        (10.0, [(12.0, "2026-12-02T00:30+02:00")], "2026-12-01T23:00Z", 0.0, 12.0, False),
        (10.0, [(12.0, "2026-12-02T00:30+02:00")], DAY + "01:00Z", 0.0, 0.0, True),
        # a run that printed no cost adds nothing
        (10.0, [(None, DAY + "01:00Z")], DAY + "02:00Z", 0.0, 0.0, True),
        # zero-cost runs are fine
        (1.0, [(0.0, DAY + "01:00Z")] * 5, DAY + "02:00Z", 0.0, 0.0, True),
    ],
    ids=["no-limit", "under", "at-limit", "over", "in-flight-fits", "in-flight-over", "new-day",
         "same-day-last-second", "zone-same-day", "zone-next-day", "no-cost", "zero-cost"],
)
def test_ledger(
    limit: float, records: list[tuple[float | None, str]], now: str, committed: float, spent: float,
    may_claim: bool,
) -> None:
    ledger = SpendLedger(limit)
    for cost, when in records:
        ledger.record(cost, at(when))
    assert ledger.spent_today(at(now)) == pytest.approx(spent)
    assert ledger.may_claim(at(now), committed) is may_claim
    assert (ledger.status(at(now), committed) == "") is may_claim


@pytest.mark.parametrize(
    ("cost", "when"),
    [(-1.0, DAY + "01:00Z"), (float("nan"), DAY + "01:00Z"), (float("inf"), DAY + "01:00Z"),
     (1.0, "2026-12-02T01:00")],
    ids=["negative", "nan", "inf", "naive-time"],
)
def test_bad_records_are_refused_and_change_nothing(cost: float, when: str) -> None:
    ledger = SpendLedger(10.0)
    with pytest.raises(SpendError):
        ledger.record(cost, at(when))
    assert ledger.spent_today(at(DAY + "02:00Z")) == 0.0


@pytest.mark.parametrize("limit", [-1.0, float("nan"), float("inf")])
def test_bad_limits_are_refused(limit: float) -> None:
    with pytest.raises(SpendError):
        SpendLedger(limit)


def test_remaining_status_and_reset_time() -> None:
    ledger = SpendLedger(10.0)
    now = at(DAY + "15:00Z")
    ledger.record(7.5, now)
    assert ledger.remaining(now) == pytest.approx(2.5)
    ledger.record(5.0, now)
    assert ledger.remaining(now) == 0.0
    assert ledger.status(now) == (
        "daily budget reached: $12.50 of $10 spent today; claiming resumes at 2026-12-03T00:00:00Z")
    assert SpendLedger(0.0).remaining(now) is None
    assert day_end(at("2026-12-31T23:00-05:00")) == datetime(2027, 1, 2, tzinfo=UTC)


def test_old_days_are_dropped() -> None:
    ledger = SpendLedger(10.0)
    start = at("2026-11-01T12:00Z")
    for day in range(40):
        ledger.record(1.0, start + timedelta(days=day))
    assert len(ledger._totals) == 2
    assert ledger.spent_today(start + timedelta(days=39)) == 1.0
    assert ledger.spent_today(start) == 0.0  # forgotten, and not today anyway


def test_ledger_accepts_any_aware_zone() -> None:
    ledger = SpendLedger(1.0)
    tokyo = timezone(timedelta(hours=9))
    ledger.record(1.0, datetime(2026, 12, 3, 8, 0, tzinfo=tokyo))  # 2026-12-02T23:00Z
    assert not ledger.may_claim(at(DAY + "23:30Z"))
    assert ledger.may_claim(at("2026-12-03T00:00Z"))


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"build": {"max_budget_usd": 0}}, "0 no longer means unlimited"),
        ({"build": {"max_budget_usd": -2}}, "build.max_budget_usd"),
        ({"daily_budget_usd": -1}, "daily_budget_usd"),
    ],
)
def test_budget_settings_are_validated(tmp_path: Path, raw: dict[str, object], fragment: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SettingsError, match=fragment):
        Settings.load(path, environ={}).validate()


def test_budget_defaults() -> None:
    settings = Settings()
    settings.validate()
    assert settings.build.max_budget_usd == 10.0
    assert settings.daily_budget_usd == 0.0


def test_the_default_per_run_budget_reaches_the_runner() -> None:
    from huskies_agent.k8s import objects

    settings = Settings(namespace="ns")
    job = objects.build_job(settings, objects.RunSpec("42_x", "2_current", "node-a", 1), owner_uid="uid")
    env = {item["name"]: item.get("value") for c in job["spec"]["template"]["spec"]["containers"]
           for item in c.get("env", [])}
    assert env["HUSKIES_MAX_BUDGET_USD"] == "10.0"
