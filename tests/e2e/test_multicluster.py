"""Two installs on two control planes share one pipeline: no story runs twice."""

from __future__ import annotations

import collections
import json

import pytest
from tests.e2e.conftest import apply_storyjob_crd
from tests.e2e.harness import eventually, flush, kube, pipeline

from huskies_agent_dev.devcluster import ControlPlane, find_testbin

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


@pytest.fixture
def second_cluster(cluster, tmp_path_factory, request):
    plane = ControlPlane(find_testbin(build=bool(__import__("os").environ.get("CI"))),
                         tmp_path_factory.mktemp("second-cluster"), tier="cluster")
    plane.start()
    try:
        apply_storyjob_crd(str(plane.kubeconfig_path))
        yield plane
    finally:
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            print(plane.format_logs(80))
        plane.stop()


async def test_two_clusters_share_the_pipeline(start_op, namespace_factory, second_cluster, cluster, rendezvous,
                                              log_dir, procs):
    from huskies_agent_dev.localrun import start_operator

    ns1 = namespace_factory()
    second_cluster.create_namespace("builds")
    env = {"HUSKIES_MAX_CONCURRENT": "4",
           "HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": "1s"})}
    start_op("east", ns1, env=env)
    west, _ = start_operator("west", kubeconfig=str(second_cluster.kubeconfig_path), namespace="builds",
                             rendezvous=rendezvous, log_dir=log_dir, env=env)
    procs.append(west)
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns1) as k1, \
            kube(str(second_cluster.kubeconfig_path), "builds") as k2:
        await eventually(lambda: len(doc.nodes) >= 2, 30, what="both clusters present")
        ids = [f"{800 + i}_multi" for i in range(12)]
        doc.add_stories([{"story_id": sid, "stage": "4_merge"} for sid in ids])
        await flush(doc)
        await eventually(lambda: all(doc.story(s).stage == "5_done" for s in ids), 120, what="all done")
        east_sjs, west_sjs = await k1.list_storyjobs(""), await k2.list_storyjobs("")
        ok = collections.Counter(sj["spec"]["storyId"] for sj in east_sjs + west_sjs
                                 if sj["status"]["phase"] == "Succeeded")
        assert ok == {sid: 1 for sid in ids}, ok
        assert any(sj["status"]["phase"] == "Succeeded" for sj in east_sjs)
        assert any(sj["status"]["phase"] == "Succeeded" for sj in west_sjs)
        # Presence advertises each node's cluster and free capacity.
        clusters = {n.extra.get("cluster") for n in doc.nodes.values()}
        assert {"east", "west"} <= clusters
        assert all(n.capacity is not None and 0 <= n.capacity <= 4 for n in doc.nodes.values())
