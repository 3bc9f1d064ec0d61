"""Lease election against an in-memory Lease store with optimistic concurrency."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import re

import pytest

from huskies_agent.k8s.api import ApiException
from huskies_agent.leadership import LeaderElector
from huskies_agent.settings import Settings, SettingsError, check_lease_margins


class FakeLeases:
    def __init__(self) -> None:
        self.lease: dict | None = None
        self.version = 0

    async def get_lease(self, name):
        return copy.deepcopy(self.lease)

    async def create_lease(self, body):
        if self.lease is not None:
            raise ApiException(409, "AlreadyExists")
        return self._store(body)

    async def replace_lease(self, name, body):
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(409, "Conflict")
        return self._store(body)

    def _store(self, body):
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def elector(kube, name, clock):
    s = dataclasses.replace(Settings(), replica_id=name, lease_duration_seconds=15, lease_renew_deadline_seconds=10,
                            lease_retry_period_seconds=2)
    return LeaderElector(kube, s, monotonic=clock)


async def test_standby_waits_a_full_term_of_silence_by_its_own_clock():
    kube, clock = FakeLeases(), Clock()
    a, b = elector(kube, "a", clock), elector(kube, "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.t += 10
    assert await a.try_acquire_or_renew()  # a renews: b's timer restarts
    clock.t += 10
    assert not await b.try_acquire_or_renew()
    clock.t += 10
    assert not await b.try_acquire_or_renew()  # 10 s since b saw the renewal
    clock.t += 6
    assert await b.try_acquire_or_renew()  # 16 s of silence: a is gone
    assert kube.lease["spec"]["holderIdentity"] == "b" and kube.lease["spec"]["leaseTransitions"] == 1
    assert not await a.try_acquire_or_renew()  # a comes back: b's fresh lease stands


async def test_a_released_lease_is_free_at_once():
    kube, clock = FakeLeases(), Clock()
    a, b = elector(kube, "a", clock), elector(kube, "b", clock)
    assert await a.try_acquire_or_renew()
    a.is_leader = True
    await a.release()
    assert await b.try_acquire_or_renew()


async def test_renewal_validity_uses_the_renew_deadline():
    kube, clock = FakeLeases(), Clock()
    a = elector(kube, "a", clock)
    assert await a.try_acquire_or_renew()
    clock.t += 9
    assert a._renewal_still_valid()
    clock.t += 2  # 11 s > the 10 s renew deadline: step down before any standby may take over
    assert not a._renewal_still_valid()


# ------------------------------------------------------------------ client-go's margins


@pytest.mark.parametrize(
    ("duration", "deadline", "retry", "problem"),
    [
        (15, 10, 2, ""),
        (15, 15, 2, "must be shorter than lease_duration_seconds"),
        (15, 16, 2, "must be shorter than lease_duration_seconds"),
        (15, 10, 9, "longer than 1.2 x lease_retry_period_seconds"),
        (15, 2.4, 2, "longer than 1.2 x lease_retry_period_seconds"),  # equal is not enough
        (3, 2, 0.5, ""),  # the test-time settings
    ],
)
def test_lease_margins(duration: float, deadline: float, retry: float, problem: str) -> None:
    found = check_lease_margins(duration, deadline, retry)
    assert (problem in found) if problem else found == ""
    environ = {"HUSKIES_LEASE_DURATION_SECONDS": str(duration), "HUSKIES_LEASE_RENEW_DEADLINE_SECONDS": str(deadline),
               "HUSKIES_LEASE_RETRY_PERIOD_SECONDS": str(retry)}
    if problem:
        with pytest.raises(SettingsError, match=re.escape(problem)):
            Settings.load(environ=environ)
    else:
        settings = Settings.load(environ=environ)
        assert (settings.lease_duration_seconds, settings.lease_renew_deadline_seconds,
                settings.lease_retry_period_seconds) == (duration, deadline, retry)


def test_defaults_are_client_gos() -> None:
    s = Settings()
    assert (s.lease_duration_seconds, s.lease_renew_deadline_seconds, s.lease_retry_period_seconds) == (15, 10, 2)


def test_the_old_renew_setting_is_named_as_renamed(tmp_path) -> None:
    with pytest.raises(SettingsError, match="lease_renew_seconds was renamed"):
        Settings.load(environ={"HUSKIES_LEASE_RENEW_SECONDS": "5"})
    config = tmp_path / "c.yaml"
    config.write_text("lease_renew_seconds: 5\n")
    with pytest.raises(SettingsError, match="lease_retry_period_seconds"):
        Settings.load(config, environ={})


class GatedLeases(FakeLeases):
    """A Lease store whose writes land at once but whose answers wait for ``gate`` (a slow response)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.landed = asyncio.Event()

    async def replace_lease(self, name, body):
        stored = await super().replace_lease(name, body)
        self.landed.set()
        if self.gate is not None:
            await self.gate.wait()
        return stored


