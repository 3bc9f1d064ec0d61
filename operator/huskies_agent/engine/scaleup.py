"""What the node autoscaler says about a pending build pod, and how long its claim waits (pure).

An unschedulable build pod waits ``pending_timeout_seconds`` for room, then gives its story back.
A node autoscaler says more than the scheduler does, in the pod's Events:

==============================  =============================  ==================================
Event (reason, reporter)        Who                            Verdict
==============================  =============================  ==================================
``TriggeredScaleUp``            cluster-autoscaler             SCALING: a node group grows for it
``Nominated``                   Karpenter                      SCALING: a NodeClaim or an
                                                               unready node will take it
``NotTriggerScaleUp``           cluster-autoscaler             NO_SCALE_UP: no group can fit it
                                                               (or they are at their max size)
``FailedScaleUp``               cluster-autoscaler (GKE)       NO_SCALE_UP: the scale-up failed
``FailedScheduling`` from       Karpenter                      NO_SCALE_UP: no NodePool can fit it
``karpenter`` (message                                         (no instance type big enough,
``Failed to schedule pod, ...``)                               incompatible requirements,
                                                               NodePool limits reached)
==============================  =============================  ==================================

``FailedScheduling`` from the scheduler (``default-scheduler``) is what every unschedulable pod
gets, so only Karpenter's own counts. The newest verdict wins (an autoscaler may change its mind).

:func:`decide` turns the pod's state, its verdicts and how long it has been unschedulable into
KEEP (wait), EXTEND (past the pending timeout, but a node is coming: wait up to the longer
``pending_scale_up_timeout_seconds``) or RELEASE (give the story back: at once when no scale-up is
possible, else when the applicable bound passed). :func:`read_event` reads one Event, total over
whatever the API serves.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class Verdict(enum.StrEnum):
    SCALING = "scaling"  # a node is being added (or nominated) for the pod
    NO_SCALE_UP = "no-scale-up"  # the autoscaler cannot add a node that fits the pod


#: cluster-autoscaler's and Karpenter's component names (``source.component`` / ``reportingComponent``).
CLUSTER_AUTOSCALER = "cluster-autoscaler"
KARPENTER = "karpenter"
#: Reasons whose verdict does not depend on who reported them.
_BY_REASON: Mapping[str, Verdict] = {
    "TriggeredScaleUp": Verdict.SCALING,
    "Nominated": Verdict.SCALING,
    "NotTriggerScaleUp": Verdict.NO_SCALE_UP,
    "FailedScaleUp": Verdict.NO_SCALE_UP,
}
#: Karpenter's provisioner: ``FailedScheduling`` with this message prefix (pkg/controllers/provisioning/scheduling).
_KARPENTER_FAILED = "FailedScheduling"
_KARPENTER_FAILED_PREFIX = "Failed to schedule pod, "
#: Every reason worth reading (the watch filter); FailedScheduling only counts from Karpenter.
REASONS: frozenset[str] = frozenset(_BY_REASON) | {_KARPENTER_FAILED}
_MESSAGE_LIMIT = 512


@dataclass(frozen=True, slots=True)
class Signal:
    """One autoscaler verdict on one pod, from one Event."""

    verdict: Verdict
    reason: str
    source: str
    message: str
    #: When the Event was last observed (seconds since the epoch; 0.0 when it carries no time).
    at: float = 0.0

    def describe(self) -> str:
        who = f"{self.source} " if self.source else ""
        return f"{who}{self.reason}: {self.message}".strip()


def read_event(event: Mapping[str, Any]) -> tuple[str, Signal] | None:
    """``(pod name, signal)`` for an autoscaler's Event about a Pod; ``None`` for any other Event."""
    involved = event.get("involvedObject") or event.get("regarding")
    if not isinstance(involved, Mapping) or involved.get("kind") != "Pod":
        return None
    pod = involved.get("name")
    reason = event.get("reason")
    if not isinstance(pod, str) or not pod or not isinstance(reason, str):
        return None
    message = event.get("message") if isinstance(event.get("message"), str) else event.get("note")
    message = message if isinstance(message, str) else ""
    source = _source(event)
    verdict = _BY_REASON.get(reason)
    if verdict is None and reason == _KARPENTER_FAILED and (
        source == KARPENTER or message.startswith(_KARPENTER_FAILED_PREFIX)
    ):
        verdict = Verdict.NO_SCALE_UP
    if verdict is None:
        return None
    return pod, Signal(verdict, reason, source, message[:_MESSAGE_LIMIT], _observed_at(event))


