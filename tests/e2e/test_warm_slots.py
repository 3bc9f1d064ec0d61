"""Warm build slots on the real control plane: kube-scheduler's preemption with real
PriorityClasses on kwok nodes, and the operator as a real process.

A dedicated kwok node (label and taint of its own) fits exactly one build pod. The operator keeps
one placeholder there; a claimed story's pod (priority 0) preempts it and starts on that node; the
pool makes a new placeholder, which waits (no room) until a second node appears. Stopping the
operator deletes its placeholders; a placeholder left by an operator that was killed is deleted by
the next one, which runs with ``max_concurrent`` 0.
"""

from __future__ import annotations

import asyncio
import json
import string
import time
import uuid
from collections.abc import Iterator
from importlib import resources
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from tests.e2e.harness import eventually, flush, pipeline

from huskies_agent.k8s import warmpod
from huskies_agent.settings import BuildPodSettings, Settings
from huskies_agent_dev.devcluster import ControlPlane
from huskies_agent_dev.devcluster._http import AdminClient

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

#: One build pod asks for 1 cpu (agent) + 100m (publisher); a node of 1500m fits one, not two.
REQUESTS = {"cpu": "1", "memory": "512Mi"}
NODE_CPU = "1500m"


class WarmSetup:
    """A node pool of our own (label + taint) and the placeholders' PriorityClass; removed after."""

    def __init__(self, client: AdminClient, tag: str) -> None:
        self.client = client
        self.tag = tag
        self.pool_label = {"huskies.dev/warm-test": tag}
        self.taint = {"key": "huskies.dev/warm-test", "value": tag, "effect": "NoSchedule"}
        self.priority_class = f"warm-test-{tag}"
        self.nodes: list[str] = []

    def create_priority_class(self) -> None:
        self.client.create_if_missing("/apis/scheduling.k8s.io/v1/priorityclasses", {
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": self.priority_class}, "value": -1, "preemptionPolicy": "Never",
            "globalDefault": False})

    def add_node(self) -> str:
        name = f"warm-{self.tag}-{len(self.nodes)}"
        text = resources.files("huskies_agent_dev.devcluster").joinpath("kwok-node.yaml").read_text()
        node = yaml.safe_load(string.Template(text).substitute(
            name=name, cpu=NODE_CPU, memory="4Gi", pods="110", ip=f"10.1.9.{10 + len(self.nodes)}"))
        node["metadata"]["labels"].update(self.pool_label)
        node["spec"]["taints"] = [self.taint]
        self.client.create_if_missing("/api/v1/nodes", node)
        self.nodes.append(name)
        return name

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "HUSKIES_BUILD_REQUESTS": json.dumps(REQUESTS),
            "HUSKIES_BUILD_NODE_SELECTOR": json.dumps(self.pool_label),
            "HUSKIES_BUILD_TOLERATIONS": json.dumps([{**self.taint, "operator": "Equal"}]),
            "HUSKIES_BUILD_WARM_SLOTS": "1",
            "HUSKIES_BUILD_WARM_PRIORITY_CLASS_NAME": self.priority_class,
            "HUSKIES_MAX_CONCURRENT": "2",
            "HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": "4s"}),
            **extra,
        }

    def remove(self) -> None:
        for name in self.nodes:
            self.client.raw("DELETE", f"/api/v1/nodes/{name}")
        self.client.raw("DELETE", f"/apis/scheduling.k8s.io/v1/priorityclasses/{self.priority_class}")


@pytest.fixture
def warm(cluster: ControlPlane) -> Iterator[WarmSetup]:
    setup = WarmSetup(cluster.client, uuid.uuid4().hex[:6])
    setup.create_priority_class()
    try:
        yield setup
    finally:
        setup.remove()


def pods(client: AdminClient, ns: str, selector: str) -> list[dict[str, Any]]:
    return list(client.json("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector={quote(selector)}")["items"])


def placeholders(client: AdminClient, ns: str) -> list[dict[str, Any]]:
    return [p for p in pods(client, ns, "app.kubernetes.io/component=warm-slot")
            if not p["metadata"].get("deletionTimestamp")]


def build_pods(client: AdminClient, ns: str) -> list[dict[str, Any]]:
    return pods(client, ns, "app.kubernetes.io/component=story-build")


def events_of(client: AdminClient, ns: str, name: str) -> list[dict[str, Any]]:
    path = f"/api/v1/namespaces/{ns}/events?fieldSelector={quote(f'involvedObject.name={name}')}"
    return list(client.json("GET", path)["items"])


def presence_of(doc: Any, cluster_name: str) -> Any:
    for p in doc.nodes.values():
        if p.extra.get("cluster") == cluster_name:
            return p
    return None


