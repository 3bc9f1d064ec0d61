"""Smoke tests proving the control-plane fixtures are a real Kubernetes (sync ``kubernetes`` client)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from huskies_agent_dev.devcluster import ControlPlane

CRD_PATH = Path(__file__).resolve().parents[2] / "operator" / "huskies_agent" / "crds" / "storyjobs.yaml"
GROUP, VERSION, PLURAL = "huskies.dev", "v1alpha1", "storyjobs"
TABLE_ACCEPT = "application/json;as=Table;g=meta.k8s.io;v=v1"

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def api_client_for(kubeconfig: Path) -> Any:
    return config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)


@pytest.fixture(scope="module")
def admin(apiserver: ControlPlane) -> Iterator[Any]:
    api = api_client_for(apiserver.kubeconfig_path)
    yield api
    api.close()


@pytest.fixture(scope="module")
def cluster_admin(cluster: ControlPlane) -> Iterator[Any]:
    api = api_client_for(cluster.kubeconfig_path)
    yield api
    api.close()


def _new_namespace(plane: ControlPlane, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    plane.create_namespace(name)  # in the cluster tier this waits for the `default` ServiceAccount
    return name


@pytest.fixture
def namespace(apiserver: ControlPlane) -> str:
    return _new_namespace(apiserver, "smoke")


@pytest.fixture
def cluster_namespace(cluster: ControlPlane, cluster_admin: Any) -> Iterator[str]:
    name = _new_namespace(cluster, "smoke-jobs")
    yield name
    client.CoreV1Api(cluster_admin).delete_namespace(name)


@pytest.fixture(scope="module")
def storyjob_crd(admin: Any) -> dict[str, Any]:
    """Apply the StoryJob CRD (server-side apply, idempotent) and wait until it is Established."""
    manifest = yaml.safe_load(CRD_PATH.read_text())
    ext = client.ApiextensionsV1Api(admin)
    ext.patch_custom_resource_definition(
        manifest["metadata"]["name"],
        manifest,
        field_manager="huskies-smoke-test",
        force=True,
        _content_type="application/apply-patch+yaml",
    )

    def established() -> Any:
        crd = ext.read_custom_resource_definition(manifest["metadata"]["name"])
        conds = crd.status.conditions or []
        return crd if any(c.type == "Established" and c.status == "True" for c in conds) else None

    wait_for(established, "StoryJob CRD Established", timeout=30)
    return dict(manifest)


def storyjob(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"storyId": "42_story_login_page", "stage": "2_current", "node": "node-a", "epoch": 1}
    body.update(spec)
    body = {k: v for k, v in body.items() if v is not None}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "StoryJob", "metadata": {"name": name}, "spec": body}


# ------------------------------------------------------------------------------------------------
# apiserver tier


def test_version_is_stamped(admin: Any) -> None:
    info = client.VersionApi(admin).get_code()
    assert info.git_version == "v1.34.4", info  # helm's .Capabilities.KubeVersion depends on this


def test_storyjob_round_trip(admin: Any, storyjob_crd: dict[str, Any], namespace: str) -> None:
    api = client.CustomObjectsApi(admin)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, storyjob("sj-1", branch="feat/x"))
    got = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "sj-1")
    assert got["spec"] == {
        "storyId": "42_story_login_page",
        "stage": "2_current",
        "node": "node-a",
        "epoch": 1,
        "branch": "feat/x",
    }
    # status is a subresource: writable through /status only
    got["status"] = {"phase": "Running", "result": {"anything": ["goes", 1]}}
    api.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "sj-1", got)
    again = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "sj-1")
    assert again["status"]["phase"] == "Running"
    assert again["status"]["result"] == {"anything": ["goes", 1]}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"stage": "9_done"}, "spec.stage"),
        ({"storyId": None}, "spec.storyId"),
        ({"epoch": 0}, "spec.epoch"),
    ],
    ids=["stage-not-in-enum", "missing-storyId", "epoch-below-minimum"],
)
def test_invalid_storyjob_rejected(
    admin: Any, storyjob_crd: dict[str, Any], namespace: str, spec: dict[str, Any], field: str
) -> None:
    api = client.CustomObjectsApi(admin)
    with pytest.raises(ApiException) as err:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, storyjob("bad", **spec))
    assert err.value.status == 422
    assert field in json.loads(err.value.body)["message"]


def test_printer_columns(admin: Any, storyjob_crd: dict[str, Any], namespace: str) -> None:
    api = client.CustomObjectsApi(admin)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, storyjob("sj-table", node="node-b"))
    params = admin.param_serialize(
        method="GET",
        resource_path=f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
        header_params={"Accept": TABLE_ACCEPT},
        auth_settings=["BearerToken"],
    )
    resp = admin.call_api(*params)
    assert resp.status == 200
    table = json.loads(resp.read())
    assert table["kind"] == "Table"
    names = [c["name"] for c in table["columnDefinitions"]]
    for column in ("Name", "Story", "Stage", "Phase", "Node", "Age"):
        assert column in names, names
    row = dict(zip(names, table["rows"][0]["cells"], strict=True))
    assert row["Name"] == "sj-table"
    assert row["Story"] == "42_story_login_page"
    assert row["Stage"] == "2_current"
    assert row["Node"] == "node-b"


def test_rbac_enforced_for_client_cert_users(apiserver: ControlPlane, admin: Any, namespace: str) -> None:
    nobody = api_client_for(apiserver.write_kubeconfig("huskies-test-nobody", ["huskies:testers"]))
    try:
        with pytest.raises(ApiException) as err:
            client.CoreV1Api(nobody).list_namespaced_config_map(namespace)
        assert err.value.status == 403
        assert "huskies-test-nobody" in json.loads(err.value.body)["message"]

        rbac = client.RbacAuthorizationV1Api(admin)
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "read-configmaps"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "testers-read-configmaps"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "huskies:testers"}],
            },
        )
        # RBAC changes reach the authorizer's informer cache within a moment.
        wait_for(
            lambda: _can_list_configmaps(nobody, namespace),
            "group binding to take effect",
            timeout=15,
        )
    finally:
        nobody.close()


def _can_list_configmaps(api: Any, namespace: str) -> bool:
    try:
        client.CoreV1Api(api).list_namespaced_config_map(namespace)
    except ApiException as exc:
        if exc.status == 403:
            return False
        raise
    return True


def test_serviceaccount_kubeconfig(apiserver: ControlPlane, namespace: str) -> None:
    api = api_client_for(apiserver.serviceaccount_kubeconfig(namespace, "huskies-agent"))
    try:
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        )
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:huskies-agent"
        with pytest.raises(ApiException) as err:
            client.CoreV1Api(api).list_namespaced_secret(namespace)
        assert err.value.status == 403
    finally:
        api.close()


# ------------------------------------------------------------------------------------------------
# cluster tier: Job -> Pod -> scheduled on a fake node -> kwok runs it -> Job Complete / Failed


def job(name: str, annotations: dict[str, str], image: str = "registry.invalid/huskies-runner:test") -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "runner", "image": image, "command": ["run-story"]}],
                },
            },
        },
    }


def job_condition(api: Any, namespace: str, name: str, *types: str) -> Any:
    status = client.BatchV1Api(api).read_namespaced_job_status(name, namespace).status
    for cond in status.conditions or []:
        if cond.type in types and cond.status == "True":
            return cond
    return None


def job_pod(api: Any, namespace: str, name: str) -> Any:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def test_nodes_ready(cluster: ControlPlane, cluster_admin: Any) -> None:
    nodes = client.CoreV1Api(cluster_admin).list_node(label_selector="type=kwok").items
    assert sorted(n.metadata.name for n in nodes) == ["kwok-node-0", "kwok-node-1"]
    for n in nodes:
        assert n.status.allocatable["cpu"] == "8"
        assert n.status.allocatable["memory"] == "32Gi"
        assert any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)


def test_job_completes(cluster_admin: Any, cluster_namespace: str) -> None:
    result = json.dumps({"commit": "abc123", "pushed": True})
    client.BatchV1Api(cluster_admin).create_namespaced_job(
        cluster_namespace,
        job("ok", {"test.huskies/run-for": "1s", "test.huskies/termination-message": result}),
    )
    cond = wait_for(lambda: job_condition(cluster_admin, cluster_namespace, "ok", "Complete", "Failed"), "Job end")
    assert cond.type == "Complete"
    pod = job_pod(cluster_admin, cluster_namespace, "ok")
    assert pod.status.phase == "Succeeded"
    assert pod.spec.node_name in ("kwok-node-0", "kwok-node-1")
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0
    assert terminated.reason == "Completed"
    assert json.loads(terminated.message) == {"commit": "abc123", "pushed": True}
    assert (terminated.finished_at - terminated.started_at).total_seconds() >= 0.9


def test_job_fails_with_exit_code(cluster_admin: Any, cluster_namespace: str) -> None:
    client.BatchV1Api(cluster_admin).create_namespaced_job(
        cluster_namespace,
        job("boom", {"test.huskies/exit-code": "3", "test.huskies/termination-message": '{"error": "tests failed"}'}),
    )
    cond = wait_for(lambda: job_condition(cluster_admin, cluster_namespace, "boom", "Complete", "Failed"), "Job end")
    assert cond.type == "Failed"
    assert cond.reason == "BackoffLimitExceeded"
    pod = job_pod(cluster_admin, cluster_namespace, "boom")
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3
    assert terminated.reason == "Error"
    assert json.loads(terminated.message) == {"error": "tests failed"}


def test_unpullable_image_waits(cluster_admin: Any, cluster_namespace: str) -> None:
    client.BatchV1Api(cluster_admin).create_namespaced_job(
        cluster_namespace, job("stuck", {}, image="registry.invalid/unpullable:1")
    )

    def backoff() -> Any:
        pods = (
            client.CoreV1Api(cluster_admin)
            .list_namespaced_pod(cluster_namespace, label_selector="job-name=stuck")
            .items
        )
        for pod in pods:
            for cs in pod.status.container_statuses or []:
                if cs.state.waiting and cs.state.waiting.reason == "ImagePullBackOff":
                    return pod
        return None

    pod = wait_for(backoff, "ImagePullBackOff")
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name in ("kwok-node-0", "kwok-node-1")
    assert job_condition(cluster_admin, cluster_namespace, "stuck", "Complete", "Failed") is None


def test_job_deletion_removes_pods(cluster_admin: Any, cluster_namespace: str) -> None:
    batch, core = client.BatchV1Api(cluster_admin), client.CoreV1Api(cluster_admin)
    batch.create_namespaced_job(cluster_namespace, job("long", {"test.huskies/run-for": "1h"}))

    def running() -> bool:
        pods = core.list_namespaced_pod(cluster_namespace, label_selector="job-name=long").items
        return bool(pods) and pods[0].status.phase == "Running"

    wait_for(running, "long-running pod Running")
    batch.delete_namespaced_job("long", cluster_namespace, propagation_policy="Foreground")
    wait_for(
        lambda: not core.list_namespaced_pod(cluster_namespace, label_selector="job-name=long").items,
        "pods gone after Job deletion",
    )
