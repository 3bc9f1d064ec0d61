"""A burst of stories scales a real autoscaler (Karpenter's kwok provider) up and down again.

Part of `make test` (which builds Karpenter-kwok first: `make karpenter`); alone:

    make test-autoscale          # or: .venv/bin/pytest tests/autoscale -s

Everything runs on loopback; see tests/autoscale/env.py for the setup and docs/autoscaling.md for
the figures. The autoscaler-aware waiting and consolidation tests are in test_scaleup_wait.py.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from tests.autoscale.env import POOL_LABEL, AutoscaleEnv
from tests.autoscale.karpenter import condition, karpenter_version
from tests.autoscale.observer import Observer, PodTimes, seconds
from tests.e2e.harness import eventually, flush, kube, pipeline

from huskies_agent.pipeline.document import PipelineDoc

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]

STORIES = 10


def _done(doc: PipelineDoc, ids: list[str]) -> bool:
    return all((s := doc.story(sid)) is not None and s.stage == "5_done" for sid in ids)


async def test_burst_scales_karpenter_nodes_up_from_zero_and_back_down(env: AutoscaleEnv) -> None:
    cfg = env.cfg
    cpu_per_pod = float(cfg.build_requests["cpu"])
    node_cpu = int(cfg.instance_cpu[0])
    # Karpenter-kwok reserves 100m cpu per node, so an 8-cpu node holds 3 two-cpu pods.
    pods_per_node = math.floor((node_cpu - 0.1) / cpu_per_pod)
    print(f"\nkarpenter-kwok {karpenter_version(env.karpenter_dir or Path())}; start-up: "
          + ", ".join(f"{k} {v:.1f}s" for k, v in env.timings.items()))
    async with pipeline(env.url) as doc, kube(str(env.cp.kubeconfig_path), env.namespace) as k:
        await eventually(lambda: doc.nodes, 30, what="the operator's presence in the document")
        # Step 0: no build capacity at all; the only node is the small system node.
        assert env.karpenter_nodes() == [] and env.nodeclaims() == []
        nodes = env.cp.client.json("GET", "/api/v1/nodes")["items"]
        assert [n["metadata"]["labels"].get(POOL_LABEL) for n in nodes] == ["system"]

        with Observer(env.cp, env.namespace) as obs:
            ids = [f"{900 + i}_autoscale" for i in range(STORIES)]
            doc.add_stories([{"story_id": sid, "stage": "4_merge"} for sid in ids])
            t0 = time.monotonic()
            await flush(doc)

            # Step 1: one Job per story; the pods do not fit anywhere and go Pending/Unschedulable.
            jobs = await eventually(lambda: _at_least(k.list_jobs(""), STORIES), 60, what=f"{STORIES} Jobs")
            assert sorted(j["metadata"]["annotations"]["huskies.dev/story-id"] for j in jobs) == sorted(ids)
            await eventually(lambda: len(obs.pod_list()) >= STORIES, 60, what=f"{STORIES} build pods")
            await eventually(lambda: any(p.unschedulable for p in obs.pod_list()), 30,
                             what="a build pod Pending with reason Unschedulable")

            # Step 2: Karpenter adds nodes, kwok makes them Ready, every build pod lands on one.
            await eventually(lambda: _all_scheduled(obs.pod_list(), STORIES), 120,
                             what="every build pod scheduled", interval=0.5)
            env.check_alive()
            pods = obs.pod_list()
            added = obs.node_list()
            names = {n.name for n in added}
            assert added, "Karpenter added no node"
            assert all(p.node in names for p in pods), [(p.name, p.node) for p in pods]
            assert all(n.ready is not None for n in added)
            # Karpenter marks a NodeClaim Initialized a moment after its node is Ready (and pods may bind).
            claims = await eventually(lambda: _initialized(env.nodeclaims()), 30, what="NodeClaims Initialized")
            assert sorted(c["status"]["nodeName"] for c in claims) == sorted(names)
            assert math.ceil(STORIES / pods_per_node) <= len(added) <= int(cfg.limit_cpu) // node_cpu
            assert {n.instance_type for n in added} == {f"c-{node_cpu}x-amd64-linux"}
            # Pods that existed before Karpenter's first node did had nowhere to go: each was seen
            # Unschedulable (a new node needs >= 1 s to become Ready, the observer polls every 0.2 s).
            first_node = min(n.seen for n in added)
            early = [p for p in pods if p.seen < first_node]
            assert early and all(p.unschedulable is not None for p in early), [vars(p) for p in early]
            print(f"pods seen Unschedulable: {sum(1 for p in pods if p.unschedulable is not None)}/{STORIES} "
                  f"({len(early)} created before the first node)")

            # Step 3: the builds run and every story reaches 5_done.
            await eventually(lambda: _done(doc, ids), 120, what="every story in 5_done", interval=0.5)
            t_done = time.monotonic()
            sjs = await k.list_storyjobs("")
            assert sorted(sj["spec"]["storyId"] for sj in sjs) == sorted(ids), "one StoryJob per story"
            assert all((sj.get("status") or {}).get("phase") == "Succeeded" for sj in sjs)
            assert all(doc.story(sid).retry_count == 0 for sid in ids)  # type: ignore[union-attr]

            # Step 4: once empty, the nodes go again (consolidation WhenEmpty); the system node stays.
            await eventually(lambda: not env.karpenter_nodes() and not env.nodeclaims(), 240,
                             what="Karpenter's nodes removed", interval=1.0)
            t_gone = time.monotonic()
            await eventually(lambda: all(n.gone is not None for n in obs.node_list()), 5, what="observer caught up")
            nodes = env.cp.client.json("GET", "/api/v1/nodes")["items"]
            assert [n["metadata"]["name"] for n in nodes] == ["system-0"]
            env.check_alive()

        _report(obs, t0, t_done, t_gone)


async def _at_least(items: Awaitable[list[dict[str, Any]]], n: int) -> list[dict[str, Any]] | None:
    got = await items
    return got if len(got) >= n else None


def _initialized(claims: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    kinds = ("Launched", "Registered", "Initialized", "Ready")
    ok = all((condition(c, kind) or {}).get("status") == "True" for c in claims for kind in kinds)
    return claims if claims and ok else None


def _all_scheduled(pods: list[PodTimes], n: int) -> bool:
    return len(pods) >= n and all(p.scheduled is not None for p in pods)


def _report(obs: Observer, t0: float, t_done: float, t_gone: float) -> None:
    pods, nodes = obs.pod_list(), obs.node_list()
    running = sorted(p.running - t0 for p in pods if p.running is not None)
    unschedulable = min((p.unschedulable for p in pods if p.unschedulable is not None), default=None)
    ready = max((n.ready for n in nodes if n.ready is not None), default=None)
    last_finish = max(p.finished for p in pods if p.finished is not None)
    gone = ", ".join(seconds(n.gone, t0) for n in sorted(nodes, key=lambda n: n.gone or 0))
    print(f"timeline (from the stories' write; {STORIES} stories, {len(nodes)} nodes added):")
    print(f"  first pod Unschedulable  {seconds(unschedulable, t0)}")
    print(f"  first node created       {seconds(min(n.seen for n in nodes), t0)}")
    print(f"  all nodes Ready          {seconds(ready, t0)}")
    print(f"  pod Running              p50 {statistics.median(running):.1f}s, max {running[-1]:.1f}s")
    print(f"  all stories 5_done       {t_done - t0:.1f}s")
    print(f"  last build pod ended     {last_finish - t0:.1f}s")
    print(f"  nodes gone               {gone}")
    print(f"  scale-down (last pod ended -> all nodes gone) {t_gone - last_finish:.1f}s")
    for n in sorted(nodes, key=lambda n: n.seen):
        on = sum(1 for p in pods if p.node == n.name)
        print(f"  node {n.name}: {n.instance_type}, {on} pods, created {seconds(n.seen, t0)}, "
              f"Ready {seconds(n.ready, t0)}, deleting {seconds(n.deleting, t0)}, gone {seconds(n.gone, t0)}")
