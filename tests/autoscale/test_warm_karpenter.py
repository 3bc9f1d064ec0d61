"""Warm slots with a real autoscaler (Karpenter's kwok provider): the placeholder brings a node up
from zero and keeps it past consolidation; a story's pod preempts it and runs on that node; the
refill makes Karpenter add the next node; once the operator stops, its placeholders go and so do
the nodes.

    .venv/bin/pytest tests/autoscale/test_warm_karpenter.py -s   (part of make test)

Nodes are c-2x (2 cpu, 100m reserved by Karpenter-kwok) and a build pod asks for 1.1 cpu, so a
node holds one build pod or one placeholder: the story's pod can only start there by preemption.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from tests.autoscale.conftest import MakeEnv
from tests.autoscale.env import AutoscaleEnv
from tests.e2e.harness import eventually, flush, pipeline

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]

PRIORITY_CLASS = "huskies-warm-test"
CONSOLIDATE_AFTER = 5.0
#: Karpenter removes an empty node 16-32 s after consolidateAfter (docs/autoscaling.md): a node
#: that outlives this with no build on it is kept by its placeholder.
OUTLIVE = 40.0


@pytest.fixture
def warm_env(make_env: MakeEnv) -> AutoscaleEnv:
    return make_env(
        build_requests={"cpu": "1", "memory": "1Gi"}, instance_cpu=("2",), run_for="3s", max_concurrent=4,
        consolidate_after=f"{CONSOLIDATE_AFTER:g}s",
        operator_env={"HUSKIES_BUILD_WARM_SLOTS": "1", "HUSKIES_BUILD_WARM_PRIORITY_CLASS_NAME": PRIORITY_CLASS},
        extra_objects=(("/apis/scheduling.k8s.io/v1/priorityclasses", {
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": PRIORITY_CLASS},
            "value": -1, "preemptionPolicy": "Never", "globalDefault": False}),))


def _placeholders(env: AutoscaleEnv) -> list[dict[str, Any]]:
    items = env.cp.client.json(
        "GET", f"/api/v1/namespaces/{env.namespace}/pods?labelSelector=app.kubernetes.io/component%3Dwarm-slot")
    return [p for p in items["items"] if not p["metadata"].get("deletionTimestamp")]


def _build_pods(env: AutoscaleEnv) -> list[dict[str, Any]]:
    items = env.cp.client.json(
        "GET", f"/api/v1/namespaces/{env.namespace}/pods?labelSelector=app.kubernetes.io/component%3Dstory-build")
    return list(items["items"])


def _node_names(env: AutoscaleEnv) -> set[str]:
    return {n["metadata"]["name"] for n in env.karpenter_nodes()}


async def test_warm_slot_keeps_a_karpenter_node_and_a_story_starts_on_it(warm_env: AutoscaleEnv) -> None:
    env = warm_env
    async with pipeline(env.url) as doc:
        # 1. From zero build nodes, the placeholder makes Karpenter add one, and lands on it.
        placed = await eventually(lambda: [p for p in _placeholders(env) if p["spec"].get("nodeName")], 120,
                                  what="the placeholder on a Karpenter node")
        warm_node = placed[0]["spec"]["nodeName"]
        assert _node_names(env) == {warm_node}
        # 2. The node outlives consolidation: the placeholder keeps it (no build has run yet).
        t = time.monotonic()
        while time.monotonic() - t < OUTLIVE:
            env.check_alive()
            assert warm_node in _node_names(env), "Karpenter removed the warm node"
            await asyncio.sleep(1)

        # 3. A story: its pod preempts the placeholder and runs on the warm node, with no new node.
        doc.add_story("1_warm", stage="4_merge")
        await flush(doc)
        pod = await eventually(lambda: next((p for p in _build_pods(env) if p["spec"].get("nodeName")), None), 60,
                               what="the build pod bound")
        assert pod["spec"]["nodeName"] == warm_node
        # 4. The pool refills: Karpenter adds a node for the new placeholder.
        refill = await eventually(
            lambda: [p for p in _placeholders(env) if p["spec"].get("nodeName") not in (None, warm_node)], 120,
            what="the refilled placeholder on a new node")
        second = refill[0]["spec"]["nodeName"]
        await eventually(lambda: doc.story("1_warm").stage == "5_done", 120, what="the story done")
        assert doc.story("1_warm").retry_count == 0

        # 5. The operator stops: it deletes its placeholder, and Karpenter removes the empty nodes.
        assert env.operator is not None
        env.operator.stop()
        await eventually(lambda: _placeholders(env) == [], 30, what="no placeholder left")
        await eventually(lambda: not ({warm_node, second} & _node_names(env)), 180,
                         what="Karpenter removing the nodes once empty")
