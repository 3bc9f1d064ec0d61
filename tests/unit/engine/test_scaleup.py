"""engine.scaleup: reading a node autoscaler's Events, and keep / extend / release as a table."""

from __future__ import annotations

from typing import Any

import pytest

from huskies_agent.engine.scaleup import Limits, Signal, Verdict, Wait, Why, decide, latest, read_event

LIMITS = Limits(pending_timeout=900, scale_up_timeout=1800)
SCALING = Signal(Verdict.SCALING, "Nominated", "karpenter", "Pod should schedule on: nodeclaim/builds-x", at=100)
NO_ROOM = Signal(Verdict.NO_SCALE_UP, "NotTriggerScaleUp", "cluster-autoscaler", "pod didn't trigger scale-up", at=100)


def later(signal: Signal, seconds: float = 10) -> Signal:
    return Signal(signal.verdict, signal.reason, signal.source, signal.message, signal.at + seconds)


# unschedulable_for (None: scheduled), signals in arrival order, limits -> (wait, why)
DECISIONS = [
    # No autoscaler verdict: the plain pending timeout.
    (None, [], LIMITS, Wait.KEEP, Why.WAITING),
    (10, [], LIMITS, Wait.KEEP, Why.WAITING),
    (900, [], LIMITS, Wait.KEEP, Why.WAITING),
    (901, [], LIMITS, Wait.RELEASE, Why.PENDING_TIMEOUT),
    # A node is coming: wait past the pending timeout, up to the longer bound.
    (10, [SCALING], LIMITS, Wait.KEEP, Why.SCALING),
    (901, [SCALING], LIMITS, Wait.EXTEND, Why.SCALING),
    (1800, [SCALING], LIMITS, Wait.EXTEND, Why.SCALING),
    (1801, [SCALING], LIMITS, Wait.RELEASE, Why.SCALE_UP_TIMEOUT),
    # No node can come: release at once, whatever the time.
    (0, [NO_ROOM], LIMITS, Wait.RELEASE, Why.NO_SCALE_UP),
    (5, [NO_ROOM], LIMITS, Wait.RELEASE, Why.NO_SCALE_UP),
    # The newest verdict wins, by time, and among equal times by arrival.
    (5, [SCALING, later(NO_ROOM)], LIMITS, Wait.RELEASE, Why.NO_SCALE_UP),
    (5, [NO_ROOM, later(SCALING)], LIMITS, Wait.KEEP, Why.SCALING),
    (5, [later(SCALING), NO_ROOM], LIMITS, Wait.KEEP, Why.SCALING),
    (5, [SCALING, NO_ROOM], LIMITS, Wait.RELEASE, Why.NO_SCALE_UP),
    # A scheduled pod: a verdict about it is stale, nothing to release.
    (None, [NO_ROOM], LIMITS, Wait.KEEP, Why.WAITING),
    (None, [SCALING], LIMITS, Wait.KEEP, Why.WAITING),
    # A scale-up bound below the pending timeout never shortens the wait.
    (901, [SCALING], Limits(900, 60), Wait.RELEASE, Why.SCALE_UP_TIMEOUT),
    (899, [SCALING], Limits(900, 60), Wait.KEEP, Why.SCALING),
]


@pytest.mark.parametrize(("waited", "signals", "limits", "wait", "why"), DECISIONS)
def test_decide(waited: float | None, signals: list[Signal], limits: Limits, wait: Wait, why: Why) -> None:
    decision = decide(waited, signals, limits)
    assert (decision.wait, decision.why) == (wait, why)
    if signals:
        assert decision.signal == latest(signals)


def test_descriptions_name_the_bound_and_the_autoscaler() -> None:
    assert "pending_scale_up_timeout_seconds (1800s)" in decide(1801, [SCALING], LIMITS).describe(1801, LIMITS)
    assert "nodeclaim/builds-x" in decide(901, [SCALING], LIMITS).describe(901, LIMITS)
    text = decide(3, [NO_ROOM], LIMITS).describe(3, LIMITS)
    assert "cluster-autoscaler NotTriggerScaleUp: pod didn't trigger scale-up" in text


def event(reason: str, message: str = "m", *, component: str | None = None, kind: str = "Pod",
          **extra: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"kind": "Event", "reason": reason, "message": message,
                          "involvedObject": {"kind": kind, "name": "hk-1-a-x7k2p", "namespace": "builds"}, **extra}
    if component is not None:
        ev["source"] = {"component": component}
    return ev


KARPENTER_FAILED = ("Failed to schedule pod, incompatible with nodepool \"builds\", no instance type has "
                    "enough resources, requirements=..., resources={\"cpu\":\"16\",\"pods\":\"1\"}")
# Event -> verdict (None: not an autoscaler's verdict)
EVENTS = [
    (event("TriggeredScaleUp", "pod triggered scale-up: [{ng 0->1 (max: 5)}]", component="cluster-autoscaler"),
     Verdict.SCALING),
    (event("Nominated", "Pod should schedule on: nodeclaim/builds-abc", component="karpenter"), Verdict.SCALING),
    (event("NotTriggerScaleUp", "pod didn't trigger scale-up: 1 max node group size reached",
           component="cluster-autoscaler"), Verdict.NO_SCALE_UP),
    (event("FailedScaleUp", "Node scale up in zones z associated with this pod failed: GCE out of resources"),
     Verdict.NO_SCALE_UP),
    (event("FailedScheduling", KARPENTER_FAILED, component="karpenter"), Verdict.NO_SCALE_UP),
    # Karpenter's, told by its message when the reporter is not filled in (events.k8s.io writers).
    (event("FailedScheduling", KARPENTER_FAILED), Verdict.NO_SCALE_UP),
    (event("FailedScheduling", "x", reportingComponent="karpenter"), Verdict.NO_SCALE_UP),
    # The scheduler's FailedScheduling is what every unschedulable pod gets: not a verdict.
    (event("FailedScheduling", "0/1 nodes are available: 1 Insufficient cpu.", component="default-scheduler"), None),
    (event("Scheduled", "Successfully assigned", component="default-scheduler"), None),
    # Not about a pod, or malformed.
    (event("Nominated", kind="Node"), None),
    ({"reason": "Nominated", "involvedObject": "pod"}, None),
    ({"reason": "Nominated", "involvedObject": {"kind": "Pod"}}, None),
    ({"reason": 7, "involvedObject": {"kind": "Pod", "name": "p"}}, None),
    ({}, None),
]


@pytest.mark.parametrize(("ev", "verdict"), EVENTS)
def test_read_event(ev: dict[str, Any], verdict: Verdict | None) -> None:
    read = read_event(ev)
    if verdict is None:
        assert read is None
        return
    assert read is not None
    pod, signal = read
    assert pod == "hk-1-a-x7k2p" and signal.verdict is verdict and signal.reason == ev["reason"]


def test_read_event_takes_the_newest_time_and_bounds_the_message() -> None:
    ev = event("Nominated", "x" * 5000, component="karpenter", firstTimestamp="2026-01-01T00:00:00Z",
               lastTimestamp="2026-01-01T00:01:00Z", eventTime="not a time",
               series={"lastObservedTime": "2026-01-01T00:02:00.500000Z"})
    read = read_event(ev)
    assert read is not None
    signal = read[1]
    assert signal.at == pytest.approx(1767225720.5) and len(signal.message) == 512
    assert read_event(event("Nominated"))[1].at == 0.0  # type: ignore[index]
