"""Node identity and leader election with a ``coordination.k8s.io/v1`` Lease.

The Lease is the node's heartbeat inside the cluster and decides which replica of an
install is active: only the holder claims and acts. Replicas run kopf standalone (kopf's
own peering freezes operators of equal priority), so this module is the only election.

The node id is the install's identity in the pipeline mesh. It lives in a ConfigMap so
it survives restarts of every replica and the node recognises its own claims.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from huskies_agent.k8s.api import Kube, is_conflict
from huskies_agent.k8s.naming import APP_NAME
from huskies_agent.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def ensure_node_id(kube: Kube, settings: Settings) -> str:
    """The install's node id: from settings, else the identity ConfigMap (created once)."""
    if settings.node_id:
        return settings.node_id
    name = settings.identity_configmap
    existing = await kube.get_configmap(name)
    if existing is None:
        node_id = f"{settings.cluster_name}-{secrets.token_hex(8)}"
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "labels": {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": settings.instance},
            },
            "data": {"node_id": node_id},
        }
        try:
            existing = await kube.create_configmap(body)
        except Exception as exc:
            if not is_conflict(exc):
                raise
            existing = await kube.get_configmap(name)  # another replica won the race
    node_id = str(((existing or {}).get("data") or {}).get("node_id") or "")
    if not node_id:
        raise RuntimeError(f"ConfigMap {name} has no data.node_id; delete it to mint a new identity")
    return node_id


@dataclass(frozen=True, slots=True)
class LeaseView:
    holder: str
    duration: float
    transitions: int


def read_lease(lease: dict[str, Any]) -> LeaseView:
    spec = lease.get("spec") or {}
    return LeaseView(
        holder=str(spec.get("holderIdentity") or ""),
        duration=float(spec.get("leaseDurationSeconds") or 0),
        transitions=int(spec.get("leaseTransitions") or 0),
    )


class LeaderElector:
    """Acquire and renew the install's Lease; report gains and losses of leadership.

    Like client-go's elector, a standby judges another holder's Lease by its own
    monotonic clock: expired when the Lease has not changed (resourceVersion) for a
    lease duration since this replica first saw it, so clock skew between machines
    does not let a standby steal a live leader's Lease.

    A leader's term runs from the *start* of its last successful renewal request (the
    write may have landed at any moment of the request, and a standby's timer starts
    only once it sees it) and lasts the renew deadline: with no successful renewal by
    then it steps down, and no round may wait past that moment. Since the deadline is
    shorter than the lease duration (client-go's margins, checked in settings), the
    leader stops acting before any standby may take over, however slow the requests.
    """

    def __init__(self, kube: Kube, settings: Settings, *, clock: Clock = _utcnow,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.kube = kube
        self.settings = settings
        self.identity = settings.replica_id
        self.clock = clock
        self.monotonic = monotonic
        self._sleep = sleep
        self.is_leader = False
        self._became_leader = asyncio.Event()
        #: Monotonic time at which our last successful acquire/renew request *started*.
        self.last_renewed: float | None = None
        self._observed: tuple[str, float] | None = None  # (resourceVersion, monotonic time first seen)

    @property
    def renew_deadline(self) -> float:
        return self.settings.lease_renew_deadline_seconds

    def round_budget(self) -> float:
        """How long the next round may take: a leader's must end within its current term."""
        if not self.is_leader or self.last_renewed is None:
            return self.renew_deadline
        return min(self.renew_deadline, self.last_renewed + self.renew_deadline - self.monotonic())

    async def wait_leader(self) -> None:
        await self._became_leader.wait()

    async def try_acquire_or_renew(self) -> bool:
        """One round of the election; returns whether this replica holds the Lease."""
        s = self.settings
        started = self.monotonic()  # the term is measured from here, not from the answer
        now = self.clock()
        lease = await self.kube.get_lease(s.lease_name)
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(max(1, round(s.lease_duration_seconds))),
            "renewTime": _fmt(now),
        }
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": s.lease_name,
                    "labels": {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": s.instance},
                },
                "spec": {**spec, "acquireTime": _fmt(now), "leaseTransitions": 0},
            }
            try:
                await self.kube.create_lease(body)
            except Exception as exc:
                if is_conflict(exc):
                    return False
                raise
            self.last_renewed = started
            return True
        view = read_lease(lease)
        if view.holder and view.holder != self.identity and not self._observed_expired(lease, view):
            return False
        new_spec = dict(lease.get("spec") or {})
        new_spec.update(spec)
        if view.holder != self.identity:
            new_spec["acquireTime"] = _fmt(now)
            new_spec["leaseTransitions"] = view.transitions + 1
        body = {**lease, "spec": new_spec}
        try:
            await self.kube.replace_lease(s.lease_name, body)  # resourceVersion makes this conditional
        except Exception as exc:
            if is_conflict(exc):
                return False
            raise
        self.last_renewed = started
        return True

    def _observed_expired(self, lease: dict[str, Any], view: LeaseView) -> bool:
        version = str((lease.get("metadata") or {}).get("resourceVersion") or "")
        now = self.monotonic()
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, now)  # the holder renewed (or we just arrived): wait a full term
            return False
        return now - self._observed[1] > max(view.duration, 1.0)

    async def run(self) -> None:
        """Campaign until leader, then renew; return when the Lease is lost."""
        s = self.settings
        while True:
            budget = self.round_budget()
            if budget <= 0:
                held = False  # the term ended while we slept: step down without asking
            else:
                try:
                    async with asyncio.timeout(budget):
                        held = await self.try_acquire_or_renew()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # includes TimeoutError: a hung API call
                    log.warning("lease %s: %s", s.lease_name, exc or type(exc).__name__)
                    held = self.is_leader and self._renewal_still_valid()
            if held and not self.is_leader:
                log.info("became leader (lease %s held by %s)", s.lease_name, self.identity)
                self.is_leader = True
                self._became_leader.set()
            elif not held and self.is_leader:
                log.error("lost leadership of lease %s", s.lease_name)
                self.is_leader = False
                return
            await self._sleep(s.lease_retry_period_seconds)

    def _renewal_still_valid(self) -> bool:
        """Still leader after a failed round: only within the renew deadline of the last success's start."""
        if self.last_renewed is None:
            return False
        return self.monotonic() - self.last_renewed < self.renew_deadline

    async def release(self) -> None:
        """Give the Lease up on clean shutdown so a standby takes over at once."""
        if not self.is_leader:
            return
        try:
            lease = await self.kube.get_lease(self.settings.lease_name)
            if lease and read_lease(lease).holder == self.identity:
                spec = dict(lease.get("spec") or {})
                spec["holderIdentity"] = ""
                spec["renewTime"] = None
                await self.kube.replace_lease(self.settings.lease_name, {**lease, "spec": spec})
        except Exception as exc:
            log.warning("could not release lease: %s", exc)
        self.is_leader = False
