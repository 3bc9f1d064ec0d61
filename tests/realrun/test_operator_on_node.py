"""The operator in the cluster, for real: the chart, installed from the registry, runs the operator
image on the real node with in-cluster credentials (its ServiceAccount token, the ``kubernetes``
Service address), the chart's RBAC and probes; it wins the leader Lease and turns Ready once it has
joined the rendezvous (a real one on the host, reached through the node namespace's forward).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.chart.chartlib import Helm
from tests.realrun.conftest import NODE, Published, Rendezvous
from tests.realrun.node import POD_GATEWAY, TAINT_KEY, RealNode

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RELEASE = "huskies-node"
NS = "huskies-onnode"
TIMEOUT = 300.0


def _wait(predicate: Callable[[], bool], what: str, explain: Callable[[], str], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{explain()}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def installed_on_node(
    real_node: RealNode, published: Published, rendezvous: Rendezvous, realrun_helm: Helm, cluster: Any,
) -> Iterator[None]:
    kubeconfig = cluster.kubeconfig_path
    realrun_helm.run(
        "install", RELEASE, published.chart_url, "--version", published.version, "--plain-http",
        "--namespace", NS, "--create-namespace", "--wait=false",
        "--set", f"image.repository={published.operator_image.rsplit(':', 1)[0]}",
        "--set", f"build.image.repository={published.runner_image.rsplit(':', 1)[0]}",
        "--set", f"rendezvous.url=ws://{POD_GATEWAY}:{rendezvous.port}/crdt-sync",
        "--set", "replicaCount=1",
        "--set", f"nodeSelector.kubernetes\\.io/hostname={NODE}",
        "--set", f"tolerations[0].key={TAINT_KEY}", "--set", "tolerations[0].operator=Exists",
        kubeconfig=kubeconfig,
    )
    try:
        yield
    finally:
        realrun_helm.run("uninstall", RELEASE, "--namespace", NS, "--wait", kubeconfig=kubeconfig, check=False)


def test_operator_runs_in_cluster_on_the_real_node(
    installed_on_node: None, real_node: RealNode, core: Any, cluster: Any, published: Published,
) -> None:
    from kubernetes import client, config

    def pods() -> list[Any]:
        return list(core.list_namespaced_pod(NS, label_selector="app.kubernetes.io/name=huskies-agent").items)

    def ready() -> bool:
        found = pods()
        return len(found) == 1 and any(
            c.type == "Ready" and c.status == "True" for c in found[0].status.conditions or []
        )

    def explain() -> str:
        found = pods()
        status = found[0].status if found else "no pod"
        logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in real_node.pod_logs.rglob("*.log"))
        return f"pod status: {status}\noperator log:\n{logs}\nkubelet:\n{real_node.tail('kubelet', 30)}"

    _wait(ready, "the operator pod Ready on the real node", explain)
    pod = pods()[0]
    assert pod.spec.node_name == NODE
    assert [c.image for c in pod.spec.containers] == [published.operator_image]
    assert pod.status.container_statuses[0].image_id.startswith(f"{published.registry.host}/")
    assert pod.status.pod_ip.startswith("10.252.0."), "on the node's pod bridge, not the host network"

    api = config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
    try:
        leases = client.CoordinationV1Api(api).list_namespaced_lease(NS).items
    finally:
        api.close()
    holders = [lease.spec.holder_identity or "" for lease in leases]
    assert any(pod.metadata.name in holder for holder in holders), f"no Lease held by the pod: {holders}"