async def test_a_build_pod_preempts_a_placeholder_the_pool_refills_and_empties_on_stop(
        start_op: Any, namespace_factory: Any, rendezvous: str, cluster: ControlPlane, warm: WarmSetup) -> None:
    client = cluster.client
    ns = namespace_factory()
    first_node = warm.add_node()
    op, _ = start_op("warm", ns, env=warm.env())
    async with pipeline(rendezvous) as doc:
        # 1. The pool: one placeholder, placed on the only node that fits it; presence says so.
        held = await eventually(lambda: [p for p in placeholders(client, ns) if p["spec"].get("nodeName")],
                                60, what="a placeholder on the warm node")
        assert len(held) == 1 and held[0]["spec"]["nodeName"] == first_node
        victim = held[0]["metadata"]["name"]
        assert held[0]["spec"]["priorityClassName"] == warm.priority_class and held[0]["spec"]["priority"] == -1
        await eventually(lambda: (p := presence_of(doc, "warm")) is not None and p.extra.get("warm") == 1,
                         30, what="presence with one warm slot")
        assert presence_of(doc, "warm").capacity == 2 and presence_of(doc, "warm").extra["can_scale"] is True

        # 2. A story: its pod preempts the placeholder and runs on that node.
        t0 = time.monotonic()
        doc.add_story("1_warm", stage="4_merge")
        await flush(doc)
        pod = await eventually(
            lambda: next((p for p in build_pods(client, ns)
                          if p["spec"].get("nodeName") and p["status"].get("phase") == "Running"), None),
            60, what="the build pod Running")
        started = time.monotonic() - t0
        assert pod["spec"]["nodeName"] == first_node
        assert pod["spec"].get("priority", 0) == 0
        assert victim not in {p["metadata"]["name"] for p in placeholders(client, ns)}
        await eventually(lambda: any(e.get("reason") == "Preempted" for e in events_of(client, ns, victim)),
                         30, what="the scheduler's Preempted event on the placeholder")

        # 3. The pool refills: a new placeholder, with no room until a second node appears.
        refill = await eventually(lambda: [p for p in placeholders(client, ns)
                                           if p["metadata"]["name"] != victim], 30, what="a new placeholder")
        assert len(refill) == 1 and not refill[0]["spec"].get("nodeName")
        second_node = warm.add_node()
        await eventually(lambda: [p for p in placeholders(client, ns) if p["spec"].get("nodeName") == second_node],
                         60, what="the new placeholder on the second node")

        # The story finished normally: the preemption took nothing from it.
        await eventually(lambda: doc.story("1_warm").stage == "5_done", 60, what="story done")
        assert doc.story("1_warm").retry_count == 0
        assert len(placeholders(client, ns)) == 1

        # 4. Stepping down (SIGTERM): the operator deletes its placeholders on the way out.
        op.stop()
        await eventually(lambda: placeholders(client, ns) == [], 20, what="no placeholder after the stop")
    print(f"story -> build pod Running through a preemption: {started:.2f} s")


async def test_max_concurrent_zero_removes_a_placeholder_a_killed_operator_left(
        start_op: Any, namespace_factory: Any, rendezvous: str, cluster: ControlPlane, warm: WarmSetup) -> None:
    client = cluster.client
    ns = namespace_factory()
    warm.add_node()
    op, _ = start_op("warm-kill", ns, env=warm.env())
    await eventually(lambda: [p for p in placeholders(client, ns) if p["spec"].get("nodeName")], 60,
                     what="a placeholder on the warm node")
    op.kill()  # no chance to clean up: the placeholder stays
    await asyncio.sleep(1)
    left = placeholders(client, ns)
    assert len(left) == 1
    start_op("warm-kill-2", ns, env=warm.env(HUSKIES_MAX_CONCURRENT="0"))
    await eventually(lambda: placeholders(client, ns) == [], 60, what="the leftover placeholder deleted")
    gone = client.get_or_none(f"/api/v1/namespaces/{ns}/pods/{left[0]['metadata']['name']}")
    assert gone is None or gone["metadata"].get("deletionTimestamp")


def test_placeholder_from_settings_is_accepted_by_the_api_server(cluster: ControlPlane, namespace_factory: Any,
                                                                 warm: WarmSetup) -> None:
    """The real API server takes the placeholder as built: the Priority plugin resolves its class, and
    Pod Security admission at "restricted" (what the chart's install namespace enforces) admits it."""
    ns = namespace_factory()
    cluster.client.json("PATCH", f"/api/v1/namespaces/{ns}",
                        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
                        content_type="application/merge-patch+json")
    settings = Settings(namespace=ns, build=BuildPodSettings(
        requests=REQUESTS, warm_slots=1, warm_priority_class_name=warm.priority_class,
        node_selector=warm.pool_label, tolerations=({**warm.taint, "operator": "Equal"},)))
    created = cluster.client.json("POST", f"/api/v1/namespaces/{ns}/pods", warmpod.build_placeholder(settings, "n"))
    assert created["spec"]["priority"] == -1 and created["spec"]["preemptionPolicy"] == "Never"
    cluster.client.raw("DELETE", f"/api/v1/namespaces/{ns}/pods/{created['metadata']['name']}")
