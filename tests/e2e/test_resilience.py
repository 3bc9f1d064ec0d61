"""Several nodes, restarts, dead nodes and stuck work, on the real control plane."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import time

import pytest
from tests.e2e.harness import eventually, first_storyjob, flush, kube, metrics_text, pipeline

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


async def test_two_nodes_share_twenty_stories_without_running_any_twice(
        start_op, namespace_factory, rendezvous, cluster):
    ns_a, ns_b = namespace_factory(), namespace_factory()
    # Each node may hold 5 stories at once, so neither can take all 20.
    slow = {"HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": "1s"}),
            "HUSKIES_MAX_CONCURRENT": "5"}
    start_op("node-a", ns_a, env=slow)
    start_op("node-b", ns_b, env=slow)
    kc = str(cluster.kubeconfig_path)
    async with pipeline(rendezvous) as doc, kube(kc, ns_a) as ka, kube(kc, ns_b) as kb:
        await eventually(lambda: len(doc.nodes) >= 2, 30, what="both nodes present")
        ids = [f"{100 + i}_shared" for i in range(20)]
        doc.add_stories([{"story_id": sid, "stage": "4_merge"} for sid in ids])
        await flush(doc)
        await eventually(lambda: all(doc.story(s).stage == "5_done" for s in ids), 120, what="all stories done")
        sjs = await ka.list_storyjobs("") + await kb.list_storyjobs("")
        succeeded = collections.Counter(sj["spec"]["storyId"] for sj in sjs
                                        if (sj.get("status") or {}).get("phase") == "Succeeded")
        assert succeeded == {sid: 1 for sid in ids}, succeeded
        # Any run a node started and then lost was stopped: its Job is gone.
        # (Names are per claim epoch, so a race's winner and loser share a name in two namespaces.)
        lost = {(sj["metadata"]["namespace"], sj["metadata"]["name"]) for sj in sjs
                if (sj.get("status") or {}).get("phase") == "Lost"}
        jobs = {(j["metadata"]["namespace"], j["metadata"]["name"])
                for j in await ka.list_jobs("") + await kb.list_jobs("")}
        assert not lost & jobs
        nodes = {sj["spec"]["node"] for sj in sjs}
        assert len(nodes) == 2, "both nodes should have done some of the work"


async def test_hard_kill_and_restart_adopts_without_duplicates(start_op, namespace_factory, rendezvous, cluster):
    ns = namespace_factory()
    env = {"HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": "8s"})}
    proc, _ = start_op("phoenix", ns, env=env)
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        ids = [f"{200 + i}_restart" for i in range(5)]
        doc.add_stories([{"story_id": sid, "stage": "4_merge"} for sid in ids])
        await flush(doc)
        await eventually(lambda: _count(k.list_jobs(""), 5), 30, what="5 jobs")
        epochs_before = {s: doc.story(s).epoch for s in ids}
        proc.signal(signal.SIGKILL)
        proc.wait(5)
        await asyncio.sleep(1)
        proc.start()  # same node identity (ConfigMap) and replica id
        await eventually(lambda: all(doc.story(s).stage == "5_done" for s in ids), 90, what="work continued")
        sjs = await k.list_storyjobs("")
        assert sorted(sj["spec"]["storyId"] for sj in sjs) == sorted(ids), "a second StoryJob was created"
        assert all(sj["status"]["phase"] == "Succeeded" for sj in sjs)
        assert {s: doc.story(s).epoch for s in ids} == epochs_before, "stories were re-claimed"
        assert "adoption: 5 runs adopted" in proc.log()


async def test_dead_node_claims_are_taken_over_after_timeout(start_op, namespace_factory, rendezvous, cluster):
    ns_a, ns_b = namespace_factory(), namespace_factory()
    timeouts = {"HUSKIES_CLAIM_TIMEOUT_SECONDS": "5"}
    a, _ = start_op("doomed", ns_a, env={**timeouts, "HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps(
        {"test.huskies/run-for": "1h"})})
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns_b) as kb:
        doc.add_stories([{"story_id": f"{300 + i}_orphan", "stage": "4_merge"} for i in range(3)])
        await flush(doc)
        await eventually(lambda: all(doc.story(f"{300 + i}_orphan").claimed_by for i in range(3)), 30,
                         what="claimed by the first node")
        holder = doc.story("300_orphan").claimed_by
        a.signal(signal.SIGSTOP)  # alive as a process, but its heartbeat stops
        try:
            stopped_at = time.monotonic()
            start_op("heir", ns_b, env=timeouts)
            await eventually(lambda: all(doc.story(f"{300 + i}_orphan").stage == "5_done" for i in range(3)),
                             90, what="stories finished by the heir")
            assert time.monotonic() - stopped_at >= 5, "taken over before the claim timeout"
            sjs = await kb.list_storyjobs("")
            assert len(sjs) == 3 and all(sj["spec"]["node"] != holder for sj in sjs)
            assert all(sj["spec"]["epoch"] == 2 for sj in sjs)
        finally:
            a.signal(signal.SIGCONT)


async def test_job_without_pod_is_not_held(start_op, namespace_factory, rendezvous, cluster):
    ns = namespace_factory()
    start_op("nosa", ns, env={"HUSKIES_BUILD_SERVICE_ACCOUNT": "does-not-exist",
                              "HUSKIES_NO_POD_TIMEOUT_SECONDS": "3"})
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        doc.add_story("400_stuck", stage="2_current")
        await flush(doc)
        sj = await eventually(lambda: first_storyjob(k, "Failed"), 60, what="storyjob failed")
        assert "no pod" in sj["status"]["reason"]
        await eventually(lambda: not doc.story("400_stuck").claimed_by, 10, what="claim released")
        assert doc.story("400_stuck").retry_count == 0  # infrastructure trouble is not the story's failure
        assert await k.list_jobs("") == []


async def test_unschedulable_pod_releases_claim_after_pending_timeout(
        start_op, namespace_factory, rendezvous, cluster):
    ns = namespace_factory()
    start_op("tiny", ns, env={"HUSKIES_BUILD_REQUESTS": json.dumps({"cpu": "500", "memory": "1Gi"}),
                              "HUSKIES_PENDING_TIMEOUT_SECONDS": "3"})
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        doc.add_story("500_huge", stage="2_current")
        await flush(doc)
        sj = await eventually(lambda: first_storyjob(k, "Failed"), 60, what="storyjob failed")
        assert "Insufficient cpu" in sj["status"]["reason"] or "nschedulable" in sj["status"]["reason"]
        await eventually(lambda: not doc.story("500_huge").claimed_by, 10, what="claim released")
        await asyncio.sleep(1.5)
        # Cooling down: this node does not grab the story straight back.
        assert not doc.story("500_huge").claimed_by
        assert await k.list_jobs("") == []


async def test_evicted_pod_hands_the_story_off_at_once(start_op, namespace_factory, rendezvous, cluster):
    ns = namespace_factory()
    start_op("evictee", ns, env={"HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": "1h"}),
                                 "HUSKIES_CLAIM_TIMEOUT_SECONDS": "600"})
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        doc.add_story("600_evict", stage="2_current")
        await flush(doc)
        jobs = await eventually(lambda: k.list_jobs(""), 30, what="job")
        pods = await eventually(lambda: _running_pods(k, jobs[0]["metadata"]["name"]), 30, what="running pod")
        pod = pods[0]["metadata"]["name"]
        await k.evict_pod(pod)
        started = time.monotonic()
        await eventually(lambda: not doc.story("600_evict").claimed_by or doc.story("600_evict").epoch > 1, 15,
                         what="claim released after eviction")
        assert time.monotonic() - started < 10  # not the 600 s dead-node timeout
        assert doc.story("600_evict").retry_count == 0


async def _count(coro, n):
    return len(await coro) >= n



async def _running_pods(k, job_name):
    pods = await k.list_pods(f"job-name={job_name}")
    return [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]


async def test_standby_replica_takes_over_when_the_leader_dies(start_op, namespace_factory, rendezvous, cluster):
    ns = namespace_factory()
    same_install = {"HUSKIES_CLUSTER_NAME": "ha", "HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps(
        {"test.huskies/run-for": "6s"})}
    first, port1 = start_op("ha-1", ns, env={**same_install, "HUSKIES_REPLICA_ID": "replica-1"})
    await asyncio.sleep(2)
    second, port2 = start_op("ha-2", ns, env={**same_install, "HUSKIES_REPLICA_ID": "replica-2"})
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        lease = await eventually(lambda: k.get_lease("huskies-agent-leader"), 20, what="lease")
        assert lease["spec"]["holderIdentity"] == "replica-1"
        assert "huskies_leader 1.0" in await eventually(lambda: _metrics(port1), 20, what="leader metrics")
        assert "huskies_leader 0.0" in await eventually(lambda: _metrics(port2), 20, what="standby metrics")
        doc.add_stories([{"story_id": f"{700 + i}_ha", "stage": "4_merge"} for i in range(3)])
        await flush(doc)
        await eventually(lambda: _count(k.list_jobs(""), 3), 30, what="jobs by the leader")
        first.kill()  # no clean release: the standby must wait for the Lease to expire
        lease = await eventually(lambda: _held_by(k, "replica-2"), 30, what="standby took the lease")
        assert lease["spec"]["leaseTransitions"] >= 1
        await eventually(lambda: all(doc.story(f"{700 + i}_ha").stage == "5_done" for i in range(3)), 60,
                         what="work finished by the new leader")
        sjs = await k.list_storyjobs("")
        assert len(sjs) == 3 and all(sj["status"]["phase"] == "Succeeded" for sj in sjs)
        assert len({sj["spec"]["node"] for sj in sjs}) == 1  # one install, one node identity
        second.stop()
        assert not second.alive and second.returncode is not None


async def _held_by(k, holder):
    lease = await k.get_lease("huskies-agent-leader")
    return lease if lease and lease["spec"].get("holderIdentity") == holder else None


def _metrics(port):
    try:
        return metrics_text(port)
    except OSError:
        return None
