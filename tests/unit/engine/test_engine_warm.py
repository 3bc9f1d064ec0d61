"""The warm-slot pool applied by the engine, against the in-memory API: it fills, refills after a
preemption, shrinks for runs in flight and to zero when the node drains, and presence says how
many slots are warm and, on a cluster that cannot grow, how many can start at all."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from tests.unit.engine.conftest import ME, SETTINGS, Harness

from huskies_agent.engine import Engine
from huskies_agent.engine.holds import NodeHold
from huskies_agent.engine.warmpool import WarmPool
from huskies_agent.k8s import warmpod
from huskies_agent.metrics import Metrics

RESULT_OK = json.dumps({"commit": "abc", "pushed": True})


def warm_harness(make_engine: Any, *, slots: int = 2, can_scale: bool = True, **overrides: Any) -> Harness:
    build = dataclasses.replace(SETTINGS.build, warm_slots=slots, warm_priority_class_name="warm",
                                can_scale=can_scale)
    h: Harness = make_engine(build=build, **overrides)
    settings = h.engine.ctx.settings
    # The same engine with the pool wired as operator_cmd wires it (pods=kube).
    h.engine = Engine(settings, h.kube, h.doc, h.sync, ME, Metrics(), clock=h.wall, monotonic=h.mono,
                      sleep=h.engine.ctx.sleep, pods=h.kube)
    return h


def placeholders(h: Harness) -> dict[str, dict[str, Any]]:
    return {n: p for n, p in h.kube.pods.items() if warmpod.is_placeholder(p)}


def bind(h: Harness, name: str, node: str = "n1") -> None:
    h.kube.pods[name]["spec"]["nodeName"] = node
    h.kube.pods[name]["status"] = {"phase": "Running"}


def unschedulable(h: Harness, name: str) -> None:
    h.kube.pods[name]["status"] = {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes"}]}


def presence(h: Harness) -> tuple[int | None, Any, Any]:
    p = h.doc.nodes[ME]
    return p.capacity, p.extra.get("warm"), p.extra.get("can_scale")


async def add(h: Harness, *ids: str, stage: str = "4_merge") -> None:
    for sid in ids:
        h.doc.add_story(sid, stage=stage)
    await h.settle()


def pool(h: Harness) -> WarmPool:
    assert h.engine.pool is not None
    return h.engine.pool


async def test_pool_fills_refills_after_a_preemption_and_tells_presence(make_engine: Any) -> None:
    h = warm_harness(make_engine, max_concurrent=4)
    await h.engine.start()
    await pool(h).reconcile()
    names = sorted(placeholders(h))
    assert len(names) == 2
    assert presence(h) == (4, 0, True)  # none on a node yet
    for name in names:
        bind(h, name)
    await pool(h).reconcile()
    assert presence(h) == (4, 2, True)
    assert h.engine.ctx.metrics.warm_slots.labels("ready")._value.get() == 2
    # The scheduler preempts one for a build pod: it is deleted, and the pool makes a new one.
    del h.kube.pods[names[0]]
    await pool(h).reconcile()
    assert len(placeholders(h)) == 2 and names[0] not in placeholders(h)
    assert presence(h) == (4, 1, True)


async def test_runs_in_flight_shrink_the_pool_and_endings_grow_it_back(make_engine: Any) -> None:
    h = warm_harness(make_engine, slots=3, max_concurrent=4)
    await h.engine.start()
    await pool(h).reconcile()
    assert len(placeholders(h)) == 3
    ready = sorted(placeholders(h))[0]
    bind(h, ready)
    await add(h, "1_a", "2_b")
    assert len(h.engine.runs) == 2
    await pool(h).reconcile()
    left = placeholders(h)
    assert len(left) == 2 and ready in left  # 4 - 2 runs; the one on a node is kept
    job = h.kube.finish_job(h.job_name("1_a"), succeeded=True, exit_code=0, message=RESULT_OK)
    await h.engine.on_job_event("MODIFIED", job)
    await h.settle()
    await pool(h).reconcile()
    assert list(h.engine.runs) == ["2_b"]  # 1_a is done
    assert len(placeholders(h)) == 3  # min(3, 4 - 1)
    await add(h, "3_c", "4_d")
    await pool(h).reconcile()
    assert len(h.engine.runs) == 3 and len(placeholders(h)) == 1


async def test_max_concurrent_zero_and_a_held_node_keep_no_placeholder(make_engine: Any) -> None:
    h = warm_harness(make_engine, max_concurrent=0)
    await h.engine.start()
    await pool(h).reconcile()
    assert placeholders(h) == {}

    h = warm_harness(make_engine, max_concurrent=4)
    await h.engine.start()
    await pool(h).reconcile()
    assert len(placeholders(h)) == 2
    h.engine.ctx.node.hold(NodeHold.CREDENTIALS, h.mono())  # a refused API key holds claiming
    await pool(h).reconcile()
    assert placeholders(h) == {}
    h.mono.advance(SETTINGS.agent_auth_pause_seconds + 1)
    await pool(h).reconcile()
    assert len(placeholders(h)) == 2


async def test_stopping_the_engine_deletes_every_placeholder(make_engine: Any) -> None:
    h = warm_harness(make_engine, max_concurrent=4)
    await h.engine.start()
    # A placeholder left by an earlier leader of this node counts too.
    await h.kube.create_pod(warmpod.build_placeholder(h.engine.ctx.settings, ME))
    serving = asyncio.create_task(h.engine.serve())
    for _ in range(200):
        await asyncio.sleep(0)
        if len(placeholders(h)) == 2:
            break
    assert len(placeholders(h)) == 2
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    assert placeholders(h) == {}


async def test_a_cluster_that_cannot_grow_advertises_and_claims_only_what_fits(make_engine: Any) -> None:
    h = warm_harness(make_engine, can_scale=False, max_concurrent=4)
    await h.engine.start()
    await pool(h).reconcile()
    first, second = sorted(placeholders(h))
    bind(h, first)
    unschedulable(h, second)
    await pool(h).reconcile()
    assert presence(h) == (1, 1, False)
    # Three stories, but only the warm slot's worth is claimed: the rest would not fit anywhere.
    await add(h, "1_a", "2_b", "3_c")
    assert len(h.engine.runs) == 1
    # The scheduler preempts the warm placeholder for that story's pod; the refill finds no node.
    del h.kube.pods[first]
    await pool(h).reconcile()
    (refill,) = set(placeholders(h)) - {second}
    unschedulable(h, refill)
    await pool(h).reconcile()
    await h.settle()
    assert presence(h) == (0, 0, False) and len(h.engine.runs) == 1
    # A node frees up (say another workload ended): the waiting placeholder lands, and a story follows.
    bind(h, second, "n2")
    await pool(h).reconcile()
    await h.settle()
    assert len(h.engine.runs) == 2


async def test_a_cluster_that_can_grow_still_claims_its_free_slots(make_engine: Any) -> None:
    h = warm_harness(make_engine, can_scale=True, max_concurrent=4)
    await h.engine.start()
    await pool(h).reconcile()
    first, second = sorted(placeholders(h))
    bind(h, first)
    unschedulable(h, second)  # a node is on its way
    await pool(h).reconcile()
    assert presence(h) == (4, 1, True)
    await add(h, "1_a", "2_b", "3_c")
    assert len(h.engine.runs) == 3


async def test_api_errors_are_retried_not_fatal(make_engine: Any) -> None:
    h = warm_harness(make_engine, max_concurrent=4)
    await h.engine.start()
    h.kube.fail("create_pod", 500)
    try:
        await pool(h).reconcile()
    except Exception as exc:
        assert "500" in str(exc) or getattr(exc, "status", None) == 500
    await pool(h).reconcile()
    assert len(placeholders(h)) == 2


async def test_placeholder_events_do_not_reach_the_run_observer(make_engine: Any) -> None:
    h = warm_harness(make_engine, max_concurrent=4)
    await h.engine.start()
    await pool(h).reconcile()
    name = sorted(placeholders(h))[0]
    unschedulable(h, name)
    h.engine.active = True
    await h.engine.on_pod_event("MODIFIED", h.kube.pods[name])
    assert pool(h).wake.is_set()
    assert h.engine.runs == {}


async def test_a_story_moving_from_claiming_to_running_counts_once(make_engine: Any) -> None:
    """While a story is in both ``claiming`` and ``runs`` it counts once (``RunTable.busy``), so the
    pool does not shrink (it would delete the placeholder the story's pod is about to preempt;
    seen in tests/e2e/test_warm_slots.py) and claiming sees no less room."""
    h = warm_harness(make_engine, slots=1, max_concurrent=2)
    await h.engine.start()
    await pool(h).reconcile()
    (name,) = placeholders(h)
    await add(h, "1_a")
    h.engine.ctx.table.claiming.add("1_a")
    assert h.engine.ctx.table.busy == 1  # the story counts once, for claiming and the pool alike
    await pool(h).reconcile()
    assert list(placeholders(h)) == [name]
