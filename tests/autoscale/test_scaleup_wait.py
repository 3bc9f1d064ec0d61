"""Autoscaler-aware waiting and consolidation, against the real Karpenter (kwok provider).

* A NodePool that can fit the pod: Karpenter nominates a NodeClaim (Event ``Nominated``); the
  instance "boots" for longer than the pending timeout, and the run keeps its claim anyway.
* A NodePool that cannot (the pod asks for more cpu than any allowed instance type has): Karpenter's
  ``FailedScheduling`` Event makes the operator give the story back at once, long before the
  pending timeout.
* Consolidation that wants the node of a running build (a cheaper instance family is allowed while
  it runs) is blocked by ``karpenter.sh/do-not-disrupt``; the node goes only after the build ended.
  A control pod without the annotation, in the same situation at the same time, is moved.

Part of `make test`; setup in tests/autoscale/env.py, explained in docs/autoscaling.md.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from tests.autoscale import karpenter
from tests.autoscale.conftest import MakeEnv
from tests.autoscale.env import BUILD_TAINT, POOL_LABEL, AutoscaleEnv
from tests.autoscale.observer import Observer
from tests.e2e.harness import eventually, flush, kube, pipeline

from huskies_agent.pipeline.document import PipelineDoc

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]


def _events(env: AutoscaleEnv, selector: str) -> list[dict[str, Any]]:
    return karpenter.events(env.cp.client, selector)


def _condition(sj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (sj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def _stage(doc: PipelineDoc, sid: str) -> str:
    story = doc.story(sid)
    return story.stage if story is not None else ""


async def test_a_node_being_added_keeps_the_claim_past_the_pending_timeout(make_env: MakeEnv) -> None:
    # Instances take 10 s to register; the plain pending timeout is 4 s, the resync runs every second.
    env = make_env(pending_timeout_seconds=4, pending_scale_up_timeout_seconds=120, registration_delay="10s",
                   run_for="2s")
    ids = ["950_slowboot", "951_slowboot"]
    async with pipeline(env.url) as doc, kube(str(env.cp.kubeconfig_path), env.namespace) as k:
        await eventually(lambda: doc.nodes, 30, what="the operator's presence in the document")
        with Observer(env.cp, env.namespace) as obs:
            doc.add_stories([{"story_id": sid, "stage": "4_merge"} for sid in ids])
            t0 = time.monotonic()
            await flush(doc)
            nominated = await eventually(
                lambda: [e for e in _events(env, "involvedObject.kind=Pod,reason=Nominated")
                         if e["involvedObject"]["namespace"] == env.namespace], 60,
                what="Karpenter's Nominated Events on the build pods")
            assert {e["source"]["component"] for e in nominated} == {"karpenter"}
            # The operator says so on the StoryJob: the ScaleUp condition and an Event.
            sjs = await eventually(lambda: _all(k.list_storyjobs(""), len(ids), lambda sj: _condition(
                sj, "ScaleUp").get("status") == "True"), 30, what="ScaleUp=True on every StoryJob")
            assert {_condition(sj, "ScaleUp")["reason"] for sj in sjs} == {"Nominated"}
            assert all("nodeclaim/" in _condition(sj, "ScaleUp")["message"] for sj in sjs)
            # Past the pending timeout the wait is extended, not ended: announced once per run.
            await eventually(lambda: len(_events(env, "involvedObject.kind=StoryJob,reason=WaitingForScaleUp"))
                             >= len(ids), 30, what="WaitingForScaleUp Events")
            await eventually(lambda: all(_stage(doc, sid) == "5_done" for sid in ids), 120,
                             what="both stories done", interval=0.5)
            took = time.monotonic() - t0
            pods = obs.pod_list()
        sjs = await k.list_storyjobs("")
        assert sorted(sj["spec"]["storyId"] for sj in sjs) == sorted(ids), "one run per story: never released"
        assert {(sj.get("status") or {}).get("phase") for sj in sjs} == {"Succeeded"}
        assert all(doc.story(sid).retry_count == 0 for sid in ids)  # type: ignore[union-attr]
        waited = [p.scheduled - p.unschedulable for p in pods if p.scheduled and p.unschedulable]
        assert len(waited) == len(ids) and min(waited) > 4 + 2, (
            f"each pod waited unschedulable well past the 4 s pending timeout: {waited}")
        assert not _events(env, "involvedObject.kind=StoryJob,reason=NoScaleUp")
        print(f"\nunschedulable for {', '.join(f'{w:.1f}s' for w in waited)} (pending timeout 4 s); "
              f"stories done {took:.1f}s after the write")


async def test_no_instance_type_big_enough_releases_the_claim_at_once(make_env: MakeEnv) -> None:
    # 16 cpu per build pod; the NodePool allows only 8-cpu instances. Pending timeout: 300 s.
    env = make_env(build_requests={"cpu": "16", "memory": "1Gi"}, pending_timeout_seconds=300)
    sid = "960_toobig"
    async with pipeline(env.url) as doc, kube(str(env.cp.kubeconfig_path), env.namespace) as k:
        await eventually(lambda: doc.nodes, 30, what="the operator's presence in the document")
        doc.add_stories([{"story_id": sid, "stage": "4_merge"}])
        t0 = time.monotonic()
        await flush(doc)
        sj = await eventually(lambda: _first(k.list_storyjobs(""), lambda s: (s.get("status") or {}).get(
            "phase") == "Released"), 60, what="the StoryJob Released", interval=0.2)
        took = time.monotonic() - t0
        status = sj["status"]
        assert "no scale-up possible" in status["reason"] and "Failed to schedule pod" in status["reason"], status
        scale_up = _condition(sj, "ScaleUp")
        assert (scale_up.get("status"), scale_up.get("reason")) == ("False", "FailedScheduling"), scale_up
        assert _condition(sj, "Succeeded").get("reason") == "Released"
        failed = [e for e in _events(env, "involvedObject.kind=Pod,reason=FailedScheduling")
                  if e["source"].get("component") == "karpenter"]
        assert failed, "Karpenter's own FailedScheduling Event on the pod"
        released = await eventually(lambda: _events(env, "involvedObject.kind=StoryJob,reason=NoScaleUp"), 10,
                                    what="the NoScaleUp Event")
        assert released[0]["type"] == "Warning"
        # The story is back in the pipeline for another cluster, nothing counted; the Job is gone.
        await eventually(lambda: (s := doc.story(sid)) is not None and not s.claimed_by, 15,
                         what="the claim released in the document")
        story = doc.story(sid)
        assert story is not None and story.stage == "4_merge" and story.retry_count == 0
        await eventually(lambda: _none(k.list_jobs("")), 15, what="the Job deleted")
        assert took < 60 and env.nodeclaims() == [] and env.karpenter_nodes() == []
        print(f"\nreleased {took:.1f}s after the write (pending timeout 300 s); Karpenter said: "
              f"{failed[0]['message'][:300]}")


async def test_consolidation_never_disrupts_a_running_build(make_env: MakeEnv) -> None:
    # One 4.5-cpu pod per 8-cpu node. The NodePool starts with the dearest family only (m: 8 GiB per
    # cpu); once the pods run, the cheaper c family is allowed too, so consolidation (policy
    # WhenEmptyOrUnderutilized) wants to replace both nodes. A control pod without do-not-disrupt, on
    # its own node, shows that Karpenter does move an unprotected pod in this situation; the build
    # runs 90 s, well past that.
    env = make_env(consolidation_policy="WhenEmptyOrUnderutilized", consolidate_after="0s", run_for="90s",
                   build_requests={"cpu": "4.5", "memory": "1Gi"}, instance_family=("m",))
    sid = "970_protected"
    async with pipeline(env.url) as doc, kube(str(env.cp.kubeconfig_path), env.namespace) as k:
        await eventually(lambda: doc.nodes, 30, what="the operator's presence in the document")
        with Observer(env.cp, env.namespace) as obs:
            doc.add_stories([{"story_id": sid, "stage": "4_merge"}])
            await flush(doc)
            env.cp.client.json("POST", f"/api/v1/namespaces/{env.namespace}/pods", _control_pod(env))
            build = await eventually(lambda: next((p for p in obs.pod_list() if p.story_id == sid and p.running),
                                                  None), 60, what="the build pod Running")
            control = await eventually(lambda: next((p for p in obs.pod_list() if p.name == "control"
                                                     and p.running), None), 60, what="the control pod Running")
            assert build.node != control.node, "one pod per node"
            assert {n.instance_type for n in obs.node_list()} == {"m-8x-amd64-linux"}
            # A cheaper instance type would now do for each pod: consolidation wants both nodes.
            _allow(env, "karpenter.kwok.sh/instance-family", ["c", "m"])
            allowed = time.monotonic()
            moved = await eventually(lambda: next((p for p in obs.pod_list() if p.name == "control"
                                                   and (p.deleted_running or p.gone)), None), 85,
                                     what="Karpenter to disrupt the unprotected control pod", interval=0.5)
            control_moved = (moved.deleted_running or moved.gone or 0.0) - allowed
            await eventually(lambda: _stage(doc, sid) == "5_done", 120, what="the story done", interval=0.5)
            await eventually(lambda: not env.karpenter_nodes(), 120, what="every node removed once empty",
                             interval=1.0)
            await eventually(lambda: all(n.gone for n in obs.node_list()), 5, what="observer caught up")
            done = next(p for p in obs.pod_list() if p.name == build.name)
            node = next(n for n in obs.node_list() if n.name == build.node)
        # The control shows the situation makes Karpenter disrupt; the build outlived that by far.
        assert done.finished is not None and done.finished - allowed > control_moved + 10, (
            f"inconclusive: the build ended {done.finished - allowed:.1f}s after the change, the control was "
            f"moved after {control_moved:.1f}s")
        assert done.phase == "Succeeded" and done.deleted_running is None and done.node == build.node, vars(done)
        # (kwok deletes a node within a poll once Karpenter lets go of it: "gone" may be the first sign)
        removed = node.deleting or node.gone
        assert removed is not None and removed >= done.finished, (vars(done), vars(node))
        sjs = await k.list_storyjobs("")
        assert [(sj.get("status") or {}).get("phase") for sj in sjs] == ["Succeeded"]
        assert doc.story(sid).retry_count == 0  # type: ignore[union-attr]
        assert not _events(env, "involvedObject.kind=StoryJob,reason=Disrupted")
        said = {e.get("message", "") for e in _events(
            env, f"involvedObject.kind=Node,involvedObject.name={build.node},reason=DisruptionBlocked")}
        print(f"\ncontrol pod (no do-not-disrupt) moved {control_moved:.1f}s after the cheaper family was "
              f"allowed; the build ran {done.finished - allowed:.1f}s after it, undisturbed; its node was "
              f"deleted {removed - done.finished:.1f}s after it ended (Karpenter on that node: {sorted(said)})")


def _allow(env: AutoscaleEnv, key: str, values: list[str]) -> None:
    pool = env.cp.client.json("GET", "/apis/karpenter.sh/v1/nodepools/builds")
    reqs = pool["spec"]["template"]["spec"]["requirements"]
    for req in reqs:
        if req["key"] == key:
            req["values"] = values
    karpenter.patch_nodepool(env.cp.client, "builds", {"spec": {"template": {"spec": {"requirements": reqs}}}})


def _control_pod(env: AutoscaleEnv) -> dict[str, Any]:
    """A pod like a build pod (requests, nodeSelector, toleration), without do-not-disrupt and not
    owned by a Job (kwok keeps it Running until something deletes it)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "control", "namespace": env.namespace},
        "spec": {
            "containers": [{"name": "c", "image": "control", "resources": {"requests": env.cfg.build_requests}}],
            "nodeSelector": {POOL_LABEL: "build"},
            "tolerations": [{**BUILD_TAINT, "operator": "Equal"}],
        },
    }


async def _all(items: Any, n: int, ok: Any) -> list[dict[str, Any]] | None:
    got = await items
    return got if len(got) >= n and all(ok(i) for i in got) else None


async def _first(items: Any, ok: Any) -> dict[str, Any] | None:
    return next((i for i in await items if ok(i)), None)


async def _none(items: Any) -> bool:
    return not await items
