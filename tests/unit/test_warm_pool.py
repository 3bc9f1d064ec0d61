"""Warm build slots: the pool's pure decisions (size, plan, presence), the placeholder pod
and its settings, as tables."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from huskies_agent import claims
from huskies_agent.engine import pool
from huskies_agent.engine.pool import Advert, Plan, Slot, Tally
from huskies_agent.k8s import objects, warmpod
from huskies_agent.k8s.warmpod import SlotState
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.pipeline.model import NodePresence
from huskies_agent.settings import BuildPodSettings, Settings, SettingsError

R, W, U, G = SlotState.READY, SlotState.WAITING, SlotState.UNSCHEDULABLE, SlotState.GOING


@pytest.mark.parametrize(("warm_slots", "max_concurrent", "busy", "draining", "want"), [
    (0, 4, 0, False, 0),    # off
    (2, 4, 0, False, 2),    # the configured size
    (2, 4, 1, False, 2),    # a run in flight still leaves room for both
    (2, 4, 3, False, 1),    # never more than max_concurrent minus the runs in flight
    (2, 4, 4, False, 0),    # full
    (2, 4, 6, False, 0),    # more runs than slots (adopted after a restart with a lower limit)
    (5, 3, 0, False, 3),    # more warm slots than max_concurrent: capped
    (2, 0, 0, False, 0),    # max_concurrent 0 drains
    (2, 4, 0, True, 0),     # draining: not leader, shutting down, claiming held
    (2, 4, -1, False, 2),   # a nonsense busy count never grows the pool
    (-1, 4, 0, False, 0),
])
def test_desired_size(warm_slots: int, max_concurrent: int, busy: int, draining: bool, want: int) -> None:
    assert pool.desired(warm_slots=warm_slots, max_concurrent=max_concurrent, busy=busy, draining=draining) == want


@pytest.mark.parametrize(("slots", "want", "expected"), [
    ([], 2, Plan(create=2)),
    ([("a", R)], 2, Plan(create=1)),
    ([("a", R), ("b", W)], 2, Plan()),
    # one was preempted (being deleted): it does not count, a new one refills the pool
    ([("a", G), ("b", R)], 2, Plan(create=1)),
    # surplus: those without a node go first, the warm one stays
    ([("a", R), ("b", W), ("c", U)], 1, Plan(delete=("c", "b"))),
    ([("b", R), ("a", R)], 1, Plan(delete=("a",))),
    ([("a", R), ("b", W), ("c", G)], 0, Plan(delete=("b", "a"))),
    ([("a", G)], 0, Plan()),
    ([], -3, Plan()),
])
def test_plan(slots: list[tuple[str, SlotState]], want: int, expected: Plan) -> None:
    assert pool.plan([Slot(n, s) for n, s in slots], want) == expected


@pytest.mark.parametrize(("slots", "step", "expected"), [
    ([("a", R), ("b", W), ("c", U), ("d", G)], Plan(), Tally(ready=1, waiting=1, unschedulable=1)),
    ([("a", R)], Plan(create=2), Tally(ready=1, waiting=2)),
    ([("a", R), ("b", U)], Plan(delete=("b",)), Tally(ready=1)),
])
def test_tally(slots: list[tuple[str, SlotState]], step: Plan, expected: Tally) -> None:
    assert pool.tally([Slot(n, s) for n, s in slots], step) == expected


@pytest.mark.parametrize(("free", "tally", "busy", "can_scale", "held", "expected"), [
    (4, Tally(), 0, True, False, Advert(4, 0)),                               # no pool: as before
    (4, Tally(ready=2), 0, True, False, Advert(4, 2)),                        # 2 of the 4 start at once
    (1, Tally(ready=2, busy=3), 3, True, False, Advert(1, 1)),                # never more warm than free
    (3, Tally(ready=2), 1, True, False, Advert(3, 1)),                        # a run started since the look
    (4, Tally(ready=1, unschedulable=1), 0, True, False, Advert(4, 1)),       # a node is coming
    (4, Tally(ready=1, unschedulable=1), 0, False, False, Advert(1, 1)),      # no node will come: full past warm
    (3, Tally(ready=1, unschedulable=1), 1, False, False, Advert(0, 0)),      # ...and the warm one is taken
    (4, Tally(unschedulable=2), 0, False, False, Advert(0, 0)),               # nothing fits
    (4, Tally(ready=1, waiting=1), 0, False, False, Advert(4, 1)),            # not judged yet
    (4, Tally(ready=2), 0, True, True, Advert(0, 0)),                         # claiming held
    (0, Tally(ready=2), 0, True, False, Advert(0, 0)),
])
def test_advertise(free: int, tally: Tally, busy: int, can_scale: bool, held: bool, expected: Advert) -> None:
    assert pool.advertise(free=free, pool=tally, busy=busy, can_scale=can_scale, held=held) == expected


@pytest.mark.parametrize(("capacity", "warm", "weight"), [
    (4, 0, 4), (4, 2, 6), (2, 5, 4), (0, 3, 0), (None, 2, 0), (-2, 2, 0),
    # what an old peer (no "warm") or a hostile one wrote weighs by free slots only
    (3, None, 3), (3, True, 3), (3, -1, 3), (3, 2.5, 3), (3, [1], 3), (3, 10**30, 3), (3, float("nan"), 3),
    (3, {"n": 2}, 3), (3, "two", 3),
    # numbers come back from the CRDT as floats; a digit string is read as capacity would be
    (3, 2.0, 5), (3, "2", 5),
])
def test_slot_weight_is_total(capacity: Any, warm: Any, weight: int) -> None:
    assert claims.slot_weight(capacity, warm) == weight


def test_warm_slots_reach_a_peer_through_the_document() -> None:
    """What write_presence publishes is what another replica weighs with (a float after the CRDT)."""
    writer, reader = PipelineDoc(), PipelineDoc()
    writer.put_presence(NodePresence(node_id="a", last_seen=1.0, capacity=3, extra={"warm": 2, "can_scale": False}))
    reader.apply_remote(writer.encode_update())
    seen = reader.nodes["a"]
    assert claims.slot_weight(seen.capacity, seen.extra.get("warm")) == 5
    assert seen.extra.get("can_scale") is False


def test_warm_slots_win_a_larger_share_of_first_choices() -> None:
    ids = [f"{i}_story" for i in range(3000)]
    plain = {"warm": claims.slot_weight(2, 0), "cold": claims.slot_weight(2, 0)}
    warm = {"warm": claims.slot_weight(2, 2), "cold": claims.slot_weight(2, 0)}
    share = sum(claims.rank(i, warm)[0] == "warm" for i in ids) / len(ids)
    even = sum(claims.rank(i, plain)[0] == "warm" for i in ids) / len(ids)
    assert 0.45 < even < 0.55
    assert 0.62 < share < 0.72  # weights 4 : 2


def _pod(**fields: Any) -> dict[str, Any]:
    return {"metadata": fields.get("metadata", {}), "spec": fields.get("spec", {}), "status": fields.get("status", {})}


@pytest.mark.parametrize(("pod", "state"), [
    (_pod(status={"phase": "Pending"}), W),
    (_pod(status={"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}), U),
    (_pod(spec={"nodeName": "n1"}, status={"phase": "Pending"}), R),
    (_pod(spec={"nodeName": "n1"}, status={"phase": "Running"}), R),
    (_pod(metadata={"deletionTimestamp": "2026-12-02T00:00:00Z"}, spec={"nodeName": "n1"},
          status={"phase": "Running"}), G),
    (_pod(spec={"nodeName": "n1"}, status={"phase": "Running", "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]}), G),
    (_pod(spec={"nodeName": "n1"}, status={"phase": "Failed"}), G),
    ({}, W),
])
def test_slot_state(pod: dict[str, Any], state: SlotState) -> None:
    assert warmpod.slot_state(pod) is state


WARM = Settings(
    namespace="builds", instance="inst", cluster_name="eu",
    build=BuildPodSettings(
        requests={"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "1"}, limits={"memory": "3Gi"},
        node_selector={"huskies.dev/pool": "build"},
        tolerations=({"key": "huskies.dev/build", "operator": "Equal", "value": "true", "effect": "NoSchedule"},),
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        priority_class_name="builds", image_pull_secrets=("pull",), service_account="build-sa",
        warm_slots=2, warm_priority_class_name="warm",
    ),
)


def test_placeholder_asks_for_what_a_build_pod_asks_for_where_it_may_run() -> None:
    job_pod = objects.build_job(WARM, objects.RunSpec("7_story", "2_current", "n", 3), None)["spec"]["template"]
    spec = warmpod.build_placeholder(WARM, "n")["spec"]
    # Same requests: the build pod's effective request is the sum of its containers (its clone
    # init container asks for what the publisher does, less than the sum).
    assert [c["resources"] for c in spec["containers"]] == [c["resources"] for c in job_pod["spec"]["containers"]]
    assert job_pod["spec"]["initContainers"][0]["resources"] == spec["containers"][1]["resources"]
    for key in ("nodeSelector", "tolerations", "affinity", "imagePullSecrets", "serviceAccountName"):
        assert spec[key] == job_pod["spec"][key], key
    assert spec["priorityClassName"] == "warm" != job_pod["spec"]["priorityClassName"]
    assert spec["terminationGracePeriodSeconds"] == 0
    assert spec["automountServiceAccountToken"] is False
    assert "volumes" not in spec
    for c in spec["containers"]:
        assert c["image"] == WARM.build.image and c["command"] == ["sleep", "infinity"]
        assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["runAsNonRoot"]
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # No protection from consolidation: an autoscaler may move a placeholder.
    assert "annotations" not in warmpod.build_placeholder(WARM, "n")["metadata"]


def test_placeholder_labels_select_it_and_no_build_pod() -> None:
    pod = warmpod.build_placeholder(WARM, "node/1")
    assert pod["metadata"]["generateName"].startswith("huskies-agent-warm-")
    assert warmpod.is_placeholder(pod)
    labels = pod["metadata"]["labels"]
    for term in warmpod.selector(WARM, "node/1").split(","):
        key, _, value = term.partition("=")
        assert labels[key] == value
    job = objects.build_job(WARM, objects.RunSpec("7_story", "2_current", "node/1", 3), None)
    assert not warmpod.is_placeholder(job["spec"]["template"])
    assert objects.run_spec_from_object(pod) is None  # the run observer ignores it


def test_placeholder_image_and_command_are_settings() -> None:
    s = dataclasses.replace(WARM, build=dataclasses.replace(
        WARM.build, warm_image="registry.k8s.io/pause:3.10", warm_command=("/pause",)))
    for c in warmpod.build_placeholder(s, "n")["spec"]["containers"]:
        assert (c["image"], c["command"]) == ("registry.k8s.io/pause:3.10", ["/pause"])


@pytest.mark.parametrize(("env", "error"), [
    ({"HUSKIES_BUILD_WARM_SLOTS": "2", "HUSKIES_BUILD_WARM_PRIORITY_CLASS_NAME": "warm"}, None),
    ({"HUSKIES_BUILD_WARM_SLOTS": "-1"}, "build.warm_slots: must be 0 or more"),
    ({"HUSKIES_BUILD_WARM_SLOTS": "2"}, "build.warm_priority_class_name: must name a PriorityClass"),
    ({"HUSKIES_BUILD_WARM_SLOTS": "2", "HUSKIES_BUILD_WARM_PRIORITY_CLASS_NAME": "x",
      "HUSKIES_BUILD_PRIORITY_CLASS_NAME": "x"}, "must differ from build.priority_class_name"),
    ({"HUSKIES_BUILD_WARM_SLOTS": "2", "HUSKIES_BUILD_WARM_PRIORITY_CLASS_NAME": "warm",
      "HUSKIES_BUILD_WARM_COMMAND": "[]"}, "build.warm_command: expected a non-empty list"),
    ({"HUSKIES_BUILD_WARM_SLOTS": "two"}, "build.warm_slots: expected a whole number"),
    ({"HUSKIES_BUILD_CAN_SCALE": "maybe"}, "build.can_scale: expected true or false"),
    ({"HUSKIES_BUILD_CAN_SCALE": "false"}, None),
])
def test_warm_settings_are_checked(env: dict[str, str], error: str | None) -> None:
    if error is None:
        Settings.load(environ=env)
        return
    with pytest.raises(SettingsError, match=error.replace("(", r"\(").replace(".", r"\.")):
        Settings.load(environ=env)
