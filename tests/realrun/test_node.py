"""A real node: containerd + runc + kubelet in a test-made network namespace, registered with the
test control plane, running pods from images it pulls from the loopback registry.

The images are the ones built from the Dockerfile and published to the registry (see
test_registry_install.py); the pod runs them as uid 10001 with a read-only root filesystem and no
capabilities, the way the chart's pods do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from tests.realrun.conftest import NODE, Published
from tests.realrun.node import TAINT_KEY, RealNode, node_ready

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NS = "huskies-realnode"
POD_TIMEOUT = 300.0


def _wait(predicate: Callable[[], bool], what: str, node: RealNode, timeout: float = POD_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\nkubelet:\n{node.tail('kubelet', 40)}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def namespace(real_node: RealNode, cluster: Any) -> str:
    cluster.create_namespace(NS)
    return NS


def test_node_registers_ready_and_is_not_kwoks(real_node: RealNode, core: Any) -> None:
    node = core.read_node(NODE)
    assert node_ready(node.to_dict())
    assert "kwok.x-k8s.io/node" not in (node.metadata.annotations or {})
    assert node.status.node_info.container_runtime_version.startswith("containerd://1.6")
    assert node.status.node_info.kubelet_version == "v1.34.4"
    assert any(t.key == TAINT_KEY for t in node.spec.taints or [])


def _container(name: str, image: str, script: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "Always",  # pulled from the registry through the node's namespace
        "command": ["/usr/bin/tini", "--", "sh", "-c", script],
        "securityContext": {
            "runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def test_pod_runs_both_registry_images(
    real_node: RealNode, core: Any, published: Published, namespace: str,
) -> None:
    name = "images-smoke"
    core.create_namespaced_pod(NS, {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": NODE,
            "hostNetwork": True,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "tolerations": [{"key": TAINT_KEY, "operator": "Exists"}],
            "containers": [
                _container("operator", published.operator_image, "id -u; huskies-agent --version"),
                _container("runner", published.runner_image,
                           "id -u; huskies-agent --version; claude --version; git --version"),
            ],
        },
    })

    def finished() -> bool:
        phase = core.read_namespaced_pod(name, NS).status.phase
        return phase in ("Succeeded", "Failed")

    _wait(finished, f"pod {name} to finish", real_node)
    pod = core.read_namespaced_pod(name, NS)
    logs = {
        c.name: _log(real_node, pod, c.name) for c in pod.status.container_statuses
    }
    assert pod.status.phase == "Succeeded", f"{pod.status}\n{logs}"
    for status in pod.status.container_statuses:
        assert status.state.terminated.exit_code == 0
        assert status.image_id.startswith(f"{published.registry.host}/"), status.image_id
    assert logs["operator"].splitlines()[0].endswith("10001")
    assert "0.1.0" in logs["operator"]
    assert "Claude Code" in logs["runner"] and "git version" in logs["runner"]


def _log(node: RealNode, pod: Any, container: str) -> str:
    """The container's log as the kubelet wrote it (API-server log streaming needs kubelet TLS)."""
    directory = node.pod_logs / f"{pod.metadata.namespace}_{pod.metadata.name}_{pod.metadata.uid}" / container
    lines = []
    for path in sorted(directory.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            # CRI log format: <time> <stream> <P|F> <text>
            parts = line.split(" ", 3)
            lines.append(parts[3] if len(parts) == 4 else line)
    return "\n".join(lines)
