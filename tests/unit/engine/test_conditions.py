"""StoryJob conditions: the pure builder as tables, then the engine writing them through a run."""

from __future__ import annotations

import json
from typing import Any

import pytest

from huskies_agent.engine import conditions
from huskies_agent.engine.conditions import Condition, ConditionType, Status

T, F, U = "True", "False", "Unknown"
NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def table(conds: list[Condition]) -> dict[str, tuple[str, str]]:
    return {c.type.value: (c.status.value, c.reason) for c in conds}


@pytest.mark.parametrize(("status", "expected"), [
    ({"phase": "Pending", "jobName": "j"}, {"Claimed": (T, "ClaimConfirmed"), "Succeeded": (U, "Pending")}),
    ({"phase": "Running"}, {"Succeeded": (U, "Running")}),
    ({"phase": "Succeeded", "reason": "succeeded", "action": "advance", "recorded": False},
     {"Succeeded": (T, "Succeeded"), "Recorded": (F, "AwaitingRendezvous")}),
    ({"phase": "Failed", "reason": "exit code 16: gave up", "action": "count_failure", "recorded": False},
     {"Succeeded": (F, "Failed"), "Recorded": (F, "AwaitingRendezvous")}),
    ({"phase": "Released", "reason": "pod disrupted", "action": "release", "recorded": False},
     {"Succeeded": (F, "Released"), "Recorded": (F, "AwaitingRendezvous")}),
    ({"phase": "Lost", "reason": "claimed by other", "action": "none", "recorded": True},
     {"Succeeded": (F, "Lost"), "Claimed": (F, "ClaimLost"), "Recorded": (T, "NothingToWrite")}),
    ({"phase": "Cancelled", "reason": "job deleted", "action": "release", "recorded": False},
     {"Succeeded": (F, "Cancelled"), "Recorded": (F, "AwaitingRendezvous")}),
    ({"recorded": True, "reason": "advanced to 3_qa"}, {"Recorded": (T, "DocumentWritten")}),
    ({"jobName": "j"}, {}),
    ({"phase": "Bogus"}, {}),
], ids=["pending", "running", "succeeded", "failed", "released", "lost", "cancelled", "recorded", "no-phase",
        "unknown-phase"])
def test_implied(status: dict[str, Any], expected: dict[str, tuple[str, str]]) -> None:
    assert table(conditions.implied(status)) == expected


def test_final_message_is_the_status_reason() -> None:
    (succeeded, _) = conditions.implied({"phase": "Failed", "reason": "exit code 16: gave up", "recorded": False})
    assert succeeded.message == "exit code 16: gave up"


def pod(conds: list[dict[str, str]] | None = None, node: str = "") -> dict[str, Any]:
    return {"metadata": {"name": "p-0"}, "spec": {"nodeName": node} if node else {},
            "status": {"conditions": conds} if conds is not None else {}}


@pytest.mark.parametrize(("obj", "expected"), [
    (pod([{"type": "PodScheduled", "status": "True"}], node="n1"), (T, "Scheduled", "pod p-0 on node n1")),
    (pod([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
           "message": "0/2 nodes are available"}]), (F, "Unschedulable", "0/2 nodes are available")),
    (pod([{"type": "PodScheduled", "status": "False", "reason": "no room here!"}]), (F, "NoRoomHere", "no room here!")),
    (pod([{"type": "PodScheduled", "status": "False"}]), (F, "Unschedulable", "Unschedulable")),
    (pod(node="n2"), (T, "Scheduled", "on node n2")),
    (pod(), None),
    (pod([{"type": "Ready", "status": "False"}]), None),
], ids=["scheduled", "unschedulable", "odd-reason", "no-reason", "node-only", "nothing", "other-condition"])
def test_pod_scheduled(obj: dict[str, Any], expected: tuple[str, str, str] | None) -> None:
    got = conditions.pod_scheduled(obj)
    assert (None if got is None else (got.status.value, got.reason, got.message)) == expected


@pytest.mark.parametrize(("text", "token"), [
    ("Unschedulable", "Unschedulable"), ("no room here!", "NoRoomHere"), ("", "Fallback"), ("!!!", "Fallback"),
    ("42 nodes busy", "NodesBusy"), ("Has:colon_ok", "Has:colon_ok"),
])
def test_reason_token(text: str, token: str) -> None:
    assert conditions.reason_token(text, "Fallback") == token


def test_merge_keeps_transition_time_while_the_status_holds() -> None:
    first = conditions.merge([], [Condition(ConditionType.SUCCEEDED, Status.UNKNOWN, "Pending")], now=NOW,
                             generation=1)
    same = conditions.merge(first, [Condition(ConditionType.SUCCEEDED, Status.UNKNOWN, "Running", "going")],
                            now=LATER, generation=1)
    assert same == [{"type": "Succeeded", "status": U, "reason": "Running", "message": "going",
                     "lastTransitionTime": NOW, "observedGeneration": 1}]
    flipped = conditions.merge(same, [Condition(ConditionType.SUCCEEDED, Status.TRUE, "Succeeded")], now=LATER,
                               generation=1)
    assert flipped[0]["status"] == T and flipped[0]["lastTransitionTime"] == LATER