def _source(event: Mapping[str, Any]) -> str:
    source = event.get("source")
    for value in ((source.get("component") if isinstance(source, Mapping) else None),
                  event.get("reportingComponent"), event.get("reportingController")):
        if isinstance(value, str) and value:
            return value
    return ""


def _observed_at(event: Mapping[str, Any]) -> float:
    series = event.get("series")
    candidates = [event.get("lastTimestamp"), event.get("eventTime"), event.get("firstTimestamp"),
                  series.get("lastObservedTime") if isinstance(series, Mapping) else None]
    times = [t for t in (_parse_time(c) for c in candidates) if t is not None]
    return max(times, default=0.0)


def _parse_time(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def latest(signals: Iterable[Signal]) -> Signal | None:
    """The newest signal; among equal times the one that arrived last."""
    best: Signal | None = None
    for signal in signals:
        if best is None or signal.at >= best.at:
            best = signal
    return best


# ---------------------------------------------------------------------- the decision

class Wait(enum.StrEnum):
    KEEP = "keep"  # keep waiting (within the pending timeout, or the pod is not unschedulable)
    EXTEND = "extend"  # past the pending timeout, but the autoscaler is bringing a node: keep waiting
    RELEASE = "release"  # give the story back now


class Why(enum.StrEnum):
    WAITING = "waiting"
    SCALING = "scaling"  # EXTEND, or KEEP with a scale-up under way
    NO_SCALE_UP = "no-scale-up"  # RELEASE at once
    PENDING_TIMEOUT = "pending-timeout"  # RELEASE: no autoscaler said anything within the pending timeout
    SCALE_UP_TIMEOUT = "scale-up-timeout"  # RELEASE: a scale-up was promised, no node came in time


@dataclass(frozen=True, slots=True)
class Limits:
    pending_timeout: float
    #: The longer bound while the autoscaler says a node is coming (never shorter than the pending timeout).
    scale_up_timeout: float

    @property
    def scale_up_bound(self) -> float:
        return max(self.pending_timeout, self.scale_up_timeout)


@dataclass(frozen=True, slots=True)
class Decision:
    wait: Wait
    why: Why
    #: The verdict it rests on, if any.
    signal: Signal | None = None

    def describe(self, unschedulable_for: float, limits: Limits) -> str:
        said = f" ({self.signal.describe()})" if self.signal else ""
        if self.why is Why.NO_SCALE_UP:
            return f"the node autoscaler cannot add a node for the pod{said}"
        if self.why is Why.SCALE_UP_TIMEOUT:
            return (f"unschedulable for {unschedulable_for:.0f}s although the autoscaler was adding a node{said}; "
                    f"gave up after pending_scale_up_timeout_seconds ({limits.scale_up_bound:.0f}s)")
        if self.why is Why.PENDING_TIMEOUT:
            return f"unschedulable for {unschedulable_for:.0f}s (pending_timeout_seconds {limits.pending_timeout:.0f}s)"
        if self.why is Why.SCALING:
            return (f"unschedulable for {unschedulable_for:.0f}s, past pending_timeout_seconds "
                    f"({limits.pending_timeout:.0f}s), but the autoscaler is adding a node{said}; waiting up to "
                    f"{limits.scale_up_bound:.0f}s")
        return "waiting for room"


def decide(unschedulable_for: float | None, signals: Iterable[Signal], limits: Limits) -> Decision:
    """Keep, extend or release the claim of a run whose pod is (``unschedulable_for`` seconds) unschedulable.

    ``None``: the pod is scheduled, or not known to be unschedulable: nothing to decide (KEEP), whatever
    the Events say (a verdict about a pod that found room is stale).
    """
    newest = latest(signals)
    if unschedulable_for is None:
        return Decision(Wait.KEEP, Why.WAITING, newest)
    if newest is not None and newest.verdict is Verdict.NO_SCALE_UP:
        return Decision(Wait.RELEASE, Why.NO_SCALE_UP, newest)
    if newest is not None and newest.verdict is Verdict.SCALING:
        if unschedulable_for > limits.scale_up_bound:
            return Decision(Wait.RELEASE, Why.SCALE_UP_TIMEOUT, newest)
        if unschedulable_for > limits.pending_timeout:
            return Decision(Wait.EXTEND, Why.SCALING, newest)
        return Decision(Wait.KEEP, Why.SCALING, newest)
    if unschedulable_for > limits.pending_timeout:
        return Decision(Wait.RELEASE, Why.PENDING_TIMEOUT)
    return Decision(Wait.KEEP, Why.WAITING)
