"""Lease election against an in-memory Lease store with optimistic concurrency."""

from __future__ import annotations

import copy
import dataclasses

from huskies_agent.k8s.api import ApiException
from huskies_agent.leadership import LeaderElector
from huskies_agent.settings import Settings


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
    s = dataclasses.replace(Settings(), replica_id=name, lease_duration_seconds=15, lease_renew_seconds=5)
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
    clock.t += 2  # 11 s > 2/3 of 15 s: step down before any standby may take over
    assert not a._renewal_still_valid()