def test_merge_orders_by_type_keeps_others_and_drops_malformed() -> None:
    existing: list[Any] = [{"type": "Custom", "status": T, "reason": "X", "lastTransitionTime": NOW},
                           {"status": T}, "junk", {"type": "Recorded", "status": F, "reason": "AwaitingRendezvous",
                                                   "lastTransitionTime": NOW}]
    merged = conditions.merge(existing, [Condition(ConditionType.CLAIMED, Status.TRUE, "ClaimConfirmed"),
                                         Condition(ConditionType.POD_SCHEDULED, Status.TRUE, "Scheduled")],
                              now=LATER, generation=None)
    assert [c["type"] for c in merged] == ["Claimed", "PodScheduled", "Recorded", "Custom"]
    assert "observedGeneration" not in merged[0]


def test_merge_bounds_reason_and_message() -> None:
    (entry,) = conditions.merge([], [Condition(ConditionType.SUCCEEDED, Status.FALSE, "not a token", "m" * 5000)],
                                now=NOW, generation=3)
    assert entry["reason"] == "NotAToken" and len(entry["message"]) == conditions.MESSAGE_LIMIT
    assert entry["observedGeneration"] == 3


# ---------------------------------------------------------------------- through the engine

RESULT_OK = json.dumps({"commit": "abc", "pushed": True, "cost_usd": 0.42})


def by_type(sj: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in sj["status"]["conditions"]}


async def test_a_run_writes_its_conditions_from_claim_to_record(h: Any) -> None:
    h.doc.add_story("1_a", stage="2_current")
    await h.settle()
    name = h.job_name("1_a")
    sj = h.kube.storyjobs[name]
    assert by_type(sj) == {"Claimed": (T, "ClaimConfirmed"), "Succeeded": (U, "Pending")}
    assert sj["status"]["observedGeneration"] == 1
    assert all(c["observedGeneration"] == 1 for c in sj["status"]["conditions"])

    pod_name = h.kube.add_pod(name)["metadata"]["name"]
    unschedulable = {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes"}]}
    await h.engine.on_pod_event("MODIFIED", h.kube.set_pod_status(pod_name, unschedulable))
    assert by_type(h.kube.storyjobs[name])["PodScheduled"] == (F, "Unschedulable")
    running = {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}]}
    await h.engine.on_pod_event("MODIFIED", h.kube.set_pod_status(pod_name, running))
    writes = len(h.kube.calls)
    await h.engine.on_pod_event("MODIFIED", h.kube.set_pod_status(pod_name, running))  # no change: no write
    assert len(h.kube.calls) == writes
    assert by_type(h.kube.storyjobs[name])["PodScheduled"] == (T, "Scheduled")
    await h.engine.on_job_event("MODIFIED", h.kube.set_job_active(name))
    assert by_type(h.kube.storyjobs[name])["Succeeded"] == (U, "Running")

    await h.engine.on_job_event("MODIFIED", h.kube.finish_job(name, succeeded=True, exit_code=0, message=RESULT_OK))
    await h.settle()
    status = h.kube.storyjobs[name]["status"]
    assert by_type(h.kube.storyjobs[name]) == {
        "Claimed": (T, "ClaimConfirmed"), "PodScheduled": (T, "Scheduled"), "Succeeded": (T, "Succeeded"),
        "Recorded": (T, "DocumentWritten")}
    assert [c["type"] for c in status["conditions"]] == ["Claimed", "PodScheduled", "Succeeded", "Recorded"]
    assert status["recorded"] is True and status["result"]["cost_usd"] == 0.42


async def test_claim_to_running_is_observed_once_from_the_confirmed_claim(h: Any) -> None:
    h.doc.add_story("1_a", stage="2_current")
    await h.settle()
    name = h.job_name("1_a")
    pod_name = h.kube.add_pod(name)["metadata"]["name"]
    h.mono.advance(42)
    await h.engine.on_pod_event("MODIFIED", h.kube.set_pod_status(pod_name, {"phase": "Running"}))
    h.mono.advance(100)
    await h.engine.on_pod_event("MODIFIED", h.kube.set_pod_status(pod_name, {"phase": "Running"}))
    hist = h.engine.ctx.metrics.claim_to_running
    samples = {s.name: s.value for s in hist.collect()[0].samples if not s.labels.get("le")}
    assert samples["huskies_claim_to_running_seconds_count"] == 1
    assert samples["huskies_claim_to_running_seconds_sum"] == pytest.approx(42)


async def test_a_lost_claim_ends_with_claimed_false(h: Any) -> None:
    from huskies_agent.pipeline.model import NodePresence

    h.doc.add_story("1_a", stage="2_current")
    await h.settle()
    name = h.job_name("1_a")
    h.doc.put_presence(NodePresence(node_id="other", last_seen=h.wall() + 3600, alive=True))
    h.doc.claim("1_a", "other", h.wall())
    await h.settle()
    got = by_type(h.kube.storyjobs[name])
    assert got["Succeeded"] == (F, "Lost") and got["Claimed"] == (F, "ClaimLost")
    assert got["Recorded"] == (T, "NothingToWrite")