class Unreachable:
    async def get_lease(self, name):
        raise ConnectionError("API server unreachable")


async def test_the_term_runs_from_the_start_of_a_slow_renewal() -> None:
    kube, clock = GatedLeases(), Clock()
    a = elector(kube, "a", clock)
    assert await a.try_acquire_or_renew()
    a.is_leader = True
    clock.t = 1000.0
    kube.gate = asyncio.Event()
    renewal = asyncio.create_task(a.try_acquire_or_renew())
    await kube.landed.wait()
    clock.t = 1007.0  # the answer takes 7 s
    kube.gate.set()
    assert await renewal
    assert a.last_renewed == 1000.0
    assert a.round_budget() == 3.0  # the next round must end by 1010
    clock.t = 1010.0
    assert a.round_budget() <= 0


async def test_a_slow_renewal_never_leaves_two_leaders() -> None:
    """The renewal lands at 1000, a standby sees it at 1001, the answer reaches the leader at 1007,
    then the leader loses the API server. Measured from the answer with the old margins (a deadline of
    2/3 of the duration) the leader would act until 1017 while the standby takes over at 1016.5."""
    kube, clock = GatedLeases(), Clock()
    a, b = elector(kube, "a", clock), elector(kube, "b", clock)
    clock.t = 990.0
    assert await a.try_acquire_or_renew()
    a.is_leader = True
    clock.t = 1000.0
    kube.gate = asyncio.Event()
    renewal = asyncio.create_task(a.try_acquire_or_renew())
    await kube.landed.wait()
    clock.t = 1001.0
    assert not await b.try_acquire_or_renew()  # b's timer starts on the renewed version
    clock.t = 1007.0
    kube.gate.set()
    assert await renewal
    a.kube = Unreachable()  # from now on the leader cannot renew
    leaders_at: dict[float, set[str]] = {}
    while clock.t < 1030:
        clock.t += 0.5
        holders = {"a"} if a._renewal_still_valid() else set()
        if await b.try_acquire_or_renew():
            holders.add("b")
        leaders_at[clock.t] = holders
        assert len(holders) <= 1, f"two leaders at {clock.t}"
    assert max(t for t, h in leaders_at.items() if "a" in h) < 1010
    assert min(t for t, h in leaders_at.items() if "b" in h) == 1016.5


async def test_run_steps_down_when_the_term_ends_without_a_renewal() -> None:
    kube, clock = FakeLeases(), Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.t += seconds

    a = LeaderElector(kube, elector(kube, "a", clock).settings, monotonic=clock, sleep=sleep)
    original_get = kube.get_lease
    rounds = 0

    async def get_lease(name):
        nonlocal rounds
        rounds += 1
        if rounds > 3:
            raise ConnectionError("API server unreachable")
        return await original_get(name)

    kube.get_lease = get_lease
    await asyncio.wait_for(a.run(), timeout=10)  # returns: leadership lost
    assert not a.is_leader and a._became_leader.is_set()
    assert a.last_renewed == 1004.0  # the third round, started at 1000 + 2 x 2 s
    assert clock.t - a.last_renewed >= a.renew_deadline
    assert set(slept) == {2.0}
